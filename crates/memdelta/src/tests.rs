use super::*;
use proptest::prelude::*;

fn page_of(fill: impl FnMut(usize) -> u8) -> Vec<u8> {
    (0..PAGE_SIZE).map(fill).collect()
}

fn noise(seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    page_of(|_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s as u8
    })
}

/// Encodes batches and decodes them into a model of guest memory; returns the kinds used.
fn round_trip(batches: &[Vec<(u64, Vec<u8>)>], capacity: usize) -> Vec<FrameKind> {
    let mut enc = Encoder::new(capacity);
    let mut dec = Decoder::new(capacity);
    let mut memory = std::collections::HashMap::new();
    let mut kinds = vec![];
    for batch in batches {
        let indices: Vec<u64> = batch.iter().map(|(i, _)| *i).collect();
        let pages: Vec<u8> = batch.iter().flat_map(|(_, p)| p.clone()).collect();
        let mut wire = vec![];
        enc.encode(&indices, &pages, &mut wire).unwrap();
        for f in frame::parse_all(&wire).unwrap() {
            kinds.push(f.kind);
        }
        dec.decode(&wire, |i, p| {
            memory.insert(i, p.to_vec());
        })
        .unwrap();
        // The last write of each index in the batch is what memory must hold.
        let mut last = std::collections::HashMap::new();
        for (i, p) in batch {
            last.insert(*i, p);
        }
        for (i, p) in last {
            assert!(memory.get(&i) == Some(p), "page {i} differs after decode");
        }
    }
    kinds
}

#[test]
fn picks_the_right_kind_per_page() {
    let base = noise(1);
    let mut changed = base.clone();
    changed[100] ^= 0xff;
    changed[3000] ^= 0x01;
    let text = page_of(|i| b"the quick brown fox "[i % 20]);
    let kinds = round_trip(
        &[
            vec![
                (0, vec![0; PAGE_SIZE]),
                (1, base.clone()),
                (2, text.clone()),
            ],
            // Page 3 duplicates page 1's content before page 1 changes.
            vec![(3, base.clone()), (1, changed), (4, noise(2))],
        ],
        1024,
    );
    assert_eq!(
        kinds,
        [
            FrameKind::Zero,
            FrameKind::Raw,
            FrameKind::Lz4,
            FrameKind::Dup,
            FrameKind::Xor,
            FrameKind::Raw
        ]
    );
}

#[test]
fn a_few_changed_bytes_cost_a_few_bytes() {
    let mut enc = Encoder::new(16);
    let base = noise(9);
    let mut out = vec![];
    enc.encode(&[7], &base, &mut out).unwrap();
    let mut next = base.clone();
    next[10] = next[10].wrapping_add(1);
    out.clear();
    enc.encode(&[7], &next, &mut out).unwrap();
    assert!(
        out.len() <= FRAME_HEADER_LEN + 8,
        "xor frame is {} bytes",
        out.len()
    );
}

#[test]
fn corrupt_frames_are_rejected_and_nothing_is_applied() {
    let mut enc = Encoder::new(64);
    let mut wire = vec![];
    enc.encode(
        &[1, 2],
        &[noise(3), page_of(|i| (i % 7) as u8)].concat(),
        &mut wire,
    )
    .unwrap();
    for at in [0, 3, 13, FRAME_HEADER_LEN + 5, wire.len() - 1] {
        let mut bad = wire.clone();
        bad[at] ^= 0x40;
        let mut dec = Decoder::new(64);
        let mut applied = 0;
        let err = dec.decode(&bad, |_, _| applied += 1).unwrap_err();
        assert_eq!(applied, 0, "flip at {at} applied pages despite {err}");
    }
    let mut dec = Decoder::new(64);
    assert_eq!(
        dec.decode(&wire[..wire.len() - 1], |_, _| ())
            .unwrap_err()
            .code(),
        "CODEC_TRUNCATED"
    );
}

