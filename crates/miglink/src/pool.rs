//! Recycled buffers. Packets are up to 512 KiB; reusing their buffers keeps the steady
//! state free of allocations (no fresh memory to map and zero for every packet).

use std::sync::Mutex;

/// At most this many idle buffers are kept.
const KEEP: usize = 64;
/// Smaller buffers are not worth keeping (they would be grown on reuse anyway).
const MIN_KEPT: usize = 64 << 10;

#[derive(Default)]
pub struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    /// An empty buffer with room for at least `capacity` bytes.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let mut v = self.0.lock().unwrap().pop().unwrap_or_default();
        v.clear();
        v.reserve(capacity);
        v
    }

    pub fn give(&self, v: Vec<u8>) {
        let mut idle = self.0.lock().unwrap();
        if v.capacity() >= MIN_KEPT && idle.len() < KEEP {
            idle.push(v);
        }
    }
}
