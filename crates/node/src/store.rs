//! Binding for `novacron-store`. Writes and scans run on libuv's thread pool so the
//! WAL fsync never blocks the JS event loop. Batching is the caller's: `RocksStore`
//! keeps one write in flight and sends the writes queued meanwhile as the next batch.

use crate::{js_error, Result};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use novacron_store::{Op, ScanRange, Store, StoreError, StoreOptions};
use std::sync::{Arc, Mutex};

fn to_js(err: StoreError) -> Error<crate::Code> {
    js_error(err.code(), err)
}

/// Options for `NativeStore.open`.
#[napi(object)]
pub struct BindingStoreOptions {
    /// Fsync the write-ahead log before a write resolves. @default true
    pub sync_writes: Option<bool>,
    /// RocksDB block cache size in bytes. @default 67108864 (64 MiB)
    pub block_cache_bytes: Option<u32>,
}

/// One operation of an atomic batch: a put when `value` is present, else a delete.
#[napi(object)]
pub struct BindingWriteOp {
    /// Key bytes; must not be empty.
    pub key: Buffer,
    /// New value; omit to delete the key.
    pub value: Option<Buffer>,
}

/// A key-value pair from a scan.
#[napi(object)]
pub struct BindingKeyValue {
    /// Key bytes.
    pub key: Buffer,
    /// Value bytes.
    pub value: Buffer,
}

/// A range scan: keys in `[start, end)`.
#[napi(object)]
pub struct BindingScanRange {
    /// Inclusive lower bound.
    pub start: Buffer,
    /// Exclusive upper bound; empty for unbounded.
    pub end: Buffer,
    /// Maximum pairs returned; 0 for unlimited. @default 0
    pub limit: Option<u32>,
    /// Walk from `end` towards `start`. @default false
    pub reverse: Option<bool>,
}

/// A durable RocksDB-backed key-value store (see the `novacron-store` crate).
#[napi]
pub struct NativeStore {
    inner: Arc<Mutex<Option<Arc<Store>>>>,
}

#[napi]
impl NativeStore {
    /// Opens (creating if needed) the store in `path`. Throws `STORE_LOCKED` when another
    /// process has it open and `STORE_CORRUPTION` when its files fail verification.
    #[napi(factory)]
    pub fn open(path: String, options: Option<BindingStoreOptions>) -> Result<Self> {
        let store = Store::open(path, &store_options(options)).map_err(to_js)?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Some(Arc::new(store)))),
        })
    }

    fn store(&self) -> Result<Arc<Store>> {
        self.inner
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| to_js(StoreError::Closed))
    }

    /// Reads one key synchronously (memtable or block cache; may touch disk on a miss).
    #[napi]
    pub fn get_sync(&self, key: Buffer) -> Result<Option<Buffer>> {
        Ok(self.store()?.get(&key).map_err(to_js)?.map(Buffer::from))
    }

    /// Applies `ops` atomically; resolves once they are durable.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write(&self, ops: Vec<BindingWriteOp>) -> Result<AsyncTask<WriteTask>> {
        Ok(AsyncTask::new(WriteTask {
            store: self.store()?,
            ops: to_ops(ops),
            failure: None,
        }))
    }

    /// Returns the pairs in a key range, off the event loop.
    #[napi(ts_return_type = "Promise<Array<BindingKeyValue>>")]
    pub fn scan(&self, range: BindingScanRange) -> Result<AsyncTask<ScanTask>> {
        Ok(AsyncTask::new(ScanTask {
            store: self.store()?,
            start: range.start.to_vec(),
            end: range.end.to_vec(),
            limit: range.limit.unwrap_or(0) as usize,
            reverse: range.reverse.unwrap_or(false),
            failure: None,
        }))
    }

    /// Flushes and closes the store. In-flight writes finish first (they hold their own
    /// reference); later calls throw `STORE_CLOSED`.
    #[napi]
    pub fn close(&self) -> Result<()> {
        if let Some(store) = self.inner.lock().unwrap().take() {
            store.flush().map_err(to_js)?;
        }
        Ok(())
    }
}

/// Store options from their JS form (absent fields keep the defaults).
pub(crate) fn store_options(options: Option<BindingStoreOptions>) -> StoreOptions {
    let mut opts = StoreOptions::default();
    if let Some(o) = options {
        if let Some(sync) = o.sync_writes {
            opts.sync_writes = sync;
        }
        if let Some(bytes) = o.block_cache_bytes {
            opts.block_cache_bytes = bytes as usize;
        }
    }
    opts
}

/// Write ops from their JS form: a put when `value` is present, else a delete.
pub(crate) fn to_ops(ops: Vec<BindingWriteOp>) -> Vec<Op> {
    ops.into_iter()
        .map(|op| match op.value {
            Some(value) => Op::Put {
                key: op.key.to_vec(),
                value: value.to_vec(),
            },
            None => Op::Delete {
                key: op.key.to_vec(),
            },
        })
        .collect()
}

pub(crate) fn into_pairs(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<BindingKeyValue> {
    pairs
        .into_iter()
        .map(|(k, v)| BindingKeyValue {
            key: k.into(),
            value: v.into(),
        })
        .collect()
}

/// The domain error of a failed task, kept for `reject`: a task's `compute` runs on a
/// pool thread and can only return napi's own error type, which has no room for a code.
fn keep(slot: &mut Option<StoreError>, err: StoreError) -> napi::Error {
    let reason = err.to_string();
    *slot = Some(err);
    napi::Error::from_reason(reason)
}

/// Rejects with the kept domain error's code (see [`keep`]).
fn reject_with(slot: &mut Option<StoreError>, env: Env, err: napi::Error) -> napi::Error {
    match slot.take() {
        Some(e) => crate::rejection(env, e.code(), e),
        None => err,
    }
}

#[doc(hidden)]
pub struct WriteTask {
    store: Arc<Store>,
    ops: Vec<Op>,
    failure: Option<StoreError>,
}

impl Task for WriteTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> napi::Result<()> {
        self.store
            .write(&self.ops)
            .map_err(|e| keep(&mut self.failure, e))
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> napi::Result<()> {
        Ok(())
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<()> {
        Err(reject_with(&mut self.failure, env, err))
    }
}

#[doc(hidden)]
pub struct ScanTask {
    store: Arc<Store>,
    start: Vec<u8>,
    end: Vec<u8>,
    limit: usize,
    reverse: bool,
    failure: Option<StoreError>,
}

impl Task for ScanTask {
    type Output = Vec<(Vec<u8>, Vec<u8>)>;
    type JsValue = Vec<BindingKeyValue>;

    fn compute(&mut self) -> napi::Result<Self::Output> {
        let range = ScanRange {
            start: &self.start,
            end: &self.end,
            limit: self.limit,
            reverse: self.reverse,
        };
        self.store
            .scan(&range)
            .map_err(|e| keep(&mut self.failure, e))
    }

    fn resolve(&mut self, _env: Env, output: Self::Output) -> napi::Result<Self::JsValue> {
        Ok(into_pairs(output))
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<Self::JsValue> {
        Err(reject_with(&mut self.failure, env, err))
    }
}
