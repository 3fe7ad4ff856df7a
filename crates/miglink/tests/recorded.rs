//! The multifd parser against QEMU's own stream: two multifd channels recorded from QEMU 10
//! by `scripts/record-multifd.mjs` (testdata/qemu-multifd; page contents zeroed, headers as
//! QEMU wrote them). The TypeScript parser of the sim driver decodes the same files to the
//! same items (test/unit/multifd-recorded.test.ts); `expected.json` lists them.

use novacron_miglink::multifd::{BlockNumbers, Item, MultifdReader, PAGE_SIZE, RAM_HEADER_LEN};
use std::io::Read;
use std::path::PathBuf;

fn testdata() -> PathBuf {
    // Read at run time: cargo sets it for the test process, and a binary reused from a
    // shared target directory may have been compiled in another checkout.
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    PathBuf::from(dir).join("../../testdata/qemu-multifd")
}

/// The RAM packets of one channel in expected.json: (flags, normal pages, zero pages, first indices).
fn expected_ram(channel: usize) -> Vec<(u32, usize, usize, Vec<u64>)> {
    let text = std::fs::read_to_string(testdata().join("expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let num = |v: &serde_json::Value| v.as_u64().unwrap();
    expected["channels"][channel]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["kind"] == "ram")
        .map(|item| {
            let firsts = item["firstIndices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().parse().unwrap())
                .collect();
            (
                num(&item["flags"]) as u32,
                num(&item["normalPages"]) as usize,
                num(&item["zeroPages"]) as usize,
                firsts,
            )
        })
        .collect()
}

#[test]
fn decodes_qemus_recorded_multifd_channels_to_the_items_the_ts_parser_found() {
    let blocks = BlockNumbers::default();
    for channel in 0..2 {
        let bytes = std::fs::read(testdata().join(format!("multifd-{channel}.bin"))).unwrap();
        let mut r = &bytes[..];
        let reader = MultifdReader::new(&blocks);
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).unwrap();
        let init = reader.init(&mut r, magic).unwrap();
        assert_eq!(init.len(), 64);
        let mut got = Vec::new();
        while let Some(item) = reader.next(&mut r, Vec::new()).unwrap() {
            match item {
                Item::Ram {
                    header,
                    pages,
                    indices,
                } => {
                    assert_eq!(header.len(), RAM_HEADER_LEN);
                    assert_eq!(pages.len(), indices.len() * PAGE_SIZE);
                    let be32 =
                        |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
                    got.push((
                        be32(8),
                        indices.len(),
                        be32(32) as usize,
                        indices.iter().take(3).copied().collect::<Vec<u64>>(),
                    ));
                }
                Item::Opaque(_) => {
                    panic!("channel {channel}: an unexpected opaque packet after the init")
                }
            }
        }
        assert!(
            r.is_empty(),
            "channel {channel}: {} bytes left undecoded",
            r.len()
        );
        let want = expected_ram(channel);
        assert!(
            want.iter().any(|(_, normal, _, _)| *normal > 0),
            "the fixture carries pages"
        );
        assert_eq!(got, want, "channel {channel}");
    }
}
