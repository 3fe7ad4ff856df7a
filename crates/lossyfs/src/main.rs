//! `lossyfs BACKING MOUNTPOINT`: mounts the filesystem and prints `mounted` once the mount
//! is up. Power loss is `kill -9` of this process followed by `umount -l MOUNTPOINT`;
//! mounting again over the same backing directory is the reboot.

use fuser::MountOption;
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(backing), Some(mountpoint), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: lossyfs BACKING MOUNTPOINT");
        std::process::exit(2);
    };
    let fs = match novacron_lossyfs::fs::LossyFs::new(PathBuf::from(&backing)) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("lossyfs: {}: {e}", PathBuf::from(&backing).display());
            std::process::exit(1);
        }
    };
    let options = [
        MountOption::FSName("lossyfs".into()),
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
    ];
    let session = match fuser::spawn_mount2(fs, &mountpoint, &options) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "lossyfs: cannot mount on {}: {e}",
                PathBuf::from(&mountpoint).display()
            );
            std::process::exit(1);
        }
    };
    println!("mounted");
    session.guard.join().ok();
}
