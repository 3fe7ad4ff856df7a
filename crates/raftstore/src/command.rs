//! What goes into the log: requests (with their ids, so a retry applies once) and what
//! applying them produced. Encoded with postcard behind a format byte.

use crate::error::{RaftError, RaftResult};
pub use novacron_store::Op;
use serde::{Deserialize, Serialize};

/// Format byte in front of every encoded request; bump on incompatible changes.
const FORMAT: u8 = 1;

/// Identifies one client request. A request proposed again with the same id (a client
/// retry after a timeout or a leader change) is applied at most once; the retry gets the
/// first outcome. All-zero means "no id": never deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Whether this id takes part in deduplication.
    pub fn is_set(&self) -> bool {
        self.0 != [0; 16]
    }
}

/// A lock holder's proof that it still holds `lock`: the state machine refuses a fenced
/// write whose token is not the lock's current one (the holder lost it meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// Lock name.
    pub lock: String,
    /// Fencing token from the grant.
    pub token: u64,
}

/// What a request asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Apply `ops` atomically (all or none), only if `fence` (when given) is current.
    Write {
        /// The mutations.
        ops: Vec<Op>,
        /// Refuse the write unless this lock token is still current.
        fence: Option<Fence>,
    },
    /// Take `lock` for `holder` until `now_ms + ttl_ms` if it is free or expired (or
    /// extend it if `holder` already has it). `now_ms` is the proposer's clock, recorded
    /// in the log so every replica decides the same way.
    Acquire {
        /// Lock name.
        lock: String,
        /// Who asks (a node or client id).
        holder: String,
        /// Lease length.
        ttl_ms: u64,
        /// The proposer's wall clock, ms since the Unix epoch.
        now_ms: u64,
    },
    /// Give `lock` up, if `token` is its current token.
    Release {
        /// Lock name.
        lock: String,
        /// Fencing token from the grant.
        token: u64,
    },
    /// Record where `member` listens now (it moved, or an operator corrected it). Ignored
    /// for an id that is not a member.
    SetAddress {
        /// Member id.
        member: u64,
        /// `host:port` peers dial.
        address: String,
    },
}

/// A client request as stored in one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Deduplication id.
    pub id: RequestId,
    /// The command.
    pub command: Command,
}

/// What applying a request produced. Refusals are outcomes, not errors: they are
/// decided by the replicated state and identical on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The write was applied at `index`.
    Written {
        /// Log index of the entry.
        index: u64,
    },
    /// The write's fence was stale; nothing was applied.
    Fenced {
        /// The lock's current token, if anyone holds it.
        current: Option<u64>,
    },
    /// The lock is the caller's until `expires_ms`.
    Granted {
        /// Fencing token: the log index of the grant, so later grants have larger tokens.
        token: u64,
        /// Lease end, ms since the Unix epoch (proposer's clock).
        expires_ms: u64,
    },
    /// Someone else holds the lock.
    Held {
        /// Current holder.
        holder: String,
        /// Its token.
        token: u64,
        /// Its lease end.
        expires_ms: u64,
    },
    /// The lock was released.
    Released,
    /// Release refused: the token is not the lock's current one.
    NotHeld,
}

/// A lock as the replicated state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// Current holder.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// Lease end, ms since the Unix epoch (the granting proposer's clock).
    pub expires_ms: u64,
}

/// Extra data carried by a configuration change entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfContext {
    /// Matches the change to the caller waiting for it.
    pub id: RequestId,
    /// Peer addresses of members being added, recorded in the state on apply.
    pub addresses: Vec<(u64, String)>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // postcard only fails on writer errors, and a Vec writer cannot fail.
    out.extend(postcard::to_stdvec(value).expect("postcard encodes into a Vec"));
    out
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> RaftResult<T> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest)
            .map_err(|e| RaftError::Corruption(format!("undecodable {what}: {e}"))),
        Some((other, _)) => Err(RaftError::Corruption(format!(
            "{what} has unknown format {other}"
        ))),
        None => Err(RaftError::Corruption(format!("empty {what}"))),
    }
}

impl Request {
    /// Checks what the state machine would otherwise have to refuse after the fact.
    pub fn validate(&self, max_bytes: usize) -> RaftResult<()> {
        match &self.command {
            Command::Write { ops, .. } => {
                if ops.is_empty() {
                    return Err(RaftError::Invalid("a write needs at least one op".into()));
                }
                let mut size = 0;
                for op in ops {
                    let (key, len) = match op {
                        Op::Put { key, value } => (key, key.len() + value.len()),
                        Op::Delete { key } => (key, key.len()),
                    };
                    if key.is_empty() {
                        return Err(RaftError::Invalid("key must not be empty".into()));
                    }
                    // Keys are UTF-8 so that no key reaches 0xff, the end of the state
                    // range a snapshot replaces.
                    if std::str::from_utf8(key).is_err() {
                        return Err(RaftError::Invalid("key must be UTF-8".into()));
                    }
                    size += len;
                }
                if size > max_bytes {
                    return Err(RaftError::Invalid(format!(
                        "write of {size} bytes exceeds the {max_bytes}-byte limit"
                    )));
                }
            }
            Command::Acquire {
                lock,
                holder,
                ttl_ms,
                ..
            } => {
                if lock.is_empty() || holder.is_empty() {
                    return Err(RaftError::Invalid(
                        "lock and holder must not be empty".into(),
                    ));
                }
                if *ttl_ms == 0 {
                    return Err(RaftError::Invalid("ttl must be positive".into()));
                }
            }
            Command::Release { lock, .. } => {
                if lock.is_empty() {
                    return Err(RaftError::Invalid("lock must not be empty".into()));
                }
            }
            Command::SetAddress { member, address } => {
                if *member == 0 || address.is_empty() || address.len() > 255 {
                    return Err(RaftError::Invalid(
                        "a member address needs a member id and 1-255 characters".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
