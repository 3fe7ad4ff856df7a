//! NovaCron's Node.js binding. Thin by design: every module converts JS values into
//! the domain crate's types, calls it, and converts back. No logic lives here.
//!
//! Errors cross the boundary as JS `Error`s whose message starts with the stable code
//! (`"STORE_LOCKED: ..."`); `src/native/` in the TypeScript tree turns that into a typed
//! error with `error.code`.

#![deny(clippy::all)]

mod memdelta;
mod miglink;
mod raft;
mod store;

pub use memdelta::*;
pub use miglink::*;
pub use raft::*;
pub use store::*;

/// Formats a domain error for JavaScript: `CODE: message`.
pub(crate) fn js_error(code: &str, message: impl std::fmt::Display) -> napi::Error {
    napi::Error::from_reason(format!("{code}: {message}"))
}
