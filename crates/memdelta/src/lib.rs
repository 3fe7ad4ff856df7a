//! NovaCron's memory-page codec for live migration.
//!
//! The source [`Encoder`] turns each 4 KiB guest page into the smallest of:
//! * **zero**: the page is all zeros (no payload);
//! * **dup**: the destination already holds a page with this content (content hash);
//! * **xor**: XOR against the version of this page last sent, zero-run encoded, then LZ4;
//! * **lz4**: the page compressed with LZ4;
//! * **sparse**: the page's own zero-run encoding (mostly-zero pages);
//! * **raw**: the page as is.
//!
//! The destination [`Decoder`] mirrors the source's caches exactly: both apply the same
//! frames in the same order to identically sized LRU caches, so "the destination holds
//! it" is known on the source without a round trip. Every frame carries the xxh3 hash of
//! the reconstructed page; a decoder that cannot reproduce it rejects the frame with
//! [`CodecError`] and applies nothing.

#![deny(missing_docs)]

mod frame;
mod sharded;
mod zrle;

pub use sharded::{ShardedDecoder, ShardedEncoder};

pub use frame::{FrameKind, FRAME_HEADER_LEN};

use lru::LruCache;
use std::num::NonZeroUsize;
use xxhash_rust::xxh3::xxh3_64;

/// Guest page size handled by the codec.
pub const PAGE_SIZE: usize = 4096;

/// Codec failures; each has a stable code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input ends inside a frame.
    #[error("truncated frame at byte {0}")]
    Truncated(usize),
    /// Bad magic, version or frame kind.
    #[error("malformed frame at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the frame in the input.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A frame refers to state the decoder does not have (unknown base or hash).
    #[error("inconsistent frame for page {page}: {reason}")]
    Inconsistent {
        /// Page index named by the frame.
        page: u64,
        /// What is missing.
        reason: &'static str,
    },
    /// The reconstructed page does not match the frame's checksum.
    #[error("checksum mismatch for page {0}")]
    Checksum(u64),
    /// Caller error (sizes).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

impl CodecError {
    /// Stable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            CodecError::Truncated(_) => "CODEC_TRUNCATED",
            CodecError::Malformed { .. } => "CODEC_MALFORMED",
            CodecError::Inconsistent { .. } => "CODEC_INCONSISTENT",
            CodecError::Checksum(_) => "CODEC_CHECKSUM",
            CodecError::InvalidArgument(_) => "CODEC_INVALID_ARGUMENT",
        }
    }
}

/// Per-kind counters, for the transport's progress reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EncodeStats {
    /// Pages encoded.
    pub pages: u64,
    /// Bytes written (headers included).
    pub wire_bytes: u64,
    /// Pages per kind: zero, dup, xor, lz4, raw, sparse.
    pub by_kind: [u64; 6],
}

/// The state both sides keep in lockstep: the last version of each page index, and
/// which page contents (by hash) the destination holds.
struct Mirror {
    last: LruCache<u64, Box<[u8; PAGE_SIZE]>>,
    contents: LruCache<u64, u64>, // content hash → page index holding it
}

impl Mirror {
    fn new(capacity_pages: usize) -> Self {
        let cap = NonZeroUsize::new(capacity_pages.max(1)).unwrap();
        Self {
            last: LruCache::new(cap),
            contents: LruCache::new(cap),
        }
    }

    /// Records that the destination now holds `page` at `index`.
    fn remember(&mut self, index: u64, page: &[u8; PAGE_SIZE], hash: u64) {
        self.contents.put(hash, index);
        match self.last.get_mut(&index) {
            Some(slot) => slot.copy_from_slice(page),
            None => {
                self.last.put(index, Box::new(*page));
            }
        }
    }

    /// The content of `hash`, if the page that held it still holds it. Lookups never
    /// change LRU order (only `remember` does), so both sides evict identically.
    fn content(&self, hash: u64) -> Option<&[u8; PAGE_SIZE]> {
        let index = *self.contents.peek(&hash)?;
        let page = self.last.peek(&index)?;
        (xxh3_64(&page[..]) == hash).then_some(&**page)
    }
}

