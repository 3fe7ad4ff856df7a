//! Binding for `novacron-miglink`: the live-migration data path. JavaScript starts an
//! end, reads its counters, and closes it; the first failure arrives as a callback with
//! the stable code and a message.

use crate::{js_error, BindingError, Result};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use novacron_miglink::{DestConfig, DestTls, LinkError, SourceConfig, StatsSnapshot, TokenBucket};
use std::sync::Arc;

type FailFn = ThreadsafeFunction<BindingError, (), BindingError, Status, false, true>;

fn on_fail(f: FailFn) -> novacron_miglink::FailFn {
    Box::new(move |e: LinkError| {
        f.call(
            BindingError::new(e.code(), &e),
            ThreadsafeFunctionCallMode::NonBlocking,
        );
    })
}

fn to_js(e: LinkError) -> Error<crate::Code> {
    js_error(e.code(), e)
}

/// Counters of one end of a migration link.
#[napi(object)]
pub struct BindingLinkCounters {
    /// Bytes of QEMU's stream (read from the source QEMU / written to the destination QEMU).
    pub raw_bytes: f64,
    /// Bytes on the link, frame headers included.
    pub wire_bytes: f64,
    /// Guest pages that went through the codec.
    pub pages: f64,
    /// RAM packets.
    pub packets: f64,
}

impl From<StatsSnapshot> for BindingLinkCounters {
    fn from(s: StatsSnapshot) -> Self {
        Self {
            raw_bytes: s.raw_bytes as f64,
            wire_bytes: s.wire_bytes as f64,
            pages: s.pages as f64,
            packets: s.packets as f64,
        }
    }
}

/// A link's bandwidth cap, shared by everything one migration sends.
#[napi]
pub struct NativeLinkBucket {
    inner: Arc<TokenBucket>,
}

#[napi]
impl NativeLinkBucket {
    /// A cap of `bytes_per_second` on the wire.
    #[napi(constructor)]
    pub fn new(bytes_per_second: f64) -> Self {
        Self {
            inner: Arc::new(TokenBucket::new(bytes_per_second)),
        }
    }

    /// Records `bytes` sent; returns the ms to wait before sending more (0: none).
    #[napi]
    pub fn spend(&self, bytes: u32) -> u32 {
        self.inner
            .spend(bytes as usize)
            .as_millis()
            .try_into()
            .unwrap_or(u32::MAX)
    }
}

/// Options of `NativeSourceLink.start` (see `SourceConfig` in the crate).
#[napi(object)]
pub struct BindingSourceLinkOptions {
    /// Unix socket QEMU migrates to.
    pub socket_path: String,
    /// The destination's data listener, `host:port`.
    pub dest: String,
    /// The migration's token, sent in the hello.
    pub token: Buffer,
    /// SHA-256 (32 bytes) of the destination's certificate, the only one accepted;
    /// absent: plain TCP (the benchmark's unencrypted baseline only).
    pub dest_cert_sha256: Option<Buffer>,
    /// Codec cache size in pages; the destination uses the same.
    pub capacity_pages: u32,
    /// Codec shards; the destination uses the same.
    pub shards: u32,
    /// Per-channel flow-control window in bytes.
    pub window: u32,
    /// Fault injection (tests): corrupt the Nth RAM packet's batch.
    pub corrupt_pages_frame: Option<u32>,
    /// Fault injection (tests): cut the link after this many bytes.
    pub cut_after_bytes: Option<f64>,
}

/// Source end (see the `novacron-miglink` crate).
#[napi]
pub struct NativeSourceLink {
    inner: novacron_miglink::SourceLink,
}

