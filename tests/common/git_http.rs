//! A real git smart-HTTP server for integration tests.
//!
//! It runs `git http-backend` as a CGI program behind a tiny threaded HTTP/1.1
//! server bound to `127.0.0.1:0`. Every bare repository below the given root is
//! served: `http://127.0.0.1:PORT/<relative path>/info/refs?service=...` etc.
//!
//! Notes on what clients actually send:
//! - Each fetch session starts with `GET <repo>/info/refs?service=git-upload-pack`
//!   (counted by [`GitHttpServer::ref_listing_count`]).
//! - libgit2 speaks protocol v0: a no-change fetch is just that GET; a real fetch
//!   adds one (or more, for long negotiations) `POST <repo>/git-upload-pack`.
//! - The git CLI speaks protocol v2 by default (it sends `Git-Protocol: version=2`,
//!   forwarded as `HTTP_GIT_PROTOCOL`). Then the ref listing itself is a
//!   `POST .../git-upload-pack` whose body starts with `command=ls-refs`, so even a
//!   no-change `git fetch` makes one POST. Such requests are logged with
//!   `command == Some("ls-refs")` and are not counted by
//!   [`GitHttpServer::fetch_count`]. Pass `-c protocol.version=0` to the CLI for
//!   v0 behaviour.
//! - Push (`git-receive-pack`) is enabled (`http.receivepack=true`).
//! - Unless auth is `Auth::None`, requests without valid credentials get `401`
//!   with `WWW-Authenticate: Basic realm="test"`; clients then retry. libgit2
//!   never sends Basic credentials up front: every session starts with a 401,
//!   then the credentials callback is asked. On a wrong password libgit2 calls
//!   the callback again after each 401, forever, unless the callback gives up.
//! - The git CLI sends a "probe" POST (body `0000`) before a big request that it
//!   streams chunked (bigger than `http.postBuffer`); logged with `probe == true`
//!   and not counted as a fetch/push. It gzips request bodies over ~1 KiB
//!   (`Content-Encoding: gzip`, handled by http-backend). libgit2 sends
//!   upload-pack requests with Content-Length and pushes chunked.
//!
//! # REST API hook
//!
//! [`GitHttpServer::start_with_api`] puts a fake REST API on the same port: every
//! request (after its body has been read) is first offered to the hook as an
//! [`ApiRequest`]; `Some(ApiResponse)` is sent back as is, `None` falls through to
//! the git handling above, including its [`Auth`] check. Hook requests are logged
//! with `api == true`. A panicking hook answers 500 (the panic is printed).
//! `tests/common/forges.rs` builds fakes of the GitLab, GitHub and Bitbucket APIs on it.

#![allow(dead_code)]

use base64::Engine as _;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Which credentials the server demands.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    /// Anonymous access.
    None,
    /// `Authorization: Basic base64(user:pass)`.
    Basic { user: String, pass: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// Basic with any user name and this password (tells clients apart in the log: see
    /// [`LoggedRequest::user`]).
    AnyUser { pass: String },
    /// Accepts either the Basic or the Bearer credential.
    BasicOrBearer {
        user: String,
        pass: String,
        token: String,
    },
}

impl Auth {
    /// Convenience constructor for [`Auth::Basic`].
    pub fn basic(user: &str, pass: &str) -> Auth {
        Auth::Basic {
            user: user.to_string(),
            pass: pass.to_string(),
        }
    }

    /// Convenience constructor for [`Auth::Bearer`].
    pub fn bearer(token: &str) -> Auth {
        Auth::Bearer(token.to_string())
    }

