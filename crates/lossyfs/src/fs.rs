//! The filesystem: every call passes through to a backing directory, except that file
//! data stays in this process's memory until the file is fsynced. Killing the process is
//! a power loss: what was not synced is gone, what was is in the backing directory.
//!
//! Metadata (creating, renaming, linking, removing, permissions) goes to the backing
//! directory at once, so only unsynced *data* is lost — the model of LazyFS, and what
//! the WAL of a store depends on. A lost rename or a lost creation is not modelled.

use crate::pages::Unsynced;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attributes are never cached by the kernel: sizes of unsynced files change under it.
const TTL: Duration = Duration::ZERO;

/// The filesystem over `backing`.
pub struct LossyFs {
    backing: PathBuf,
    /// Inode `n` is `paths[n - 1]` (relative to `backing`); `None` once removed.
    paths: Vec<Option<PathBuf>>,
    /// Our inode of each backing file, by its device and inode number.
    by_backing: HashMap<(u64, u64), u64>,
    unsynced: HashMap<u64, Unsynced>,
    /// Inodes whose last name is gone while they are still open.
    orphans: HashSet<u64>,
    /// Open files by handle, with their inode; shared, so a request can hold one while it
    /// changes `unsynced`.
    handles: HashMap<u64, (Arc<File>, u64)>,
    next_fh: u64,
}

impl LossyFs {
    /// A filesystem over the directory `backing`.
    pub fn new(backing: PathBuf) -> io::Result<Self> {
        let root = fs::metadata(&backing)?;
        let mut by_backing = HashMap::new();
        by_backing.insert((root.dev(), root.ino()), 1);
        Ok(Self {
            backing,
            paths: vec![Some(PathBuf::new())],
            by_backing,
            unsynced: HashMap::new(),
            orphans: HashSet::new(),
            handles: HashMap::new(),
            next_fh: 1,
        })
    }

    fn path(&self, ino: u64) -> Result<PathBuf, i32> {
        match self.paths.get((ino as usize).wrapping_sub(1)) {
            Some(Some(p)) => Ok(self.backing.join(p)),
            _ => Err(libc::ENOENT),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<(PathBuf, PathBuf), i32> {
        let rel = match self.paths.get((parent as usize).wrapping_sub(1)) {
            Some(Some(p)) => p.join(name),
            _ => return Err(libc::ENOENT),
        };
        Ok((self.backing.join(&rel), rel))
    }

    /// Our inode for the backing file at `rel` (whose metadata is `md`), made on first sight.
    fn inode(&mut self, rel: PathBuf, md: &Metadata) -> u64 {
        if let Some(&ino) = self.by_backing.get(&(md.dev(), md.ino())) {
            self.paths[ino as usize - 1] = Some(rel);
            return ino;
        }
        self.paths.push(Some(rel));
        let ino = self.paths.len() as u64;
        self.by_backing.insert((md.dev(), md.ino()), ino);
        ino
    }

    fn attr(&self, ino: u64, md: &Metadata) -> FileAttr {
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            FileType::Directory
        } else if ft.is_symlink() {
            FileType::Symlink
        } else if ft.is_fifo() {
            FileType::NamedPipe
        } else if ft.is_socket() {
            FileType::Socket
        } else if ft.is_char_device() {
            FileType::CharDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else {
            FileType::RegularFile
        };
        let size = self.unsynced.get(&ino).map_or(md.size(), Unsynced::size);
        let time = |s: i64, ns: i64| {
            if s >= 0 {
                UNIX_EPOCH + Duration::new(s as u64, ns as u32)
            } else {
                UNIX_EPOCH
            }
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: time(md.ctime(), md.ctime_nsec()),
            kind,
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Looks `rel` up in the backing directory: its inode and attributes.
    fn entry(&mut self, rel: PathBuf) -> Result<FileAttr, i32> {
        let md = fs::symlink_metadata(self.backing.join(&rel)).map_err(errno)?;
        let ino = self.inode(rel, &md);
        Ok(self.attr(ino, &md))
    }

    /// Files made for a caller other than root belong to the caller.
    fn own(&self, path: &Path, req: &Request<'_>) -> Result<(), i32> {
        if req.uid() != 0 {
            std::os::unix::fs::lchown(path, Some(req.uid()), Some(req.gid())).map_err(errno)?;
        }
        Ok(())
    }

    fn open_handle(&mut self, file: File, ino: u64) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, (Arc::new(file), ino));
        fh
    }

    /// The open file behind handle `fh`.
    fn handle(&self, fh: u64) -> Result<Arc<File>, i32> {
        self.handles
            .get(&fh)
            .map(|(f, _)| f.clone())
            .ok_or(libc::EBADF)
    }

    /// Our inode of the file at `path` when that name is its last link: the file dies
    /// with it (unless it is open).
    fn last_link(&self, path: &Path) -> Option<u64> {
        let md = fs::symlink_metadata(path).ok()?;
        if md.is_dir() || md.nlink() > 1 {
            return None;
        }
        self.by_backing.get(&(md.dev(), md.ino())).copied()
    }

    /// `ino`'s last name is gone: the backing filesystem may give its inode number to the
    /// next file made, which must not inherit `ino` or its unsynced data. An open file
    /// keeps its data until its last handle is released.
    fn forget(&mut self, ino: u64) {
        self.by_backing.retain(|_, i| *i != ino);
        if self.handles.values().any(|&(_, i)| i == ino) {
            self.orphans.insert(ino);
        } else {
            self.unsynced.remove(&ino);
        }
    }

    /// The unsynced state of `ino`, made from the synced file's length on first use.
    fn unsynced_of(&mut self, ino: u64, file: &File) -> Result<&mut Unsynced, i32> {
        match self.unsynced.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                Ok(e.insert(Unsynced::new(file.metadata().map_err(errno)?.len())))
            }
        }
    }

