//! TLS for integration tests: a throw-away CA plus a server certificate, and a TLS
//! terminator that puts `https://127.0.0.1:PORT` in front of a plain HTTP server
//! (e.g. a `GitHttpServer` or a `Forge`).
//!
//! [`TestCert::generate`] makes, with the `openssl` crate, an EC P-256 CA and a
//! server certificate for `127.0.0.1`, `::1` and `localhost` (SAN IP + DNS entries,
//! `serverAuth`), valid from a day ago for a year, and writes them as PEM files.
//! Clients must be told to trust `ca_pem` (curl `--cacert`, git
//! `-c http.sslCAInfo=...`, `SSL_CERT_FILE`, ...); without it the handshake fails.
//! Beware of the environment: git's `GIT_SSL_CAINFO` **overrides**
//! `http.sslCAInfo`, and some machines export it (and `SSL_CERT_FILE`,
//! `CURL_CA_BUNDLE`) pointing at the system bundle; [`TestCert::trust_env`] gives
//! the variables to set on a child process so that git (CLI, libcurl), curl and
//! OpenSSL-based clients such as libgit2 trust the test CA.
//!
//! [`TlsTerminator::start`] accepts TLS on `127.0.0.1:0` and pipes the decrypted
//! bytes both ways to the backend, one thread pair per connection; it does not look
//! at HTTP at all. A server behind it that writes absolute URLs must be told the
//! public `https://` base (`Forge::set_external_url`). It counts accepted
//! connections and completed/failed handshakes, so a test can prove that a client
//! went through TLS (or was refused).

#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Name, X509NameBuilder};

/// PEM files of a test CA and a server certificate signed by it.
#[derive(Clone, Debug)]
pub struct TestCert {
    /// The CA certificate: what clients must trust.
    pub ca_pem: PathBuf,
    /// The server certificate (leaf only).
    pub cert_pem: PathBuf,
    /// The server's private key (PKCS#8 PEM).
    pub key_pem: PathBuf,
    /// The CA's private key (PKCS#8 PEM), to sign more certificates if needed.
    pub ca_key_pem: PathBuf,
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("tls: P-256 group");
    let key = EcKey::generate(&group).expect("tls: EC key generation");
    PKey::from_ec_key(key).expect("tls: EC key to PKey")
}

fn name(common_name: &str) -> X509Name {
    let mut builder = X509NameBuilder::new().expect("tls: X509NameBuilder");
    builder
        .append_entry_by_nid(Nid::ORGANIZATIONNAME, "modelmirror tests")
        .expect("tls: O entry");
    builder
        .append_entry_by_nid(Nid::COMMONNAME, common_name)
        .expect("tls: CN entry");
    builder.build()
}

fn serial() -> Asn1Integer {
    let mut bn = BigNum::new().expect("tls: BigNum");
    bn.rand(127, MsbOption::MAYBE_ZERO, false)
        .expect("tls: random serial");
    bn.to_asn1_integer().expect("tls: serial to ASN.1")
}

fn validity() -> (Asn1Time, Asn1Time) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let now = i64::try_from(now).expect("tls: time fits i64");
    let not_before = Asn1Time::from_unix(now - 86_400).expect("tls: notBefore");
    let not_after = Asn1Time::from_unix(now + 365 * 86_400).expect("tls: notAfter");
    (not_before, not_after)
}

impl TestCert {
    /// A fresh CA and a server certificate for `127.0.0.1`, `::1` and `localhost`,
    /// written to `dir/ca.pem`, `dir/ca.key`, `dir/server.pem` and `dir/server.key`.
    pub fn generate(dir: &Path) -> TestCert {
        TestCert::generate_for(dir, &["localhost"], &["127.0.0.1", "::1"])
    }

    /// Like [`Self::generate`] with the given SAN DNS names and IP addresses.
    pub fn generate_for(dir: &Path, dns_names: &[&str], ips: &[&str]) -> TestCert {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("tls: cannot create {}: {e}", dir.display()));
        let (not_before, not_after) = validity();

