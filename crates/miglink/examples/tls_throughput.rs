//! What TLS costs the data link, measured in one run (bench/native/miglink-tls.mjs runs it):
//! the AEAD alone (ring's AES-256-GCM sealing 16 KiB records on one core, what each TLS
//! record costs), and one loopback stream of `MIB` MiB through the link's `TlsLink`
//! against the same stream over plain TCP. Prints one JSON object.
//!
//!   cargo run --release --example tls_throughput -p novacron-miglink [MIB]

use novacron_miglink::secure::{certificate_sha256, server_config, TlsLink};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CHUNK: usize = 256 << 10;

/// CPU seconds (user + system) this process has used, all threads.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own; RUSAGE_SELF is always valid.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Seconds of wall and CPU time to move `total` bytes from a writer to a reader over `pair`.
fn stream<W: Write + Send + 'static, R: Read>(mut w: W, mut r: R, total: usize) -> (f64, f64) {
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        let buf = vec![0x5au8; CHUNK];
        let mut sent = 0;
        while sent < total {
            w.write_all(&buf).unwrap();
            sent += CHUNK;
        }
        w.flush().unwrap();
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        got += n;
    }
    writer.join().unwrap();
    (t.elapsed().as_secs_f64(), cpu_seconds() - cpu0)
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("MiB"))
        .unwrap_or(2048);
    let total = mib << 20;

    // The AEAD alone, one core.
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let mut record = vec![0x5au8; 16 << 10];
    let records = total / record.len();
    let t = Instant::now();
    for i in 0..records as u64 {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut record,
            )
            .unwrap();
        let _ = std::hint::black_box(tag);
    }
    let aead_gbps = (records * record.len()) as f64 / t.elapsed().as_secs_f64() / 1e9;

    let (c, s) = pair();
    let (plain_s, plain_cpu) = stream(c, s, total);

    let cert = rcgen::generate_simple_self_signed(vec!["novacron-member".into()]).unwrap();
    let cert_pem = cert.cert.pem().into_bytes();
    let cfg = server_config(&cert_pem, cert.key_pair.serialize_pem().as_bytes()).unwrap();
    let pin = certificate_sha256(&cert_pem).unwrap();
    let (c, s) = pair();
    let server =
        std::thread::spawn(move || TlsLink::server(s, cfg, Duration::from_secs(10)).unwrap());
    let client = TlsLink::client(c, pin, Duration::from_secs(10)).unwrap();
    let server = server.join().unwrap();
    let (tls_s, tls_cpu) = stream(client.writer(), server.reader(), total);

    let gbps = |secs: f64| total as f64 / secs / 1e9;
    println!(
        "{{\"mib\":{mib},\"aeadGBpsPerCore\":{:.3},\"plainGBps\":{:.3},\"tlsGBps\":{:.3},\"plainCpuSecondsPerGB\":{:.4},\"tlsCpuSecondsPerGB\":{:.4},\"cipher\":\"{}\"}}",
        aead_gbps,
        gbps(plain_s),
        gbps(tls_s),
        plain_cpu / (total as f64 / 1e9),
        tls_cpu / (total as f64 / 1e9),
        client.cipher_suite().unwrap_or_default()
    );
}