#[test]
fn references_to_state_the_decoder_lacks_are_inconsistent() {
    let mut enc = Encoder::new(64);
    let base = noise(4);
    let mut first = vec![];
    enc.encode(&[5], &base, &mut first).unwrap();
    let mut changed = base.clone();
    changed[0] ^= 1;
    let mut second = vec![];
    enc.encode(&[5], &changed, &mut second).unwrap();
    let mut fresh = Decoder::new(64); // never saw the first batch
    assert_eq!(
        fresh.decode(&second, |_, _| ()).unwrap_err().code(),
        "CODEC_INCONSISTENT"
    );
}

#[derive(Debug, Clone)]
enum Mutation {
    Zero,
    Random(u64),
    Flip { offset: usize, byte: u8 },
    CopyOf(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::Zero),
        any::<u64>().prop_map(Mutation::Random),
        (0..PAGE_SIZE, any::<u8>()).prop_map(|(offset, byte)| Mutation::Flip { offset, byte }),
        (0u64..32).prop_map(Mutation::CopyOf),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of page writes round-trips exactly, whatever the cache size (small
    /// caches force evictions, which both sides must perform identically).
    #[test]
    fn encode_decode_round_trips(
        ops in prop::collection::vec(prop::collection::vec((0u64..32, mutation()), 1..24), 1..12),
        capacity in 1usize..40,
    ) {
        let mut memory: std::collections::HashMap<u64, Vec<u8>> = std::collections::HashMap::new();
        let mut batches = vec![];
        for batch in ops {
            let mut pages = vec![];
            for (index, m) in batch {
                let current = memory.get(&index).cloned().unwrap_or_else(|| vec![0; PAGE_SIZE]);
                let next = match m {
                    Mutation::Zero => vec![0; PAGE_SIZE],
                    Mutation::Random(seed) => noise(seed),
                    Mutation::Flip { offset, byte } => { let mut p = current; p[offset] ^= byte | 1; p }
                    Mutation::CopyOf(other) => memory.get(&other).cloned().unwrap_or_else(|| noise(other)),
                };
                memory.insert(index, next.clone());
                pages.push((index, next));
            }
            batches.push(pages);
        }
        round_trip(&batches, capacity);
    }

    /// Arbitrary bytes never panic the decoder and never apply anything when rejected.
    #[test]
    fn decoder_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
        let mut dec = Decoder::new(8);
        let mut applied = 0;
        if dec.decode(&bytes, |_, _| applied += 1).is_err() {
            prop_assert_eq!(applied, 0);
        }
    }

    /// Valid streams with one byte flipped are rejected or, if the flip hit only the
    /// page index, decoded to the same content; never silently wrong content.
    #[test]
    fn single_byte_corruption_is_caught(seed in any::<u64>(), flip_at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut enc = Encoder::new(16);
        let pages = [noise(seed), vec![0; PAGE_SIZE], page_of(|i| (i / 64) as u8)].concat();
        let mut wire = vec![];
        enc.encode(&[0, 1, 2], &pages, &mut wire).unwrap();
        let at = flip_at.index(wire.len());
        wire[at] ^= 1 << bit;
        let mut dec = Decoder::new(16);
        let mut got = vec![];
        if dec.decode(&wire, |i, p| got.push((i, p.to_vec()))).is_ok() {
            for (n, (_, p)) in got.iter().enumerate() {
                prop_assert_eq!(&p[..], &pages[n * PAGE_SIZE..(n + 1) * PAGE_SIZE]);
            }
        }
    }
}

