//! An HTTP forward proxy for integration tests, on `127.0.0.1:0`.
//!
//! It supports `CONNECT host:port` (a byte tunnel, e.g. for https) and
//! absolute-form requests (`GET http://host:port/path HTTP/1.1`, rewritten to
//! origin form, sent with `Connection: close`, the answer relayed). With
//! credentials set, requests without a matching `Proxy-Authorization: Basic ...`
//! get `407` with `Proxy-Authenticate: Basic realm="proxy"`; `Proxy-Authorization`
//! is never forwarded.
//!
//! Safety: only loopback targets are ever connected to (`127.x.x.x` literals and
//! `localhost`, which is mapped to `127.0.0.1` without any DNS lookup); anything
//! else gets `403`. Tests must never reach outside the machine.
//!
//! Every request is logged ([`TestProxy::log`]); [`TestProxy::targets`] lists the
//! forwarded ones as `"CONNECT host:port"` / `"GET http://host:port/path"`, so a
//! test can prove that traffic went through the proxy. One request (or tunnel)
//! per client connection: the connection is closed after it.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// One request the proxy received.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyLogEntry {
    /// `"CONNECT host:port"` or `"METHOD http://host:port/path"`.
    pub request: String,
    /// Whether it was passed on to the target.
    pub forwarded: bool,
    /// The proxy's own answer (`200` tunnel established, `400`, `403`, `407`,
    /// `502`), or for a relayed absolute-form request the target's status
    /// (`0` until it has been seen).
    pub status: u16,
    /// The `Proxy-Authorization` header as received.
    pub proxy_authorization: Option<String>,
}

struct Shared {
    /// The accepted `Proxy-Authorization` value, if credentials are required.
    expected: Option<String>,
    log: Mutex<Vec<ProxyLogEntry>>,
    stop: AtomicBool,
}

/// The proxy; stops accepting when dropped (open tunnels finish on their own).
pub struct TestProxy {
    addr: SocketAddr,
    credentials: Option<(String, String)>,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

const IO_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_HEAD_LINES: usize = 200;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TestProxy {
    /// `credentials`: `Some((user, pass))` to require Basic proxy auth.
    pub fn start(credentials: Option<(String, String)>) -> TestProxy {
        let expected = credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                crate::git_http::base64_encode(format!("{u}:{p}").as_bytes())
            )
        });
        let shared = Arc::new(Shared {
            expected,
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: cannot bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy: no local address");
        let thread_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("proxy-accept-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if thread_shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let shared = Arc::clone(&thread_shared);
                    let spawned =
                        thread::Builder::new()
                            .name("proxy-conn".to_string())
                            .spawn(move || {
                                if let Err(e) = handle(&shared, stream) {
                                    eprintln!("proxy: connection error: {e}");
                                }
                            });
                    if let Err(e) = spawned {
                        eprintln!("proxy: cannot spawn connection thread: {e}");
                    }
                }
            })
            .expect("proxy: cannot spawn accept thread");
        TestProxy {
            addr,
            credentials,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `"http://user:pass@127.0.0.1:PORT"` (percent-encoded), or [`Self::url`]
    /// when no credentials are required.
    pub fn url_with_credentials(&self) -> String {
        match &self.credentials {
            Some((user, pass)) => format!(
                "http://{}:{}@{}",
                crate::git_http::percent_encode(user),
                crate::git_http::percent_encode(pass),
                self.addr
            ),
            None => self.url(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The forwarded requests: `"CONNECT host:port"` / `"GET http://host:port/path"`.
    pub fn targets(&self) -> Vec<String> {
        lock(&self.shared.log)
            .iter()
            .filter(|e| e.forwarded)
            .map(|e| e.request.clone())
            .collect()
    }

    /// Every request received, forwarded or refused.
    pub fn log(&self) -> Vec<ProxyLogEntry> {
        lock(&self.shared.log).clone()
    }

    /// Requests refused with `407`.
    pub fn auth_required_count(&self) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|e| e.status == 407)
            .count()
    }

    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
    }
}

struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(64 * 1024)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or truncated",
        ));
    }
    Ok(Some(
        String::from_utf8_lossy(&buf)
            .trim_end_matches(['\r', '\n'])
            .to_string(),
    ))
}

fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let Some(line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad request line {line:?}"),
        ));
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in headers")
        })?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEAD_LINES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many headers",
            ));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
    }))
}

fn respond(stream: &mut TcpStream, status: u16, reason: &str, extra: &[(&str, &str)]) {
    let body = format!("{status} {reason}\n");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

/// The loopback address for `host`, or `None` (never resolves names).
fn loopback(host: &str, port: u16) -> Option<SocketAddr> {
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse::<Ipv4Addr>()
            .ok()
            .filter(Ipv4Addr::is_loopback)?
    };
    Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}

