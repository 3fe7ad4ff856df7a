//! Both ends of the data link over real sockets, without QEMU: a synthetic QEMU 10 stream
//! (main channel + multifd channels with RAM, SYNC and device-state packets) goes in at
//! the source's unix socket and must come out of the destination byte for byte — or,
//! when a batch is corrupted, not at all past it.

use novacron_miglink::secure::certificate_sha256;
use novacron_miglink::{
    DestConfig, DestLink, DestTls, LinkError, SourceConfig, SourceLink, TokenBucket,
};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A destination's certificate and key (PEM), self-signed for the tests.
struct TestCert {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    sha256: [u8; 32],
}

fn test_cert() -> TestCert {
    let c = rcgen::generate_simple_self_signed(vec!["novacron-member".into()]).unwrap();
    let cert_pem = c.cert.pem().into_bytes();
    let sha256 = certificate_sha256(&cert_pem).unwrap();
    TestCert {
        cert_pem,
        key_pem: c.key_pair.serialize_pem().into_bytes(),
        sha256,
    }
}

/// The certificate every test destination serves (made once).
fn cert() -> &'static TestCert {
    static CERT: std::sync::OnceLock<TestCert> = std::sync::OnceLock::new();
    CERT.get_or_init(test_cert)
}

const PAGE: usize = 4096;
const SLOTS: usize = 128;
const MULTIFD_MAGIC: u32 = 0x1122_3344;

fn init_packet(id: u8) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(&MULTIFD_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&1u32.to_be_bytes());
    b[24] = id;
    b
}

fn ram_packet(
    num: u64,
    block: &str,
    normal: &[(u64, Vec<u8>)],
    zero: &[u64],
    flags: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; 320 + 8 * SLOTS];
    h[..4].copy_from_slice(&MULTIFD_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes());
    h[8..12].copy_from_slice(&flags.to_be_bytes());
    h[12..16].copy_from_slice(&(if flags & 1 != 0 { 0 } else { SLOTS as u32 }).to_be_bytes());
    h[16..20].copy_from_slice(&(normal.len() as u32).to_be_bytes());
    h[20..24].copy_from_slice(&((normal.len() * PAGE) as u32).to_be_bytes());
    h[24..32].copy_from_slice(&num.to_be_bytes());
    h[32..36].copy_from_slice(&(zero.len() as u32).to_be_bytes());
    h[64..64 + block.len()].copy_from_slice(block.as_bytes());
    for (i, off) in normal
        .iter()
        .map(|n| n.0)
        .chain(zero.iter().copied())
        .enumerate()
    {
        h[320 + 8 * i..328 + 8 * i].copy_from_slice(&off.to_be_bytes());
    }
    for (_, p) in normal {
        h.extend_from_slice(p);
    }
    h
}

