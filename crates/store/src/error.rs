//! Typed store errors with stable codes (the same strings reach JavaScript as
//! `error.code` and the HTTP layer maps them to statuses).

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything that can go wrong in the store.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Another process holds the database directory open.
    #[error("data directory is locked by another process: {0}")]
    Locked(String),
    /// On-disk data failed a checksum or consistency check.
    #[error("store corruption detected: {0}")]
    Corruption(String),
    /// The operating system refused an I/O operation (disk full, permissions, ...).
    #[error("store I/O error: {0}")]
    Io(String),
    /// The caller passed something the store cannot accept.
    #[error("invalid store argument: {0}")]
    InvalidArgument(String),
    /// The store was already closed.
    #[error("store is closed")]
    Closed,
    /// Any other engine failure.
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The stable code for this error; never reused for a different meaning.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Locked(_) => "STORE_LOCKED",
            StoreError::Corruption(_) => "STORE_CORRUPTION",
            StoreError::Io(_) => "STORE_IO",
            StoreError::InvalidArgument(_) => "STORE_INVALID_ARGUMENT",
            StoreError::Closed => "STORE_CLOSED",
            StoreError::Internal(_) => "STORE_INTERNAL",
        }
    }

    /// Maps a RocksDB error to its NovaCron meaning.
    pub fn from_rocksdb(err: rocksdb::Error) -> Self {
        use rocksdb::ErrorKind;
        let kind = err.kind();
        let msg = err.into_string();
        match kind {
            ErrorKind::Corruption => StoreError::Corruption(msg),
            ErrorKind::InvalidArgument => StoreError::InvalidArgument(msg),
            // RocksDB reports a held LOCK file as an IO error naming the lock.
            ErrorKind::IOError if msg.contains("lock") => StoreError::Locked(msg),
            ErrorKind::IOError => StoreError::Io(msg),
            _ => StoreError::Internal(msg),
        }
    }
}
