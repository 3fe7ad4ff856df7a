//! Wire format of one page frame (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 2 | magic `0x4E 0x43` ("NC") |
//! | 1 | format version (1) |
//! | 1 | kind ([`FrameKind`]; 0 is reserved as invalid) |
//! | 8 | page index |
//! | 8 | xxh3-64 of the reconstructed page |
//! | 4 | payload length |
//! | n | payload |

use crate::CodecError;

/// Header length in bytes.
pub const FRAME_HEADER_LEN: usize = 24;
const MAGIC: [u8; 2] = *b"NC";
const VERSION: u8 = 1;
/// Payloads are never larger than a raw page plus LZ4's worst-case framing.
const MAX_PAYLOAD: usize = 8192;

/// How a page is encoded. 0 is reserved so that zeroed memory is never a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// All-zero page; no payload.
    Zero = 1,
    /// Same content as a page the destination holds; no payload.
    Dup = 2,
    /// XOR against the last version sent, zero-run encoded: flag byte 0, then the
    /// zero-run bytes; or flag byte 1, then those bytes as size-prepended LZ4.
    Xor = 3,
    /// LZ4 block of the page.
    Lz4 = 4,
    /// The page itself.
    Raw = 5,
    /// The page's own zero-run encoding (mostly-zero pages: cheaper than LZ4 both ways).
    Sparse = 6,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Zero,
            2 => Self::Dup,
            3 => Self::Xor,
            4 => Self::Lz4,
            5 => Self::Raw,
            6 => Self::Sparse,
            _ => return None,
        })
    }
}

pub(crate) fn write(out: &mut Vec<u8>, kind: FrameKind, index: u64, hash: u64, payload: &[u8]) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) struct Frame<'a> {
    pub offset: usize,
    pub kind: FrameKind,
    pub index: u64,
    pub hash: u64,
    pub payload: &'a [u8],
}

pub(crate) fn parse_all(input: &[u8]) -> Result<Vec<Frame<'_>>, CodecError> {
    let mut frames = Vec::with_capacity(input.len() / 64 + 1);
    let mut at = 0;
    while at < input.len() {
        let header = input
            .get(at..at + FRAME_HEADER_LEN)
            .ok_or(CodecError::Truncated(at))?;
        if header[0..2] != MAGIC {
            return Err(CodecError::Malformed {
                offset: at,
                reason: "bad magic",
            });
        }
        if header[2] != VERSION {
            return Err(CodecError::Malformed {
                offset: at,
                reason: "unknown format version",
            });
        }
        let kind = FrameKind::from_u8(header[3]).ok_or(CodecError::Malformed {
            offset: at,
            reason: "unknown frame kind",
        })?;
        let index = u64::from_le_bytes(header[4..12].try_into().unwrap());
        let hash = u64::from_le_bytes(header[12..20].try_into().unwrap());
        let len = u32::from_le_bytes(header[20..24].try_into().unwrap()) as usize;
        if len > MAX_PAYLOAD {
            return Err(CodecError::Malformed {
                offset: at,
                reason: "payload too large",
            });
        }
        if matches!(kind, FrameKind::Zero | FrameKind::Dup) && len != 0 {
            return Err(CodecError::Malformed {
                offset: at,
                reason: "zero/dup frames carry no payload",
            });
        }
        let start = at + FRAME_HEADER_LEN;
        let payload = input
            .get(start..start + len)
            .ok_or(CodecError::Truncated(at))?;
        frames.push(Frame {
            offset: at,
            kind,
            index,
            hash,
            payload,
        });
        at = start + len;
    }
    Ok(frames)
}