fn device_state_packet(payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 12 + 256 + 8];
    h[..4].copy_from_slice(&MULTIFD_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes());
    h[8..12].copy_from_slice(&(32u32 << 1).to_be_bytes());
    h[12..12 + 17].copy_from_slice(b"0000:00:01.0/vfio");
    h[12 + 256 + 4..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// xorshift: deterministic "random" bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Several rounds over the same pages, some re-dirtied by a byte (the delta path).
fn multifd_stream(id: u8, seed: u64) -> Vec<u8> {
    let mut out = init_packet(id);
    let mut pages: Vec<Vec<u8>> = (0..300)
        .map(|i| match i % 3 {
            0 => [noise(seed + i, PAGE / 2), vec![0; PAGE / 2]].concat(),
            1 => noise(seed + i, PAGE),
            _ => format!("page {i} ").repeat(600).into_bytes()[..PAGE].to_vec(),
        })
        .collect();
    let mut num = 0;
    for round in 0..3u64 {
        for first in (0..pages.len()).step_by(100) {
            let mut normal = vec![];
            for (i, p) in pages.iter_mut().enumerate().skip(first).take(100) {
                if round > 0 && i % 4 != 0 {
                    continue;
                }
                if round > 0 {
                    p[(i * 7 + round as usize) % PAGE] ^= 0x5a;
                }
                normal.push(((i * PAGE) as u64 + seed * (1 << 30), p.clone()));
            }
            out.extend(ram_packet(
                num,
                "pc.ram",
                &normal,
                if round == 0 {
                    &[400 * PAGE as u64]
                } else {
                    &[]
                },
                0,
            ));
            num += 1;
        }
        out.extend(ram_packet(num, "", &[], &[], 1));
        num += 1;
    }
    out.extend(device_state_packet(&noise(seed, 5000)));
    out
}

struct Harness {
    dir: tempfile::TempDir,
    source: SourceLink,
    dest: DestLink,
    failures: Receiver<(&'static str, String)>,
    /// Per connection to the fake destination QEMU: what it received, once it ended.
    received: Receiver<(u8, Vec<u8>)>,
    _qemu: JoinHandle<()>,
}

fn fail_to(
    tx: std::sync::mpsc::Sender<(&'static str, String)>,
    who: &'static str,
) -> Box<dyn Fn(LinkError) + Send + Sync> {
    let tx = std::sync::Mutex::new(tx);
    Box::new(move |e| {
        let _ = tx.lock().unwrap().send((who, format!("{}: {e}", e.code())));
    })
}

/// A fake destination QEMU: accepts connections and reports each one's bytes at its end
/// (tagged by its first byte after the magic, to tell channels apart). `stall` delays reading.
fn harness(corrupt: Option<u64>, stall: Duration, bucket: Option<Arc<TokenBucket>>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let qemu_sock = dir.path().join("qemu-in.sock");
    let listener = UnixListener::bind(&qemu_sock).unwrap();
    let (rtx, received) = channel();
    let qemu = std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let rtx = rtx.clone();
            std::thread::spawn(move || {
                std::thread::sleep(stall);
                let mut all = vec![];
                let _ = s.read_to_end(&mut all);
                let tag = all.get(24).copied().unwrap_or(255);
                let _ = rtx.send((tag, all));
            });
        }
    });
    let (ftx, failures) = channel();
    let token = b"0123456789abcdef01234567".to_vec();
    let dest = DestLink::start(
        DestConfig {
            bind_host: "127.0.0.1".into(),
            ports: None,
            qemu_socket: qemu_sock,
            token: token.clone(),
            tls: Some(DestTls {
                cert_pem: cert().cert_pem.clone(),
                key_pem: cert().key_pem.clone(),
            }),
            capacity_pages: 4096,
            shards: 2,
            silence_timeout: None,
        },
        fail_to(ftx.clone(), "dest"),
    )
    .unwrap();
    let source = SourceLink::start(
        SourceConfig {
            socket_path: dir.path().join("relay.sock"),
            dest: format!("127.0.0.1:{}", dest.port()),
            token,
            dest_cert_sha256: Some(cert().sha256),
            capacity_pages: 4096,
            shards: 2,
            window: 4 << 20,
            bucket,
            corrupt_pages_frame: corrupt,
            cut_after_bytes: None,
            silence_timeout: None,
        },
        fail_to(ftx, "source"),
    )
    .unwrap();
    Harness {
        dir,
        source,
        dest,
        failures,
        received,
        _qemu: qemu,
    }
}

fn send_as_qemu(path: &Path, bytes: Vec<u8>, chunk: usize) -> JoinHandle<()> {
    let mut s = UnixStream::connect(path).unwrap();
    std::thread::spawn(move || {
        for c in bytes.chunks(chunk) {
            if s.write_all(c).is_err() {
                return; // the relay closed on us (failure tests)
            }
        }
    })
}