    /// Checks an `Authorization` header value. `Ok(remote_user)` when accepted
    /// (`None` for anonymous access), `Err(())` when it must be answered with 401.
    fn check(&self, header: Option<&str>) -> Result<Option<String>, ()> {
        let (scheme, value) = match header.map(str::trim) {
            Some(h) => match h.split_once(' ') {
                Some((s, v)) => (s.to_ascii_lowercase(), v.trim()),
                None => (h.to_ascii_lowercase(), ""),
            },
            None => (String::new(), ""),
        };
        let basic_ok = |user: &str, pass: &str| {
            scheme == "basic"
                && base64_decode(value).is_some_and(|d| d == format!("{user}:{pass}").as_bytes())
        };
        let bearer_ok = |token: &str| scheme == "bearer" && value == token;
        match self {
            Auth::None => Ok(None),
            Auth::Basic { user, pass } if basic_ok(user, pass) => Ok(Some(user.clone())),
            Auth::AnyUser { pass } => {
                let decoded = (scheme == "basic")
                    .then(|| base64_decode(value))
                    .flatten()
                    .and_then(|d| String::from_utf8(d).ok());
                match decoded.as_deref().and_then(|d| d.split_once(':')) {
                    Some((user, p)) if p == pass => Ok(Some(user.to_string())),
                    _ => Err(()),
                }
            }
            Auth::Bearer(token) if bearer_ok(token) => Ok(Some("bearer".to_string())),
            Auth::BasicOrBearer { user, pass, .. } if basic_ok(user, pass) => {
                Ok(Some(user.clone()))
            }
            Auth::BasicOrBearer { token, .. } if bearer_ok(token) => Ok(Some("bearer".to_string())),
            _ => Err(()),
        }
    }
}

/// One request as seen by the server (401s included).
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    /// Request path without the query string (not percent-decoded).
    pub path: String,
    /// Query string without the leading `?` (empty if none).
    pub query: String,
    /// The raw `Authorization` header value, for leak tests.
    pub authorization: Option<String>,
    /// The HTTP status sent back.
    pub status: u16,
    /// `"git-upload-pack"` / `"git-receive-pack"`, from the query or the path.
    pub service: Option<String>,
    /// For protocol v2 POSTs: the command from the body (`"ls-refs"`, `"fetch"`).
    /// `None` for v0 requests and gzip-compressed bodies.
    pub command: Option<String>,
    /// The `Git-Protocol` request header, if any (e.g. `"version=2"`).
    pub git_protocol: Option<String>,
    /// The `User-Agent` request header, if any.
    pub user_agent: Option<String>,
    /// Size of the (decoded, i.e. de-chunked) request body.
    pub body_len: usize,
    /// Whether the body was sent with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The `Content-Encoding` of the request body (the git CLI gzips big ones).
    pub content_encoding: Option<String>,
    /// The body was just a flush packet (`0000`): the git CLI sends such a "probe"
    /// POST before a big (chunked) request, to settle authentication first.
    pub probe: bool,
    /// Whatever `git http-backend` wrote to stderr.
    pub stderr: String,
    /// Answered by the API hook (see [`GitHttpServer::start_with_api`]) rather than by git.
    pub api: bool,
    /// All request headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The user the request was accepted for (`None`: anonymous access or refused).
    pub user: Option<String>,
    /// When the request's head had arrived.
    pub started: std::time::SystemTime,
    /// When the response was ready (git's work done; it is written after).
    pub finished: std::time::SystemTime,
}

impl LoggedRequest {
    /// `GET .../info/refs` (the start of every fetch/push session).
    pub fn is_ref_listing(&self) -> bool {
        self.method == "GET" && self.path.ends_with("/info/refs")
    }

    /// `POST .../git-upload-pack` that is neither a protocol v2 `ls-refs` nor a probe.
    pub fn is_fetch(&self) -> bool {
        self.method == "POST"
            && self.path.ends_with("/git-upload-pack")
            && self.command.as_deref() != Some("ls-refs")
            && !self.probe
    }

    /// `POST .../git-receive-pack` that is not a probe.
    pub fn is_push(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/git-receive-pack") && !self.probe
    }

