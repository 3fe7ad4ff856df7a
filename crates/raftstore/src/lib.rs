//! NovaCron's replicated control-plane store: TiKV's raft-rs as the consensus core, with
//! the Raft log, Raft's own state and the applied state machine in one RocksDB.
//!
//! * [`RocksStorage`] implements raft-rs's `Storage` on RocksDB column families (see
//!   the `keys` module for the layout); every Ready is persisted in one atomic batch.
//! * [`Node`] runs one member's Ready loop on its own thread (see the `node` module for
//!   why, and for the exact order of persist / send / apply / advance).
//! * The state machine applies [`Request`]s: atomic key-value writes (optionally fenced
//!   by a lock token), and leased locks whose fencing tokens grow monotonically. Every
//!   request carries an id, so a client retry is applied once.
//! * Snapshots are the applied state read from one RocksDB view, checksummed; log
//!   compaction keeps [`NodeConfig::keep_entries`] applied entries.
//! * Corruption is detected on open (every log entry is decoded, indexes must be
//!   contiguous, applied ≤ commit ≤ last index) and is an error, never silent divergence.

#![deny(missing_docs)]

mod command;
mod error;
mod keys;
mod node;
mod snapshot;
mod state;
mod storage;

pub use command::{Command, ConfContext, Fence, LockState, Op, Outcome, Request, RequestId};
pub use error::{RaftError, RaftResult};
pub use node::{
    bootstrap, encode_message, Callback, MemberChange, Node, NodeConfig, NodeStatus, PeerProgress,
    Transport,
};
pub use raft::eraftpb;
pub use storage::RocksStorage;
