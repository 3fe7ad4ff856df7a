//! Damaged persistent state is an error on start, never silently used.

mod harness;

use harness::*;
use novacron_raftstore::RaftError;
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::Path;

const CFS: [&str; 4] = ["log", "meta", "kv", "sys"];

/// A node directory with some committed history, stopped.
fn stopped_node_with_history() -> Cluster {
    let c = Cluster::new();
    c.form(&[1]);
    let node = c.node(1);
    for i in 0..100 {
        put(&node, &format!("k{i}"), &"v".repeat(200));
    }
    c.stop(1);
    c
}

fn raw_db(path: &Path) -> DB {
    let cfs = CFS
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
    DB::open_cf_descriptors(&Options::default(), path, cfs).unwrap()
}

fn start_error(c: &Cluster) -> RaftError {
    match c.try_start(1) {
        Ok(_) => panic!("a damaged node started"),
        Err(e) => e,
    }
}

#[test]
fn an_undecodable_log_entry_is_corruption() {
    let c = stopped_node_with_history();
    {
        let db = raw_db(&c.path(1));
        db.put_cf(
            db.cf_handle("log").unwrap(),
            50u64.to_be_bytes(),
            b"\x0a\xff\xff\xff garbage",
        )
        .unwrap();
    }
    let err = start_error(&c);
    assert_eq!(err.code(), "RAFT_CORRUPTION", "{err}");
}

#[test]
fn a_gap_in_the_log_is_corruption() {
    let c = stopped_node_with_history();
    {
        let db = raw_db(&c.path(1));
        db.delete_cf(db.cf_handle("log").unwrap(), 40u64.to_be_bytes())
            .unwrap();
    }
    let err = start_error(&c);
    assert_eq!(err.code(), "RAFT_CORRUPTION", "{err}");
    assert!(err.to_string().contains("40"), "{err}");
}

#[test]
fn applied_past_commit_is_corruption() {
    let c = stopped_node_with_history();
    {
        let db = raw_db(&c.path(1));
        db.put_cf(
            db.cf_handle("meta").unwrap(),
            b"applied",
            10_000u64.to_be_bytes(),
        )
        .unwrap();
    }
    let err = start_error(&c);
    assert_eq!(err.code(), "RAFT_CORRUPTION", "{err}");
}

#[test]
fn a_flipped_bit_in_a_table_file_is_detected() {
    let c = stopped_node_with_history();
    let log_table = {
        let db = raw_db(&c.path(1));
        for name in CFS {
            db.flush_cf(db.cf_handle(name).unwrap()).unwrap();
        }
        let files = db.live_files().unwrap();
        let log = files
            .iter()
            .filter(|f| f.column_family_name == "log")
            .max_by_key(|f| f.size)
            .expect("the log has a table file");
        c.path(1).join(log.name.trim_start_matches('/'))
    };
    let mut bytes = std::fs::read(&log_table).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&log_table, bytes).unwrap();
    let err = start_error(&c);
    assert_eq!(err.code(), "STORE_CORRUPTION", "{err}");
}

#[test]
fn an_intact_node_still_starts_after_all_that_checking() {
    let c = stopped_node_with_history();
    let node = c.start(1);
    assert_eq!(c.leader(), 1);
    assert_eq!(get(&node, "k99").map(|v| v.len()), Some(200));
}