/// Splits `host:port` (`default_port` if none); `None` if malformed.
fn host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.starts_with('[') {
        // IPv6 literals are not loopback-checked here: refuse.
        return None;
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

fn push_log(shared: &Shared, entry: ProxyLogEntry) -> usize {
    let mut log = lock(&shared.log);
    log.push(entry);
    log.len() - 1
}

fn handle(shared: &Shared, stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let mut client = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let head = match read_head(&mut reader) {
        Ok(Some(head)) => head,
        Ok(None) => return Ok(()),
        Err(e) => {
            respond(&mut client, 400, "Bad Request", &[]);
            return Err(e);
        }
    };
    let connect = head.method.eq_ignore_ascii_case("CONNECT");
    let request = format!("{} {}", head.method, head.target);
    let proxy_authorization = head.header("Proxy-Authorization").map(str::to_string);
    let mut entry = ProxyLogEntry {
        request,
        forwarded: false,
        status: 0,
        proxy_authorization: proxy_authorization.clone(),
    };

    // Where to, and (for absolute form) the origin-form path.
    let parsed = if connect {
        host_port(&head.target, 443).map(|hp| (hp, String::new()))
    } else {
        head.target.strip_prefix("http://").and_then(|rest| {
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], rest[i..].to_string()),
                None => (rest, "/".to_string()),
            };
            let path = if path.starts_with('?') {
                format!("/{path}")
            } else {
                path
            };
            host_port(authority, 80).map(|hp| (hp, path))
        })
    };
    let Some(((host, port), path)) = parsed else {
        entry.status = 400;
        push_log(shared, entry);
        respond(&mut client, 400, "Bad Request", &[]);
        return Ok(());
    };

    if let Some(expected) = &shared.expected {
        let ok = proxy_authorization.as_deref().is_some_and(|got| {
            let got = got.trim();
            match (got.split_once(' '), expected.split_once(' ')) {
                (Some((gs, gv)), Some((es, ev))) => gs.eq_ignore_ascii_case(es) && gv.trim() == ev,
                _ => false,
            }
        });
        if !ok {
            entry.status = 407;
            push_log(shared, entry);
            respond(
                &mut client,
                407,
                "Proxy Authentication Required",
                &[("Proxy-Authenticate", "Basic realm=\"proxy\"")],
            );
            return Ok(());
        }
    }

    let Some(target) = loopback(&host, port) else {
        entry.status = 403;
        push_log(shared, entry);
        respond(&mut client, 403, "Forbidden", &[]);
        return Ok(());
    };
    let mut upstream = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            entry.status = 502;
            push_log(shared, entry);
            respond(&mut client, 502, "Bad Gateway", &[]);
            return Err(e);
        }
    };
    let _ = upstream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = upstream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = upstream.set_nodelay(true);

    entry.forwarded = true;
    let index = if connect {
        entry.status = 200;
        push_log(shared, entry);
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        client.flush()?;
        None
    } else {
        let index = push_log(shared, entry);
        let mut out = format!("{} {path} {}\r\n", head.method, head.version);
        let mut has_host = false;
        for (name, value) in &head.headers {
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "proxy-authorization" | "proxy-connection" | "connection" | "keep-alive"
            ) {
                continue;
            }
            has_host |= lower == "host";
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if !has_host {
            out.push_str(&format!("Host: {host}:{port}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        upstream.write_all(out.as_bytes())?;
        Some(index)
    };

    // Bytes the client sent right after the head (request body, TLS ClientHello).
    let buffered = reader.buffer().to_vec();
    if !buffered.is_empty() {
        upstream.write_all(&buffered)?;
    }
    let mut client_in = reader.into_inner();
    let mut upstream_in = upstream.try_clone()?;
    let up = thread::spawn(move || {
        let _ = io::copy(&mut client_in, &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    relay_down(&mut upstream_in, &mut client, shared, index);
    let _ = client.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

/// Target → client; for relayed requests the status line is recorded in the log.
fn relay_down(from: &mut TcpStream, to: &mut TcpStream, shared: &Shared, index: Option<usize>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut first = index.map(|_| Vec::new());
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let (Some(seen), Some(i)) = (first.as_mut(), index) {
            seen.extend_from_slice(&buf[..n]);
            if seen.contains(&b'\n') || seen.len() > 256 {
                let line = String::from_utf8_lossy(seen).into_owned();
                let status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if let Some(entry) = lock(&shared.log).get_mut(i) {
                    entry.status = status;
                }
                first = None;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}
