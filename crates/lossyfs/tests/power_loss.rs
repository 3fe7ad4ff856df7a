//! The real filesystem, mounted: what was fsynced survives `kill -9` of the filesystem
//! (its power loss), what was not is gone. Needs root and /dev/fuse, as the daemon's
//! power-loss tests do; fails (does not skip) without them.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Disk {
    backing: tempfile::TempDir,
    mount: tempfile::TempDir,
    fs: Option<Child>,
}

impl Disk {
    fn new() -> Self {
        let mut d = Disk {
            backing: tempfile::tempdir().unwrap(),
            mount: tempfile::tempdir().unwrap(),
            fs: None,
        };
        d.power_on();
        d
    }

    fn power_on(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lossyfs"))
            .arg(self.backing.path())
            .arg(self.mount.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "mounted",
            "lossyfs did not mount (needs root and /dev/fuse)"
        );
        self.fs = Some(child);
    }

    /// kill -9 of the filesystem, then the dead mount is detached.
    fn power_loss(&mut self) {
        let mut child = self.fs.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let st = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount.path().join(name)
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.fs.is_some() {
            self.power_loss();
        }
    }
}

fn create_new(p: &Path) -> File {
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(p)
        .unwrap()
}

fn read(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn fsynced_data_survives_a_power_loss_and_unsynced_data_does_not() {
    let mut d = Disk::new();
    let mut wal = File::create(d.path("wal")).unwrap();
    wal.write_all(b"record-1;").unwrap();
    wal.sync_data().unwrap();
    wal.write_all(b"record-2;").unwrap(); // acknowledged by nobody: never synced
    let mut other = File::create(d.path("never-synced")).unwrap();
    other.write_all(&[7; 10_000]).unwrap();
    drop(other);
    // Reads see everything before the power fails.
    assert_eq!(read(&d.path("wal")), b"record-1;record-2;");
    assert_eq!(fs::metadata(d.path("never-synced")).unwrap().len(), 10_000);

    d.power_loss();
    d.power_on();
    assert_eq!(read(&d.path("wal")), b"record-1;");
    // The file was created (metadata is kept) but its data was never synced.
    assert_eq!(read(&d.path("never-synced")), b"");
}

#[test]
fn synced_overwrites_truncations_and_renames_are_what_comes_back() {
    let mut d = Disk::new();
    fs::create_dir(d.path("dir")).unwrap();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(d.path("dir/tmp"))
        .unwrap();
    f.write_all_at(&[b'a'; 9000], 0).unwrap();
    f.write_all_at(b"BB", 4095).unwrap();
    f.set_len(6000).unwrap();
    f.sync_all().unwrap();
    fs::rename(d.path("dir/tmp"), d.path("dir/current")).unwrap();
    // After the sync: shrink and grow again, unsynced.
    f.set_len(10).unwrap();
    f.set_len(8000).unwrap();
    assert!(read(&d.path("dir/current"))[10..].iter().all(|&b| b == 0));

    d.power_loss();
    d.power_on();
    let back = read(&d.path("dir/current"));
    assert_eq!(back.len(), 6000);
    assert_eq!(&back[4094..4098], b"aBBa");
    assert!(back.iter().filter(|&&b| b == b'a').count() == 5998);
    assert!(!d.path("dir/tmp").exists());
}

/// A file's unsynced data dies with its last name: a file made later, which the backing
/// filesystem may give the same inode number, starts empty (it once came back with the
/// removed file's size and pages — a power-loss test read a token followed by garbage).
#[test]
fn a_new_file_never_reads_the_unsynced_data_of_a_removed_one() {
    let d = Disk::new();
    for i in 0..64 {
        let (gone, replaced, new) = (
            d.path(&format!("gone-{i}")),
            d.path(&format!("replaced-{i}")),
            d.path(&format!("new-{i}")),
        );
        fs::write(&gone, [b'x'; 8000]).unwrap();
        fs::remove_file(&gone).unwrap();
        // Renamed over: the replaced file's unsynced data goes with it.
        fs::write(&replaced, [b'y'; 8000]).unwrap();
        fs::write(d.path("staging"), b"staged").unwrap();
        fs::rename(d.path("staging"), &replaced).unwrap();
        let back = read(&replaced);
        assert!(back == b"staged", "round {i}: {} bytes, not 6", back.len());
        // O_EXCL without O_TRUNC, as the daemon makes its admin.token.
        create_new(&new).write_all(b"hello").unwrap();
        let back = read(&new);
        assert!(back == b"hello", "round {i}: {} bytes, not 5", back.len());
        let empty = d.path(&format!("empty-{i}"));
        create_new(&empty);
        let back = read(&empty);
        assert!(back.is_empty(), "round {i}: {} bytes, not 0", back.len());
    }
}

/// A removed file that is still open keeps its unsynced data for whoever holds it open.
#[test]
fn an_open_file_keeps_its_unsynced_data_after_its_name_is_removed() {
    let d = Disk::new();
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(d.path("open"))
        .unwrap();
    f.write_all_at(b"still here", 0).unwrap();
    fs::remove_file(d.path("open")).unwrap();
    let mut back = [0u8; 10];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"still here");
    fs::write(d.path("after"), b"fresh").unwrap();
    assert_eq!(read(&d.path("after")), b"fresh");
}
