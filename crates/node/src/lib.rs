//! NovaCron's Node.js binding. Thin by design: every module converts JS values into
//! the domain crate's types, calls it, and converts back. No logic lives here.
//!
//! Errors cross the boundary as JS `Error`s whose `code` is the domain error's stable
//! code (`error.code === "STORE_LOCKED"`) and whose message is the domain error's text:
//! napi's error status is a [`Code`] here, not napi's own `Status`. `src/native/` turns
//! them into `NovaError`s with the same code.

#![deny(clippy::all)]

mod memdelta;
mod miglink;
mod raft;
mod store;

pub use memdelta::*;
pub use miglink::*;
pub use raft::*;
pub use store::*;

/// A stable error code (one of `src/errors.ts`), used as napi's error status: the JS
/// error thrown or rejected with carries it as `error.code`.
#[derive(Debug, Clone, Copy)]
pub struct Code(pub &'static str);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        self.0
    }
}

/// The result of every binding call that can fail with a domain error.
pub(crate) type Result<T> = napi::Result<T, Code>;

/// A domain error for JavaScript: `code` becomes `error.code`, `message` the message.
pub(crate) fn js_error(code: &'static str, message: impl std::fmt::Display) -> napi::Error<Code> {
    napi::Error::new(Code(code), message.to_string())
}

/// A domain error as data, where an error is an outcome rather than a throw (a Raft
/// request's completion, a migration link's first failure).
#[napi_derive::napi(object)]
pub struct BindingError {
    /// The stable code (one of `src/errors.ts`).
    pub code: String,
    /// What went wrong, for operators.
    pub message: String,
}

impl BindingError {
    pub(crate) fn new(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            code: code.to_string(),
            message: message.to_string(),
        }
    }
}

/// For an async task's `reject` (which must return napi's own error type): a JS error
/// object carrying `code`, which napi rejects the promise with as it is.
pub(crate) fn rejection(
    env: napi::Env,
    code: &'static str,
    message: impl std::fmt::Display,
) -> napi::Error {
    napi::Error::from(napi::JsError::from(js_error(code, message)).into_unknown(env))
}
