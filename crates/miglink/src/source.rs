//! Source end of the data link. QEMU migrates to a unix socket this end listens on; each
//! of its connections (main + multifd) becomes a channel of the one TLS link to the
//! destination (which must present the certificate its offer named: `secure.rs`).
//! Multifd RAM pages go through the page codec; everything else is forwarded as is.
//!
//! Threads: one per QEMU channel (read, parse, encode), one writer that owns the link's
//! send side (bandwidth cap, batching of small frames), one reader of the destination's
//! window credits, and the acceptor. Channel threads encode and queue under one lock, so
//! frames reach the wire in encode order — the order the destination decodes in.

use crate::liveness::{self, Heard};
use crate::multifd::{BlockNumbers, Item, MultifdReader, MULTIFD_MAGIC, QEVM_MAGIC};
use crate::outcome::Outcome;
use crate::pool::Pool;
use crate::secure::{Link, TlsLink};
use crate::wire::{self, FrameType, KIND_MAIN, KIND_MULTIFD};
use crate::{LinkError, LinkStats, TokenBucket};
use novacron_memdelta::ShardedEncoder;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How the source end of a data link takes QEMU's channels and reaches the destination.
pub struct SourceConfig {
    /// Where QEMU connects (its `migrate` URI is `unix:<path>`).
    pub socket_path: PathBuf,
    /// The destination's data listener, `host:port`.
    pub dest: String,
    /// The migration's token, sent in the hello (once the destination's certificate checked out).
    pub token: Vec<u8>,
    /// SHA-256 of the destination's certificate (DER): the only one the link's TLS
    /// accepts. `None`: plain TCP, for the benchmark's unencrypted baseline only (the
    /// daemon always pins).
    pub dest_cert_sha256: Option<[u8; 32]>,
    /// Codec cache size and shards; the destination uses the same.
    pub capacity_pages: usize,
    /// Codec shards (see `capacity_pages`).
    pub shards: usize,
    /// Bytes of a channel's QEMU stream that may be in flight (read here, not yet
    /// delivered to the destination QEMU). Bounded, so QEMU's bandwidth and downtime
    /// estimates stay true and no queue drains after the switchover.
    pub window: u64,
    /// The migration's bandwidth cap, shared with its disk-mirror tunnel (`None`: uncapped).
    pub bucket: Option<Arc<TokenBucket>>,
    /// Fault injection (tests): flip a checksum byte in the first page batch from the Nth RAM packet on.
    pub corrupt_pages_frame: Option<u64>,
    /// Fault injection (tests): cut the link (shut the TCP connection both ways, as a
    /// failed network would) once this many bytes were sent.
    pub cut_after_bytes: Option<u64>,
    /// Fail the link after hearing nothing from the destination this long (`None`:
    /// [`crate::liveness::SILENCE_TIMEOUT`]).
    pub silence_timeout: Option<Duration>,
}

/// Called once with the first failure of a link end (on the thread that saw it).
pub type FailFn = Box<dyn Fn(LinkError) + Send + Sync>;

/// Frames queued for the writer; with channel windows, a bound on what waits here.
const SEND_QUEUE: usize = 16;
const QEMU_READ_BUFFER: usize = 256 << 10;
const LINK_WRITE_BUFFER: usize = 256 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Encoding {
    encoder: ShardedEncoder,
    packets: u64,
    corrupted: bool,
}

struct Shared {
    cfg: SourceConfig,
    stats: LinkStats,
    outcome: Outcome,
    /// Unacknowledged bytes per channel.
    windows: Mutex<HashMap<u16, u64>>,
    window_moved: Condvar,
    encoding: Mutex<Encoding>,
    blocks: BlockNumbers,
    /// Page and frame buffers, recycled.
    buffers: Pool,
    /// Everything to shut down on close: the link and QEMU's connections.
    link: Link,
    qemu: Mutex<Vec<UnixStream>>,
    /// When anything last arrived from the destination.
    heard: Arc<Heard>,
}

impl Shared {
    fn fail(&self, err: LinkError) {
        if self.outcome.fail(err) {
            self.shutdown();
        }
    }

    fn shutdown(&self) {
        self.link.shutdown();
        for s in self.qemu.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Under the lock: a channel between its `closing` check and its wait would
        // otherwise miss this wake-up and wait forever.
        let _windows = self.windows.lock().unwrap();
        self.window_moved.notify_all();
    }

