use super::*;
use tempfile::TempDir;

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path(), &StoreOptions::default()).unwrap()
}

fn put(k: &str, v: &str) -> Op {
    Op::Put {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    }
}

#[test]
fn batch_is_applied_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir);
        store.write(&[put("a", "1"), put("b", "2")]).unwrap();
        store
            .write(&[Op::Delete { key: b"a".to_vec() }, put("c", "3")])
            .unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(store.get(b"b").unwrap(), Some(b"2".to_vec()));
    assert_eq!(store.get(b"c").unwrap(), Some(b"3".to_vec()));
}

#[test]
fn second_open_of_same_dir_is_locked() {
    let dir = TempDir::new().unwrap();
    let _first = open(&dir);
    let err = Store::open(dir.path(), &StoreOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.code(), "STORE_LOCKED", "{err}");
}

#[test]
fn empty_key_is_rejected_and_nothing_in_the_batch_is_applied() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let err = store
        .write(&[
            put("ok", "1"),
            Op::Put {
                key: vec![],
                value: vec![],
            },
        ])
        .unwrap_err();
    assert_eq!(err.code(), "STORE_INVALID_ARGUMENT");
    assert_eq!(store.get(b"ok").unwrap(), None);
}

#[test]
fn scan_respects_bounds_limit_and_direction() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    store
        .write(&[
            put("a/1", "x"),
            put("b/1", "1"),
            put("b/2", "2"),
            put("b/3", "3"),
            put("c/1", "y"),
        ])
        .unwrap();
    let keys = |r: &ScanRange| -> Vec<String> {
        store
            .scan(r)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    };
    assert_eq!(
        keys(&ScanRange {
            start: b"b/",
            end: b"b0",
            ..Default::default()
        }),
        ["b/1", "b/2", "b/3"]
    );
    assert_eq!(
        keys(&ScanRange {
            start: b"b/",
            end: b"b0",
            limit: 2,
            reverse: false
        }),
        ["b/1", "b/2"]
    );
    assert_eq!(
        keys(&ScanRange {
            start: b"b/",
            end: b"b0",
            limit: 2,
            reverse: true
        }),
        ["b/3", "b/2"]
    );
    // Reverse scan whose end key exists must exclude it.
    assert_eq!(
        keys(&ScanRange {
            start: b"b/",
            end: b"b/3",
            limit: 0,
            reverse: true
        }),
        ["b/2", "b/1"]
    );
    assert_eq!(
        keys(&ScanRange {
            start: b"c",
            end: b"",
            limit: 0,
            reverse: true
        }),
        ["c/1"]
    );
}

#[test]
fn corrupted_sst_is_reported_not_returned() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir);
        let big = "v".repeat(4096);
        let ops: Vec<Op> = (0..200).map(|i| put(&format!("k{i:04}"), &big)).collect();
        store.write(&ops).unwrap();
        store.flush().unwrap();
    }
    // Flip bytes in the middle of every SST file.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst") {
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 3;
            for b in &mut bytes[mid..mid + 64] {
                *b ^= 0xff;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let result = Store::open(dir.path(), &StoreOptions::default()).and_then(|s| {
        s.scan(&ScanRange {
            start: b"k",
            end: b"l",
            ..Default::default()
        })
        .map(|_| ())
    });
    let err = result.expect_err("corruption must surface as an error");
    assert_eq!(err.code(), "STORE_CORRUPTION", "{err}");
}
