//! How an end stops: closed on request, or failed — with only the first failure
//! recorded and reported (what follows it is its echo: sockets it shut, threads it ended).

use crate::{FailFn, LinkError};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

pub(crate) struct Outcome {
    closing: AtomicBool,
    failure: Mutex<Option<(&'static str, String)>>,
    on_fail: FailFn,
}

impl Outcome {
    pub(crate) fn new(on_fail: FailFn) -> Self {
        Self {
            closing: AtomicBool::new(false),
            failure: Mutex::new(None),
            on_fail,
        }
    }

    /// Closing or failed: threads stop, their errors are not reported.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Relaxed)
    }

    /// Marks the end closing; false if it already was.
    pub(crate) fn close(&self) -> bool {
        !self.closing.swap(true, Relaxed)
    }

    /// Records and reports `err` if it is the first failure and the end was not closing;
    /// true if it did (the caller then shuts the end down).
    pub(crate) fn fail(&self, err: LinkError) -> bool {
        if !self.close() {
            return false;
        }
        // Recorded before anything is shut down: whoever sees the consequences (QEMU
        // failing) can already read the cause.
        *self.failure.lock().unwrap() = Some((err.code(), err.to_string()));
        (self.on_fail)(err);
        true
    }

    /// The first failure (code, message), if there was one.
    pub(crate) fn failure(&self) -> Option<(&'static str, String)> {
        self.failure.lock().unwrap().clone()
    }
}
