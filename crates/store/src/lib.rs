//! NovaCron's embedded, durable key-value store.
//!
//! One RocksDB instance holds everything a single node persists. The contract the rest
//! of NovaCron relies on:
//!
//! * **Durable before acknowledged**: [`Store::write`] returns only after the batch is
//!   in the write-ahead log *and* the WAL is fsynced. A `kill -9` (or power loss) after
//!   `write` returns cannot lose the batch.
//! * **Atomic batches**: every operation in one [`Store::write`] call is applied
//!   together or not at all, so a state change and the event that announces it cannot
//!   be split by a crash.
//! * **Corruption is an error, never data**: paranoid checks and block checksums are on;
//!   a damaged file makes [`Store::open`] or a read fail with [`StoreError::Corruption`].
//! * **One owner**: RocksDB's LOCK file makes a second process opening the same
//!   directory fail with [`StoreError::Locked`] instead of corrupting it.
//!
//! Each [`Store::write`] is one synced RocksDB write. NovaCron's TypeScript wrapper
//! (`RocksStore`, src/native/rocks-store.ts) keeps one write in flight and merges the
//! writes that queue up meanwhile into the next batch: group commit, in call order.

#![deny(missing_docs)]

mod error;

pub use error::{StoreError, StoreResult};

use rocksdb::{BlockBasedOptions, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::path::Path;

/// One mutation inside an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Op {
    /// Set `key` to `value`, replacing any previous value.
    Put {
        /// Key bytes (non-empty).
        key: Vec<u8>,
        /// Value bytes (may be empty).
        value: Vec<u8>,
    },
    /// Remove `key` if present.
    Delete {
        /// Key bytes (non-empty).
        key: Vec<u8>,
    },
}

/// Tunables for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Fsync the WAL before a write is acknowledged. Only tests and benchmarks that
    /// measure the cost of durability turn this off. Default: `true`.
    pub sync_writes: bool,
    /// Block cache size in bytes. Default: 64 MiB.
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            sync_writes: true,
            block_cache_bytes: 64 << 20,
        }
    }
}

/// A range scan request: keys in `[start, end)` in ascending order, or descending when
/// `reverse` is set, at most `limit` pairs.
#[derive(Debug, Clone, Default)]
pub struct ScanRange<'a> {
    /// Inclusive lower bound.
    pub start: &'a [u8],
    /// Exclusive upper bound; empty means "no upper bound".
    pub end: &'a [u8],
    /// Maximum number of pairs returned; 0 means unlimited.
    pub limit: usize,
    /// Walk from the end of the range towards its start.
    pub reverse: bool,
}

/// A key-value pair returned by [`Store::scan`].
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The open store. Cheap to share behind an `Arc`; all methods take `&self` and are
/// safe to call from many threads at once.
pub struct Store {
    db: DB,
    write_opts: WriteOptions,
}

impl Store {
    /// Opens (creating if needed) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>, options: &StoreOptions) -> StoreResult<Self> {
        let mut opts = db_options(options);
        opts.create_if_missing(true);
        let db = DB::open(&opts, path.as_ref()).map_err(StoreError::from_rocksdb)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(options.sync_writes);
        Ok(Self { db, write_opts })
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        check_key(key)?;
        self.db.get(key).map_err(StoreError::from_rocksdb)
    }

    /// Applies `ops` atomically; returns once they are durable (see the crate docs).
    pub fn write(&self, ops: &[Op]) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    check_key(key)?;
                    batch.put(key, value);
                }
                Op::Delete { key } => {
                    check_key(key)?;
                    batch.delete(key);
                }
            }
        }
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(StoreError::from_rocksdb)
    }

    /// Returns the pairs in `range`, in key order (or reverse key order).
    pub fn scan(&self, range: &ScanRange<'_>) -> StoreResult<Vec<KeyValue>> {
        collect_range(self.db.iterator(range.iterator_mode()), range)
    }

    /// Flushes memtables to SST files and syncs the WAL; used on graceful shutdown so
    /// the next start does not have to replay the log.
    pub fn flush(&self) -> StoreResult<()> {
        self.db.flush_wal(true).map_err(StoreError::from_rocksdb)?;
        self.db.flush().map_err(StoreError::from_rocksdb)
    }
}

/// RocksDB options every NovaCron database uses (the single-node store and the Raft
/// store): paranoid checks, strict WAL recovery, LZ4/Zstd, a block cache and bloom filters.
pub fn db_options(options: &StoreOptions) -> Options {
    let mut opts = Options::default();
    opts.set_paranoid_checks(true);
    // Keep a damaged WAL tail from being silently dropped: only a torn final record
    // (the crash case) is tolerated.
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    opts.increase_parallelism(2);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&rocksdb::Cache::new_lru_cache(options.block_cache_bytes));
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts
}

impl ScanRange<'_> {
    /// Where a RocksDB iterator for this range starts.
    pub fn iterator_mode(&self) -> IteratorMode<'_> {
        if self.reverse {
            if self.end.is_empty() {
                IteratorMode::End
            } else {
                IteratorMode::From(self.end, Direction::Reverse)
            }
        } else {
            IteratorMode::From(self.start, Direction::Forward)
        }
    }
}

/// Collects the pairs of `range` from an iterator opened at `range.iterator_mode()`.
pub fn collect_range<I>(iter: I, range: &ScanRange<'_>) -> StoreResult<Vec<KeyValue>>
where
    I: Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
{
    let limit = if range.limit == 0 {
        usize::MAX
    } else {
        range.limit
    };
    let mut out = Vec::new();
    for item in iter {
        let (key, value) = item.map_err(StoreError::from_rocksdb)?;
        let below_end = range.end.is_empty() || &*key < range.end;
        let above_start = &*key >= range.start;
        if range.reverse {
            if !below_end {
                continue; // Reverse seek lands on `end` itself when it exists.
            }
            if !above_start {
                break;
            }
        } else if !below_end {
            break;
        }
        out.push((key.into_vec(), value.into_vec()));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

fn check_key(key: &[u8]) -> StoreResult<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("key must not be empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