#[test]
fn main_and_multifd_channels_arrive_byte_exact_and_compressed() {
    let h = harness(None, Duration::ZERO, None);
    let sock = h.dir.path().join("relay.sock");
    let mut main = b"QEVM".to_vec();
    main.extend(noise(99, 100_000));
    let streams = [multifd_stream(1, 1), multifd_stream(2, 2)];
    let senders = vec![
        send_as_qemu(&sock, main.clone(), 65_536 + 123),
        send_as_qemu(&sock, streams[0].clone(), 4000),
        send_as_qemu(&sock, streams[1].clone(), 100_000),
    ];
    for s in senders {
        s.join().unwrap();
    }
    let mut got = vec![];
    for _ in 0..3 {
        got.push(
            h.received
                .recv_timeout(Duration::from_secs(10))
                .expect("a channel ended"),
        );
    }
    assert!(h.failures.try_recv().is_err());
    got.sort_by_key(|g| g.0);
    assert_eq!(got[0].1, streams[0]);
    assert_eq!(got[1].1, streams[1]);
    assert_eq!(got[2].1, main);
    let (s, d) = (h.source.stats(), h.dest.stats());
    let raw = (main.len() + streams[0].len() + streams[1].len()) as u64;
    assert_eq!(s.raw_bytes, raw);
    assert_eq!(d.raw_bytes, raw);
    assert_eq!(s.pages, 2 * (300 + 2 * 75));
    assert_eq!(d.pages, s.pages);
    assert_eq!(
        d.wire_bytes + 7 + 24,
        s.wire_bytes,
        "everything sent was received (the hello is not counted there)"
    );
    // the random main channel (100 kB) is incompressible; the page stream is not
    assert!(
        (s.wire_bytes as f64) < main.len() as f64 + (streams[0].len() * 2) as f64 * 0.75,
        "wire {}",
        s.wire_bytes
    );
    h.source.close();
    h.dest.close();
}

#[test]
fn windows_bound_what_the_ends_hold_when_the_destination_qemu_stalls() {
    let h = harness(None, Duration::from_millis(700), None);
    let sock = h.dir.path().join("relay.sock");
    let mut big = b"QEVM".to_vec();
    big.extend(noise(5, 16 << 20));
    let sender = send_as_qemu(&sock, big.clone(), 1 << 20);
    std::thread::sleep(Duration::from_millis(400));
    // Read from QEMU: the 4 MiB window plus what socket buffers and read buffers hold.
    let held = h.source.stats().raw_bytes;
    assert!((2 << 20..6 << 20).contains(&held), "held {held}");
    sender.join().unwrap();
    let (_, got) = h.received.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(got == big);
    h.source.close();
    h.dest.close();
}

#[test]
fn a_corrupted_batch_is_refused_and_nothing_of_it_reaches_qemu() {
    let h = harness(Some(2), Duration::ZERO, None);
    let sock = h.dir.path().join("relay.sock");
    let mf = multifd_stream(1, 7);
    let _sender = send_as_qemu(&sock, mf.clone(), 65_536);
    let (who, err) = h.failures.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (who, err.split(':').next().unwrap()),
        ("dest", "CODEC_CHECKSUM"),
        "{err}"
    );
    let (_, got) = h.received.recv_timeout(Duration::from_secs(10)).unwrap();
    // init packet + the first RAM packet at most: a strict prefix of the stream
    assert!(
        got.len() <= 64 + 320 + 8 * SLOTS + 100 * PAGE,
        "{} bytes reached QEMU",
        got.len()
    );
    assert_eq!(&mf[..got.len()], &got[..]);
    // the source learns it too: the destination dropped the link
    let (who, err) = h.failures.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (who, err.split(':').next().unwrap()),
        ("source", "MIGRATION_TRANSPORT"),
        "{err}"
    );
    h.source.close();
}

