//! What a file holds that has not been fsynced yet: whole pages over the file's synced
//! contents, the logical size, and how much of the synced contents is still valid.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Page size of the unsynced data (any size works; 4 KiB matches the kernel's).
pub const PAGE: u64 = 4096;

/// One file's unsynced state. Every page holds the whole page as the application sees it
/// (filled from the synced contents when first written), so reading needs no merging
/// within a page; bytes of a page past `size` are zero.
#[derive(Debug)]
pub struct Unsynced {
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The file's size as the application sees it.
    size: u64,
    /// Bytes of the synced file below this offset are still the file's; above it they were
    /// truncated away (and read as zeros) until the next sync.
    base_valid: u64,
}

impl Unsynced {
    /// The state of a file whose synced contents are `synced_len` bytes long.
    pub fn new(synced_len: u64) -> Self {
        Self {
            pages: BTreeMap::new(),
            size: synced_len,
            base_valid: synced_len,
        }
    }

    /// The file's size as the application sees it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes of the synced file are still the file's.
    pub fn base_valid(&self) -> u64 {
        self.base_valid
    }

    /// Writes `data` at `offset`; `base` reads the synced file (`pread`) to fill a page
    /// touched for the first time.
    pub fn write(&mut self, offset: u64, data: &[u8], base: &File) -> io::Result<()> {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let page_no = at / PAGE;
            let page_start = page_no * PAGE;
            let within = (at - page_start) as usize;
            let n = ((PAGE as usize) - within).min((end - at) as usize);
            let page = match self.pages.entry(page_no) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let mut fresh = vec![0u8; PAGE as usize].into_boxed_slice();
                    read_base(base, page_start, &mut fresh, self.base_valid)?;
                    e.insert(fresh)
                }
            };
            let from = (at - offset) as usize;
            page[within..within + n].copy_from_slice(&data[from..from + n]);
            at += n as u64;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Reads `len` bytes at `offset` (fewer at the end of the file), as the application sees them.
    pub fn read(&self, offset: u64, len: usize, base: &File) -> io::Result<Vec<u8>> {
        if offset >= self.size {
            return Ok(Vec::new());
        }
        let len = (len as u64).min(self.size - offset) as usize;
        let mut buf = vec![0u8; len];
        read_base(base, offset, &mut buf, self.base_valid)?;
        let end = offset + len as u64;
        for (&page_no, page) in self.pages.range(offset / PAGE..=(end - 1) / PAGE) {
            let page_start = page_no * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_start) as usize..(to - page_start) as usize]);
        }
        Ok(buf)
    }

    /// Sets the size: shrinking drops what lies past it, growing reads as zeros.
    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if !size.is_multiple_of(PAGE) {
                if let Some(page) = self.pages.get_mut(&(size / PAGE)) {
                    page[(size % PAGE) as usize..].fill(0);
                }
            }
            self.base_valid = self.base_valid.min(size);
        }
        self.size = size;
    }

    /// Writes everything into the synced file (the caller then fsyncs it).
    pub fn flush_into(&self, file: &File) -> io::Result<()> {
        if file.metadata()?.len() > self.base_valid {
            file.set_len(self.base_valid)?;
        }
        for (&page_no, page) in &self.pages {
            let start = page_no * PAGE;
            if start >= self.size {
                break;
            }
            let n = (self.size - start).min(PAGE) as usize;
            file.write_all_at(&page[..n], start)?;
        }
        file.set_len(self.size)
    }
}

/// Reads the synced file into `buf` at `offset`, zeros at and past `valid` (or its end).
fn read_base(file: &File, offset: u64, buf: &mut [u8], valid: u64) -> io::Result<()> {
    buf.fill(0);
    if offset >= valid {
        return Ok(());
    }
    let want = ((valid - offset) as usize).min(buf.len());
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..want], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn synced(contents: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(f.path())
            .unwrap();
        (f, file)
    }

    /// Flushes `u` into `file`, which must then hold exactly `expected`.
    fn assert_flushed_as(u: &Unsynced, file: &File, expected: &[u8]) {
        u.flush_into(file).unwrap();
        let mut on_disk = vec![0; file.metadata().unwrap().len() as usize];
        file.read_exact_at(&mut on_disk, 0).unwrap();
        assert_eq!(on_disk, expected);
    }

    #[test]
    fn writes_read_back_over_the_synced_contents_and_reach_the_file_only_when_flushed() {
        let (_t, file) = synced(&[b'a'; 10_000]);
        let mut u = Unsynced::new(10_000);
        u.write(4090, b"XYZXYZXYZXYZ", &file).unwrap();
        u.write(12_000, b"tail", &file).unwrap();
        assert_eq!(u.size(), 12_004);
        let all = u.read(0, 20_000, &file).unwrap();
        assert_eq!(all.len(), 12_004);
        assert_eq!(&all[4088..4104], b"aaXYZXYZXYZXYZaa");
        assert!(all[10_000..12_000].iter().all(|&b| b == 0));
        assert_eq!(&all[12_000..], b"tail");
        // Nothing reached the file yet.
        assert_eq!(file.metadata().unwrap().len(), 10_000);
        assert_flushed_as(&u, &file, &all);
    }

    #[test]
    fn a_shrink_then_a_grow_reads_zeros_where_the_synced_bytes_were_cut_off() {
        let (_t, file) = synced(&[b'a'; 9000]);
        let mut u = Unsynced::new(9000);
        u.write(0, b"bb", &file).unwrap();
        u.truncate(5000);
        u.truncate(9000);
        let all = u.read(0, 9000, &file).unwrap();
        assert_eq!(&all[..2], b"bb");
        assert!(all[2..5000].iter().all(|&b| b == b'a'));
        assert!(
            all[5000..].iter().all(|&b| b == 0),
            "bytes past the cut came back"
        );
        assert_flushed_as(&u, &file, &all);
    }

    #[test]
    fn reads_past_the_end_are_empty_and_reads_at_the_end_are_short() {
        let (_t, file) = synced(b"hello");
        let u = Unsynced::new(5);
        assert_eq!(u.read(5, 10, &file).unwrap(), b"");
        assert_eq!(u.read(3, 10, &file).unwrap(), b"lo");
    }
}