/// The source side.
pub struct Encoder {
    mirror: Mirror,
    scratch: Vec<u8>,
    stats: EncodeStats,
}

impl Encoder {
    /// An encoder whose caches hold up to `capacity_pages` pages (the decoder must use
    /// the same capacity).
    pub fn new(capacity_pages: usize) -> Self {
        Self {
            mirror: Mirror::new(capacity_pages),
            scratch: Vec::with_capacity(2 * PAGE_SIZE),
            stats: EncodeStats::default(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> EncodeStats {
        self.stats
    }

    /// Encodes `pages` (a multiple of 4 KiB) whose page indices are `indices`, appending
    /// frames to `out`.
    pub fn encode(
        &mut self,
        indices: &[u64],
        pages: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        if pages.len() != indices.len() * PAGE_SIZE {
            return Err(CodecError::InvalidArgument(
                "pages must hold exactly one 4 KiB page per index",
            ));
        }
        for (i, &index) in indices.iter().enumerate() {
            let page: &[u8; PAGE_SIZE] = pages[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
                .try_into()
                .unwrap();
            self.encode_one(index, page, out);
        }
        Ok(())
    }

    /// Encodes one page, appending its frame to `out`.
    pub fn encode_one(
        &mut self,
        index: u64,
        page: &[u8; PAGE_SIZE],
        out: &mut Vec<u8>,
    ) -> FrameKind {
        let before = out.len();
        let kind = self.encode_page(index, page, out);
        self.stats.pages += 1;
        self.stats.wire_bytes += (out.len() - before) as u64;
        self.stats.by_kind[kind as usize - 1] += 1;
        kind
    }

    fn encode_page(&mut self, index: u64, page: &[u8; PAGE_SIZE], out: &mut Vec<u8>) -> FrameKind {
        let hash = xxh3_64(page);
        if is_zero(page) {
            frame::write(out, FrameKind::Zero, index, hash, &[]);
            self.mirror.remember(index, page, hash);
            return FrameKind::Zero;
        }
        if self.mirror.content(hash).is_some_and(|held| held == page) {
            frame::write(out, FrameKind::Dup, index, hash, &[]);
            self.mirror.remember(index, page, hash);
            return FrameKind::Dup;
        }
        // Smallest of xor-delta (when a base exists), lz4 and raw.
        let mut best_kind = FrameKind::Raw;
        let mut best_len = PAGE_SIZE;
        self.scratch.clear();
        let mut xor_payload: Option<Vec<u8>> = None;
        if let Some(base) = self.mirror.last.peek(&index) {
            let mut x = [0u8; PAGE_SIZE];
            for ((d, a), b) in x.iter_mut().zip(base.iter()).zip(page.iter()) {
                *d = a ^ b;
            }
            let mut z = Vec::with_capacity(256);
            zrle::encode(&x, &mut z);
            // Flag byte: 0 = zero-run bytes as is, 1 = LZ4 (size-prepended) of them.
            let mut payload = Vec::with_capacity(z.len() + 8);
            // LZ4 over the zero-run bytes pays only for mid-sized deltas; a delta over half
            // the page (mostly rewritten memory) is left to the plain page encodings, which
            // saves a compression attempt that almost never wins.
            if z.len() > 64 && z.len() <= PAGE_SIZE / 2 {
                payload.push(1);
                payload.extend_from_slice(&lz4_flex::block::compress_prepend_size(&z));
            }
            if payload.is_empty() || payload.len() > z.len() + 1 {
                payload.clear();
                payload.push(0);
                payload.extend_from_slice(&z);
            }
            if payload.len() < best_len {
                best_len = payload.len();
                best_kind = FrameKind::Xor;
                xor_payload = Some(payload);
            }
        }
        // What is left is priced from a sample of the page, so that no encoding is tried
        // that cannot win: zero runs (nearly free, as good as LZ4 on data-plus-zeros
        // pages) only where there are zeros, LZ4 only where the bytes are not random.
        let mut sparse = Vec::new();
        let mut lz = Vec::new();
        if best_len > PAGE_SIZE / 8 {
            let sample = Sample::of(page);
            if sample.zeros >= 16 {
                zrle::encode(page, &mut sparse);
                if sparse.len() < best_len {
                    best_len = sparse.len();
                    best_kind = FrameKind::Sparse;
                }
            }
            if best_len > PAGE_SIZE / 2 + PAGE_SIZE / 16 && sample.distinct <= 90 {
                lz = lz4_flex::block::compress(page);
            }
        }
        let payload: &[u8] = if !lz.is_empty() && lz.len() < best_len {
            best_kind = FrameKind::Lz4;
            &lz
        } else if best_kind == FrameKind::Xor {
            xor_payload.as_deref().unwrap()
        } else if best_kind == FrameKind::Sparse {
            &sparse
        } else {
            &page[..]
        };
        frame::write(out, best_kind, index, hash, payload);
        self.mirror.remember(index, page, hash);
        best_kind
    }
}

/// The destination side.
pub struct Decoder {
    mirror: Mirror,
}

impl Decoder {
    /// A decoder mirroring an [`Encoder`] created with the same capacity.
    pub fn new(capacity_pages: usize) -> Self {
        Self {
            mirror: Mirror::new(capacity_pages),
        }
    }

    /// Decodes every frame in `input`, calling `apply(index, page)` for each page. The
    /// whole input is validated before anything is applied or remembered: a corrupt or
    /// inconsistent frame anywhere rejects the batch.
    pub fn decode(
        &mut self,
        input: &[u8],
        apply: impl FnMut(u64, &[u8; PAGE_SIZE]),
    ) -> Result<usize, CodecError> {
        let staged = self.stage(input)?;
        self.commit(&staged);
        let mut apply = apply;
        for (index, page) in staged.pages() {
            apply(index, page);
        }
        Ok(staged.len())
    }

    /// Pass 1 of [`Decoder::decode`]: reconstructs every page of `input` without changing
    /// the decoder. Commit the result with [`Decoder::commit`] (before staging anything
    /// else), or drop it to leave the decoder as it was.
    pub fn stage(&self, input: &[u8]) -> Result<Staged, CodecError> {
        let frames = frame::parse_all(input)?;
        let mut staged: Vec<(u64, u64, Box<[u8; PAGE_SIZE]>)> = Vec::with_capacity(frames.len());
        let mut pending: std::collections::HashMap<u64, usize> = std::collections::HashMap::new(); // index → staged slot
        let mut pending_hash: std::collections::HashMap<u64, usize> =
            std::collections::HashMap::new();
        for f in &frames {
            let mut page = Box::new([0u8; PAGE_SIZE]);
            match f.kind {
                FrameKind::Zero => {}
                FrameKind::Sparse => {
                    zrle::decode(f.payload, &mut page).map_err(|reason| CodecError::Malformed {
                        offset: f.offset,
                        reason,
                    })?;
                }
                FrameKind::Raw => {
                    if f.payload.len() != PAGE_SIZE {
                        return Err(CodecError::Malformed {
                            offset: f.offset,
                            reason: "raw payload is not one page",
                        });
                    }
                    page.copy_from_slice(f.payload);
                }
                FrameKind::Lz4 => {
                    let n = lz4_flex::block::decompress_into(f.payload, &mut page[..]).map_err(
                        |_| CodecError::Malformed {
                            offset: f.offset,
                            reason: "bad lz4 payload",
                        },
                    )?;
                    if n != PAGE_SIZE {
                        return Err(CodecError::Malformed {
                            offset: f.offset,
                            reason: "lz4 payload is not one page",
                        });
                    }
                }
                FrameKind::Dup => {
                    let held = match pending_hash.get(&f.hash) {
                        Some(&slot) => Some(*staged[slot].2),
                        None => self.mirror.content(f.hash).copied(),
                    };
                    *page = held.ok_or(CodecError::Inconsistent {
                        page: f.index,
                        reason: "dup of content the decoder does not hold",
                    })?;
                }
                FrameKind::Xor => {
                    let base = match pending.get(&f.index) {
                        Some(&slot) => *staged[slot].2,
                        None => *self
                            .mirror
                            .last
                            .peek(&f.index)
                            .ok_or(CodecError::Inconsistent {
                                page: f.index,
                                reason: "xor against a page the decoder does not hold",
                            })?
                            .as_ref(),
                    };
                    let (&flag, body) = f.payload.split_first().ok_or(CodecError::Malformed {
                        offset: f.offset,
                        reason: "empty xor payload",
                    })?;
                    let z = match flag {
                        0 => body.to_vec(),
                        1 => {
                            // A delta never expands past a page of literals plus run headers.
                            let claimed = body
                                .get(..4)
                                .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
                                .unwrap_or(usize::MAX);
                            if claimed > 2 * PAGE_SIZE {
                                return Err(CodecError::Malformed {
                                    offset: f.offset,
                                    reason: "xor delta size out of range",
                                });
                            }
                            lz4_flex::block::decompress_size_prepended(body).map_err(|_| {
                                CodecError::Malformed {
                                    offset: f.offset,
                                    reason: "bad lz4 in xor payload",
                                }
                            })?
                        }
                        _ => {
                            return Err(CodecError::Malformed {
                                offset: f.offset,
                                reason: "unknown xor payload flag",
                            })
                        }
                    };
                    let mut x = [0u8; PAGE_SIZE];
                    zrle::decode(&z, &mut x).map_err(|reason| CodecError::Malformed {
                        offset: f.offset,
                        reason,
                    })?;
                    for j in 0..PAGE_SIZE {
                        page[j] = base[j] ^ x[j];
                    }
                }
            }
            if xxh3_64(&page[..]) != f.hash {
                return Err(CodecError::Checksum(f.index));
            }
            pending.insert(f.index, staged.len());
            pending_hash.insert(f.hash, staged.len());
            staged.push((f.index, f.hash, page));
        }
        Ok(Staged(staged))
    }

    /// Pass 2: remembers the staged pages in frame order, exactly as the encoder did.
    pub fn commit(&mut self, staged: &Staged) {
        for (index, hash, page) in &staged.0 {
            self.mirror.remember(*index, page, *hash);
        }
    }
}

/// Pages reconstructed and verified by [`Decoder::stage`], not yet applied.
pub struct Staged(Vec<(u64, u64, Box<[u8; PAGE_SIZE]>)>);

impl Staged {
    /// Pages staged.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was staged.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pages in frame order.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &[u8; PAGE_SIZE])> {
        self.0.iter().map(|(i, _, p)| (*i, &**p))
    }

    fn page(&self, k: usize) -> (u64, &[u8; PAGE_SIZE]) {
        let (i, _, p) = &self.0[k];
        (*i, &**p)
    }
}

/// 128 bytes sampled across a page: random data shows ~100 distinct values and almost
/// no zeros; text and code far fewer values; data-plus-zeros pages many zeros.
struct Sample {
    distinct: usize,
    zeros: usize,
}

impl Sample {
    fn of(page: &[u8; PAGE_SIZE]) -> Self {
        let mut seen = [false; 256];
        let (mut distinct, mut zeros) = (0, 0);
        for i in (0..PAGE_SIZE).step_by(PAGE_SIZE / 128) {
            let b = page[i];
            zeros += (b == 0) as usize;
            if !seen[b as usize] {
                seen[b as usize] = true;
                distinct += 1;
            }
        }
        Self { distinct, zeros }
    }
}

fn is_zero(page: &[u8; PAGE_SIZE]) -> bool {
    // SAFETY: reinterpreting initialised bytes as u64 words is valid for any bit
    // pattern; align_to handles the unaligned head and tail.
    let (prefix, words, suffix) = unsafe { page.align_to::<u64>() };
    prefix.iter().all(|&b| b == 0)
        && words.iter().all(|&w| w == 0)
        && suffix.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests;