#[test]
fn the_bandwidth_cap_paces_the_link() {
    let h = harness(None, Duration::ZERO, Some(Arc::new(TokenBucket::new(8e6))));
    let sock = h.dir.path().join("relay.sock");
    let mut data = b"QEVM".to_vec();
    data.extend(noise(3, 4 << 20));
    let t = Instant::now();
    send_as_qemu(&sock, data.clone(), 1 << 20).join().unwrap();
    let (_, got) = h.received.recv_timeout(Duration::from_secs(10)).unwrap();
    let took = t.elapsed();
    assert!(got == data);
    // 4 MiB at 8 MB/s, less the 400 kB burst: ≥ 0.47 s
    assert!(took >= Duration::from_millis(470), "took {took:?}");
    h.source.close();
}

/// A destination end whose migration token is `[7; 24]`, feeding `qemu_socket`.
fn token_dest(
    qemu_socket: std::path::PathBuf,
    failures: std::sync::mpsc::Sender<(&'static str, String)>,
    silence_timeout: Option<Duration>,
) -> DestLink {
    DestLink::start(
        DestConfig {
            bind_host: "127.0.0.1".into(),
            ports: None,
            qemu_socket,
            token: vec![7; 24],
            tls: Some(DestTls {
                cert_pem: cert().cert_pem.clone(),
                key_pem: cert().key_pem.clone(),
            }),
            capacity_pages: 64,
            shards: 1,
            silence_timeout,
        },
        fail_to(failures, "dest"),
    )
    .unwrap()
}

/// The real source of `token_dest`'s migration, listening for QEMU at `dir/r.sock`.
fn token_source(
    dir: &std::path::Path,
    port: u16,
    failures: std::sync::mpsc::Sender<(&'static str, String)>,
) -> SourceLink {
    source_with(dir, "r.sock", port, vec![7; 24], failures, None).unwrap()
}

/// A source end with `token`, pinning the test certificate, listening at `dir/sock`.
fn source_with(
    dir: &std::path::Path,
    sock: &str,
    port: u16,
    token: Vec<u8>,
    failures: std::sync::mpsc::Sender<(&'static str, String)>,
    silence_timeout: Option<Duration>,
) -> Result<SourceLink, LinkError> {
    SourceLink::start(
        SourceConfig {
            socket_path: dir.join(sock),
            dest: format!("127.0.0.1:{port}"),
            token,
            dest_cert_sha256: Some(cert().sha256),
            capacity_pages: 64,
            shards: 1,
            window: 1 << 20,
            bucket: None,
            corrupt_pages_frame: None,
            cut_after_bytes: None,
            silence_timeout,
        },
        fail_to(failures, "source"),
    )
}

/// The destination closed `s`, having sent at most a TLS alert (a 7-byte record, type 21).
fn assert_dropped(s: &mut std::net::TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = vec![];
    s.read_to_end(&mut got).expect("closed, not left hanging");
    assert!(
        got.is_empty() || (got.len() == 7 && got[0] == 21),
        "dropped, with at most an alert: {got:?}"
    );
}

#[test]
fn a_connection_without_the_token_or_without_tls_is_dropped_and_the_real_source_still_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let qemu_sock = dir.path().join("q.sock");
    let _l = UnixListener::bind(&qemu_sock).unwrap();
    let (ftx, failures) = channel();
    let dest = token_dest(qemu_sock, ftx, None);
    // The right token in clear: not TLS, dropped.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", dest.port())).unwrap();
    plain.write_all(&[1, 0, 0, 0, 0, 0, 24]).unwrap();
    plain.write_all(&[7; 24]).unwrap();
    assert_dropped(&mut plain);
    // TLS with the destination's certificate, but the wrong token: dropped.
    let (itx, intruder_failures) = channel();
    let intruder = source_with(dir.path(), "i.sock", dest.port(), vec![8; 24], itx, None).unwrap();
    let (who, why) = intruder_failures
        .recv_timeout(Duration::from_secs(10))
        .expect("the destination drops the intruder");
    assert_eq!(who, "source");
    assert!(why.contains("closed"), "{why}");
    intruder.close();
    let (stx, _sf) = channel();
    let source = token_source(dir.path(), dest.port(), stx);
    send_as_qemu(&dir.path().join("r.sock"), b"QEVMhello".to_vec(), 10)
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(failures.try_recv().is_err());
    assert_eq!(dest.stats().raw_bytes, 9);
    source.close();
    dest.close();
}

#[test]
fn strangers_that_connect_and_say_nothing_do_not_hold_up_the_real_source() {
    let dir = tempfile::tempdir().unwrap();
    let qemu_sock = dir.path().join("q.sock");
    let _l = UnixListener::bind(&qemu_sock).unwrap();
    let (ftx, failures) = channel();
    let dest = token_dest(qemu_sock, ftx, None);
    // Silent strangers, and one that claims a hello of 64 MiB: none of them is waited for.
    let mut strangers: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", dest.port())).unwrap())
        .collect();
    let mut big = std::net::TcpStream::connect(("127.0.0.1", dest.port())).unwrap();
    big.write_all(&[1, 0, 0, 4, 0, 0, 0]).unwrap();
    strangers.push(big);
    let started = std::time::Instant::now();
    let (stx, _sf) = channel();
    let source = token_source(dir.path(), dest.port(), stx);
    send_as_qemu(&dir.path().join("r.sock"), b"QEVMhello".to_vec(), 10)
        .join()
        .unwrap();
    while dest.stats().raw_bytes < 9 && started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        dest.stats().raw_bytes,
        9,
        "the source's bytes arrived while the strangers were still connected"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not held up by the strangers: {:?}",
        started.elapsed()
    );
    assert!(failures.try_recv().is_err());
    // The one that sent a frame header instead of a TLS handshake was dropped at once.
    let big = strangers.last_mut().unwrap();
    big.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_dropped(big);
    drop(strangers);
    source.close();
    dest.close();
}

/// A TCP relay between a source and its destination that records what the source sends.
fn recording_relay(to: u16) -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let (mut from, _) = listener.accept().unwrap();
        let mut onward = std::net::TcpStream::connect(("127.0.0.1", to)).unwrap();
        let (mut back_from, mut back_to) = (onward.try_clone().unwrap(), from.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_from, &mut back_to);
        });
        let mut buf = [0u8; 65536];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || onward.write_all(&buf[..n]).is_err() {
                break;
            }
            record.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = onward.shutdown(std::net::Shutdown::Write);
    });
    (port, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_link_is_tls_neither_qemus_stream_nor_the_token_crosses_the_wire_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let qemu_sock = dir.path().join("q.sock");
    let listener = UnixListener::bind(&qemu_sock).unwrap();
    let arrived = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = vec![];
        s.read_to_end(&mut all).unwrap();
        all
    });
    let (ftx, failures) = channel();
    let dest = token_dest(qemu_sock, ftx.clone(), None);
    let (relay, wire) = recording_relay(dest.port());
    let source = token_source(dir.path(), relay, ftx);
    // A main channel carrying guest bytes anyone would recognise.
    let marker = b"GUEST-SECRET-0123456789-GUEST-SECRET";
    let stream: Vec<u8> = [&b"QEVM"[..], &marker.repeat(4096)].concat();
    send_as_qemu(&dir.path().join("r.sock"), stream.clone(), 8192)
        .join()
        .unwrap();
    let got = arrived.join().unwrap();
    assert!(
        got == stream,
        "arrived byte-exact ({} of {} bytes)",
        got.len(),
        stream.len()
    );
    assert!(failures.try_recv().is_err());
    let wire = wire.lock().unwrap().clone();
    assert!(
        wire.len() > stream.len(),
        "the relay saw the link's bytes ({})",
        wire.len()
    );
    assert_eq!(wire[0], 0x16, "the link opens with a TLS handshake record");
    assert!(
        !contains(&wire, &marker[..16]),
        "guest bytes in clear on the wire"
    );
    assert!(
        !contains(&wire, &[7u8; 24]),
        "the migration token in clear on the wire"
    );
    source.close();
    dest.close();
}