    fn closed(&self) -> LinkError {
        LinkError::Transport("the migration link was closed".into())
    }

    /// Blocks while channel `id` has a full window in flight.
    fn wait_window(&self, id: u16) -> Result<(), LinkError> {
        let mut w = self.windows.lock().unwrap();
        while !self.outcome.closing() && w.get(&id).copied().unwrap_or(0) >= self.cfg.window {
            w = self.window_moved.wait(w).unwrap();
        }
        if self.outcome.closing() {
            return Err(self.closed());
        }
        Ok(())
    }

    fn in_flight(&self, id: u16, bytes: u64) {
        *self.windows.lock().unwrap().entry(id).or_default() += bytes;
        self.stats.raw_bytes.fetch_add(bytes, Relaxed);
    }

    fn grant(&self, id: u16, bytes: u64) {
        if let Some(w) = self.windows.lock().unwrap().get_mut(&id) {
            *w = w.saturating_sub(bytes);
        }
        self.window_moved.notify_all();
    }
}

/// A running source end. Dropping it does not stop it: call [`SourceLink::close`].
pub struct SourceLink {
    shared: Arc<Shared>,
}

impl SourceLink {
    /// Connects to the destination, says hello, and listens for QEMU. Fails at once if
    /// the destination cannot be reached or the socket cannot be bound.
    pub fn start(cfg: SourceConfig, on_fail: FailFn) -> Result<Self, LinkError> {
        let addr = cfg
            .dest
            .to_socket_addrs()
            .map_err(|e| LinkError::io(format!("data link address {}", cfg.dest), e))?
            .next()
            .ok_or_else(|| {
                LinkError::Transport(format!(
                    "data link address {} resolves to nothing",
                    cfg.dest
                ))
            })?;
        let sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| LinkError::io(format!("data link to {}", cfg.dest), e))?;
        sock.set_nodelay(true)
            .map_err(|e| LinkError::io("data link", e))?;
        let link = match cfg.dest_cert_sha256 {
            Some(pin) => Link::Tls(TlsLink::client(sock, pin, CONNECT_TIMEOUT)?),
            None => Link::Plain(sock),
        };
        let _ = std::fs::remove_file(&cfg.socket_path);
        let listener = UnixListener::bind(&cfg.socket_path)
            .map_err(|e| LinkError::io(format!("binding {}", cfg.socket_path.display()), e))?;
        let hello = wire::frame(FrameType::Hello, 0, &cfg.token);
        let encoder = ShardedEncoder::new(cfg.capacity_pages, cfg.shards);
        let io = |e| LinkError::io("data link", e);
        let (reader, writer) = (link.reader().map_err(io)?, link.writer().map_err(io)?);
        let shared = Arc::new(Shared {
            cfg,
            stats: LinkStats::default(),
            outcome: Outcome::new(on_fail),
            windows: Mutex::new(HashMap::new()),
            window_moved: Condvar::new(),
            encoding: Mutex::new(Encoding {
                encoder,
                packets: 0,
                corrupted: false,
            }),
            blocks: BlockNumbers::default(),
            buffers: Pool::default(),
            link,
            qemu: Mutex::new(Vec::new()),
            heard: Heard::new(),
        });
        let (tx, rx) = sync_channel::<Vec<u8>>(SEND_QUEUE);
        tx.send(hello).expect("fresh queue");
        let (s, alive, failing) = (shared.clone(), tx.clone(), shared.clone());
        liveness::watch(
            shared.heard.clone(),
            shared
                .cfg
                .silence_timeout
                .unwrap_or(liveness::SILENCE_TIMEOUT),
            Arc::new(move || s.outcome.closing()),
            // Never blocks: a full queue is frames on their way anyway.
            move || {
                let _ = alive.try_send(wire::frame(FrameType::Keepalive, 0, &[]));
            },
            move |e| failing.fail(e),
            "the destination",
        );
        spawn("nc-mig-send", &shared, move |s| send_loop(&s, writer, rx));
        spawn("nc-mig-credit", &shared, move |s| credit_loop(&s, reader));
        spawn("nc-mig-accept", &shared, move |s| {
            accept_loop(&s, listener, tx)
        });
        Ok(Self { shared })
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
        self.shared.outcome.close();
        self.shared.shutdown();
        // Wake the acceptor so it sees `closing` and drops the listener.
        let _ = UnixStream::connect(&self.shared.cfg.socket_path);
        let _ = std::fs::remove_file(&self.shared.cfg.socket_path);
    }
}

