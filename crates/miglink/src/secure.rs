//! TLS 1.3 on the data link (rustls with ring's AES-GCM/ChaCha20). The destination serves
//! its member certificate; the source accepts only the certificate whose SHA-256 the
//! destination's offer named (a pin, as the migration port's control connection checks),
//! and says hello — with the migration's token — only after that check.
//!
//! One rustls connection is shared by the link's reader thread and its writer thread(s).
//! Each takes the connection's lock only to move bytes between rustls and a buffer, never
//! while it waits on the socket: the reader reads ciphertext from the socket unlocked and
//! then feeds it in; a writer encrypts under the lock and sends under a second lock that
//! keeps records in the order rustls numbered them.

use crate::LinkError;
use ring::digest::{digest, SHA256};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig,
    ServerConnection, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ciphertext read from the socket at once.
const RAW_READ: usize = 64 << 10;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> LinkError {
    LinkError::Transport(format!("{what}: {e}"))
}

/// The destination's TLS configuration: its certificate chain and key (PEM).
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, LinkError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error("the data link's certificate", e))?;
    if certs.is_empty() {
        return Err(LinkError::Transport(
            "the data link's certificate PEM holds no certificate".into(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls_error("the data link's key", e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("TLS setup", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("the data link's certificate and key", e))?;
    cfg.send_tls13_tickets = 0; // one connection per migration: nothing to resume
    Ok(Arc::new(cfg))
}

/// Accepts exactly the server certificate whose SHA-256 is `pin` (with a valid handshake signature by its key).
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = digest(&SHA256, end_entity.as_ref());
        let same = got.as_ref().len() == 32
            && got
                .as_ref()
                .iter()
                .zip(self.pin)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the destination's certificate is not the one its offer named".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One end of the encrypted link, shared by its reader and writers.
pub struct TlsLink {
    conn: Mutex<Connection>,
    /// The socket's send side and the ciphertext buffer, locked while a writer sends.
    send: Mutex<(TcpStream, Vec<u8>)>,
    recv: TcpStream,
}

impl TlsLink {
    /// The source's end: a TLS 1.3 handshake with the destination, which must present the
    /// certificate whose SHA-256 is `pin`.
    pub fn client(
        sock: TcpStream,
        pin: [u8; 32],
        timeout: Duration,
    ) -> Result<Arc<Self>, LinkError> {
        let p = provider();
        let algorithms = p.signature_verification_algorithms;
        let cfg = ClientConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("TLS setup", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pin, algorithms }))
            .with_no_client_auth();
        let name = ServerName::try_from("novacron-member").expect("a valid DNS name");
        let conn =
            ClientConnection::new(Arc::new(cfg), name).map_err(|e| tls_error("TLS setup", e))?;
        Self::handshake(sock, conn.into(), timeout, "the destination")
    }

    /// The destination's end, on an accepted connection.
    pub fn server(
        sock: TcpStream,
        cfg: Arc<ServerConfig>,
        timeout: Duration,
    ) -> Result<Arc<Self>, LinkError> {
        let conn = ServerConnection::new(cfg).map_err(|e| tls_error("TLS setup", e))?;
        Self::handshake(sock, conn.into(), timeout, "the source")
    }

    fn handshake(
        mut sock: TcpStream,
        mut conn: Connection,
        timeout: Duration,
        peer: &str,
    ) -> Result<Arc<Self>, LinkError> {
        let io = |e: io::Error| LinkError::io(format!("TLS handshake with {peer}"), e);
        sock.set_read_timeout(Some(timeout)).map_err(io)?;
        sock.set_write_timeout(Some(timeout)).map_err(io)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(io)?;
        }
        sock.set_read_timeout(None).map_err(io)?;
        sock.set_write_timeout(None).map_err(io)?;
        conn.set_buffer_limit(None); // writers drain what they encrypt at once
        let send = sock.try_clone().map_err(io)?;
        Ok(Arc::new(Self {
            conn: Mutex::new(conn),
            send: Mutex::new((send, Vec::new())),
            recv: sock,
        }))
    }

    /// Plaintext from the peer.
    pub fn reader(self: &Arc<Self>) -> TlsReader {
        TlsReader {
            link: self.clone(),
            raw: vec![0; RAW_READ].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Plaintext to the peer (each write is encrypted and sent before it returns).
    pub fn writer(self: &Arc<Self>) -> TlsWriter {
        TlsWriter { link: self.clone() }
    }

    /// The negotiated cipher suite (e.g. `TLS13_AES_256_GCM_SHA384`).
    pub fn cipher_suite(&self) -> Option<String> {
        let c = self.conn.lock().unwrap();
        c.negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
    }

    /// The socket (for fault injection and shutdown by the owner).
    pub fn socket(&self) -> &TcpStream {
        &self.recv
    }

    /// Encrypts `plain` (may be empty: only what rustls has pending) and sends it.
    fn send(&self, plain: &[u8]) -> io::Result<usize> {
        let mut send = self.send.lock().unwrap();
        let (sock, out) = &mut *send;
        out.clear();
        let n = {
            let mut c = self.conn.lock().unwrap();
            let n = if plain.is_empty() {
                0
            } else {
                c.writer().write(plain)?
            };
            while c.wants_write() {
                c.write_tls(out)?;
            }
            n
        };
        sock.write_all(out)?;
        Ok(n)
    }
}

/// The plaintext the peer sent, as a `Read`.
pub struct TlsReader {
    link: Arc<TlsLink>,
    raw: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Read for TlsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let mut c = self.link.conn.lock().unwrap();
            match c.reader().read(out) {
                Ok(n) => return Ok(n), // 0: the peer closed cleanly
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.start < self.end {
                let mut pending = &self.raw[self.start..self.end];
                let taken = c.read_tls(&mut pending)?;
                self.start += taken;
                process(&mut c)?;
                let reply = c.wants_write(); // a key update, an alert
                drop(c);
                if reply {
                    self.link.send(&[])?;
                }
                continue;
            }
            drop(c);
            // Nothing decrypted is left: wait for ciphertext without holding the connection.
            let n = loop {
                match (&self.link.recv).read(&mut self.raw) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            (self.start, self.end) = (0, n);
            if n == 0 {
                let mut c = self.link.conn.lock().unwrap();
                c.read_tls(&mut &[][..])?; // end of stream
                process(&mut c)?;
                return match c.reader().read(out) {
                    Ok(n) => Ok(n),
                    // Closed without close_notify: to the frame reader, the end of the stream
                    // (frames are authenticated; a cut inside one is still an error there).
                    Err(e)
                        if e.kind() == io::ErrorKind::UnexpectedEof
                            || e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        Ok(0)
                    }
                    Err(e) => Err(e),
                };
            }
        }
    }
}

/// Decrypts what `read_tls` took in; a record that fails is the stream's error.
fn process(c: &mut Connection) -> io::Result<()> {
    c.process_new_packets()
        .map(|_| ())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Plaintext to the peer, as a `Write`; cheap to make, one per writing thread.
pub struct TlsWriter {
    link: Arc<TlsLink>,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.link.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A data link's byte stream: TLS between daemons (always), or plain TCP for the
/// benchmark's unencrypted baseline (`bench/migration`, mode `link-plain`).
pub enum Link {
    /// TLS 1.3 (see [`TlsLink`]).
    Tls(Arc<TlsLink>),
    /// Plain TCP: benchmarks only.
    Plain(TcpStream),
}

impl Link {
    /// What the peer sends.
    pub fn reader(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Link::Tls(t) => Box::new(t.reader()),
            Link::Plain(s) => Box::new(s.try_clone()?),
        })
    }

    /// What goes to the peer.
    pub fn writer(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Link::Tls(t) => Box::new(t.writer()),
            Link::Plain(s) => Box::new(s.try_clone()?),
        })
    }

    /// Sends `bytes` whole (a small frame from a thread that is not the link's writer:
    /// no writer is made for it, and plain TCP writes to the socket it has).
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Tls(t) => t.writer().write_all(bytes),
            Link::Plain(s) => (&*s).write_all(bytes),
        }
    }

    /// The socket underneath.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Link::Tls(t) => t.socket(),
            Link::Plain(s) => s,
        }
    }

    /// Shuts the socket both ways.
    pub fn shutdown(&self) {
        let _ = self.socket().shutdown(Shutdown::Both);
    }
}

/// The SHA-256 of a PEM certificate's DER (what a source pins), for tests and tools.
pub fn certificate_sha256(cert_pem: &[u8]) -> Result<[u8; 32], LinkError> {
    let cert = CertificateDer::from_pem_slice(cert_pem).map_err(|e| tls_error("certificate", e))?;
    Ok(digest(&SHA256, cert.as_ref())
        .as_ref()
        .try_into()
        .expect("32 bytes"))
}