#[test]
fn a_destination_without_the_pinned_certificate_is_refused_before_the_source_says_hello() {
    use novacron_miglink::secure::{server_config, TlsLink};
    let dir = tempfile::tempdir().unwrap();
    // An impostor with a certificate of its own: what would it read from the source?
    let impostor_cert = test_cert();
    let tls = server_config(&impostor_cert.cert_pem, &impostor_cert.key_pem).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let impostor = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let link = TlsLink::server(sock, tls, Duration::from_secs(10))?;
        let mut plain = vec![];
        link.socket()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = link.reader().read_to_end(&mut plain);
        Ok::<Vec<u8>, LinkError>(plain)
    });
    let (stx, _sf) = channel();
    let err = source_with(dir.path(), "r.sock", port, vec![7; 24], stx, None)
        .err()
        .expect("refused");
    assert_eq!(err.code(), "MIGRATION_TRANSPORT");
    assert!(
        err.to_string().contains("not the one its offer named"),
        "{err}"
    );
    // The source broke off the handshake: the impostor never got a byte of plaintext (no hello, no token).
    let heard = impostor.join().unwrap();
    assert!(
        heard.is_err(),
        "the impostor's handshake failed; it read {:?}",
        heard.ok().map(|p| p.len())
    );
}

/// Throughput probe (not a benchmark claim: run by hand with `--ignored --nocapture`).
#[test]
#[ignore]
fn probe_throughput() {
    let h = harness(None, Duration::ZERO, None);
    let sock = h.dir.path().join("relay.sock");
    // 128 MiB of half-random pages in full packets over 2 channels.
    let mk = |id: u8, seed: u64| {
        let mut out = init_packet(id);
        for pkt in 0..128u64 {
            let normal: Vec<(u64, Vec<u8>)> = (0..128u64)
                .map(|i| {
                    (
                        ((pkt * 128 + i) * PAGE as u64) + seed * (1 << 32),
                        [
                            noise(seed * 1_000_000 + pkt * 128 + i, PAGE / 2),
                            vec![0; PAGE / 2],
                        ]
                        .concat(),
                    )
                })
                .collect();
            out.extend(ram_packet(pkt, "pc.ram", &normal, &[], 0));
        }
        out
    };
    let (a, b) = (mk(1, 1), mk(2, 2));
    let total = a.len() + b.len();
    let t = Instant::now();
    let s1 = send_as_qemu(&sock, a, 1 << 20);
    let s2 = send_as_qemu(&sock, b, 1 << 20);
    s1.join().unwrap();
    s2.join().unwrap();
    for _ in 0..2 {
        h.received.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{} MiB in {:.0} ms: {:.0} MB/s raw, wire {} MiB",
        total >> 20,
        secs * 1e3,
        total as f64 / secs / 1e6,
        h.source.stats().wire_bytes >> 20
    );
    h.source.close();
    h.dest.close();
}

