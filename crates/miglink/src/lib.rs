//! NovaCron's live-migration data path, off the JavaScript thread.
//!
//! QEMU migrates with multifd to a unix socket on the source host. [`SourceLink`] reads
//! each of QEMU's connections, runs RAM pages through the page codec
//! (`novacron-memdelta`) and multiplexes everything onto one TLS 1.3 connection to the
//! destination daemon's [`DestLink`] (rustls; the source pins the destination's member
//! certificate), which decodes and re-emits the byte-exact stream into the destination
//! QEMU's `-incoming` socket. Per-channel windows bound what the two ends hold; a token
//! bucket caps the link's bandwidth.
//!
//! The control conversation (offer, hello, "the guest resumed", aborts) stays with the
//! daemons' TypeScript; this crate moves bytes and reports the first failure.

mod bucket;
mod dest;
mod error;
pub mod liveness;
pub mod multifd;
mod outcome;
mod pool;
pub mod secure;
mod source;
pub mod wire;

pub use bucket::TokenBucket;
pub use dest::{DestConfig, DestLink, DestTls};
pub use error::LinkError;
pub use source::{FailFn, SourceConfig, SourceLink};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one end, readable while it runs.
#[derive(Default)]
pub(crate) struct LinkStats {
    raw_bytes: AtomicU64,
    wire_bytes: AtomicU64,
    pages: AtomicU64,
    packets: AtomicU64,
}

/// A copy of an end's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Bytes of QEMU's stream (read from the source QEMU / written to the destination QEMU).
    pub raw_bytes: u64,
    /// Bytes on the link, frame headers included.
    pub wire_bytes: u64,
    /// Guest pages that went through the codec.
    pub pages: u64,
    /// RAM packets.
    pub packets: u64,
}

impl LinkStats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            raw_bytes: self.raw_bytes.load(Relaxed),
            wire_bytes: self.wire_bytes.load(Relaxed),
            pages: self.pages.load(Relaxed),
            packets: self.packets.load(Relaxed),
        }
    }
}
