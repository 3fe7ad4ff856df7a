//! Errors of the data path, with the same stable codes the TypeScript side uses.

use novacron_memdelta::CodecError;

/// Why a link end failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer or QEMU sent something this end does not understand or refuses.
    #[error("{0}")]
    Protocol(String),
    /// A socket failed or closed before the stream was complete.
    #[error("{0}")]
    Transport(String),
    /// The page codec refused a batch (it applied none of it).
    #[error("{0}")]
    Codec(#[from] CodecError),
}

impl LinkError {
    /// The stable error code (registered in src/errors.ts).
    pub fn code(&self) -> &'static str {
        match self {
            LinkError::Protocol(_) => "MIGRATION_PROTOCOL",
            LinkError::Transport(_) => "MIGRATION_TRANSPORT",
            LinkError::Codec(e) => e.code(),
        }
    }

    pub(crate) fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        LinkError::Transport(format!("{context}: {err}"))
    }
}
