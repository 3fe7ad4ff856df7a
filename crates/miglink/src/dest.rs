//! Destination end of the data link. It listens for the one source connection of a
//! migration (TLS 1.3 with this member's certificate; then authenticated by the
//! migration's token), opens a connection to the
//! destination QEMU's incoming socket for each channel the source opens, and feeds it
//! byte-exact what the source QEMU wrote: RAM packets are rebuilt from their verbatim
//! header and the decoded pages. A batch the codec refuses is never applied; the link
//! fails instead.
//!
//! Threads: the link reader (frames in order, decoding), one writer per QEMU channel
//! (which returns window credit once bytes reach QEMU's socket), and the acceptor.

use crate::liveness::{self, Heard};
use crate::multifd::{normal_pages, PACKET_SLOTS, PAGE_SIZE};
use crate::outcome::Outcome;
use crate::pool::Pool;
use crate::secure::{self, Link, TlsLink};
use crate::wire::{self, FrameType};
use crate::{LinkError, LinkStats};
use novacron_memdelta::ShardedDecoder;
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, channel, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How the destination end of a data link listens and feeds its QEMU.
#[derive(Clone)]
pub struct DestConfig {
    /// Address to listen on (the daemon's migration host).
    pub bind_host: String,
    /// Ports to listen on, first free one wins (`None`: one the system picks). A range
    /// lets operators open a fixed window in their firewalls.
    pub ports: Option<(u16, u16)>,
    /// The destination QEMU's incoming unix socket.
    pub qemu_socket: PathBuf,
    /// The migration's token: the source's hello must carry exactly these bytes.
    pub token: Vec<u8>,
    /// This member's certificate and key: what the link's TLS serves. `None`: plain TCP,
    /// for the benchmark's unencrypted baseline only (the daemon always serves TLS).
    pub tls: Option<DestTls>,
    /// Codec cache size in pages; must equal the source's.
    pub capacity_pages: usize,
    /// Codec shards; must equal the source's.
    pub shards: usize,
    /// Fail the link after hearing nothing from the source this long, once it connected
    /// (`None`: [`crate::liveness::SILENCE_TIMEOUT`]).
    pub silence_timeout: Option<Duration>,
}

/// The destination's certificate (chain) and private key, PEM.
#[derive(Clone)]
pub struct DestTls {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8 or SEC1).
    pub key_pem: Vec<u8>,
}

/// Time a connection gets to say hello before it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const LINK_READ_BUFFER: usize = 1 << 20;

struct Shared {
    stats: LinkStats,
    outcome: Outcome,
    /// Back-channel for window credits and keepalives; set once the source connected.
    /// Shut down without a lock, so a write blocked on a dead network cannot hold it up.
    link: OnceLock<Link>,
    /// Serializes writes to `link` (a plain socket's writes from two threads could interleave).
    writing: Mutex<()>,
    /// When anything last arrived from the source.
    heard: Arc<Heard>,
    /// The source closed the link after every channel ended: nothing more to watch.
    ended: std::sync::atomic::AtomicBool,
    qemu: Mutex<Vec<UnixStream>>,
    port: u16,
    host: String,
    /// Frame and packet buffers, recycled.
    buffers: Pool,
}

impl Shared {
    fn fail(&self, err: LinkError) {
        if self.outcome.fail(err) {
            self.shutdown();
        }
    }