/// Runs `f` on a named thread; its error, unless the link is closing, fails the link.
fn spawn(
    name: &str,
    shared: &Arc<Shared>,
    f: impl FnOnce(Arc<Shared>) -> Result<(), LinkError> + Send + 'static,
) {
    let s = shared.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(e) = f(s.clone()) {
                s.fail(e);
            }
        })
        .expect("spawning a migration thread");
}

fn accept_loop(
    shared: &Arc<Shared>,
    listener: UnixListener,
    tx: SyncSender<Vec<u8>>,
) -> Result<(), LinkError> {
    let mut next_id: u16 = 1;
    for conn in listener.incoming() {
        if shared.outcome.closing() {
            return Ok(());
        }
        let stream = conn.map_err(|e| LinkError::io("accepting a QEMU migration channel", e))?;
        if let Ok(clone) = stream.try_clone() {
            shared.qemu.lock().unwrap().push(clone);
        }
        let id = next_id;
        next_id = next_id
            .checked_add(1)
            .ok_or_else(|| LinkError::Protocol("QEMU opened too many migration channels".into()))?;
        shared.windows.lock().unwrap().insert(id, 0);
        let tx = tx.clone();
        spawn(&format!("nc-mig-ch{id}"), shared, move |s| {
            channel_loop(&s, id, stream, tx)
        });
    }
    Ok(())
}

fn channel_loop(
    shared: &Shared,
    id: u16,
    stream: UnixStream,
    tx: SyncSender<Vec<u8>>,
) -> Result<(), LinkError> {
    let mut r = BufReader::with_capacity(QEMU_READ_BUFFER, stream);
    if let Err(e) = forward_channel(shared, id, &mut r, &tx) {
        // Recorded while QEMU's socket is still open: its closing makes QEMU fail, and
        // whoever sees that must already find the cause.
        shared.fail(e);
    }
    Ok(())
}

/// Reads one QEMU channel to its end, queueing its frames.
fn forward_channel(
    shared: &Shared,
    id: u16,
    r: &mut BufReader<UnixStream>,
    tx: &SyncSender<Vec<u8>>,
) -> Result<(), LinkError> {
    let send = |f: Vec<u8>| tx.send(f).map_err(|_| shared.closed());
    let mut magic = [0u8; 4];
    if let Err(e) = r.read_exact(&mut magic) {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Ok(()); // opened and closed at once: nothing to forward
        }
        return Err(LinkError::io(format!("QEMU channel {id}"), e));
    }
    match u32::from_be_bytes(magic) {
        QEVM_MAGIC => {
            send(wire::frame(FrameType::Open, id, &[KIND_MAIN]))?;
            shared.in_flight(id, 4);
            send(wire::frame(FrameType::Data, id, &magic))?;
            loop {
                shared.wait_window(id)?;
                let buf = r
                    .fill_buf()
                    .map_err(|e| LinkError::io(format!("QEMU channel {id}"), e))?;
                if buf.is_empty() {
                    break;
                }
                let f = wire::frame(FrameType::Data, id, buf);
                let n = buf.len();
                r.consume(n);
                shared.in_flight(id, n as u64);
                send(f)?;
            }
        }
        MULTIFD_MAGIC => {
            send(wire::frame(FrameType::Open, id, &[KIND_MULTIFD]))?;
            let parser = MultifdReader::new(&shared.blocks);
            let init = parser.init(r, magic)?;
            shared.in_flight(id, init.len() as u64);
            send(wire::frame(FrameType::Data, id, &init))?;
            loop {
                shared.wait_window(id)?;
                match parser.next(r, shared.buffers.take(0))? {
                    None => break,
                    Some(Item::Opaque(bytes)) => {
                        shared.in_flight(id, bytes.len() as u64);
                        send(wire::frame(FrameType::Data, id, &bytes))?;
                    }
                    Some(Item::Ram {
                        header,
                        pages,
                        indices,
                    }) => {
                        shared.in_flight(id, (header.len() + pages.len()) as u64);
                        // Encode and queue under one lock: the wire order is the encode order.
                        let mut enc = shared.encoding.lock().unwrap();
                        let max = ShardedEncoder::max_encoded_len(indices.len(), shared.cfg.shards);
                        let mut f = wire::begin(
                            shared
                                .buffers
                                .take(wire::HEADER_LEN + 4 + header.len() + max),
                            FrameType::Pages,
                            id,
                        );
                        f.extend_from_slice(&(header.len() as u32).to_be_bytes());
                        f.extend_from_slice(&header);
                        let batch_at = f.len();
                        if !indices.is_empty() {
                            enc.encoder.encode(&indices, &pages, &mut f)?;
                        }
                        enc.packets += 1;
                        if let Some(nth) = shared.cfg.corrupt_pages_frame {
                            if !enc.corrupted && enc.packets >= nth {
                                enc.corrupted = corrupt_first_checksum(&mut f[batch_at..]);
                            }
                        }
                        wire::seal(&mut f);
                        shared.stats.pages.fetch_add(indices.len() as u64, Relaxed);
                        shared.stats.packets.fetch_add(1, Relaxed);
                        send(f)?;
                        drop(enc);
                        shared.buffers.give(pages);
                    }
                }
            }
        }
        other => {
            return Err(LinkError::Protocol(format!(
                "QEMU opened a channel with unknown magic 0x{other:x}"
            )))
        }
    }
    send(wire::frame(FrameType::Eof, id, &[]))
}

