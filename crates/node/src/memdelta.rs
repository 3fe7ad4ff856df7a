//! Binding for `novacron-memdelta`. Page data crosses as Buffers: inputs are borrowed
//! (no copy), outputs are written into JS-owned buffers.

use crate::{js_error, Result};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use novacron_memdelta::{CodecError, ShardedDecoder, ShardedEncoder, PAGE_SIZE};

fn to_js(err: CodecError) -> Error<crate::Code> {
    js_error(err.code(), err)
}

fn indices_of(buf: &[u8]) -> Result<Vec<u64>> {
    if !buf.len().is_multiple_of(8) {
        return Err(to_js(CodecError::InvalidArgument(
            "indices must be little-endian u64s",
        )));
    }
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

/// Counters of an encoder since it was created.
#[napi(object)]
pub struct BindingEncodeStats {
    /// Pages encoded.
    pub pages: f64,
    /// Bytes produced, frame headers included.
    pub wire_bytes: f64,
    /// Pages per frame kind.
    pub zero: f64,
    /// Pages sent as a reference to content the destination holds.
    pub dup: f64,
    /// Pages sent as an XOR delta.
    pub xor: f64,
    /// Pages sent LZ4-compressed.
    pub lz4: f64,
    /// Pages sent raw.
    pub raw: f64,
    /// Pages sent as their own zero-run encoding.
    pub sparse: f64,
}

/// Source side of the page codec (see the `novacron-memdelta` crate), split into
/// `shards` encoders that run in parallel on a thread pool.
#[napi]
pub struct NativePageEncoder {
    inner: ShardedEncoder,
    /// Reused between calls so encoding allocates nothing in steady state.
    scratch: Vec<u8>,
}

#[napi]
impl NativePageEncoder {
    /// `capacityPages`: pages remembered for deltas and duplicates; `shards`: parallel
    /// encoders (default 1). The decoder must use the same values.
    #[napi(constructor)]
    pub fn new(capacity_pages: u32, shards: Option<u32>) -> Self {
        Self {
            inner: ShardedEncoder::new(capacity_pages as usize, shards.unwrap_or(1) as usize),
            scratch: Vec::new(),
        }
    }

    /// Encodes `pages` (4 KiB each) at `indices` (little-endian u64 per page) into `out`,
    /// a JS-owned buffer of at least `maxEncodedLen(pages)` bytes; returns the bytes written.
    /// (JS-owned output keeps large transient buffers off V8's external-memory accounting.)
    #[napi]
    pub fn encode_into(&mut self, indices: Buffer, pages: Buffer, mut out: Buffer) -> Result<u32> {
        let indices = indices_of(&indices)?;
        self.scratch.clear();
        self.inner
            .encode(&indices, &pages, &mut self.scratch)
            .map_err(to_js)?;
        let n = self.scratch.len();
        let dst = out
            .get_mut(..n)
            .ok_or_else(|| to_js(CodecError::InvalidArgument("output buffer too small")))?;
        dst.copy_from_slice(&self.scratch);
        Ok(n as u32)
    }

    /// Counters since creation.
    #[napi]
    pub fn stats(&self) -> BindingEncodeStats {
        let s = self.inner.stats();
        BindingEncodeStats {
            pages: s.pages as f64,
            wire_bytes: s.wire_bytes as f64,
            zero: s.by_kind[0] as f64,
            dup: s.by_kind[1] as f64,
            xor: s.by_kind[2] as f64,
            lz4: s.by_kind[3] as f64,
            raw: s.by_kind[4] as f64,
            sparse: s.by_kind[5] as f64,
        }
    }
}

/// Destination side of the page codec.
#[napi]
pub struct NativePageDecoder {
    inner: ShardedDecoder,
}

/// Worst-case encoded size of a batch of `pages` pages over `shards` shards (default 1).
#[napi]
pub fn max_encoded_len(pages: u32, shards: Option<u32>) -> u32 {
    ShardedEncoder::max_encoded_len(pages as usize, shards.unwrap_or(1).clamp(1, 64) as usize)
        as u32
}

#[napi]
impl NativePageDecoder {
    /// Must match the encoder's `capacityPages` and `shards`.
    #[napi(constructor)]
    pub fn new(capacity_pages: u32, shards: Option<u32>) -> Self {
        Self {
            inner: ShardedDecoder::new(capacity_pages as usize, shards.unwrap_or(1) as usize),
        }
    }

    /// Decodes a batch of frames into JS-owned buffers: page indices (little-endian u64
    /// each) into `outIndices` and page contents into `outPages`; returns the page count.
    /// A corrupt or inconsistent frame rejects the whole batch (`CODEC_*`) and changes
    /// nothing in the decoder.
    #[napi]
    pub fn decode_into(
        &mut self,
        frames: Buffer,
        mut out_indices: Buffer,
        mut out_pages: Buffer,
    ) -> Result<u32> {
        let (idx, pages) = (&mut out_indices[..], &mut out_pages[..]);
        let mut n = 0usize;
        let mut overflow = false;
        self.inner
            .decode(&frames, |i, p| {
                match (
                    idx.get_mut(n * 8..n * 8 + 8),
                    pages.get_mut(n * PAGE_SIZE..(n + 1) * PAGE_SIZE),
                ) {
                    (Some(di), Some(dp)) => {
                        di.copy_from_slice(&i.to_le_bytes());
                        dp.copy_from_slice(p);
                    }
                    _ => overflow = true,
                }
                n += 1;
            })
            .map_err(to_js)?;
        if overflow {
            return Err(to_js(CodecError::InvalidArgument(
                "output buffers too small for the decoded pages",
            )));
        }
        Ok(n as u32)
    }
}