/// Sharded codec: same pages out, in input order, after encode → decode.
fn sharded_round_trip(batches: &[Vec<(u64, Vec<u8>)>], capacity: usize, shards: usize) {
    let mut enc = ShardedEncoder::new(capacity, shards);
    let mut dec = ShardedDecoder::new(capacity, shards);
    for batch in batches {
        let indices: Vec<u64> = batch.iter().map(|(i, _)| *i).collect();
        let pages: Vec<u8> = batch.iter().flat_map(|(_, p)| p.clone()).collect();
        let mut wire = vec![];
        enc.encode(&indices, &pages, &mut wire).unwrap();
        let mut got = vec![];
        dec.decode(&wire, |i, p| got.push((i, p.to_vec()))).unwrap();
        assert_eq!(got.len(), batch.len());
        for ((gi, gp), (i, p)) in got.iter().zip(batch) {
            assert_eq!(gi, i);
            assert!(gp == p, "page {i} differs after decode");
        }
    }
}

#[test]
fn sharded_codec_round_trips_big_batches_in_parallel() {
    // 3 rounds over 256 pages (above the parallel threshold), re-dirtying a few bytes.
    let mut pages: Vec<Vec<u8>> = (0..256)
        .map(|i| {
            if i % 3 == 0 {
                vec![0; PAGE_SIZE]
            } else {
                noise(i)
            }
        })
        .collect();
    let mut batches = vec![];
    for round in 0..3u8 {
        let mut b = vec![];
        for (i, p) in pages.iter_mut().enumerate() {
            if round > 0 {
                p[(i * 31) % PAGE_SIZE] ^= round;
            }
            b.push((i as u64, p.clone()));
        }
        batches.push(b);
    }
    sharded_round_trip(&batches, 512, 2);
    sharded_round_trip(&batches, 64, 3); // evictions
    sharded_round_trip(&batches, 512, 1);
}

#[test]
fn sharded_corrupt_batch_changes_nothing() {
    let mut enc = ShardedEncoder::new(256, 2);
    let mut dec = ShardedDecoder::new(256, 2);
    let pages: Vec<u8> = (0..64).flat_map(noise).collect();
    let indices: Vec<u64> = (0..64).collect();
    let mut wire = vec![];
    enc.encode(&indices, &pages, &mut wire).unwrap();
    let mut bad = wire.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40; // inside the last shard's frames
    let mut applied = 0;
    assert!(dec.decode(&bad, |_, _| applied += 1).is_err());
    assert_eq!(applied, 0);
    // The decoder is as it was: the intact batch still decodes, and so does a delta on it.
    assert_eq!(dec.decode(&wire, |_, _| ()).unwrap(), 64);
    let mut changed = pages.clone();
    changed[10] ^= 1;
    let mut wire2 = vec![];
    enc.encode(&indices, &changed, &mut wire2).unwrap();
    let mut got = vec![];
    dec.decode(&wire2, |_, p| got.extend_from_slice(p)).unwrap();
    assert_eq!(got, changed);
    assert!(
        wire2.len() < 64 * 64,
        "deltas of one byte stay tiny: {}",
        wire2.len()
    );
    // A decoder with another shard count refuses the batch.
    assert_eq!(
        ShardedDecoder::new(256, 3)
            .decode(&wire, |_, _| ())
            .unwrap_err()
            .code(),
        "CODEC_INCONSISTENT"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn sharded_decoder_survives_garbage(bytes in prop::collection::vec(any::<u8>(), 0..9000), shards in 1usize..4) {
        let mut dec = ShardedDecoder::new(16, shards);
        let mut applied = 0;
        if dec.decode(&bytes, |_, _| applied += 1).is_err() {
            prop_assert_eq!(applied, 0);
        }
    }
}

#[test]
fn mostly_zero_pages_use_their_own_zero_runs() {
    let mut half = noise(7);
    half[PAGE_SIZE / 2..].fill(0);
    let mut island = vec![0u8; PAGE_SIZE];
    island[1000..1100].copy_from_slice(&noise(8)[..100]);
    let kinds = round_trip(&[vec![(0, half), (1, island)]], 8);
    assert_eq!(kinds, [FrameKind::Sparse, FrameKind::Sparse]);
}
