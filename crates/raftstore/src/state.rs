//! The replicated state machine: applies committed requests to the `kv` and `sys`
//! column families inside the Ready loop's apply batch. Deterministic: every decision
//! depends only on the log (the proposer's clock travels in the command).

use crate::command::{decode, encode, Command, Fence, LockState, Op, Outcome, Request};
use crate::error::{RaftError, RaftResult};
use crate::keys::*;
use crate::storage::cf;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, DB};
use std::collections::HashMap;

/// Request ids are remembered for this many log entries; a retry arriving later than
/// that is applied again. 100k entries is minutes of traffic at full load, far longer
/// than any client retry loop.
pub(crate) const DEDUPE_WINDOW: u64 = 100_000;
/// How often (in log entries) forgotten request ids are pruned.
const PRUNE_EVERY: u64 = 1024;

/// Applies requests into one batch. `sys` reads see the batch's own earlier writes
/// (two lock requests in the same batch must not both win).
pub(crate) struct Applier<'a> {
    db: &'a DB,
    batch: &'a mut WriteBatch,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Applier<'a> {
    pub(crate) fn new(db: &'a DB, batch: &'a mut WriteBatch) -> Self {
        Self {
            db,
            batch,
            overlay: HashMap::new(),
        }
    }

    fn sys_get(&self, key: &[u8]) -> RaftResult<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.db
            .get_cf(cf(self.db, CF_SYS), key)
            .map_err(RaftError::rocks)
    }

    fn sys_put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put_cf(cf(self.db, CF_SYS), &key, &value);
        self.overlay.insert(key, Some(value));
    }

    fn sys_delete(&mut self, key: Vec<u8>) {
        self.batch.delete_cf(cf(self.db, CF_SYS), &key);
        self.overlay.insert(key, None);
    }

    /// Applies the request in entry `index`, or returns the recorded outcome of an
    /// earlier entry with the same request id.
    pub(crate) fn apply(&mut self, index: u64, req: &Request) -> RaftResult<Outcome> {
        let req_key = prefixed(REQ_PREFIX, &req.id.0);
        if req.id.is_set() {
            if let Some(prev) = self.sys_get(&req_key)? {
                return decode(&prev, "request outcome");
            }
        }
        let outcome = match &req.command {
            Command::Write { ops, fence } => self.write(index, ops, fence.as_ref())?,
            Command::Acquire {
                lock,
                holder,
                ttl_ms,
                now_ms,
            } => self.acquire(index, lock, holder, *ttl_ms, *now_ms)?,
            Command::Release { lock, token } => self.release(lock, *token)?,
            Command::SetAddress { member, address } => {
                let key = prefixed(PEER_PREFIX, &member.to_be_bytes());
                if self.sys_get(&key)?.is_some() {
                    self.sys_put(key, address.as_bytes().to_vec());
                }
                Outcome::Written { index }
            }
        };
        if req.id.is_set() {
            self.sys_put(req_key, encode(&outcome));
            let mut idx_key = prefixed(REQ_INDEX_PREFIX, &index.to_be_bytes());
            idx_key.extend_from_slice(&req.id.0);
            self.sys_put(idx_key, Vec::new());
        }
        if index.is_multiple_of(PRUNE_EVERY) && index > DEDUPE_WINDOW {
            self.prune_request_ids(index - DEDUPE_WINDOW)?;
        }
        Ok(outcome)
    }

    fn lock(&self, name: &str) -> RaftResult<Option<LockState>> {
        self.sys_get(&prefixed(LOCK_PREFIX, name.as_bytes()))?
            .map(|b| decode(&b, "lock record"))
            .transpose()
    }

    fn write(&mut self, index: u64, ops: &[Op], fence: Option<&Fence>) -> RaftResult<Outcome> {
        if let Some(fence) = fence {
            let current = self.lock(&fence.lock)?.map(|l| l.token);
            if current != Some(fence.token) {
                return Ok(Outcome::Fenced { current });
            }
        }
        let kv = cf(self.db, CF_KV);
        for op in ops {
            match op {
                Op::Put { key, value } => self.batch.put_cf(kv, key, value),
                Op::Delete { key } => self.batch.delete_cf(kv, key),
            }
        }
        Ok(Outcome::Written { index })
    }

    fn acquire(
        &mut self,
        index: u64,
        name: &str,
        holder: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> RaftResult<Outcome> {
        let expires_ms = now_ms.saturating_add(ttl_ms);
        let record = match self.lock(name)? {
            Some(cur) if cur.expires_ms > now_ms && cur.holder != holder => {
                return Ok(Outcome::Held {
                    holder: cur.holder,
                    token: cur.token,
                    expires_ms: cur.expires_ms,
                });
            }
            // The holder renewing a live lease keeps its token.
            Some(cur) if cur.expires_ms > now_ms => LockState { expires_ms, ..cur },
            // Free or expired: a new grant; the entry index makes tokens grow monotonically.
            _ => LockState {
                holder: holder.to_owned(),
                token: index,
                expires_ms,
            },
        };
        let outcome = Outcome::Granted {
            token: record.token,
            expires_ms,
        };
        self.sys_put(prefixed(LOCK_PREFIX, name.as_bytes()), encode(&record));
        Ok(outcome)
    }

    fn release(&mut self, name: &str, token: u64) -> RaftResult<Outcome> {
        match self.lock(name)? {
            Some(cur) if cur.token == token => {
                self.sys_delete(prefixed(LOCK_PREFIX, name.as_bytes()));
                Ok(Outcome::Released)
            }
            _ => Ok(Outcome::NotHeld),
        }
    }

    /// Records peer addresses announced by a configuration change.
    pub(crate) fn set_peers(&mut self, addresses: &[(u64, String)], removed: &[u64]) {
        for (id, addr) in addresses {
            self.sys_put(
                prefixed(PEER_PREFIX, &id.to_be_bytes()),
                addr.as_bytes().to_vec(),
            );
        }
        for id in removed {
            self.sys_delete(prefixed(PEER_PREFIX, &id.to_be_bytes()));
        }
    }

    fn prune_request_ids(&mut self, below: u64) -> RaftResult<()> {
        let sys = cf(self.db, CF_SYS);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefixed(REQ_INDEX_PREFIX, &below.to_be_bytes()));
        let mut doomed = Vec::new();
        for item in self.db.iterator_cf_opt(
            sys,
            opts,
            IteratorMode::From(REQ_INDEX_PREFIX, rocksdb::Direction::Forward),
        ) {
            let (key, _) = item.map_err(RaftError::rocks)?;
            if !key.starts_with(REQ_INDEX_PREFIX) {
                break;
            }
            doomed.push(key.into_vec());
        }
        for key in doomed {
            let id = &key[REQ_INDEX_PREFIX.len() + 8..];
            self.sys_delete(prefixed(REQ_PREFIX, id));
            self.sys_delete(key);
        }
        Ok(())
    }
}

/// Reads the peer address table.
pub(crate) fn read_peers(db: &DB) -> RaftResult<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for item in db.prefix_iterator_cf(cf(db, CF_SYS), PEER_PREFIX) {
        let (key, value) = item.map_err(RaftError::rocks)?;
        if !key.starts_with(PEER_PREFIX) {
            break;
        }
        let id = u64_value(&key[PEER_PREFIX.len()..])
            .ok_or_else(|| RaftError::Corruption("peer key is malformed".into()))?;
        out.push((id, String::from_utf8_lossy(&value).into_owned()));
    }
    Ok(out)
}

/// Reads a lock's state (for status pages; decisions happen in `Applier`).
pub(crate) fn read_lock(db: &DB, name: &str) -> RaftResult<Option<LockState>> {
    db.get_cf(cf(db, CF_SYS), prefixed(LOCK_PREFIX, name.as_bytes()))
        .map_err(RaftError::rocks)?
        .map(|b| decode(&b, "lock record"))
        .transpose()
}
