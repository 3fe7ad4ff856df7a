//! raft-rs's `Storage` on RocksDB, plus the writes the Ready loop makes through it.
//!
//! Only the Raft thread mutates this (through `RawNode::mut_store`), always into a
//! `WriteBatch` the caller commits: a Ready's entries, hard state and snapshot land in
//! one atomic, synced write. The indexes kept in memory mirror what is on disk and are
//! re-derived from disk on open.

use crate::error::{RaftError, RaftResult};
use crate::keys::*;
use crate::snapshot::SnapshotData;
use novacron_store::{db_options, StoreOptions};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB,
};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

/// Recent entries kept in memory: followers and the leader mostly read what was just
/// appended (term checks, sending appends), so most reads never touch RocksDB.
const TAIL_CACHE_ENTRIES: usize = 4096;

/// Opens (creating if needed) a node's database with every column family.
pub(crate) fn open_db(path: &Path, options: &StoreOptions) -> RaftResult<Arc<DB>> {
    let mut opts = db_options(options);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = ALL_CFS
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, db_options(options)));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(RaftError::rocks)?;
    Ok(Arc::new(db))
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created on open")
}

fn parse<M: protobuf::Message>(bytes: &[u8], what: &str) -> RaftResult<M> {
    M::parse_from_bytes(bytes)
        .map_err(|e| RaftError::Corruption(format!("undecodable {what}: {e}")))
}

fn storage_err(err: RaftError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(err)))
}

fn index_pair(bytes: &[u8]) -> RaftResult<(u64, u64)> {
    match (
        bytes.get(..8).and_then(u64_value),
        bytes.get(8..).and_then(u64_value),
    ) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(RaftError::Corruption(
            "truncated-state record is malformed".into(),
        )),
    }
}

/// What `meta` says about a database (read from the live DB or a snapshot of it).
pub(crate) struct Meta {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub applied: u64,
    pub truncated: (u64, u64),
}

pub(crate) fn read_meta(get: impl Fn(&[u8]) -> RaftResult<Option<Vec<u8>>>) -> RaftResult<Meta> {
    let hard_state = get(HARD_STATE)?
        .map(|b| parse(&b, "hard state"))
        .transpose()?
        .unwrap_or_default();
    let conf_state = get(CONF_STATE)?
        .map(|b| parse(&b, "conf state"))
        .transpose()?
        .unwrap_or_default();
    let truncated = get(TRUNCATED)?
        .map(|b| index_pair(&b))
        .transpose()?
        .unwrap_or((0, 0));
    let applied = match get(APPLIED)? {
        Some(b) => u64_value(&b)
            .ok_or_else(|| RaftError::Corruption("applied index is malformed".into()))?,
        None => truncated.0,
    };
    Ok(Meta {
        hard_state,
        conf_state,
        applied,
        truncated,
    })
}

/// The Raft log, hard state and configuration of one node, on RocksDB.
pub struct RocksStorage {
    db: Arc<DB>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry removed from the log (by compaction or a snapshot).
    truncated: (u64, u64),
    last_index: u64,
    applied: u64,
    tail: VecDeque<Entry>,
    sync: WriteOptions,
    nosync: WriteOptions,
}