#[test]
fn a_port_range_is_used_first_free_first_and_a_full_one_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let nop = || -> Box<dyn Fn(LinkError) + Send + Sync> { Box::new(|_| ()) };
    // A range of two free ports: probe for a base, and pick another if someone takes one
    // meanwhile (the setup is retried, never the assertions below).
    let (base, cfg, first, second) = (0..20)
        .find_map(|_| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = probe.local_addr().unwrap().port();
            drop(probe);
            let cfg = DestConfig {
                bind_host: "127.0.0.1".into(),
                ports: Some((base, base.checked_add(1)?)),
                qemu_socket: dir.path().join("q.sock"),
                token: vec![1; 24],
                tls: Some(DestTls {
                    cert_pem: cert().cert_pem.clone(),
                    key_pem: cert().key_pem.clone(),
                }),
                capacity_pages: 64,
                shards: 1,
                silence_timeout: None,
            };
            let first = DestLink::start(cfg.clone(), nop()).ok()?;
            match DestLink::start(cfg.clone(), nop()) {
                Ok(second) => Some((base, cfg, first, second)),
                Err(_) => {
                    first.close();
                    None
                }
            }
        })
        .expect("no two free adjacent ports in 20 tries");
    assert_eq!((first.port(), second.port()), (base, base + 1));
    let third = DestLink::start(cfg, nop())
        .err()
        .expect("the range is full");
    assert_eq!(third.code(), "MIGRATION_TRANSPORT");
    assert!(
        third.to_string().contains("no free data-link port"),
        "{third}"
    );
    first.close();
    second.close();
}

