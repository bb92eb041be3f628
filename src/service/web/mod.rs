//! The web catalog (`[web] listen`): read-only pages for people and a JSON API for programs, served on a
//! listener of its own by `modelmirror run` and by `modelmirror serve` (the catalog alone, no polling).
//!
//! Every request passes [`auth`] first (static assets excepted), then runs its queries on a blocking thread
//! with one of a few reading connections to the database, so a long import never holds a page up. Nothing
//! here writes to the catalog or starts a poll. Every answer carries the security headers (a
//! Content-Security-Policy without inline script, no framing, no sniffing, no referrer).

mod api;
pub(crate) mod auth;
mod diagram;
mod html;
mod pages;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ServiceError;
use super::http::{self, Answer};
use super::state::{ConfigHandle, current};
use crate::query::Catalog;
use crate::store::Store;
use auth::{Auth, Check, Denied};

/// Reading connections to the database: queries of concurrent requests run side by side on them, and
/// requests wait their turn for one in the order they came.
const READERS: usize = 4;
/// Requests of one client (address) at the readers at once: a client sending many requests at once waits
/// for its own, and cannot take every reader from the others.
const READERS_PER_CLIENT: usize = 2;
/// Passwords verified with bcrypt at once (it takes tens of milliseconds of CPU each), and how many may
/// wait for their turn (more get 503).
const VERIFYING: usize = 2;
const MAX_VERIFY_QUEUE: usize = 64;
/// How long a request may wait and work before it is answered 503 (its work, if started, still ends).
const DEADLINE: Duration = Duration::from_secs(30);
/// Connections served at once, and per client address (a browser opens about six), so that no client can
/// take every slot; more are closed as they arrive. `[web] trusted_proxies` hold any number.
const LIMITS: http::Limits = http::Limits {
    max_connections: 512,
    max_per_client: 64,
    proxies: Vec::new(),
    header_timeout: Duration::from_secs(10),
};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// A short hash of the stylesheet and the script: pages link them with it (`?v=`), so browsers may keep
/// them for a day and still get new ones after an upgrade.
fn asset_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let digest = openssl::sha::sha256(format!("{STYLE}\u{0}{SCRIPT}").as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// The web catalog's shared state.
pub(crate) struct Web {
    config: ConfigHandle,
    /// The idle reading connections; `turns` has as many permits as there are connections here.
    readers: std::sync::Mutex<Vec<Store>>,
    /// A request holds a permit while it uses a reading connection; waiting requests queue in order (tokio's
    /// semaphore is fair).
    turns: Arc<tokio::sync::Semaphore>,
    /// Each client's share of the readers (`READERS_PER_CLIENT`), kept while it has requests in flight.
    clients: std::sync::Mutex<HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
    /// Turns at bcrypt, and how many requests are waiting for one or using one.
    verifying: Arc<tokio::sync::Semaphore>,
    verify_queue: std::sync::atomic::AtomicUsize,
    auth: Auth,
    /// `[web] trusted_proxies` at start.
    proxies: Vec<IpAddr>,
}

impl Web {
    /// Open the reading connections to `database` and read the credential files of `[web]`.
    pub(crate) fn new(
        config: ConfigHandle,
        database: &crate::store::Database,
    ) -> Result<Web, ServiceError> {
        let settings = current(&config).web.clone();
        let auth = match &settings {
            Some(w) => Auth::new(w).map_err(ServiceError::WebAuth)?,
            None => Auth::new(&crate::config::WebConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                users_file: None,
                tokens_file: None,
                allow_anonymous: false,
                public_url: None,
                trusted_proxies: Vec::new(),
            })
            .map_err(ServiceError::WebAuth)?,
        };
        let readers = (0..READERS)
            .map(|_| Store::open_read_only(database))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::Store)?;
        Ok(Web {
            config,
            turns: Arc::new(tokio::sync::Semaphore::new(readers.len())),
            readers: std::sync::Mutex::new(readers),
            clients: std::sync::Mutex::new(HashMap::new()),
            verifying: Arc::new(tokio::sync::Semaphore::new(VERIFYING)),
            verify_queue: std::sync::atomic::AtomicUsize::new(0),
            auth,
            proxies: settings.map(|w| w.trusted_proxies).unwrap_or_default(),
        })
    }

    /// Run `work` for `client` on a blocking thread with a reading connection, once the client's share and
    /// a reader are free. `None` when the work failed unexpectedly.
    async fn with_reader<T: Send + 'static>(
        self: &Arc<Self>,
        client: IpAddr,
        work: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        let key = http::client_key(client);
        let share = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(READERS_PER_CLIENT)))
            .clone();
        // Forget the client's share when nothing of it is in flight any more (counted under the lock that
        // hands shares out, so no request can be between the two).
        struct Leave(Arc<Web>, IpAddr, Option<Arc<tokio::sync::Semaphore>>);
        impl Drop for Leave {
            fn drop(&mut self) {
                let mut clients = self.0.clients.lock().unwrap_or_else(|p| p.into_inner());
                drop(self.2.take());
                if clients
                    .get(&self.1)
                    .is_some_and(|s| Arc::strong_count(s) == 1)
                {
                    clients.remove(&self.1);
                }
            }
        }
        let leave = Leave(self.clone(), key, Some(share.clone()));
        let mine = share.acquire_owned().await.ok()?;
        let turn = self.turns.clone().acquire_owned().await.ok()?;
        let web = self.clone();
        // The permits go with the work: when a request gives up waiting, its reader is not handed on
        // until the work has ended.
        tokio::task::spawn_blocking(move || {
            // Dropped when the work ends, however the request fared meanwhile.
            let _permits = (mine, turn, leave);
            let store = web
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()?;
            // Back to the idle ones even when `work` panics.
            struct Return<'a>(&'a Web, Option<Store>);
            impl Drop for Return<'_> {
                fn drop(&mut self) {
                    if let Some(s) = self.1.take() {
                        self.0
                            .readers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(s);
                    }
                }
            }
            let held = Return(&web, Some(store));
            held.1.as_ref().map(work)
        })
        .await
        .ok()
        .flatten()
    }

    /// The client behind `peer`: the address a trusted proxy forwarded for (the last one in
    /// `X-Forwarded-For` that is not itself a trusted proxy), else `peer`.
    fn client(&self, peer: IpAddr, headers: &hyper::HeaderMap) -> IpAddr {
        http::forwarded_client(&self.proxies, peer, headers)
    }
}