        // The CA.
        let ca_key = ec_key();
        let ca_name = name("modelmirror test CA");
        let mut ca = X509::builder().expect("tls: X509 builder");
        ca.set_version(2).expect("tls: version");
        ca.set_serial_number(&serial()).expect("tls: serial");
        ca.set_subject_name(&ca_name).expect("tls: subject");
        ca.set_issuer_name(&ca_name).expect("tls: issuer");
        ca.set_pubkey(&ca_key).expect("tls: pubkey");
        ca.set_not_before(&not_before).expect("tls: notBefore");
        ca.set_not_after(&not_after).expect("tls: notAfter");
        ca.append_extension(
            BasicConstraints::new()
                .critical()
                .ca()
                .build()
                .expect("tls: basicConstraints"),
        )
        .expect("tls: add basicConstraints");
        ca.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .digital_signature()
                .build()
                .expect("tls: keyUsage"),
        )
        .expect("tls: add keyUsage");
        let ski = SubjectKeyIdentifier::new()
            .build(&ca.x509v3_context(None, None))
            .expect("tls: SKI");
        ca.append_extension(ski).expect("tls: add SKI");
        ca.sign(&ca_key, MessageDigest::sha256())
            .expect("tls: sign CA");
        let ca = ca.build();

        // The server certificate.
        let key = ec_key();
        let mut cert = X509::builder().expect("tls: X509 builder");
        cert.set_version(2).expect("tls: version");
        cert.set_serial_number(&serial()).expect("tls: serial");
        let cn = dns_names
            .first()
            .or_else(|| ips.first())
            .copied()
            .unwrap_or("localhost");
        cert.set_subject_name(&name(cn)).expect("tls: subject");
        cert.set_issuer_name(ca.subject_name())
            .expect("tls: issuer");
        cert.set_pubkey(&key).expect("tls: pubkey");
        cert.set_not_before(&not_before).expect("tls: notBefore");
        cert.set_not_after(&not_after).expect("tls: notAfter");
        cert.append_extension(
            BasicConstraints::new()
                .build()
                .expect("tls: basicConstraints"),
        )
        .expect("tls: add basicConstraints");
        cert.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .expect("tls: keyUsage"),
        )
        .expect("tls: add keyUsage");
        cert.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .build()
                .expect("tls: extendedKeyUsage"),
        )
        .expect("tls: add extendedKeyUsage");
        let mut san = SubjectAlternativeName::new();
        for dns in dns_names {
            san.dns(dns);
        }
        for ip in ips {
            san.ip(ip);
        }
        let san = san
            .build(&cert.x509v3_context(Some(&ca), None))
            .expect("tls: subjectAltName");
        cert.append_extension(san).expect("tls: add subjectAltName");
        let ski = SubjectKeyIdentifier::new()
            .build(&cert.x509v3_context(Some(&ca), None))
            .expect("tls: SKI");
        cert.append_extension(ski).expect("tls: add SKI");
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .issuer(false)
            .build(&cert.x509v3_context(Some(&ca), None))
            .expect("tls: AKI");
        cert.append_extension(aki).expect("tls: add AKI");
        cert.sign(&ca_key, MessageDigest::sha256())
            .expect("tls: sign server certificate");
        let cert = cert.build();

        let write = |file: &str, bytes: Vec<u8>| {
            let path = dir.join(file);
            std::fs::write(&path, bytes)
                .unwrap_or_else(|e| panic!("tls: cannot write {}: {e}", path.display()));
            path
        };
        TestCert {
            ca_pem: write("ca.pem", ca.to_pem().expect("tls: CA to PEM")),
            ca_key_pem: write(
                "ca.key",
                ca_key
                    .private_key_to_pem_pkcs8()
                    .expect("tls: CA key to PEM"),
            ),
            cert_pem: write("server.pem", cert.to_pem().expect("tls: cert to PEM")),
            key_pem: write(
                "server.key",
                key.private_key_to_pem_pkcs8().expect("tls: key to PEM"),
            ),
        }
    }
}