/// A relay that forwards both ways until `blackhole` is set, then holds every byte and
/// closes nothing — a network that drops packets.
fn blackhole_relay(to: u16) -> (u16, Arc<std::sync::atomic::AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let blackhole = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hole = blackhole.clone();
    std::thread::spawn(move || {
        let (from, _) = listener.accept().unwrap();
        let onward = std::net::TcpStream::connect(("127.0.0.1", to)).unwrap();
        let pipe = |mut a: std::net::TcpStream,
                    mut b: std::net::TcpStream,
                    hole: Arc<std::sync::atomic::AtomicBool>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut held = Vec::new();
                while let Ok(n) = a.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if hole.load(std::sync::atomic::Ordering::SeqCst) {
                        held.extend_from_slice(&buf[..n]);
                    } else if b.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                // Ended by the ends giving up: hold the sockets open a little longer still.
                std::thread::sleep(Duration::from_secs(1));
                drop((a, b, held));
            });
        };
        pipe(
            from.try_clone().unwrap(),
            onward.try_clone().unwrap(),
            hole.clone(),
        );
        pipe(onward, from, hole);
    });
    (port, blackhole)
}

#[test]
fn a_blackholed_link_fails_both_ends_within_the_silence_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let qemu_sock = dir.path().join("q.sock");
    let listener = UnixListener::bind(&qemu_sock).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut sink = vec![];
        let _ = s.read_to_end(&mut sink);
    });
    let (ftx, failures) = channel();
    let silence = Duration::from_millis(1500);
    let dest = token_dest(qemu_sock, ftx.clone(), Some(silence));
    let (relay, blackhole) = blackhole_relay(dest.port());
    let source = source_with(dir.path(), "r.sock", relay, vec![7; 24], ftx, Some(silence)).unwrap();
    // QEMU starts streaming, and keeps the link busy; then the network drops everything.
    let qemu = std::os::unix::net::UnixStream::connect(dir.path().join("r.sock")).unwrap();
    let writer = std::thread::spawn(move || {
        let mut qemu = qemu;
        let _ = qemu.write_all(b"QEVM");
        let chunk = vec![0x5a; 64 << 10];
        while qemu.write_all(&chunk).is_ok() {}
    });
    // Healthy while it flows, and longer than the timeout: keepalives and data are heard.
    std::thread::sleep(silence * 2);
    assert!(failures.try_recv().is_err(), "a healthy link failed");
    let cut = std::time::Instant::now();
    blackhole.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed = std::collections::HashMap::new();
    while failed.len() < 2 {
        let (who, err) = failures
            .recv_timeout(silence * 4)
            .expect("both ends fail on their own, nothing was closed");
        failed.insert(who, (err, cut.elapsed()));
    }
    for (who, (err, after)) in &failed {
        assert!(err.starts_with("MIGRATION_TRANSPORT"), "{who}: {err}");
        assert!(err.contains("nothing arrived from"), "{who}: {err}");
        assert!(
            *after >= silence && *after < silence * 3,
            "{who} failed after {after:?}"
        );
    }
    source.close();
    dest.close();
    writer.join().unwrap();
}
