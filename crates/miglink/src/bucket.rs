//! The link's bandwidth cap on bytes put on the wire (after compression). Senders spend
//! tokens as they write and wait while in debt, so QEMU sees the cap as a slower socket
//! and paces itself. One bucket is shared by everything a migration sends (RAM and the
//! disk-mirror tunnel): the cap is the link's.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket in bytes: `bytes_per_sec` refill, `burst` depth; shared by the senders of one migration.
pub struct TokenBucket {
    bytes_per_sec: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `burst`: what may be sent at once after idling — 50 ms at the rate, at least 256 KiB.
    pub fn new(bytes_per_sec: f64) -> Self {
        let burst = (bytes_per_sec * 0.05).max(256.0 * 1024.0);
        Self {
            bytes_per_sec,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Records `n` bytes sent; returns how long to wait before sending more.
    pub fn spend(&self, n: usize) -> Duration {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.bytes_per_sec).min(self.burst);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.bytes_per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_is_repaid_at_the_rate() {
        let b = TokenBucket::new(1e6);
        assert_eq!(b.spend(256 * 1024), Duration::ZERO);
        let wait = b.spend(100_000);
        // 100 kB over the burst at 1 MB/s: about 100 ms
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
    }
}