impl TestCert {
    /// Environment variables that make git, curl and OpenSSL (libgit2) trust
    /// exactly this CA: `GIT_SSL_CAINFO`, `CURL_CA_BUNDLE` and `SSL_CERT_FILE`
    /// point at `ca_pem`. Also remove `GIT_SSL_CAPATH` and `SSL_CERT_DIR` from the
    /// child's environment to trust nothing else.
    pub fn trust_env(&self) -> Vec<(&'static str, PathBuf)> {
        ["GIT_SSL_CAINFO", "CURL_CA_BUNDLE", "SSL_CERT_FILE"]
            .into_iter()
            .map(|name| (name, self.ca_pem.clone()))
            .collect()
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    failed_handshakes: AtomicUsize,
    last_error: Mutex<Option<String>>,
}

/// Accepts TLS on `127.0.0.1:0` and forwards the plain bytes to `backend`. Stops
/// accepting when dropped (open connections finish on their own).
pub struct TlsTerminator {
    addr: SocketAddr,
    backend: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    accept_thread: Option<JoinHandle<()>>,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(50);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TlsTerminator {
    pub fn start(backend: SocketAddr, cert: &TestCert) -> TlsTerminator {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .expect("tls: SslAcceptor");
        acceptor
            .set_private_key_file(&cert.key_pem, SslFiletype::PEM)
            .expect("tls: load server key");
        acceptor
            .set_certificate_chain_file(&cert.cert_pem)
            .expect("tls: load server certificate");
        acceptor
            .check_private_key()
            .expect("tls: key/cert mismatch");
        let acceptor = Arc::new(acceptor.build());

        let listener = TcpListener::bind("127.0.0.1:0").expect("tls: cannot bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("tls: no local address");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (thread_stop, thread_counters) = (Arc::clone(&stop), Arc::clone(&counters));
        let accept_thread = thread::Builder::new()
            .name(format!("tls-accept-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if thread_stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(tcp) = conn else {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    thread_counters.connections.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, counters) =
                        (Arc::clone(&acceptor), Arc::clone(&thread_counters));
                    let spawned = thread::Builder::new()
                        .name("tls-conn".to_string())
                        .spawn(move || serve(&acceptor, tcp, backend, &counters));
                    if let Err(e) = spawned {
                        eprintln!("tls: cannot spawn connection thread: {e}");
                    }
                }
            })
            .expect("tls: cannot spawn accept thread");
        TlsTerminator {
            addr,
            backend,
            stop,
            counters,
            accept_thread: Some(accept_thread),
        }
    }

    /// `"https://127.0.0.1:PORT"` (no trailing slash).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `"https://localhost:PORT"` (the certificate covers the name too).
    pub fn https_localhost_url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Maps `http://[user[:pass]@]127.0.0.1:BACKEND/...` (the backend's URL) to
    /// the same URL behind TLS (`https://`, this port, user info kept); other URLs
    /// are returned unchanged.
    pub fn url_for(&self, http_url: &str) -> String {
        let Some(rest) = http_url.strip_prefix("http://") else {
            return http_url.to_string();
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((user, host)) => (format!("{user}@"), host),
            None => (String::new(), authority),
        };
        if host_port != self.backend.to_string() {
            return http_url.to_string();
        }
        format!("https://{userinfo}{}{path}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Completed TLS handshakes so far.
    pub fn handshakes(&self) -> usize {
        self.counters.handshakes.load(Ordering::SeqCst)
    }

    /// Failed TLS handshakes so far (e.g. a client that does not trust the CA).
    pub fn failed_handshakes(&self) -> usize {
        self.counters.failed_handshakes.load(Ordering::SeqCst)
    }

    /// The last handshake error, for assertions and debugging.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.counters.last_error).clone()
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn serve(acceptor: &SslAcceptor, tcp: TcpStream, backend: SocketAddr, counters: &Counters) {
    let _ = tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(IDLE_TIMEOUT));
    let _ = tcp.set_nodelay(true);
    let tls = match acceptor.accept(tcp) {
        Ok(tls) => tls,
        Err(e) => {
            counters.failed_handshakes.fetch_add(1, Ordering::SeqCst);
            *lock(&counters.last_error) = Some(e.to_string());
            return;
        }
    };
    counters.handshakes.fetch_add(1, Ordering::SeqCst);
    let upstream = match TcpStream::connect_timeout(&backend, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tls: cannot connect to backend {backend}: {e}");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = upstream.set_read_timeout(Some(IDLE_TIMEOUT));
    // Short read timeouts let the two directions take turns on the one SslStream.
    let _ = tls.get_ref().set_read_timeout(Some(POLL));
    let raw = match tls.get_ref().try_clone() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tls: cannot clone client stream: {e}");
            return;
        }
    };
    let tls = Arc::new(Mutex::new(tls));
    let done = Arc::new(AtomicBool::new(false));

    let down = {
        let (tls, done) = (Arc::clone(&tls), Arc::clone(&done));
        let mut upstream = match upstream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tls: cannot clone backend stream: {e}");
                return;
            }
        };
        thread::spawn(move || {
            backend_to_client(&mut upstream, &tls);
            done.store(true, Ordering::SeqCst);
        })
    };
    client_to_backend(&tls, &raw, upstream, &done);
    let _ = down.join();
}

/// Backend → client until the backend closes; then close_notify and FIN.
fn backend_to_client(upstream: &mut TcpStream, tls: &Mutex<SslStream<TcpStream>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match upstream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let mut tls = lock(tls);
                if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let mut tls = lock(tls);
    let _ = tls.shutdown();
    let _ = tls.get_ref().shutdown(Shutdown::Write);
}

/// Client → backend until the client closes, the other direction is done, or idle.
/// Waits for raw bytes with `peek` on `raw` (a clone of the TLS socket) without
/// holding the lock, so the other direction is not held up while the client is quiet.
fn client_to_backend(
    tls: &Mutex<SslStream<TcpStream>>,
    raw: &TcpStream,
    mut upstream: TcpStream,
    done: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_activity = Instant::now();
    loop {
        let buffered = lock(tls).ssl().pending() > 0;
        if !buffered {
            match raw.peek(&mut [0u8; 1]) {
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {
                    if done.load(Ordering::SeqCst) || last_activity.elapsed() > IDLE_TIMEOUT {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            }
        }
        let read = lock(tls).ssl_read(&mut buf);
        match read {
            Ok(0) => break,
            Ok(n) => {
                last_activity = Instant::now();
                if upstream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) => {
                // A partial record times out as WANT_READ: wait for more.
                let timed_out = e.io_error().is_some_and(is_timeout)
                    || e.code() == openssl::ssl::ErrorCode::WANT_READ;
                if !timed_out || done.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    let _ = upstream.shutdown(Shutdown::Write);
}