/// `modelmirror serve`: the web catalog alone (no polling, nothing written), until SIGTERM or SIGINT.
pub(crate) async fn serve_alone(config: crate::config::Config) -> Result<(), ServiceError> {
    let Some(settings) = config.web.clone() else {
        return Err(ServiceError::NoWeb);
    };
    let database = config.database.clone();
    let handle: ConfigHandle = Arc::new(std::sync::RwLock::new(Arc::new(config)));
    let listener = http::bind(settings.listen, "the web catalog", "[web] listen").await?;
    let web = Arc::new(Web::new(handle, &database)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(serve(listener, web, stop_rx));
    super::shutdown_signal().await;
    let _ = stop_tx.send(true);
    let _ = serving.await;
    Ok(())
}

/// Serve the web catalog on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, web: Arc<Web>, stop: watch::Receiver<bool>) {
    let limits = http::Limits {
        proxies: web.proxies.clone(),
        ..LIMITS
    };
    http::serve(listener, "web catalog", limits, stop, move |req, peer| {
        handle(web.clone(), req, peer)
    })
    .await;
}

/// A request's query parameters (the first value of each).
pub(super) struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: Option<&str>) -> Params {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
        Params(map)
    }

    /// A parameter, when given and not empty.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The commits asked for (`commit`, `from`, `to`) must be commit ids (4 to 40 hex digits): git's other
    /// revision syntax (`:/regex`, `HEAD~100000`) would let a request search the whole history.
    fn commits(&self) -> Result<(), api::ApiError> {
        for key in ["commit", "from", "to"] {
            if let Some(v) = self.get(key)
                && !((4..=40).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(api::ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{key} = {:?}: give a commit id (4 to 40 hexadecimal digits)",
                        v.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn required(&self, key: &str) -> Result<&str, api::ApiError> {
        self.get(key).ok_or_else(|| {
            api::ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the `{key}` parameter is required"),
            )
        })
    }
}

/// What a handler needs of a request.
pub(super) struct Request<'a> {
    path: &'a str,
    params: Params,
    /// Where users reach the catalog (`[web] public_url`), for links that leave the page.
    public_url: Option<&'a str>,
    raw_query: &'a str,
}

impl Request<'_> {
    /// This request's URL (below `public_url` when set) with `key` set to `value`.
    fn with_param(&self, key: &str, value: &str) -> String {
        let mut pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(self.raw_query.as_bytes())
                .filter(|(k, _)| k != key)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        pairs.push((key.to_string(), value.to_string()));
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!(
            "{}{}?{query}",
            self.public_url.unwrap_or(""),
            self.path_prefix()
        )
    }

    fn path_prefix(&self) -> String {
        format!("/api/v1{}", self.path)
    }
}