impl RocksStorage {
    /// Loads the persisted state, checking it is consistent: the log is contiguous from
    /// the truncation point and holds every committed entry; nothing applied exceeds
    /// the commit index.
    pub(crate) fn open(db: Arc<DB>, sync_writes: bool) -> RaftResult<Self> {
        let meta = read_meta(|key| db.get_cf(cf(&db, CF_META), key).map_err(RaftError::rocks))?;
        let log = cf(&db, CF_LOG);
        let first = db
            .iterator_cf(log, IteratorMode::Start)
            .next()
            .transpose()
            .map_err(RaftError::rocks)?;
        let last = db
            .iterator_cf(log, IteratorMode::End)
            .next()
            .transpose()
            .map_err(RaftError::rocks)?;
        let index_of = |k: &[u8]| {
            u64_value(k).ok_or_else(|| RaftError::Corruption("log key is malformed".into()))
        };
        let last_index = match (&first, &last) {
            (Some((fk, _)), Some((lk, _))) => {
                let (fi, li) = (index_of(fk)?, index_of(lk)?);
                if fi != meta.truncated.0 + 1 {
                    return Err(RaftError::Corruption(format!(
                        "log starts at {fi}, expected {}",
                        meta.truncated.0 + 1
                    )));
                }
                li
            }
            _ => meta.truncated.0,
        };
        if meta.hard_state.commit > last_index {
            return Err(RaftError::Corruption(format!(
                "commit index {} is past the last entry {last_index}",
                meta.hard_state.commit
            )));
        }
        if meta.applied > meta.hard_state.commit.max(meta.truncated.0) {
            return Err(RaftError::Corruption(format!(
                "applied {} is past commit {}",
                meta.applied, meta.hard_state.commit
            )));
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(sync_writes);
        let storage = Self {
            db,
            hard_state: meta.hard_state,
            conf_state: meta.conf_state,
            truncated: meta.truncated,
            last_index,
            applied: meta.applied,
            tail: VecDeque::new(),
            sync,
            nosync: WriteOptions::default(),
        };
        // Every entry must decode and the indexes must be contiguous: a flipped bit is
        // an error now, not a divergent replica later.
        storage.read_range(storage.truncated.0 + 1, last_index + 1, u64::MAX)?;
        Ok(storage)
    }

    pub(crate) fn db(&self) -> &Arc<DB> {
        &self.db
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    pub(crate) fn commit(&self) -> u64 {
        self.hard_state.commit
    }

    pub(crate) fn truncated_index(&self) -> u64 {
        self.truncated.0
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Commits `batch`; `sync` makes it durable before returning.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> RaftResult<()> {
        let opts = if sync { &self.sync } else { &self.nosync };
        self.db.write_opt(batch, opts).map_err(RaftError::rocks)
    }

    fn read_range(&self, low: u64, high: u64, max_size: u64) -> RaftResult<Vec<Entry>> {
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(log_key(high).to_vec());
        let start = log_key(low);
        let mut size = 0u64;
        let mut expected = low;
        let iter = self.db.iterator_cf_opt(
            cf(&self.db, CF_LOG),
            opts,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(RaftError::rocks)?;
            let entry: Entry = parse(&value, "log entry")?;
            if u64_value(&key) != Some(expected) || entry.index != expected {
                return Err(RaftError::Corruption(format!(
                    "log entry {expected} is missing or misplaced"
                )));
            }
            size += value.len() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(entry);
            expected += 1;
        }
        if out.is_empty() || (expected < high && size <= max_size) {
            return Err(RaftError::Corruption(format!(
                "log entries {expected}..{high} are missing"
            )));
        }
        Ok(out)
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let front = self.tail.front()?.index;
        if index < front {
            return None;
        }
        self.tail.get((index - front) as usize)
    }

    /// Adds a Ready's entries to `batch`, replacing any conflicting suffix.
    pub(crate) fn append(&mut self, batch: &mut WriteBatch, entries: &[Entry]) -> RaftResult<()> {
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first <= self.truncated.0 || first > self.last_index + 1 {
            return Err(RaftError::Corruption(format!(
                "append at {first} does not fit the log ({}..={})",
                self.truncated.0 + 1,
                self.last_index
            )));
        }
        let log = cf(&self.db, CF_LOG);
        for entry in entries {
            let bytes = entry
                .write_to_bytes()
                .map_err(|e| RaftError::Corruption(e.to_string()))?;
            batch.put_cf(log, log_key(entry.index), bytes);
        }
        let new_last = first + entries.len() as u64 - 1;
        if self.last_index > new_last {
            batch.delete_range_cf(log, log_key(new_last + 1), log_key(self.last_index + 1));
        }
        while self.tail.back().is_some_and(|e| e.index >= first) {
            self.tail.pop_back();
        }
        if self.tail.back().is_some_and(|e| e.index + 1 != first) {
            self.tail.clear();
        }
        self.tail.extend(entries.iter().cloned());
        while self.tail.len() > TAIL_CACHE_ENTRIES {
            self.tail.pop_front();
        }
        self.last_index = new_last;
        Ok(())
    }

    pub(crate) fn set_hard_state(
        &mut self,
        batch: &mut WriteBatch,
        hs: &HardState,
    ) -> RaftResult<()> {
        self.hard_state = hs.clone();
        let bytes = hs
            .write_to_bytes()
            .map_err(|e| RaftError::Corruption(e.to_string()))?;
        batch.put_cf(cf(&self.db, CF_META), HARD_STATE, bytes);
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, batch: &mut WriteBatch, commit: u64) -> RaftResult<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(batch, &hs)
    }

    /// Records the applied index (and the configuration as of it) in the same batch as
    /// the state changes it covers.
    pub(crate) fn set_applied(
        &mut self,
        batch: &mut WriteBatch,
        applied: u64,
        conf_state: Option<&ConfState>,
    ) -> RaftResult<()> {
        let meta = cf(&self.db, CF_META);
        if let Some(cs) = conf_state {
            self.conf_state = cs.clone();
            batch.put_cf(
                meta,
                CONF_STATE,
                cs.write_to_bytes()
                    .map_err(|e| RaftError::Corruption(e.to_string()))?,
            );
        }
        self.applied = applied;
        batch.put_cf(meta, APPLIED, applied.to_be_bytes());
        Ok(())
    }

    /// Replaces the whole state and log with a snapshot received from the leader.
    pub(crate) fn install_snapshot(
        &mut self,
        batch: &mut WriteBatch,
        snap: &Snapshot,
    ) -> RaftResult<()> {
        let meta = snap.get_metadata();
        if meta.index < self.truncated.0 {
            return Err(RaftError::Snapshot(format!(
                "snapshot at {} is older than the log start {}",
                meta.index, self.truncated.0
            )));
        }
        let data = SnapshotData::decode(snap.get_data())?;
        data.write_into(&self.db, batch);
        batch.delete_range_cf(cf(&self.db, CF_LOG), log_key(0), log_key(u64::MAX));
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.set_hard_state(batch, &hs)?;
        self.set_applied(batch, meta.index, Some(meta.get_conf_state()))?;
        self.set_truncated(batch, (meta.index, meta.term));
        self.last_index = meta.index;
        self.tail.clear();
        Ok(())
    }

    fn set_truncated(&mut self, batch: &mut WriteBatch, truncated: (u64, u64)) {
        let mut bytes = truncated.0.to_be_bytes().to_vec();
        bytes.extend_from_slice(&truncated.1.to_be_bytes());
        batch.put_cf(cf(&self.db, CF_META), TRUNCATED, bytes);
        self.truncated = truncated;
    }

    /// Drops log entries up to and including `to` (which must be applied).
    pub(crate) fn compact(&mut self, batch: &mut WriteBatch, to: u64) -> RaftResult<()> {
        if to <= self.truncated.0 {
            return Ok(());
        }
        if to > self.applied {
            return Err(RaftError::Invalid(format!(
                "cannot compact to {to}: only {} is applied",
                self.applied
            )));
        }
        let term = self
            .term(to)
            .map_err(|e| RaftError::Corruption(e.to_string()))?;
        batch.delete_range_cf(cf(&self.db, CF_LOG), log_key(0), log_key(to + 1));
        self.set_truncated(batch, (to, term));
        while self.tail.front().is_some_and(|e| e.index <= to) {
            self.tail.pop_front();
        }
        Ok(())
    }

    /// Builds a snapshot of the applied state from a consistent RocksDB view.
    fn build_snapshot(&self, request_index: u64) -> RaftResult<Option<Snapshot>> {
        let view = self.db.snapshot();
        let meta = read_meta(|key| {
            view.get_cf(cf(&self.db, CF_META), key)
                .map_err(RaftError::rocks)
        })?;
        if meta.applied < request_index {
            return Ok(None);
        }
        let term = if meta.applied == meta.truncated.0 {
            meta.truncated.1
        } else {
            let bytes = view
                .get_cf(cf(&self.db, CF_LOG), log_key(meta.applied))
                .map_err(RaftError::rocks)?
                .ok_or_else(|| {
                    RaftError::Corruption(format!(
                        "applied entry {} is not in the log",
                        meta.applied
                    ))
                })?;
            parse::<Entry>(&bytes, "log entry")?.term
        };
        let data = SnapshotData::read(&self.db, &view)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.encode().into());
        let m = snap.mut_metadata();
        m.index = meta.applied;
        m.term = term;
        m.set_conf_state(meta.conf_state);
        Ok(Some(snap))
    }
}

impl Storage for RocksStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if let Some(first) = self.cached(low) {
            let skip = (first.index - self.tail.front().map_or(0, |e| e.index)) as usize;
            let mut ents: Vec<Entry> = self
                .tail
                .iter()
                .skip(skip)
                .take((high - low) as usize)
                .cloned()
                .collect();
            if ents.len() == (high - low) as usize {
                raft::util::limit_size(&mut ents, Some(max_size));
                return Ok(ents);
            }
        }
        self.read_range(low, high, max_size).map_err(storage_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if let Some(e) = self.cached(idx) {
            return Ok(e.term);
        }
        Ok(self
            .read_range(idx, idx + 1, u64::MAX)
            .map_err(storage_err)?[0]
            .term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match self.build_snapshot(request_index) {
            Ok(Some(snap)) => Ok(snap),
            Ok(None) => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
            Err(e) => Err(storage_err(e)),
        }
    }
}
