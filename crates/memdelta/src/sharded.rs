//! The codec on several cores. Pages are split into shards by page index; each shard is
//! an independent [`Encoder`]/[`Decoder`] pair, so shards encode and decode in parallel
//! and each pair's caches stay in lockstep exactly as a single pair's do (a page index
//! always lands in the same shard, so its XOR base is there). Duplicates are found
//! within a shard only.
//!
//! Batch format (little endian):
//!
//! | bytes | field |
//! |---|---|
//! | 2 | magic `"NS"` |
//! | 1 | version (1) |
//! | 1 | shard count |
//! | 4 | page count `n` |
//! | n | shard of each page, in input order |
//! | per shard: 4 + len | frame bytes of that shard's pages (see the crate docs) |

use crate::{CodecError, Decoder, EncodeStats, Encoder, Staged, PAGE_SIZE};
use rayon::prelude::*;

const MAGIC: [u8; 2] = *b"NS";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;
/// Below this many pages a batch is encoded on the calling thread: splitting costs more.
const PARALLEL_MIN_PAGES: usize = 32;

fn shard_of(index: u64, shards: usize) -> usize {
    // Fibonacci hashing spreads consecutive pages across shards evenly.
    ((index.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % shards as u64) as usize
}

/// Source side: `shards` encoders, run in parallel on rayon's pool.
pub struct ShardedEncoder {
    shards: Vec<Encoder>,
    outs: Vec<Vec<u8>>,
    picks: Vec<Vec<usize>>,
}

impl ShardedEncoder {
    /// `capacity_pages` in total, split evenly; the decoder must use the same values.
    pub fn new(capacity_pages: usize, shards: usize) -> Self {
        let n = shards.clamp(1, 64);
        let per = capacity_pages.div_ceil(n).max(1);
        Self {
            shards: (0..n).map(|_| Encoder::new(per)).collect(),
            outs: vec![Vec::new(); n],
            picks: vec![Vec::new(); n],
        }
    }

    /// Counters summed over shards.
    pub fn stats(&self) -> EncodeStats {
        let mut t = EncodeStats::default();
        for s in &self.shards {
            let x = s.stats();
            t.pages += x.pages;
            t.wire_bytes += x.wire_bytes;
            for k in 0..t.by_kind.len() {
                t.by_kind[k] += x.by_kind[k];
            }
        }
        t
    }

    /// Worst-case size of a batch of `pages` pages.
    pub fn max_encoded_len(pages: usize, shards: usize) -> usize {
        HEADER_LEN + pages + 4 * shards + pages * (PAGE_SIZE + crate::FRAME_HEADER_LEN)
    }

    /// Encodes `pages` (4 KiB each) at `indices`, appending one batch to `out`.
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
        if indices.len() > u32::MAX as usize {
            return Err(CodecError::InvalidArgument("too many pages in one batch"));
        }
        let n = self.shards.len();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(n as u8);
        out.extend_from_slice(&(indices.len() as u32).to_le_bytes());
        for p in &mut self.picks {
            p.clear();
        }
        for (i, &index) in indices.iter().enumerate() {
            let s = shard_of(index, n);
            out.push(s as u8);
            self.picks[s].push(i);
        }
        let work = |(enc, (o, picks)): (&mut Encoder, (&mut Vec<u8>, &Vec<usize>))| {
            o.clear();
            for &i in picks {
                let page: &[u8; PAGE_SIZE] = pages[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]
                    .try_into()
                    .unwrap();
                enc.encode_one(indices[i], page, o);
            }
        };
        if n > 1 && indices.len() >= PARALLEL_MIN_PAGES {
            self.shards
                .par_iter_mut()
                .zip(self.outs.par_iter_mut().zip(self.picks.par_iter()))
                .for_each(work);
        } else {
            self.shards
                .iter_mut()
                .zip(self.outs.iter_mut().zip(self.picks.iter()))
                .for_each(work);
        }
        for o in &self.outs {
            out.extend_from_slice(&(o.len() as u32).to_le_bytes());
            out.extend_from_slice(o);
        }
        Ok(())
    }
}

/// Destination side: mirrors a [`ShardedEncoder`] with the same capacity and shards.
pub struct ShardedDecoder {
    shards: Vec<Decoder>,
}

impl ShardedDecoder {
    /// Must match the encoder's `capacity_pages` and `shards`.
    pub fn new(capacity_pages: usize, shards: usize) -> Self {
        let n = shards.clamp(1, 64);
        let per = capacity_pages.div_ceil(n).max(1);
        Self {
            shards: (0..n).map(|_| Decoder::new(per)).collect(),
        }
    }

    /// Decodes one batch, calling `apply(index, page)` in the encoder's input order. A
    /// corrupt or inconsistent batch (any shard) is rejected whole and changes nothing.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut apply: impl FnMut(u64, &[u8; PAGE_SIZE]),
    ) -> Result<usize, CodecError> {
        let n = self.shards.len();
        let header = input.get(..HEADER_LEN).ok_or(CodecError::Truncated(0))?;
        if header[..2] != MAGIC || header[2] != VERSION {
            return Err(CodecError::Malformed {
                offset: 0,
                reason: "not a sharded batch (magic or version)",
            });
        }
        if header[3] as usize != n {
            return Err(CodecError::Inconsistent {
                page: 0,
                reason: "batch has a different shard count than the decoder",
            });
        }
        let count = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
        let ids = input
            .get(HEADER_LEN..HEADER_LEN + count)
            .ok_or(CodecError::Truncated(HEADER_LEN))?;
        let mut expected = vec![0usize; n];
        for &s in ids {
            *expected.get_mut(s as usize).ok_or(CodecError::Malformed {
                offset: HEADER_LEN,
                reason: "page assigned to a shard that does not exist",
            })? += 1;
        }
        let mut segments = Vec::with_capacity(n);
        let mut at = HEADER_LEN + count;
        for _ in 0..n {
            let len = input
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
                .ok_or(CodecError::Truncated(at))?;
            let seg = input
                .get(at + 4..at + 4 + len)
                .ok_or(CodecError::Truncated(at + 4))?;
            segments.push(seg);
            at += 4 + len;
        }
        if at != input.len() {
            return Err(CodecError::Malformed {
                offset: at,
                reason: "trailing bytes after the last shard",
            });
        }
        let stage = |(d, seg): (&Decoder, &&[u8])| d.stage(seg);
        let staged: Vec<Result<Staged, CodecError>> = if n > 1 && count >= PARALLEL_MIN_PAGES {
            self.shards
                .par_iter()
                .zip(segments.par_iter())
                .map(stage)
                .collect()
        } else {
            self.shards.iter().zip(segments.iter()).map(stage).collect()
        };
        let staged: Vec<Staged> = staged.into_iter().collect::<Result<_, _>>()?;
        for (s, st) in staged.iter().enumerate() {
            if st.len() != expected[s] {
                return Err(CodecError::Inconsistent {
                    page: 0,
                    reason: "shard holds a different number of pages than the batch lists",
                });
            }
        }
        if n > 1 && count >= PARALLEL_MIN_PAGES {
            self.shards
                .par_iter_mut()
                .zip(staged.par_iter())
                .for_each(|(d, st)| d.commit(st));
        } else {
            self.shards
                .iter_mut()
                .zip(staged.iter())
                .for_each(|(d, st)| d.commit(st));
        }
        let mut cursor = vec![0usize; n];
        for &s in ids {
            let (index, page) = staged[s as usize].page(cursor[s as usize]);
            cursor[s as usize] += 1;
            apply(index, page);
        }
        Ok(count)
    }
}