    fn truncate(&mut self, ino: u64, fh: Option<u64>, size: u64) -> Result<(), i32> {
        let file = match fh {
            Some(fh) => self.handle(fh)?,
            None => Arc::new(open_backing(&self.path(ino)?)?),
        };
        self.unsynced_of(ino, &file)?.truncate(size);
        Ok(())
    }

    /// Makes `ino`'s unsynced data durable in the backing file.
    fn sync(&mut self, ino: u64, file: &File, datasync: bool) -> Result<(), i32> {
        if let Some(u) = self.unsynced.get(&ino) {
            u.flush_into(file).map_err(errno)?;
        }
        if datasync {
            file.sync_data().map_err(errno)?;
        } else {
            file.sync_all().map_err(errno)?;
        }
        self.unsynced.remove(&ino);
        Ok(())
    }

    /// After a rename or removal: inodes at or under `from` move to `to`, or are gone.
    fn moved(&mut self, from: &Path, to: Option<&Path>) {
        for p in self.paths.iter_mut() {
            let Some(path) = p else { continue };
            let Ok(rest) = path.strip_prefix(from) else {
                continue;
            };
            *p = to.map(|to| {
                if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                }
            });
        }
    }
}

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn open_backing(path: &Path) -> Result<File, i32> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .or_else(|_| File::open(path))
        .map_err(errno)
}

fn c_path(p: &Path) -> Result<CString, i32> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

macro_rules! tri {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return $reply.error(code),
        }
    };
}

