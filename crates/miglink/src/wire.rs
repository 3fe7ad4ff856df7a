//! Framing of the data link (the same frames as `src/migration/wire.ts`):
//!
//! `frame = type u8 | channel u16 BE | length u32 BE | payload`
//!
//! Frames are applied strictly in order on the destination; that order is what keeps the
//! page codec's caches on both ends in lockstep.

use crate::LinkError;
use std::io::Read;

/// Bytes of a frame header: type, channel, length.
pub const HEADER_LEN: usize = 7;
/// Largest payload accepted; a bigger length is a corrupt or hostile stream.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// A frame's type (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// source → destination, first frame: the migration's token.
    Hello = 1,
    /// A QEMU connection was opened; payload: kind u8 (0 main, 1 multifd).
    Open = 2,
    /// Bytes of a channel, forwarded as they are.
    Data = 3,
    /// One multifd RAM packet: u32 BE header length | header (verbatim) | codec batch.
    Pages = 4,
    /// The QEMU side of a channel closed.
    Eof = 5,
    /// destination → source: u32 BE bytes of a channel delivered to the destination QEMU.
    Window = 7,
    /// Either direction, empty: the sender is alive (see [`crate::liveness`]).
    Keepalive = 8,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Open,
            3 => Self::Data,
            4 => Self::Pages,
            5 => Self::Eof,
            7 => Self::Window,
            8 => Self::Keepalive,
            _ => return None,
        })
    }
}

/// What a channel carries: QEMU's main migration stream.
pub const KIND_MAIN: u8 = 0;
/// What a channel carries: one of QEMU's multifd streams.
pub const KIND_MULTIFD: u8 = 1;

/// A frame with `capacity` bytes of payload still to be appended by the caller.
pub fn frame_with_capacity(t: FrameType, channel: u16, capacity: usize) -> Vec<u8> {
    begin(Vec::with_capacity(HEADER_LEN + capacity), t, channel)
}

/// Starts a frame in `f` (emptied first); append the payload, then [`seal`] it.
pub fn begin(mut f: Vec<u8>, t: FrameType, channel: u16) -> Vec<u8> {
    f.clear();
    f.push(t as u8);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&[0; 4]);
    f
}

/// Writes the payload length into a frame built by [`frame_with_capacity`].
pub fn seal(frame: &mut [u8]) {
    let len = (frame.len() - HEADER_LEN) as u32;
    frame[3..7].copy_from_slice(&len.to_be_bytes());
}

/// A complete frame around a copy of `payload`.
pub fn frame(t: FrameType, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = frame_with_capacity(t, channel, payload.len());
    f.extend_from_slice(payload);
    seal(&mut f);
    f
}

/// A frame as read off the link.
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// The QEMU connection it belongs to (0 for link-level frames).
    pub channel: u16,
    /// Its payload, `length` bytes.
    pub payload: Vec<u8>,
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read, who: &str) -> Result<Option<Frame>, LinkError> {
    read_frame_into(r, who, Vec::new())
}

/// Appends exactly `n` bytes from `r` to `buf` (no zero-filling first).
pub fn read_n(r: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let got = r.take(n as u64).read_to_end(buf)?;
    if got < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// [`read_frame`] into `buf` (a recycled buffer), which becomes the payload.
pub fn read_frame_into(
    r: &mut impl Read,
    who: &str,
    mut buf: Vec<u8>,
) -> Result<Option<Frame>, LinkError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(LinkError::Transport(format!(
                    "{who} closed the link inside a frame header"
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LinkError::io(who, e)),
        }
    }
    let kind = FrameType::from_u8(h[0])
        .ok_or_else(|| LinkError::Protocol(format!("unknown transport frame type {}", h[0])))?;
    let channel = u16::from_be_bytes([h[1], h[2]]);
    let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(LinkError::Protocol(format!(
            "transport frame of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit"
        )));
    }
    buf.clear();
    read_n(r, &mut buf, len).map_err(|e| LinkError::io(format!("{who} (inside a frame)"), e))?;
    Ok(Some(Frame {
        kind,
        channel,
        payload: buf,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_headers() {
        let f = frame(FrameType::Data, 1, &[9, 8, 7]);
        assert_eq!(f, [3, 0, 1, 0, 0, 0, 3, 9, 8, 7]);
        let got = read_frame(&mut &f[..], "t").unwrap().unwrap();
        assert_eq!(
            (got.kind, got.channel, got.payload),
            (FrameType::Data, 1, vec![9, 8, 7])
        );
        assert!(read_frame(&mut &[][..], "t").unwrap().is_none());
        let e = read_frame(&mut &[9u8, 0, 0, 0, 0, 0, 0][..], "t")
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown transport frame type"));
        let e = read_frame(&mut &[3u8, 0, 0, 0xff, 0xff, 0xff, 0xff][..], "t")
            .err()
            .unwrap();
        assert!(e.to_string().contains("exceeds"));
        let e = read_frame(&mut &f[..5], "t").err().unwrap();
        assert_eq!(e.code(), "MIGRATION_TRANSPORT");
    }
}