    /// A request header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request offered to the API hook of [`GitHttpServer::start_with_api`].
#[derive(Clone, Debug)]
pub struct ApiRequest {
    /// `GET`, `POST`, ... as sent.
    pub method: String,
    /// The path as sent, **not** percent-decoded (so `/groups/a%2Fb/projects` keeps its `%2F`).
    pub path: String,
    /// The raw query string without the `?` (empty if none).
    pub query: String,
    /// All headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked; not decompressed).
    pub body: Vec<u8>,
}

impl ApiRequest {
    /// A header by (case-insensitive) name; the first one if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter, percent-decoded (`+` becomes a space).
    /// `Some("")` for `?flag` and `?flag=`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// All query parameters in order, percent-decoded (`+` becomes a space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        query_pairs(&self.query)
    }

    /// The percent-decoded path.
    pub fn decoded_path(&self) -> String {
        percent_decode(&self.path)
    }
}

/// Splits a raw query string into percent-decoded pairs (`+` is a space).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values
/// and path segments).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The answer of the API hook. `Content-Length` and `Connection` are added by the server.
#[derive(Clone, Debug)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// A JSON body with `Content-Type: application/json; charset=utf-8`.
    pub fn json(status: u16, value: &serde_json::Value) -> ApiResponse {
        ApiResponse {
            status,
            headers: vec![(
                "Content-Type".to_string(),
                "application/json; charset=utf-8".to_string(),
            )],
            body: value.to_string().into_bytes(),
        }
    }

    /// A plain-text body (sent exactly as given) with `Content-Type: text/plain; charset=utf-8`.
    pub fn text(status: u16, text: &str) -> ApiResponse {
        ApiResponse {
            status,
            headers: vec![(
                "Content-Type".to_string(),
                "text/plain; charset=utf-8".to_string(),
            )],
            body: text.as_bytes().to_vec(),
        }
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> ApiResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A response header by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The API hook: `None` lets git handle the request.
pub type ApiHook = Arc<dyn Fn(&ApiRequest) -> Option<ApiResponse> + Send + Sync>;

struct Shared {
    root: PathBuf,
    backend: PathBuf,
    auth: Mutex<Auth>,
    api: Option<ApiHook>,
    log: Mutex<Vec<LoggedRequest>>,
    stop: AtomicBool,
    /// When set, response bodies are sent at about this many bytes a second (a slow server).
    throttle: Mutex<Option<usize>>,
    /// When set to `(marker, bytes)`: a pack (`POST …/git-upload-pack`) for a path containing `marker` stops
    /// after `bytes` of its body, and the connection stays open, silent, until the stall is lifted (a server
    /// that hangs mid-transfer).
    stall: Mutex<Option<(String, usize)>>,
    /// Requests being processed now (read, not yet answered), and the most there have been at once.
    open: AtomicUsize,
    most_open: AtomicUsize,
}

/// A git smart-HTTP server that stops when dropped.
pub struct GitHttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Path of the `git-http-backend` program (`$(git --exec-path)/git-http-backend`).
pub fn http_backend_path() -> PathBuf {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git_http: failed to run `git --exec-path` (is git installed?)");
    assert!(
        out.status.success(),
        "git_http: `git --exec-path` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exec_path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let backend = Path::new(&exec_path).join("git-http-backend");
    assert!(
        backend.exists(),
        "git_http: {} does not exist",
        backend.display()
    );
    backend
}

impl GitHttpServer {
    /// Serve every bare repository below `root`:
    /// GET/POST `http://127.0.0.1:PORT/<relative path of repo>/info/refs?service=git-upload-pack` etc.
    pub fn start(root: &Path, auth: Auth) -> GitHttpServer {
        GitHttpServer::start_inner(root, auth, None)
    }

    /// Like [`Self::start`], but every request is first offered to `api`; `None`
    /// falls through to git (including its `auth` check). See [`ApiRequest`].
    pub fn start_with_api(root: &Path, auth: Auth, api: ApiHook) -> GitHttpServer {
        GitHttpServer::start_inner(root, auth, Some(api))
    }

    /// Like [`Self::start`], on a listener of the caller's (a server that went away, coming back where it
    /// was).
    pub fn start_listening(root: &Path, auth: Auth, listener: TcpListener) -> GitHttpServer {
        GitHttpServer::start_at(root, auth, None, listener)
    }

    fn start_inner(root: &Path, auth: Auth, api: Option<ApiHook>) -> GitHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("git_http: cannot bind 127.0.0.1:0");
        GitHttpServer::start_at(root, auth, api, listener)
    }

    fn start_at(
        root: &Path,
        auth: Auth,
        api: Option<ApiHook>,
        listener: TcpListener,
    ) -> GitHttpServer {
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("git_http: cannot canonicalize {}: {e}", root.display()));
        let addr = listener
            .local_addr()
            .expect("git_http: listener has no local address");
        let shared = Arc::new(Shared {
            root,
            backend: http_backend_path(),
            auth: Mutex::new(auth),
            api,
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            throttle: Mutex::new(None),
            stall: Mutex::new(None),
            open: AtomicUsize::new(0),
            most_open: AtomicUsize::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("git-http-accept-{}", addr.port()))
            .spawn(move || accept_loop(&listener, &accept_shared))
            .expect("git_http: cannot spawn accept thread");
        GitHttpServer {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// `"http://127.0.0.1:PORT"` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// URL of the repository at `rel` below the root, e.g. `repo_url("books.git")`.
    pub fn repo_url(&self, rel: &str) -> String {
        format!("{}/{}", self.url(), rel.trim_start_matches('/'))
    }

    /// Like [`Self::repo_url`] but with `user:pass@` embedded (no percent-encoding is done).
    pub fn repo_url_with_credentials(&self, rel: &str, user: &str, pass: &str) -> String {
        format!(
            "http://{user}:{pass}@{}/{}",
            self.addr,
            rel.trim_start_matches('/')
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The (canonicalized) directory that is served.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// All requests so far, in the order their responses were produced.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log).clone()
    }

    /// The requests answered by the API hook.
    pub fn api_requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.api)
            .cloned()
            .collect()
    }

    /// The requests handled by git (everything the API hook passed on).
    pub fn git_requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| !r.api)
            .cloned()
            .collect()
    }

    /// Send response bodies at about `bytes_per_sec` (None: full speed).
    pub fn set_throttle(&self, bytes_per_sec: Option<usize>) {
        *lock(&self.shared.throttle) = bytes_per_sec;
    }

    /// Make packs for paths containing `marker` hang after `after_bytes` of their body (`None`: lift it;
    /// the hanging connections are then closed).
    pub fn set_stall(&self, stall: Option<(&str, usize)>) {
        *lock(&self.shared.stall) = stall.map(|(m, n)| (m.to_string(), n));
    }

    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
    }

    /// The most requests processed at once so far (from their head read to their answer ready: the work the
    /// server does for them).
    pub fn most_busy(&self) -> usize {
        self.shared.most_open.load(Ordering::SeqCst)
    }

    /// Change the required credentials at runtime (e.g. to test a rotated/wrong token).
    pub fn set_auth(&self, auth: Auth) {
        *lock(&self.shared.auth) = auth;
    }

    pub fn auth(&self) -> Auth {
        lock(&self.shared.auth).clone()
    }

    /// Number of successful (2xx) `POST .../git-upload-pack` requests, i.e. real
    /// fetches. Protocol v2 `ls-refs` POSTs and probe POSTs (git CLI) are not
    /// counted. A long negotiation can take several POSTs for one fetch.
    pub fn fetch_count(&self) -> usize {
        self.count(|r| r.is_fetch() && is_success(r.status))
    }

    /// Number of successful (2xx) ref listings (`GET .../info/refs`).
    pub fn ref_listing_count(&self) -> usize {
        self.count(|r| r.is_ref_listing() && is_success(r.status))
    }

    /// Number of successful (2xx) `POST .../git-receive-pack` requests (probes excluded).
    pub fn push_count(&self) -> usize {
        self.count(|r| r.is_push() && is_success(r.status))
    }

    /// Number of git requests answered with 401 (API hook answers are not counted).
    pub fn unauthorized_count(&self) -> usize {
        self.count(|r| !r.api && r.status == 401)
    }

    fn count(&self, pred: impl Fn(&LoggedRequest) -> bool) -> usize {
        lock(&self.shared.log).iter().filter(|r| pred(r)).count()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblock accept(); the accept loop sees the flag and exits.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
        // Connection threads are detached: each serves one request and closes, and
        // has socket timeouts, so they finish on their own.
    }
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                let shared = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name("git-http-conn".to_string())
                    .spawn(move || handle_connection(&shared, stream));
                if let Err(e) = spawned {
                    eprintln!("git_http: cannot spawn connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("git_http: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A parsed request head.
struct RequestHead {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The response to send.
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn simple(status: u16, text: &str) -> Response {
        Response {
            status,
            reason: reason_phrase(status).to_string(),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: format!("{text}\n").into_bytes(),
        }
    }
}

const IO_TIMEOUT: Duration = Duration::from_mins(2);
const MAX_HEAD_LINES: usize = 200;

/// One request being processed, counted until dropped.
struct Open<'a>(&'a Shared);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle_connection(shared: &Shared, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("git_http: cannot clone stream: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream);

    let head = match read_head(&mut reader) {
        Ok(Some(head)) => head,
        // Connection closed without a request (e.g. the shutdown poke).
        Ok(None) => return,
        Err(e) => {
            let resp = Response::simple(400, &format!("bad request: {e}"));
            let _ = write_response(&mut writer, &resp, false);
            return;
        }
    };

    let mut entry = LoggedRequest {
        method: head.method.clone(),
        path: head.path.clone(),
        query: head.query.clone(),
        authorization: head.header("Authorization").map(str::to_string),
        status: 0,
        service: service_of(&head.path, &head.query),
        command: None,
        git_protocol: head.header("Git-Protocol").map(str::to_string),
        user_agent: head.header("User-Agent").map(str::to_string),
        body_len: 0,
        chunked: false,
        content_encoding: head.header("Content-Encoding").map(str::to_string),
        probe: false,
        stderr: String::new(),
        api: false,
        headers: head
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        user: None,
        started: std::time::SystemTime::now(),
        finished: std::time::SystemTime::now(),
    };

    let now = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
    shared.most_open.fetch_max(now, Ordering::SeqCst);
    let busy = Open(shared);
    let response = match process(shared, &head, &mut reader, &mut writer, peer, &mut entry) {
        Ok(resp) => resp,
        Err(e) => Response::simple(500, &format!("git_http: {e}")),
    };
    drop(busy);
    entry.status = response.status;
    entry.finished = std::time::SystemTime::now();
    // Log before answering, so the entry is visible once the client has the response.
    lock(&shared.log).push(entry);
    let is_head = head.method.eq_ignore_ascii_case("HEAD");
    let throttle = *lock(&shared.throttle);
    let stall = lock(&shared.stall)
        .clone()
        .filter(|(marker, _)| entry_is_pack(&head) && head.path.contains(marker.as_str()));
    if let Some((marker, after)) = stall {
        write_then_hang(shared, &mut writer, &response, &marker, after);
        return;
    }
    let written = match throttle {
        Some(rate) if !is_head => write_response_slowly(&mut writer, &response, rate),
        _ => write_response(&mut writer, &response, is_head),
    };
    if let Err(e) = written {
        eprintln!(
            "git_http: writing response to {} {} failed: {e}",
            head.method, head.path
        );
    }
}

fn process(
    shared: &Shared,
    head: &RequestHead,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    peer: Option<SocketAddr>,
    entry: &mut LoggedRequest,
) -> io::Result<Response> {
    // Always consume the whole request body first (after `100 Continue` if asked
    // for), so that closing the connection never resets it under the client.
    let expects_continue = head
        .header("Expect")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if expects_continue {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    let chunked = head
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked_body(reader)?
    } else {
        match head.header("Content-Length") {
            Some(len) => {
                let len: usize = len.trim().parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                })?;
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body)?;
                body
            }
            None => Vec::new(),
        }
    };
    entry.chunked = chunked;
    entry.body_len = body.len();
    entry.probe = head.method == "POST" && body == b"0000";

    let body = match &shared.api {
        Some(api) => {
            let request = ApiRequest {
                method: head.method.clone(),
                path: head.path.clone(),
                query: head.query.clone(),
                headers: entry.headers.clone(),
                body,
            };
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| api(&request)));
            match answer {
                Ok(Some(resp)) => {
                    entry.api = true;
                    entry.service = None;
                    entry.probe = false;
                    return Ok(Response {
                        status: resp.status,
                        reason: reason_phrase(resp.status).to_string(),
                        headers: resp
                            .headers
                            .into_iter()
                            .filter(|(k, _)| {
                                !k.eq_ignore_ascii_case("Content-Length")
                                    && !k.eq_ignore_ascii_case("Connection")
                                    && !k.eq_ignore_ascii_case("Transfer-Encoding")
                            })
                            .collect(),
                        body: resp.body,
                    });
                }
                Ok(None) => request.body,
                Err(_) => {
                    entry.api = true;
                    return Ok(Response::simple(500, "git_http: the API hook panicked"));
                }
            }
        }
        None => body,
    };

    let gzipped = head
        .header("Content-Encoding")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity"));
    if !gzipped {
        entry.command = v2_command(&body);
    }

    let auth = lock(&shared.auth).clone();
    let Ok(remote_user) = auth.check(head.header("Authorization")) else {
        let mut resp = Response::simple(401, "authentication required");
        resp.headers.push((
            "WWW-Authenticate".to_string(),
            "Basic realm=\"test\"".to_string(),
        ));
        return Ok(resp);
    };

    entry.user = remote_user.clone();
    run_cgi(shared, head, body, remote_user, peer, entry)
}