impl Filesystem for LossyFs {
    fn init(&mut self, _req: &Request<'_>, _config: &mut KernelConfig) -> Result<(), i32> {
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let (_, rel) = tri!(reply, self.child(parent, name));
        let attr = tri!(reply, self.entry(rel));
        reply.entry(&TTL, &attr, 0);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        let md = match fh.and_then(|fh| self.handles.get(&fh)) {
            Some((f, _)) => f.metadata(),
            None => fs::symlink_metadata(tri!(reply, self.path(ino))),
        };
        let md = tri!(reply, md.map_err(errno));
        reply.attr(&TTL, &self.attr(ino, &md));
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let path = tri!(reply, self.path(ino));
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            tri!(
                reply,
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(errno)
            );
        }
        if uid.is_some() || gid.is_some() {
            tri!(
                reply,
                std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)
            );
        }
        if let Some(size) = size {
            tri!(reply, self.truncate(ino, fh, size));
        }
        if atime.is_some() || mtime.is_some() {
            let f = tri!(reply, File::open(&path).map_err(errno));
            let mut times = fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(time_of(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(time_of(t));
            }
            tri!(reply, f.set_times(times).map_err(errno));
        }
        let md = tri!(reply, fs::symlink_metadata(&path).map_err(errno));
        reply.attr(&TTL, &self.attr(ino, &md));
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        let target = tri!(
            reply,
            fs::read_link(tri!(reply, self.path(ino))).map_err(errno)
        );
        reply.data(target.as_os_str().as_bytes());
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (path, rel) = tri!(reply, self.child(parent, name));
        tri!(
            reply,
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(&path)
                .map_err(errno)
        );
        tri!(reply, self.own(&path, req));
        let attr = tri!(reply, self.entry(rel));
        reply.entry(&TTL, &attr, 0);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (path, rel) = tri!(reply, self.child(parent, name));
        let dying = self.last_link(&path);
        tri!(reply, fs::remove_file(&path).map_err(errno));
        self.moved(&rel, None);
        if let Some(ino) = dying {
            self.forget(ino);
        }
        reply.ok();
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (path, rel) = tri!(reply, self.child(parent, name));
        tri!(reply, fs::remove_dir(&path).map_err(errno));
        self.moved(&rel, None);
        reply.ok();
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (path, rel) = tri!(reply, self.child(parent, link_name));
        tri!(
            reply,
            std::os::unix::fs::symlink(target, &path).map_err(errno)
        );
        tri!(reply, self.own(&path, req));
        let attr = tri!(reply, self.entry(rel));
        reply.entry(&TTL, &attr, 0);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (from, from_rel) = tri!(reply, self.child(parent, name));
        let (to, to_rel) = tri!(reply, self.child(newparent, newname));
        let (cfrom, cto) = (tri!(reply, c_path(&from)), tri!(reply, c_path(&to)));
        // A file renamed over loses its name; an exchange loses none.
        let replaced = if flags & libc::RENAME_EXCHANGE == 0 {
            self.last_link(&to)
        } else {
            None
        };
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cfrom.as_ptr(),
                libc::AT_FDCWD,
                cto.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            return reply.error(errno(io::Error::last_os_error()));
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            let swap = PathBuf::from("\0swap");
            self.moved(&to_rel, Some(&swap));
            self.moved(&from_rel, Some(&to_rel));
            self.moved(&swap, Some(&from_rel));
        } else {
            self.moved(&to_rel, None);
            self.moved(&from_rel, Some(&to_rel));
        }
        if let Some(ino) = replaced {
            self.forget(ino);
        }
        reply.ok();
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let existing = tri!(reply, self.path(ino));
        let (path, rel) = tri!(reply, self.child(newparent, newname));
        tri!(reply, fs::hard_link(&existing, &path).map_err(errno));
        let attr = tri!(reply, self.entry(rel));
        reply.entry(&TTL, &attr, 0);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let file = tri!(reply, open_backing(&tri!(reply, self.path(ino))));
        let fh = self.open_handle(file, ino);
        reply.opened(fh, 0);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let file = tri!(reply, self.handle(fh));
        let file = &*file;
        let data = match self.unsynced.get(&ino) {
            Some(u) => u.read(offset as u64, size as usize, file),
            None => {
                let len = tri!(reply, file.metadata().map_err(errno)).len();
                Unsynced::new(len).read(offset as u64, size as usize, file)
            }
        };
        let data = tri!(reply, data.map_err(errno));
        reply.data(&data);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let file = tri!(reply, self.handle(fh));
        let u = tri!(reply, self.unsynced_of(ino, &file));
        tri!(reply, u.write(offset as u64, data, &file).map_err(errno));
        reply.written(data.len() as u32);
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        // close(2) does not make data durable; only fsync does.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some((_, ino)) = self.handles.remove(&fh) {
            // A file whose last name went while it was open dies with its last handle.
            if self.orphans.contains(&ino) && !self.handles.values().any(|&(_, i)| i == ino) {
                self.orphans.remove(&ino);
                self.unsynced.remove(&ino);
            }
        }
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, datasync: bool, reply: ReplyEmpty) {
        let file = tri!(reply, self.handle(fh));
        tri!(reply, self.sync(ino, &file, datasync));
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let dir = tri!(reply, self.path(ino));
        let rel = dir
            .strip_prefix(&self.backing)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let mut names: Vec<_> = tri!(reply, fs::read_dir(&dir).map_err(errno))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        let mut entries = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        for name in names {
            let Ok(attr) = self.entry(rel.join(&name)) else {
                continue;
            };
            entries.push((attr.ino, attr.kind, name));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as i64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let dir = tri!(
            reply,
            File::open(tri!(reply, self.path(ino))).map_err(errno)
        );
        tri!(reply, dir.sync_all().map_err(errno));
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let path = tri!(reply, c_path(&self.backing));
        // SAFETY: statvfs only writes into `st`, which is a plain C struct of integers.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a pointer to a live statvfs.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(errno(io::Error::last_os_error()));
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (path, rel) = tri!(reply, self.child(parent, name));
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            opts.create_new(true);
        } else {
            opts.create(true);
        }
        let file = tri!(reply, opts.open(&path).map_err(errno));
        tri!(reply, self.own(&path, req));
        let attr = tri!(reply, self.entry(rel));
        if flags & libc::O_TRUNC != 0 {
            tri!(reply, self.unsynced_of(attr.ino, &file)).truncate(0);
        }
        let attr = FileAttr {
            size: self
                .unsynced
                .get(&attr.ino)
                .map_or(attr.size, Unsynced::size),
            ..attr
        };
        let fh = self.open_handle(file, attr.ino);
        reply.created(&TTL, &attr, 0, fh, 0);
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Preallocation changes no contents; without KEEP_SIZE it may grow the file.
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            let file = tri!(reply, self.handle(fh));
            let u = tri!(reply, self.unsynced_of(ino, &file));
            let end = (offset + length) as u64;
            if end > u.size() {
                u.truncate(end);
            }
        }
        reply.ok();
    }
}