#[napi]
impl NativeSourceLink {
    /// Connects to the destination and listens for QEMU; throws `MIGRATION_TRANSPORT` if
    /// either cannot be done. `onFail(code, message)` is called once, off the hot path.
    #[napi(factory)]
    pub fn start(
        options: BindingSourceLinkOptions,
        bucket: Option<&NativeLinkBucket>,
        #[napi(ts_arg_type = "(failure: BindingError) => void")] on_fail_fn: FailFn,
    ) -> Result<Self> {
        let cfg = SourceConfig {
            socket_path: options.socket_path.into(),
            dest: options.dest,
            token: options.token.to_vec(),
            dest_cert_sha256: options
                .dest_cert_sha256
                .map(|pin| {
                    pin.as_ref().try_into().map_err(|_| {
                        js_error(
                            "MIGRATION_TRANSPORT",
                            "the destination's certificate pin must be 32 bytes (SHA-256)",
                        )
                    })
                })
                .transpose()?,
            capacity_pages: options.capacity_pages as usize,
            shards: options.shards as usize,
            window: options.window as u64,
            bucket: bucket.map(|b| b.inner.clone()),
            corrupt_pages_frame: options.corrupt_pages_frame.map(u64::from),
            cut_after_bytes: options.cut_after_bytes.map(|b| b as u64),
            silence_timeout: None,
        };
        Ok(Self {
            inner: novacron_miglink::SourceLink::start(cfg, on_fail(on_fail_fn)).map_err(to_js)?,
        })
    }

    /// Byte and page counters so far.
    #[napi]
    pub fn stats(&self) -> BindingLinkCounters {
        self.inner.stats().into()
    }

    /// The first failure, if there was one (also reported through `onFail`).
    #[napi]
    pub fn failure(&self) -> Option<BindingError> {
        self.inner
            .failure()
            .map(|(code, message)| BindingError::new(code, message))
    }

    /// Stops the link's threads and closes its sockets.
    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}

/// Options of `NativeDestLink.start` (see `DestConfig` in the crate).
#[napi(object)]
pub struct BindingDestLinkOptions {
    /// Address to listen on.
    pub bind_host: String,
    /// First and last port to try (both given), else one the system picks.
    pub port_from: Option<u32>,
    /// Last port to try (with `port_from`).
    pub port_to: Option<u32>,
    /// The destination QEMU's incoming unix socket.
    pub qemu_socket: String,
    /// The migration's token: the source's hello must carry exactly these bytes.
    pub token: Buffer,
    /// This member's certificate (chain), PEM: what the link's TLS serves; absent (with
    /// `key_pem`): plain TCP (the benchmark's unencrypted baseline only).
    pub cert_pem: Option<String>,
    /// This member's private key, PEM.
    pub key_pem: Option<String>,
    /// Codec cache size in pages; must equal the source's.
    pub capacity_pages: u32,
    /// Codec shards; must equal the source's.
    pub shards: u32,
}

/// Destination end (see the `novacron-miglink` crate).
#[napi]
pub struct NativeDestLink {
    inner: novacron_miglink::DestLink,
}

#[napi]
impl NativeDestLink {
    /// Listens for the source and starts the threads that feed the destination QEMU.
    #[napi(factory)]
    pub fn start(
        options: BindingDestLinkOptions,
        #[napi(ts_arg_type = "(failure: BindingError) => void")] on_fail_fn: FailFn,
    ) -> Result<Self> {
        let cfg = DestConfig {
            bind_host: options.bind_host,
            ports: match (options.port_from, options.port_to) {
                (Some(from), Some(to)) => Some((from.min(65535) as u16, to.min(65535) as u16)),
                _ => None,
            },
            qemu_socket: options.qemu_socket.into(),
            token: options.token.to_vec(),
            tls: match (options.cert_pem, options.key_pem) {
                (Some(cert), Some(key)) => Some(DestTls {
                    cert_pem: cert.into_bytes(),
                    key_pem: key.into_bytes(),
                }),
                _ => None,
            },
            capacity_pages: options.capacity_pages as usize,
            shards: options.shards as usize,
            silence_timeout: None,
        };
        Ok(Self {
            inner: novacron_miglink::DestLink::start(cfg, on_fail(on_fail_fn)).map_err(to_js)?,
        })
    }

    /// The port the source connects to.
    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.inner.port() as u32
    }

    /// Byte and page counters so far.
    #[napi]
    pub fn stats(&self) -> BindingLinkCounters {
        self.inner.stats().into()
    }

    /// The first failure, if there was one (also reported through `onFail`).
    #[napi]
    pub fn failure(&self) -> Option<BindingError> {
        self.inner
            .failure()
            .map(|(code, message)| BindingError::new(code, message))
    }

    /// Stops the link's threads and closes its sockets.
    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}