fn run_cgi(
    shared: &Shared,
    head: &RequestHead,
    body: Vec<u8>,
    remote_user: Option<String>,
    peer: Option<SocketAddr>,
    entry: &mut LoggedRequest,
) -> io::Result<Response> {
    let mut env: HashMap<&str, String> = HashMap::new();
    if let Some(path) = std::env::var_os("PATH") {
        env.insert("PATH", path.to_string_lossy().into_owned());
    }
    if let Some(home) = std::env::var_os("HOME") {
        env.insert("HOME", home.to_string_lossy().into_owned());
    }
    // Isolate from the user's/system git config; enable push and ignore ownership checks.
    env.insert("GIT_CONFIG_NOSYSTEM", "1".into());
    env.insert("GIT_CONFIG_GLOBAL", "/dev/null".into());
    env.insert("GIT_CONFIG_COUNT", "2".into());
    env.insert("GIT_CONFIG_KEY_0", "http.receivepack".into());
    env.insert("GIT_CONFIG_VALUE_0", "true".into());
    env.insert("GIT_CONFIG_KEY_1", "safe.directory".into());
    env.insert("GIT_CONFIG_VALUE_1", "*".into());

    env.insert(
        "GIT_PROJECT_ROOT",
        shared.root.to_string_lossy().into_owned(),
    );
    env.insert("GIT_HTTP_EXPORT_ALL", "1".into());
    env.insert("GATEWAY_INTERFACE", "CGI/1.1".into());
    env.insert("SERVER_PROTOCOL", "HTTP/1.1".into());
    env.insert("SERVER_SOFTWARE", "modelmirror-test-git-http".into());
    env.insert("SERVER_NAME", "127.0.0.1".into());
    env.insert("REQUEST_METHOD", head.method.clone());
    env.insert("PATH_INFO", percent_decode(&head.path));
    env.insert("QUERY_STRING", head.query.clone());
    env.insert("SCRIPT_NAME", String::new());
    env.insert("CONTENT_LENGTH", body.len().to_string());
    if let Some(ct) = head.header("Content-Type") {
        env.insert("CONTENT_TYPE", ct.to_string());
    }
    if let Some(ce) = head.header("Content-Encoding") {
        env.insert("HTTP_CONTENT_ENCODING", ce.to_string());
    }
    if let Some(proto) = head.header("Git-Protocol") {
        env.insert("HTTP_GIT_PROTOCOL", proto.to_string());
    }
    if let Some(user) = remote_user {
        env.insert("REMOTE_USER", user);
        env.insert("AUTH_TYPE", "Basic".into());
    }
    if let Some(peer) = peer {
        env.insert("REMOTE_ADDR", peer.ip().to_string());
        env.insert("REMOTE_PORT", peer.port().to_string());
    }

    let mut child = Command::new(&shared.backend)
        .env_clear()
        .envs(&env)
        .current_dir(&shared.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("git_http: child stdin is piped");
    let mut stdout = child
        .stdout
        .take()
        .expect("git_http: child stdout is piped");
    let mut stderr = child
        .stderr
        .take()
        .expect("git_http: child stderr is piped");

    // Feed stdin and drain stderr on their own threads to avoid pipe deadlocks.
    let stdin_thread = thread::spawn(move || {
        // http-backend may exit without reading everything (e.g. on errors).
        let _ = stdin.write_all(&body);
        // Dropping stdin closes the pipe (EOF for the child).
    });
    let stderr_thread = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut output = Vec::new();
    let read_result = stdout.read_to_end(&mut output);
    let _ = stdin_thread.join();
    let stderr_bytes = stderr_thread.join().unwrap_or_default();
    let exit = child.wait()?;
    read_result?;

    entry.stderr = String::from_utf8_lossy(&stderr_bytes).into_owned();
    if !entry.stderr.trim().is_empty() {
        eprintln!(
            "git_http: http-backend stderr for {} {}?{}: {}",
            head.method,
            head.path,
            head.query,
            entry.stderr.trim_end()
        );
    }

    match parse_cgi_output(&output) {
        Some(resp) => Ok(resp),
        None => Ok(Response::simple(
            500,
            &format!(
                "git http-backend produced no CGI headers (exit: {exit}); stderr: {}",
                entry.stderr
            ),
        )),
    }
}

/// Splits CGI output into headers and body; `Status:` becomes the HTTP status.
fn parse_cgi_output(output: &[u8]) -> Option<Response> {
    let crlf = find(output, b"\r\n\r\n").map(|i| (i, i + 4));
    let lf = find(output, b"\n\n").map(|i| (i, i + 2));
    let (head_end, body_start) = match (crlf, lf) {
        (Some(a), Some(b)) => {
            if a.0 <= b.0 {
                a
            } else {
                b
            }
        }
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => return None,
    };
    let head = String::from_utf8_lossy(&output[..head_end]);
    let mut status = 200u16;
    let mut reason = None;
    let mut headers = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("Status") {
            let (code, text) = value.split_once(' ').unwrap_or((value, ""));
            status = code.trim().parse().ok()?;
            if !text.trim().is_empty() {
                reason = Some(text.trim().to_string());
            }
        } else if name.eq_ignore_ascii_case("Content-Length")
            || name.eq_ignore_ascii_case("Connection")
            || name.eq_ignore_ascii_case("Transfer-Encoding")
        {
            // Framing is ours.
        } else {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    Some(Response {
        status,
        reason: reason.unwrap_or_else(|| reason_phrase(status).to_string()),
        headers,
        body: output[body_start..].to_vec(),
    })
}

fn entry_is_pack(head: &RequestHead) -> bool {
    head.method == "POST" && head.path.ends_with("/git-upload-pack")
}

/// Send the head and the first `after` bytes of the body, then nothing while the stall for `marker` lasts
/// (at most `IO_TIMEOUT`); then drop the connection without the rest.
fn write_then_hang(
    shared: &Shared,
    stream: &mut TcpStream,
    resp: &Response,
    marker: &str,
    after: usize,
) {
    let mut head = Vec::new();
    let _ = write!(head, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for (name, value) in &resp.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    );
    head.extend_from_slice(&resp.body[..after.min(resp.body.len())]);
    if stream
        .write_all(&head)
        .and_then(|()| stream.flush())
        .is_err()
    {
        return;
    }
    let started = std::time::Instant::now();
    while started.elapsed() < IO_TIMEOUT
        && !shared.stop.load(Ordering::SeqCst)
        && lock(&shared.stall)
            .as_ref()
            .is_some_and(|(m, _)| m == marker)
    {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Send a response at about `rate` bytes a second, in small pieces (a slow or stalling server).
fn write_response_slowly(stream: &mut TcpStream, resp: &Response, rate: usize) -> io::Result<()> {
    let mut head = Vec::new();
    write!(head, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason)?;
    for (name, value) in &resp.headers {
        write!(head, "{name}: {value}\r\n")?;
    }
    write!(
        head,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    )?;
    stream.write_all(&head)?;
    let piece = (rate / 10).max(1);
    for chunk in resp.body.chunks(piece) {
        stream.write_all(chunk)?;
        stream.flush()?;
        thread::sleep(std::time::Duration::from_millis(100));
    }
    stream.shutdown(Shutdown::Write)
}

fn write_response(stream: &mut TcpStream, resp: &Response, head_only: bool) -> io::Result<()> {
    let mut out = Vec::with_capacity(resp.body.len() + 256);
    write!(out, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason)?;
    for (name, value) in &resp.headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    write!(out, "Content-Length: {}\r\n", resp.body.len())?;
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    stream.write_all(&out)?;
    stream.flush()?;
    stream.shutdown(Shutdown::Write)
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
    let line = String::from_utf8_lossy(&buf);
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<RequestHead>> {
    let Some(request_line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad request line {request_line:?}"),
        ));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
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
    Ok(Some(RequestHead {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
    }))
}

fn read_chunked_body(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let bad = |msg: &str| io::Error::new(io::ErrorKind::InvalidData, msg.to_string());
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| bad("eof in chunk size"))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| bad(&format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let trailer = read_line(reader)?.ok_or_else(|| bad("eof in trailers"))?;
                if trailer.is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let crlf = read_line(reader)?.ok_or_else(|| bad("eof after chunk"))?;
        if !crlf.is_empty() {
            return Err(bad("missing CRLF after chunk data"));
        }
    }
}

/// The protocol v2 command (`command=ls-refs` / `command=fetch`) in a pkt-line body.
fn v2_command(body: &[u8]) -> Option<String> {
    let len = usize::from_str_radix(std::str::from_utf8(body.get(..4)?).ok()?, 16).ok()?;
    let payload = body.get(4..len)?;
    let text = std::str::from_utf8(payload).ok()?;
    let cmd = text.strip_prefix("command=")?;
    Some(cmd.trim_end_matches('\n').to_string())
}

fn service_of(path: &str, query: &str) -> Option<String> {
    for pair in query.split('&') {
        if let Some(service) = pair.strip_prefix("service=") {
            return Some(service.to_string());
        }
    }
    let last = path.rsplit('/').next()?;
    (last == "git-upload-pack" || last == "git-receive-pack").then(|| last.to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes `%XX` escapes (invalid escapes are kept as they are; invalid UTF-8 is replaced).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Standard base64 with padding.
pub fn base64_encode(input: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// Decodes standard base64 (padding optional). `None` on invalid input.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(input.trim())
        .ok()
}

/// `"Basic base64(user:pass)"`, for building `Authorization` headers in tests.
pub fn basic_auth_header(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{pass}").as_bytes())
    )
}