/// An answer before the common headers go on.
pub(super) struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    content_type: &'static str,
    /// The next page of a list.
    link_next: Option<String>,
    etag: Option<String>,
}

impl Reply {
    fn bytes(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Reply {
        Reply {
            status,
            body,
            content_type,
            link_next: None,
            etag: None,
        }
    }

    fn html(status: StatusCode, html: String) -> Reply {
        Reply::bytes(status, html.into_bytes(), "text/html; charset=utf-8")
    }

    fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Reply::bytes(status, body, "application/json"),
            Err(e) => Reply::bytes(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{{\"error\": \"cannot write the answer: {e}\", \"status\": 500}}")
                    .into_bytes(),
                "application/json",
            ),
        }
    }

    fn into_answer(self) -> Answer {
        let mut answer = http::answer(self.status, Bytes::from(self.body), self.content_type);
        let headers = answer.headers_mut();
        if let Some(next) = self.link_next
            && let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\""))
        {
            headers.insert(hyper::header::LINK, v);
        }
        if let Some(etag) = self.etag
            && let Ok(v) = HeaderValue::from_str(&etag)
        {
            headers.insert(hyper::header::ETAG, v);
        }
        answer
    }
}

/// The headers every answer carries.
fn secure(answer: &mut Answer, cache: &'static str) {
    let headers = answer.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", cache),
    ] {
        // An answer that says how it may be kept (the static files) keeps that.
        if name == "cache-control" && headers.contains_key(hyper::header::CACHE_CONTROL) {
            continue;
        }
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

async fn handle(web: Arc<Web>, req: hyper::Request<Incoming>, peer: SocketAddr) -> Answer {
    let started = std::time::Instant::now();
    let mut answer = route(web, req, peer).await;
    // How long the server took (waiting for a reading connection included), for the browser's developer
    // tools and the benchmark.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "app;dur={:.1}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        answer
            .headers_mut()
            .insert(HeaderName::from_static("server-timing"), v);
    }
    let cache = if answer.headers().contains_key(hyper::header::ETAG) {
        "no-cache"
    } else {
        "no-store"
    };
    secure(&mut answer, cache);
    answer
}

async fn route(web: Arc<Web>, req: hyper::Request<Incoming>, peer: SocketAddr) -> Answer {
    let path = req.uri().path().to_string();
    let is_api = path.starts_with("/api/");
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut a = http::answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "the catalog is read only: use GET\n",
            "text/plain; charset=utf-8",
        );
        a.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return a;
    }
    match path.as_str() {
        "/static/style.css" | "/static/app.js" => {
            let (body, kind) = match path.as_str() {
                "/static/style.css" => (STYLE, "text/css; charset=utf-8"),
                _ => (SCRIPT, "text/javascript; charset=utf-8"),
            };
            let mut a = http::answer(StatusCode::OK, body, kind);
            a.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            );
            return a;
        }
        _ => {}
    }
    let client = http::client_key(web.client(peer.ip(), req.headers()));
    match web.auth.start(req.headers(), client, is_api) {
        Check::Allowed => {}
        Check::Denied(denied) => return refuse(denied, is_api, web.auth.has_users()),
        Check::Verify(pending) => {
            // bcrypt on a blocking thread, a few at a time, a bounded queue waiting, under the deadline.
            let Some(_waiting) = Waiting::enter(&web.verify_queue, MAX_VERIFY_QUEUE) else {
                return busy(is_api);
            };
            let checker = web.clone();
            let verified = tokio::time::timeout(DEADLINE, async move {
                let turn = checker.verifying.clone().acquire_owned().await.ok()?;
                tokio::task::spawn_blocking(move || {
                    let _turn = turn;
                    checker.auth.verify(pending)
                })
                .await
                .ok()
            })
            .await;
            match verified {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(denied))) => return refuse(denied, is_api, web.auth.has_users()),
                Ok(None) => return failed("the password check ended early"),
                Err(_) => return busy(is_api),
            }
        }
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let if_none_match = req
        .headers()
        .get(hyper::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let config_handle = web.config.clone();
    let work = web.with_reader(client, move |store| {
        let config = current(&config_handle);
        let catalog = Catalog {
            config: &config,
            store,
        };
        let public_url = config.web.as_ref().and_then(|w| w.public_url.as_deref());
        if let Some(api_path) = path.strip_prefix("/api/v1") {
            let etag = match store.catalog_version() {
                Ok(v) => etag(&format!("{v}.{}", config.generation)),
                Err(e) => return api::error(&crate::query::QueryError::from(e).into()),
            };
            let request = Request {
                path: api_path,
                params: Params::parse(Some(&query)),
                public_url,
                raw_query: &query,
            };
            if let Err(e) = request.params.commits() {
                return api::error(&e);
            }
            let mut reply = api::answer(&request, &catalog, api_path);
            // Only an answer that exists can be not modified (RFC 9110: `*` matches any current one).
            if reply.status.is_success()
                && if_none_match.as_deref().is_some_and(|m| {
                    // Compared weakly (RFC 9110): `W/"x"` and `"x"` are the same tag.
                    let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
                    m.split(',')
                        .any(|t| t.trim() == "*" || weak(t) == weak(&etag))
                })
            {
                reply = Reply::bytes(StatusCode::NOT_MODIFIED, Vec::new(), "application/json");
            }
            if reply.status.is_success() || reply.status == StatusCode::NOT_MODIFIED {
                reply.etag = Some(etag);
            }
            reply
        } else if is_api {
            api::error(&api::ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API version: use /api/v1 (/api/v1/openapi.json describes it)",
            ))
        } else {
            let request = Request {
                path: &path,
                params: Params::parse(Some(&query)),
                public_url,
                raw_query: &query,
            };
            if let Err(e) = request.params.commits() {
                return pages::bad_request(e.message);
            }
            pages::answer(&request, &catalog)
        }
    });
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Some(reply)) => reply.into_answer(),
        Ok(None) => failed("the request's work ended early"),
        Err(_) => busy(is_api),
    }
}

