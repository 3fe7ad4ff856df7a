//! Typed errors with stable codes (they reach JavaScript as `error.code` and HTTP as a
//! status through `src/errors.ts`).

use novacron_store::StoreError;

/// Result alias for the Raft store.
pub type RaftResult<T> = Result<T, RaftError>;

/// Everything that can go wrong in the replicated store.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RaftError {
    /// The local RocksDB failed (lock held, corruption, I/O).
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Persisted Raft state is inconsistent (a missing entry, an undecodable record).
    #[error("raft log corruption: {0}")]
    Corruption(String),
    /// No leader is known, so the request cannot be placed in the log now; retry later.
    #[error("no raft leader is known")]
    NoLeader,
    /// The request was not applied within its deadline (lost in a leader change, or the
    /// cluster has no quorum). Retrying with the same request id is safe.
    #[error("raft request timed out: {0}")]
    Timeout(String),
    /// The caller passed something the store refuses (empty key, oversized request, ...).
    #[error("invalid raft request: {0}")]
    Invalid(String),
    /// A peer message could not be decoded or is not for this node / cluster.
    #[error("bad raft message: {0}")]
    BadMessage(String),
    /// The node is stopped (or stopping).
    #[error("raft node is stopped")]
    Stopped,
    /// raft-rs refused the operation (e.g. a configuration change while one is pending).
    #[error("raft refused: {0}")]
    Refused(String),
    /// A snapshot could not be built or installed.
    #[error("raft snapshot error: {0}")]
    Snapshot(String),
}

impl RaftError {
    /// The stable code for this error; never reused for a different meaning.
    pub fn code(&self) -> &'static str {
        match self {
            RaftError::Store(e) => e.code(),
            RaftError::Corruption(_) => "RAFT_CORRUPTION",
            RaftError::NoLeader => "RAFT_NO_LEADER",
            RaftError::Timeout(_) => "RAFT_TIMEOUT",
            RaftError::Invalid(_) => "RAFT_INVALID",
            RaftError::BadMessage(_) => "RAFT_BAD_MESSAGE",
            RaftError::Stopped => "RAFT_STOPPED",
            RaftError::Refused(_) => "RAFT_REFUSED",
            RaftError::Snapshot(_) => "RAFT_SNAPSHOT",
        }
    }

    pub(crate) fn rocks(err: rocksdb::Error) -> Self {
        RaftError::Store(StoreError::from_rocksdb(err))
    }
}

impl From<raft::Error> for RaftError {
    fn from(err: raft::Error) -> Self {
        match err {
            raft::Error::ProposalDropped => RaftError::NoLeader,
            raft::Error::Store(e) => RaftError::Corruption(e.to_string()),
            other => RaftError::Refused(other.to_string()),
        }
    }
}
