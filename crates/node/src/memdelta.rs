//! Binding for `novacron-memdelta`. Page data crosses as Buffers: inputs are borrowed
//! (no copy), outputs are Rust vectors handed to JS without copying.

use crate::js_error;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use novacron_memdelta::{CodecError, Decoder, Encoder, PAGE_SIZE};

fn to_js(err: CodecError) -> Error {
  js_error(err.code(), err)
}

fn indices_of(buf: &[u8]) -> Result<Vec<u64>> {
  if buf.len() % 8 != 0 {
    return Err(to_js(CodecError::InvalidArgument("indices must be little-endian u64s")));
  }
  Ok(buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect())
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
}

/// Source side of the page codec (see the `novacron-memdelta` crate).
#[napi]
pub struct PageEncoder {
  inner: Encoder,
}

#[napi]
impl PageEncoder {
  /// `capacityPages`: pages remembered for deltas and duplicates; the decoder must use
  /// the same value.
  #[napi(constructor)]
  pub fn new(capacity_pages: u32) -> Self {
    Self { inner: Encoder::new(capacity_pages as usize) }
  }

  /// Encodes `pages` (4 KiB each) at `indices` (little-endian u64 per page) into frames.
  #[napi]
  pub fn encode(&mut self, indices: Buffer, pages: Buffer) -> Result<Buffer> {
    let indices = indices_of(&indices)?;
    let mut out = Vec::with_capacity(pages.len() / 2 + 64);
    self.inner.encode(&indices, &pages, &mut out).map_err(to_js)?;
    Ok(out.into())
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
    }
  }
}

/// Decoded pages: `indices` (little-endian u64 each) and the 4 KiB pages, in order.
#[napi(object)]
pub struct BindingDecoded {
  /// Page indices, little-endian u64 each.
  pub indices: Buffer,
  /// Page contents, 4 KiB each.
  pub pages: Buffer,
}

/// Destination side of the page codec.
#[napi]
pub struct PageDecoder {
  inner: Decoder,
}

#[napi]
impl PageDecoder {
  /// Must match the encoder's `capacityPages`.
  #[napi(constructor)]
  pub fn new(capacity_pages: u32) -> Self {
    Self { inner: Decoder::new(capacity_pages as usize) }
  }

  /// Decodes a batch of frames. A corrupt or inconsistent frame rejects the whole batch
  /// (error codes `CODEC_*`) and changes nothing.
  #[napi]
  pub fn decode(&mut self, frames: Buffer) -> Result<BindingDecoded> {
    let mut indices = Vec::new();
    let mut pages = Vec::with_capacity(frames.len().max(PAGE_SIZE));
    self
      .inner
      .decode(&frames, |i, p| {
        indices.extend_from_slice(&i.to_le_bytes());
        pages.extend_from_slice(p);
      })
      .map_err(to_js)?;
    Ok(BindingDecoded { indices: indices.into(), pages: pages.into() })
  }
}