/// 503 with `Retry-After`: the catalog could not answer in time.
fn busy(is_api: bool) -> Answer {
    let message = "the catalog is busy: try again in a moment";
    let mut busy = if is_api {
        api::error(&api::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            message,
        ))
        .into_answer()
    } else {
        http::answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{message}\n"),
            "text/plain; charset=utf-8",
        )
    };
    busy.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
    busy
}

/// One place in a bounded queue, left when dropped.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(queue: &'a std::sync::atomic::AtomicUsize, max: usize) -> Option<Waiting<'a>> {
        use std::sync::atomic::Ordering;
        let before = queue.fetch_add(1, Ordering::AcqRel);
        let place = Waiting(queue);
        (before < max).then_some(place)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A weak entity tag for the catalog's state `version`: opaque, the first 16 hex digits of its SHA-256.
fn etag(version: &str) -> String {
    let digest = openssl::sha::sha256(version.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("W/\"{hex}\"")
}

/// The answer when a request's work failed unexpectedly (a bug): logged, and a plain 500.
fn failed(why: &str) -> Answer {
    tracing::error!("web catalog: a request failed unexpectedly: {why}");
    http::answer(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error\n",
        "text/plain; charset=utf-8",
    )
}

/// The answer to a request that is not let in.
fn refuse(denied: Denied, is_api: bool, users: bool) -> Answer {
    let (status, message) = match denied {
        Denied::Missing if !users && !is_api => (
            StatusCode::UNAUTHORIZED,
            "this catalog has API tokens only (tokens_file), no users to sign in with: ask its operator for a user (users_file)",
        ),
        Denied::Missing => (
            StatusCode::UNAUTHORIZED,
            "sign in: this catalog needs credentials",
        ),
        Denied::Wrong => (
            StatusCode::UNAUTHORIZED,
            "wrong user name, password or token",
        ),
        Denied::TooMany => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong credentials from this address: wait a minute",
        ),
    };
    let reply = if is_api {
        api::error(&api::ApiError::new(status, message))
    } else {
        Reply::html(
            status,
            html::page(
                "Sign in",
                &[],
                "",
                &format!(
                    "<h1>Sign in</h1><p class=\"error\">{}</p>",
                    html::esc(message)
                ),
            ),
        )
    };
    let mut answer = reply.into_answer();
    let headers = answer.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        // The browser asks for a password only where there are users to sign in as.
        let challenge = if users {
            "Basic realm=\"modelmirror\", charset=\"UTF-8\""
        } else {
            "Bearer realm=\"modelmirror\""
        };
        headers.insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    } else {
        headers.insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    answer
}