    fn shutdown(&self) {
        if let Some(l) = self.link.get() {
            l.shutdown();
        }
        for s in self.qemu.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn credit(&self, channel: u16, bytes: usize) -> Result<(), LinkError> {
        let mut f = wire::frame_with_capacity(FrameType::Window, channel, 4);
        f.extend_from_slice(&(bytes as u32).to_be_bytes());
        wire::seal(&mut f);
        self.send(&f)
            .map_err(|e| LinkError::io("returning window credit", e))
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let l = self
            .link
            .get()
            .ok_or_else(|| std::io::Error::other("no migration link"))?;
        let _one = self.writing.lock().unwrap();
        l.write_all(frame)
    }
}

/// A running destination end: its listener thread and the QEMU feeding threads.
pub struct DestLink {
    shared: Arc<Shared>,
}

impl DestLink {
    /// Binds the listener; the source may connect from now on.
    pub fn start(cfg: DestConfig, on_fail: crate::FailFn) -> Result<Self, LinkError> {
        let tls = match &cfg.tls {
            Some(t) => Some(secure::server_config(&t.cert_pem, &t.key_pem)?),
            None => None,
        };
        let listener = bind(&cfg.bind_host, cfg.ports)?;
        let port = listener
            .local_addr()
            .map_err(|e| LinkError::io("data link", e))?
            .port();
        let shared = Arc::new(Shared {
            stats: LinkStats::default(),
            outcome: Outcome::new(on_fail),
            link: OnceLock::new(),
            writing: Mutex::new(()),
            heard: Heard::new(),
            ended: std::sync::atomic::AtomicBool::new(false),
            qemu: Mutex::new(Vec::new()),
            port,
            host: cfg.bind_host.clone(),
            buffers: Pool::default(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("nc-mig-recv".into())
            .spawn(move || {
                if let Err(e) = serve(&s, listener, cfg, tls) {
                    s.fail(e);
                }
            })
            .expect("spawning a migration thread");
        Ok(Self { shared })
    }

    /// The port the listener bound (from `DestConfig::ports`, or the system's pick).
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Byte and page counters so far.
    pub fn stats(&self) -> crate::StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// The first failure (code, message), if there was one.
    pub fn failure(&self) -> Option<(&'static str, String)> {
        self.shared.outcome.failure()
    }

    /// Stops everything; QEMU's connections and the link are shut down. Idempotent.
    pub fn close(&self) {
        if !self.shared.outcome.close() {
            return;
        }
        self.shared.shutdown();
        // Wake the acceptor if nobody connected yet.
        let _ = TcpStream::connect((self.shared.host.as_str(), self.shared.port));
    }
}

fn bind(host: &str, ports: Option<(u16, u16)>) -> Result<TcpListener, LinkError> {
    let Some((from, to)) = ports else {
        return TcpListener::bind((host, 0))
            .map_err(|e| LinkError::io(format!("binding a data link on {host}"), e));
    };
    let mut last = None;
    for port in from..=to {
        match TcpListener::bind((host, port)) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => {
                return Err(LinkError::io(
                    format!("binding a data link on {host}:{port}"),
                    e,
                ))
            }
        }
    }
    Err(LinkError::Transport(format!(
        "no free data-link port on {host} in {from}-{to} (all in use by other migrations?){}",
        last.map(|e| format!(": {e}")).unwrap_or_default()
    )))
}

/// Constant-time comparison: the token must not leak through timing.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Connections allowed to be saying hello at once; more are dropped until one finishes.
const MAX_GREETING: usize = 16;

/// A source that said hello: its link and the reader its hello was read from.
type Greeted = (Link, Box<dyn Read + Send>);

/// Accepts connections until one completes the TLS handshake and says hello with the
/// token; then serves it alone. Each connection does so on its own thread (at most
/// `MAX_GREETING` at once, each for at most `HELLO_TIMEOUT`), so a stranger that connects
/// and says nothing never holds up the real source.
fn accept(
    shared: &Shared,
    listener: TcpListener,
    token: &[u8],
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Option<Greeted>, LinkError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| LinkError::io("data link", e))?;
    let (tx, rx) = mpsc::channel::<Greeted>();
    let greeting = Arc::new(AtomicUsize::new(0));
    let token: Arc<[u8]> = token.into();
    loop {
        if shared.outcome.closing() {
            return Ok(None);
        }
        match listener.accept() {
            Ok((s, _)) => {
                if greeting.load(Ordering::Acquire) >= MAX_GREETING
                    || s.set_nonblocking(false).is_err()
                {
                    continue; // dropped
                }
                greeting.fetch_add(1, Ordering::AcqRel);
                let (tx, token, g, tls) =
                    (tx.clone(), token.clone(), greeting.clone(), tls.clone());
                let spawned = std::thread::Builder::new()
                    .name("nc-mig-hello".into())
                    .spawn(move || {
                        if let Some(s) = hello(s, &token, tls) {
                            let _ = tx.send(s);
                        }
                        g.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    greeting.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(s) = rx.recv_timeout(Duration::from_millis(10)) {
                    return Ok(Some(s));
                }
            }
            Err(_) => {}
        }
        if let Ok(s) = rx.try_recv() {
            return Ok(Some(s));
        }
    }
}

/// The connection, if it completes the TLS handshake and its first frame is a hello with
/// exactly the token; nothing bigger than a hello is read from a stranger.
fn hello(s: TcpStream, token: &[u8], tls: Option<Arc<rustls::ServerConfig>>) -> Option<Greeted> {
    s.set_nodelay(true).ok()?;
    let link = match tls {
        Some(cfg) => Link::Tls(TlsLink::server(s, cfg, HELLO_TIMEOUT).ok()?),
        None => Link::Plain(s),
    };
    link.socket().set_read_timeout(Some(HELLO_TIMEOUT)).ok()?;
    let mut r = link.reader().ok()?;
    let mut header = [0u8; wire::HEADER_LEN];
    r.read_exact(&mut header).ok()?;
    let len = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if header[0] != FrameType::Hello as u8 || len != token.len() {
        return None;
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).ok()?;
    if !same_token(&payload, token) {
        return None;
    }
    link.socket().set_read_timeout(None).ok()?;
    Some((link, r))
}

fn serve(
    shared: &Arc<Shared>,
    listener: TcpListener,
    cfg: DestConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), LinkError> {
    let Some((link, reader)) = accept(shared, listener, &cfg.token, tls)? else {
        return Ok(());
    };
    let _ = shared.link.set(link);
    if shared.outcome.closing() {
        shared.shutdown();
        return Ok(());
    }
    let (s, alive, failing) = (shared.clone(), shared.clone(), shared.clone());
    liveness::watch(
        shared.heard.clone(),
        cfg.silence_timeout.unwrap_or(liveness::SILENCE_TIMEOUT),
        Arc::new(move || s.outcome.closing() || s.ended.load(Relaxed)),
        move || {
            // A failed send is the link's failure, reported by whoever reads or watches it.
            let _ = alive.send(&wire::frame(FrameType::Keepalive, 0, &[]));
        },
        move |e| failing.fail(e),
        "the source",
    );
    let mut r = BufReader::with_capacity(LINK_READ_BUFFER, reader);
    let mut channels: HashMap<u16, Sender<Vec<u8>>> = HashMap::new();
    let result = pump(shared, &mut r, &cfg, &mut channels);
    shared.ended.store(true, Relaxed);
    if let Err(e) = result {
        // Recorded while the QEMU channels are still open: closing them makes QEMU fail,
        // and whoever sees that must already find the cause.
        shared.fail(e);
    }
    Ok(())
}

/// Applies the link's frames in order until it ends.
fn pump(
    shared: &Arc<Shared>,
    r: &mut impl std::io::Read,
    cfg: &DestConfig,
    channels: &mut HashMap<u16, Sender<Vec<u8>>>,
) -> Result<(), LinkError> {
    let mut decoder = ShardedDecoder::new(cfg.capacity_pages, cfg.shards);
    loop {
        let f = match wire::read_frame_into(r, "the source", shared.buffers.take(0)) {
            Ok(Some(f)) => f,
            Ok(None) if channels.is_empty() => return Ok(()), // every channel ended: a clean close
            Ok(None) => {
                return Err(LinkError::Transport(
                    "the source closed the migration link with channels still open".into(),
                ))
            }
            Err(e) => return Err(e), // after a close, fail() swallows it
        };
        shared.heard.now();
        shared
            .stats
            .wire_bytes
            .fetch_add((wire::HEADER_LEN + f.payload.len()) as u64, Relaxed);
        let id = f.channel;
        match f.kind {
            FrameType::Open => {
                if channels.contains_key(&id) {
                    return Err(LinkError::Protocol(format!("channel {id} opened twice")));
                }
                let qemu = UnixStream::connect(&cfg.qemu_socket)
                    .map_err(|e| LinkError::io(format!("destination QEMU channel {id}"), e))?;
                if let Ok(c) = qemu.try_clone() {
                    shared.qemu.lock().unwrap().push(c);
                }
                let (tx, rx) = channel::<Vec<u8>>();
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("nc-mig-qemu{id}"))
                    .spawn(move || {
                        let mut qemu = qemu;
                        for buf in rx {
                            if let Err(e) = qemu.write_all(&buf) {
                                return s.fail(LinkError::io(
                                    format!("destination QEMU channel {id}"),
                                    e,
                                ));
                            }
                            if let Err(e) = s.credit(id, buf.len()) {
                                return s.fail(e);
                            }
                            s.buffers.give(buf);
                        }
                        let _ = qemu.shutdown(Shutdown::Write);
                    })
                    .expect("spawning a migration thread");
                channels.insert(id, tx);
            }
            FrameType::Data => {
                shared
                    .stats
                    .raw_bytes
                    .fetch_add(f.payload.len() as u64, Relaxed);
                deliver(channels, id, f.payload)?;
            }
            FrameType::Pages => {
                let out = rebuild_packet(&mut decoder, &f.payload, shared.buffers.take(0))?;
                shared.buffers.give(f.payload);
                shared
                    .stats
                    .pages
                    .fetch_add(normal_pages(&out) as u64, Relaxed);
                shared.stats.packets.fetch_add(1, Relaxed);
                shared.stats.raw_bytes.fetch_add(out.len() as u64, Relaxed);
                deliver(channels, id, out)?;
            }
            FrameType::Eof => {
                channels
                    .remove(&id)
                    .ok_or_else(|| LinkError::Protocol(format!("end of unknown channel {id}")))?;
            }
            FrameType::Keepalive => {}
            FrameType::Hello | FrameType::Window => {
                return Err(LinkError::Protocol(format!(
                    "unexpected {:?} frame on channel {id}",
                    f.kind
                )));
            }
        }
    }
}

fn deliver(
    channels: &HashMap<u16, Sender<Vec<u8>>>,
    id: u16,
    bytes: Vec<u8>,
) -> Result<(), LinkError> {
    let ch = channels
        .get(&id)
        .ok_or_else(|| LinkError::Protocol(format!("frame for unknown channel {id}")))?;
    // A closed writer has already failed the link with its reason.
    ch.send(bytes)
        .map_err(|_| LinkError::Transport(format!("destination QEMU channel {id} is gone")))
}

/// A Pages frame back into QEMU's packet: its verbatim header, then the decoded pages.
fn rebuild_packet(
    decoder: &mut ShardedDecoder,
    payload: &[u8],
    mut out: Vec<u8>,
) -> Result<Vec<u8>, LinkError> {
    if payload.len() < 4 {
        return Err(LinkError::Protocol(
            "pages frame without a header length".into(),
        ));
    }
    let hlen = u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize;
    if hlen < 20 || 4 + hlen > payload.len() {
        return Err(LinkError::Protocol(format!(
            "pages frame header length {hlen} overruns the frame"
        )));
    }
    let header = &payload[4..4 + hlen];
    let want = normal_pages(header) as usize;
    let batch = &payload[4 + hlen..];
    // Checked before anything is sized by it: a hostile count must not become an allocation.
    if want > PACKET_SLOTS || want > batch.len() {
        return Err(LinkError::Protocol(format!(
            "packet announces {want} pages, more than a packet or this frame can hold"
        )));
    }
    out.clear();
    out.reserve(hlen + want * PAGE_SIZE);
    out.extend_from_slice(header);
    if want > 0 {
        let mut n = 0usize;
        // The decoder checks everything before applying anything, so pages are only
        // appended for a batch it accepted; the count is checked after.
        decoder.decode(batch, |_, p| {
            if n < want {
                out.extend_from_slice(p);
            }
            n += 1;
        })?;
        if n != want {
            return Err(LinkError::Protocol(format!(
                "packet announces {want} pages, frames hold {n}"
            )));
        }
    } else if !batch.is_empty() {
        return Err(LinkError::Protocol(
            "a packet without pages carries page frames".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_page_count_is_refused_before_it_sizes_anything() {
        let mut header = vec![0u8; 20];
        header[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut payload = (header.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(&header);
        payload.extend_from_slice(&[0u8; 4096]);
        let err =
            rebuild_packet(&mut ShardedDecoder::new(16, 1), &payload, Vec::new()).unwrap_err();
        assert_eq!(err.code(), "MIGRATION_PROTOCOL");
        let mut short = 8u32.to_be_bytes().to_vec();
        short.extend_from_slice(&[0u8; 4]);
        assert_eq!(
            rebuild_packet(&mut ShardedDecoder::new(16, 1), &short, Vec::new())
                .unwrap_err()
                .code(),
            "MIGRATION_PROTOCOL"
        );
    }
}
