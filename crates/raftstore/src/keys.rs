//! Where everything lives in the node's RocksDB. One database, four column families, so
//! one `WriteBatch` can change the log, Raft's state and the application state atomically.
//!
//! | cf     | key                         | value                                   |
//! |--------|-----------------------------|-----------------------------------------|
//! | `log`  | index (u64 BE)              | `eraftpb::Entry`                        |
//! | `meta` | `hard_state`                | `eraftpb::HardState`                    |
//! | `meta` | `conf_state`                | `eraftpb::ConfState` as of `applied`    |
//! | `meta` | `applied`                   | u64 BE, written with the state it names |
//! | `meta` | `truncated`                 | index, term (u64 BE each) of the last entry compacted away |
//! | `kv`   | user key                    | user value (the replicated `Store`)     |
//! | `sys`  | `req/<id>`                  | a request's outcome (retries apply once) |
//! | `sys`  | `reqidx/<index BE><id>`     | empty; orders request ids for pruning  |
//! | `sys`  | `lock/<name>`               | the lock's holder, fencing token, expiry |
//! | `sys`  | `peer/<id BE>`              | a member's peer address                  |

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_SYS: &str = "sys";
pub(crate) const ALL_CFS: [&str; 4] = [CF_LOG, CF_META, CF_KV, CF_SYS];
/// The column families a snapshot carries (the applied state).
pub(crate) const STATE_CFS: [&str; 2] = [CF_KV, CF_SYS];

pub(crate) const HARD_STATE: &[u8] = b"hard_state";
pub(crate) const CONF_STATE: &[u8] = b"conf_state";
pub(crate) const APPLIED: &[u8] = b"applied";
pub(crate) const TRUNCATED: &[u8] = b"truncated";

pub(crate) const REQ_PREFIX: &[u8] = b"req/";
pub(crate) const REQ_INDEX_PREFIX: &[u8] = b"reqidx/";
pub(crate) const LOCK_PREFIX: &[u8] = b"lock/";
pub(crate) const PEER_PREFIX: &[u8] = b"peer/";

/// Above every key of a state column family: user keys are UTF-8 (never 0xff) and
/// system keys are ASCII.
pub(crate) const STATE_END: &[u8] = &[0xff];

pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + rest.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(rest);
    key
}

pub(crate) fn u64_value(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