/// Owns the link's send side: applies the bandwidth cap and flushes when the queue runs dry.
fn send_loop(shared: &Shared, link: impl Write, rx: Receiver<Vec<u8>>) -> Result<(), LinkError> {
    let mut w = BufWriter::with_capacity(LINK_WRITE_BUFFER, link);
    let io = |e| {
        if shared.outcome.closing() {
            shared.closed()
        } else {
            LinkError::io("data link", e)
        }
    };
    while let Ok(mut f) = rx.recv() {
        loop {
            if let Some(b) = &shared.cfg.bucket {
                let wait = b.spend(f.len());
                if !wait.is_zero() {
                    w.flush().map_err(io)?;
                    std::thread::sleep(wait);
                }
            }
            w.write_all(&f).map_err(io)?;
            let sent = shared.stats.wire_bytes.fetch_add(f.len() as u64, Relaxed) + f.len() as u64;
            if shared.cfg.cut_after_bytes.is_some_and(|cut| sent >= cut) {
                let _ = shared.link.socket().shutdown(Shutdown::Both);
            }
            shared.buffers.give(f);
            match rx.try_recv() {
                Ok(next) => f = next,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        w.flush().map_err(io)?;
        if shared.outcome.closing() {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads the destination's window credits until the link closes.
fn credit_loop(shared: &Shared, link: impl Read) -> Result<(), LinkError> {
    let mut r = BufReader::new(link);
    loop {
        let f = match wire::read_frame(&mut r, "the destination") {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(LinkError::Transport(
                    "the destination closed the migration link".into(),
                ))
            }
            Err(e) => return Err(e),
        };
        shared.heard.now();
        if f.kind == FrameType::Keepalive {
            continue;
        }
        if f.kind != FrameType::Window || f.payload.len() != 4 {
            return Err(LinkError::Protocol(format!(
                "the destination sent a {:?} frame on the data link",
                f.kind
            )));
        }
        shared.grant(
            f.channel,
            u32::from_be_bytes(f.payload[..4].try_into().unwrap()) as u64,
        );
    }
}

/// Fault injection: flips a byte of the first page frame's checksum in a codec batch.
fn corrupt_first_checksum(batch: &mut [u8]) -> bool {
    if batch.len() < 8 {
        return false;
    }
    let shards = batch[3] as usize;
    let mut at = 8 + u32::from_le_bytes(batch[4..8].try_into().unwrap()) as usize;
    for _ in 0..shards {
        if at + 4 > batch.len() {
            break;
        }
        let len = u32::from_le_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
        if len >= 24 {
            batch[at + 4 + 12] ^= 0xff; // frame header: magic 2, version 1, kind 1, index 8, then the hash
            return true;
        }
        at += 4 + len;
    }
    false
}
