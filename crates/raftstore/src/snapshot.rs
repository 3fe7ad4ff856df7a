//! The applied state as a snapshot payload: every pair of the state column families,
//! read from one consistent RocksDB view, with a CRC so a damaged transfer is refused
//! rather than installed.

use crate::error::{RaftError, RaftResult};
use crate::keys::{STATE_CFS, STATE_END};
use crate::storage::cf;
use rocksdb::{IteratorMode, SnapshotWithThreadMode, WriteBatch, DB};
use serde::{Deserialize, Serialize};

const FORMAT: u8 = 1;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One snapshot's state: for each state column family (in `STATE_CFS` order) its pairs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    families: Vec<Pairs>,
}

impl SnapshotData {
    pub(crate) fn read(db: &DB, view: &SnapshotWithThreadMode<'_, DB>) -> RaftResult<Self> {
        let mut families = Vec::new();
        for name in STATE_CFS {
            let mut pairs = Vec::new();
            for item in view.iterator_cf(cf(db, name), IteratorMode::Start) {
                let (k, v) = item.map_err(RaftError::rocks)?;
                pairs.push((k.into_vec(), v.into_vec()));
            }
            families.push(pairs);
        }
        Ok(Self { families })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        out.extend(postcard::to_stdvec(self).expect("postcard encodes into a Vec"));
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> RaftResult<Self> {
        if bytes.len() < 5 {
            return Err(RaftError::Snapshot("snapshot payload is truncated".into()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err(RaftError::Snapshot(
                "snapshot payload fails its checksum".into(),
            ));
        }
        if body[0] != FORMAT {
            return Err(RaftError::Snapshot(format!(
                "snapshot payload has unknown format {}",
                body[0]
            )));
        }
        let data: Self = postcard::from_bytes(&body[1..])
            .map_err(|e| RaftError::Snapshot(format!("undecodable snapshot payload: {e}")))?;
        if data.families.len() != STATE_CFS.len() {
            return Err(RaftError::Snapshot(
                "snapshot payload has the wrong number of column families".into(),
            ));
        }
        Ok(data)
    }

    /// Replaces the state column families' contents with this snapshot's, in `batch`.
    pub(crate) fn write_into(&self, db: &DB, batch: &mut WriteBatch) {
        for (name, pairs) in STATE_CFS.iter().zip(&self.families) {
            let handle = cf(db, name);
            batch.delete_range_cf(handle, &[][..], STATE_END);
            for (k, v) in pairs {
                batch.put_cf(handle, k, v);
            }
        }
    }
}

impl SnapshotData {
    /// The encoded empty state (the bootstrap snapshot).
    pub(crate) fn default_encoded() -> Vec<u8> {
        Self {
            families: vec![Vec::new(); STATE_CFS.len()],
        }
        .encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        SnapshotData {
            families: vec![
                vec![(b"k".to_vec(), b"v".to_vec())],
                vec![(b"lock/x".to_vec(), vec![1, 2, 3])],
            ],
        }
        .encode()
    }

    #[test]
    fn round_trips() {
        let data = SnapshotData::decode(&sample()).unwrap();
        assert_eq!(data.families[0], vec![(b"k".to_vec(), b"v".to_vec())]);
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let good = sample();
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = SnapshotData::decode(&bad).unwrap_err();
            assert_eq!(err.code(), "RAFT_SNAPSHOT");
        }
        assert_eq!(
            SnapshotData::decode(&good[..3]).unwrap_err().code(),
            "RAFT_SNAPSHOT"
        );
    }
}
