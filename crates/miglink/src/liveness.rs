//! Liveness of a data link. Each end sends a keepalive frame every
//! [`KEEPALIVE_INTERVAL`] and fails the link once it heard nothing at all from the other
//! end for its silence timeout. Without this a blackholed network (packets dropped,
//! nothing closed) or a peer that stopped (SIGSTOP, a hung host) hangs a migration
//! forever: TCP reports nothing while no data of ours is unacknowledged, and a stopped
//! peer's kernel still acknowledges.

use crate::LinkError;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often each end says it is alive.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long an end waits, hearing nothing, before it fails the link (the default).
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// When an end last heard from the other.
pub(crate) struct Heard {
    start: Instant,
    last_ms: AtomicU64,
}

impl Heard {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Something arrived from the other end.
    pub(crate) fn now(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Relaxed)))
    }
}

/// Starts the two liveness threads of an end: one calls `keepalive` every
/// [`KEEPALIVE_INTERVAL`] (it may block: a blocked send must not stop the watch), the
/// other calls `fail` once nothing was heard for `silence`. Both stop when `closing`.
pub(crate) fn watch(
    heard: Arc<Heard>,
    silence: Duration,
    closing: Arc<dyn Fn() -> bool + Send + Sync>,
    keepalive: impl Fn() + Send + 'static,
    fail: impl FnOnce(LinkError) + Send + 'static,
    who: &'static str,
) {
    heard.now();
    let stop = closing.clone();
    std::thread::Builder::new()
        .name("nc-mig-alive".into())
        .spawn(move || {
            while !stop() {
                keepalive();
                std::thread::sleep(KEEPALIVE_INTERVAL);
            }
        })
        .expect("spawning a migration thread");
    let tick = (silence / 4).min(KEEPALIVE_INTERVAL);
    std::thread::Builder::new()
        .name("nc-mig-watch".into())
        .spawn(move || {
            while !closing() {
                let quiet = heard.silent_for();
                if quiet >= silence {
                    return fail(LinkError::Transport(format!(
                        "nothing arrived from {who} for {} ms: the network or {who} is down",
                        quiet.as_millis()
                    )));
                }
                std::thread::sleep(tick);
            }
        })
        .expect("spawning a migration thread");
}
