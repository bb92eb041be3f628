//! REST calls to a provider's API: one HTTP client per provider (timeouts, extra CA, proxy), the request
//! budget (`max_requests_per_hour`), rate-limit holds from `429`/`403` answers and the `RateLimit-*` /
//! `X-RateLimit-*` headers, and pagination helpers. The per-kind files say which endpoints to call.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::ProviderKind;
use crate::secret::Secret;

/// A boxed future, so the per-kind REST calls can sit behind the `Forge` trait object.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The longest a request waits inline for a rate limit to pass; longer holds end the run, are shown in
/// `status`, and the next run starts after them.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(30);
/// How often one request is retried after rate-limit answers.
const MAX_ATTEMPTS: u32 = 5;
/// Wait after a rate-limit answer that says nothing about when to come back (GitHub documents "at least a
/// minute").
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// A safety net against servers whose pagination never ends.
pub(crate) const MAX_PAGES: usize = 10_000;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{status} from provider {provider}: token rejected — {hint}")]
    Unauthorized {
        provider: String,
        status: u16,
        hint: &'static str,
    },
    #[error(
        "404 from provider {provider}: {what} not found — check the name, and that the token may see it"
    )]
    NotFound { provider: String, what: String },
    #[error(
        "provider {provider} is held back until {until} ({reason}); modelmirror waits and tries again then"
    )]
    RateLimited {
        provider: String,
        until: DateTime<Utc>,
        reason: String,
    },
    #[error("provider {provider}: HTTP {status} from {url}: {message}")]
    Status {
        provider: String,
        status: u16,
        url: String,
        message: String,
    },
    #[error("provider {provider}: cannot reach {url}: {message}")]
    Network {
        provider: String,
        url: String,
        message: String,
    },
    #[error("provider {provider}: unexpected answer from {url}: {message}")]
    Malformed {
        provider: String,
        url: String,
        message: String,
    },
    #[error("provider {provider}: {message}")]
    Setup { provider: String, message: String },
    #[error("403 from provider {provider}: {message} — {need}")]
    Forbidden {
        provider: String,
        message: String,
        /// What the token needs for the call.
        need: String,
    },
}

impl ApiError {
    /// Whether trying the same request later may succeed: the network, a rate limit, a server error, or a
    /// conflict (GitLab's concurrent status updates).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ApiError::Network { .. } | ApiError::RateLimited { .. } => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 409 || *status == 408,
            _ => false,
        }
    }
}

/// The request budget and rate-limit hold of one provider, shared by all its REST calls in this process.
#[derive(Debug)]
pub(crate) struct Limits {
    max_per_hour: u32,
    state: Mutex<LimitState>,
}

#[derive(Debug, Default)]
struct LimitState {
    recent: VecDeque<Instant>,
    hold: Option<Hold>,
}

/// Until when a provider is held back, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hold {
    pub(crate) until: DateTime<Utc>,
    pub(crate) reason: String,
}

impl Limits {
    pub(crate) fn new(max_per_hour: u32) -> Arc<Limits> {
        Arc::new(Limits {
            max_per_hour,
            state: Mutex::new(LimitState::default()),
        })
    }

    /// The budget this was made with.
    pub(crate) fn max_per_hour(&self) -> u32 {
        self.max_per_hour
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current hold, if it has not passed.
    pub(crate) fn hold(&self) -> Option<Hold> {
        let mut s = self.lock();
        if s.hold.as_ref().is_some_and(|h| h.until <= Utc::now()) {
            s.hold = None;
        }
        s.hold.clone()
    }

    /// Start from a hold known from elsewhere (the database: another process, or before a restart).
    pub(crate) fn hold_until(&self, until: DateTime<Utc>, reason: String) {
        let mut s = self.lock();
        if until > Utc::now() && s.hold.as_ref().is_none_or(|h| h.until < until) {
            s.hold = Some(Hold { until, reason });
        }
    }

    fn set_hold(&self, wait: Duration, reason: String) -> Hold {
        let until =
            Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(60));
        let hold = Hold { until, reason };
        let mut s = self.lock();
        if s.hold.as_ref().is_none_or(|h| h.until < hold.until) {
            s.hold = Some(hold.clone());
        }
        s.hold.clone().unwrap_or(hold)
    }

    /// Take one request from the budget, or say how long to wait for one.
    fn take(&self) -> Result<(), (Duration, String)> {
        let mut s = self.lock();
        let now = Instant::now();
        if let Some(h) = &s.hold {
            let left = (h.until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if !left.is_zero() {
                return Err((left, h.reason.clone()));
            }
            s.hold = None;
        }
        let hour = Duration::from_secs(3600);
        while s
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= hour)
        {
            s.recent.pop_front();
        }
        if s.recent.len() >= self.max_per_hour as usize {
            let oldest = s.recent.front().copied().unwrap_or(now);
            let wait = hour.saturating_sub(now.duration_since(oldest));
            return Err((
                wait,
                format!("max_requests_per_hour ({}) reached", self.max_per_hour),
            ));
        }
        s.recent.push_back(now);
        Ok(())
    }
}

/// How a token is presented to the REST API.
#[derive(Clone)]
pub(crate) struct RestAuth {
    pub(crate) header: &'static str,
    pub(crate) value: Secret,
}

impl RestAuth {
    pub(crate) fn bearer(token: &Secret) -> RestAuth {
        RestAuth {
            header: "authorization",
            value: Secret::new(format!("Bearer {}", token.expose())),
        }
    }
    pub(crate) fn basic(username: &str, token: &Secret) -> RestAuth {
        RestAuth {
            header: "authorization",
            value: Secret::new(format!(
                "Basic {}",
                BASE64.encode(format!("{username}:{}", token.expose()))
            )),
        }
    }
}

/// One answer.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) url: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a REST client needs from a provider's configuration.
pub(crate) struct ApiSettings<'a> {
    /// The provider's name, for messages and metrics.
    pub(crate) provider: &'a str,
    pub(crate) kind: ProviderKind,
    /// The API base (`None`: this provider has no REST API).
    pub(crate) api_url: Option<&'a str>,
    /// With a `username`, some hosts take the token as Basic auth.
    pub(crate) username: Option<&'a str>,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    /// An extra CA bundle (PEM) to trust.
    pub(crate) ca_file: Option<&'a std::path::Path>,
    /// `http://[user:pass@]host:port`.
    pub(crate) proxy: Option<&'a Secret>,
}

/// A provider's REST API, ready to call.
pub(crate) struct ApiClient {
    pub(crate) provider: String,
    pub(crate) base: String,
    http: reqwest::Client,
    auth: Option<RestAuth>,
    limits: Arc<Limits>,
    hint: &'static str,
}

impl ApiClient {
    /// A client for `provider`, presenting `token` (read just now, so rotations apply) as its kind expects.
    pub(crate) fn new(
        provider: &ApiSettings<'_>,
        token: Option<&Secret>,
        limits: Arc<Limits>,
    ) -> Result<ApiClient, ApiError> {
        let setup = |message: String| ApiError::Setup {
            provider: provider.provider.to_string(),
            message,
        };
        let base = provider
            .api_url
            .map(str::to_string)
            .ok_or_else(|| setup(format!("kind {} has no REST API", provider.kind.as_str())))?;
        let forge = provider.kind.forge();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(provider.connect_timeout)
            .read_timeout(provider.read_timeout)
            .user_agent(concat!("modelmirror/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(ca) = provider.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("cannot read ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("ca_file {} is not a PEM bundle: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(proxy) = provider.proxy {
            let p = reqwest::Proxy::all(proxy.expose()).map_err(|_| {
                setup(format!(
                    "proxy {:?} is not a valid URL",
                    crate::redact::redact_url(proxy.expose())
                ))
            })?;
            builder = builder.proxy(p);
        }
        let http = builder
            .build()
            .map_err(|e| setup(format!("cannot set up HTTPS: {e}")))?;
        let auth = token.map(|t| forge.rest_auth(provider.username, t));
        Ok(ApiClient {
            provider: provider.provider.to_string(),
            base,
            http,
            auth,
            limits,
            hint: forge.token_hint(),
        })
    }

    /// `base` + `path_and_query`.
    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// GET `url`, waiting out short rate limits; any status is returned except rate limiting.
    pub(crate) async fn get(&self, url: &str) -> Result<Response, ApiError> {
        self.send(reqwest::Method::GET, url, None).await
    }

    /// POST `body` as JSON to `url`, like [`ApiClient::get`]: from the same budget, waiting out short rate
    /// limits; any status is returned except rate limiting.
    pub(crate) async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<Response, ApiError> {
        self.send(reqwest::Method::POST, url, Some(body)).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ApiError> {
        for _attempt in 0..MAX_ATTEMPTS {
            if let Err((wait, reason)) = self.limits.take() {
                self.wait_or_fail(wait, reason).await?;
                continue;
            }
            let mut req = self
                .http
                .request(method.clone(), url)
                .header("accept", "application/json");
            if let Some(body) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            if let Some(a) = &self.auth
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(a.header.as_bytes()),
                    HeaderValue::from_str(a.value.expose()),
                )
            {
                let mut value = value;
                value.set_sensitive(true);
                req = req.header(name, value);
            }
            let resp = req.send().await.map_err(|e| ApiError::Network {
                provider: self.provider.clone(),
                url: url.to_string(),
                message: crate::git::with_tls_hint(error_chain(&e)),
            })?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let m = crate::metrics::global();
            m.inc(
                "modelmirror_provider_api_requests_total",
                &[
                    ("provider", &self.provider),
                    ("status", &status.to_string()),
                ],
                1.0,
            );
            let remaining = ["x-ratelimit-remaining", "ratelimit-remaining"]
                .iter()
                .find_map(|h| {
                    headers
                        .get(*h)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                });
            if let Some(r) = remaining {
                m.set(
                    "modelmirror_provider_rate_limit_remaining",
                    &[("provider", &self.provider)],
                    r,
                );
            }
            let body = resp.bytes().await.map_err(|e| ApiError::Network {
                provider: self.provider.clone(),
                url: url.to_string(),
                message: error_chain(&e),
            })?;
            let response = Response {
                status,
                headers,
                body: body.to_vec(),
                url: url.to_string(),
            };
            if let Some((wait, reason)) = rate_limited(&response) {
                tracing::warn!(provider = %self.provider, "rate limited: {reason}; waiting {}s", wait.as_secs());
                self.limits.set_hold(wait, reason.clone());
                self.wait_or_fail(wait, reason).await?;
                continue;
            }
            if let Some(wait) = exhausted(&response) {
                // The last request of the window: hold the next ones until the reset.
                self.limits
                    .set_hold(wait, "rate limit remaining is 0".into());
            }
            return Ok(response);
        }
        let hold = self.limits.hold();
        Err(ApiError::RateLimited {
            provider: self.provider.clone(),
            until: hold.as_ref().map_or_else(Utc::now, |h| h.until),
            reason: hold.map_or_else(|| "rate limited repeatedly".into(), |h| h.reason),
        })
    }

    async fn wait_or_fail(&self, wait: Duration, reason: String) -> Result<(), ApiError> {
        if wait > MAX_INLINE_WAIT {
            let hold = self.limits.set_hold(wait, reason);
            return Err(ApiError::RateLimited {
                provider: self.provider.clone(),
                until: hold.until,
                reason: hold.reason,
            });
        }
        tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        Ok(())
    }

    /// GET `url` and parse a JSON body from a 2xx answer; `what` names the thing for a 404 message.
    pub(crate) async fn get_json(
        &self,
        url: &str,
        what: &str,
    ) -> Result<(serde_json::Value, Response), ApiError> {
        let r = self.get(url).await?;
        self.check(&r, what)?;
        let v = serde_json::from_slice(&r.body).map_err(|e| ApiError::Malformed {
            provider: self.provider.clone(),
            url: url.to_string(),
            message: format!("not JSON: {e}"),
        })?;
        Ok((v, r))
    }

    /// Turn a non-2xx answer into its error.
    pub(crate) fn check(&self, r: &Response, what: &str) -> Result<(), ApiError> {
        match r.status {
            200..=299 => Ok(()),
            401 | 403 => Err(ApiError::Unauthorized {
                provider: self.provider.clone(),
                status: r.status,
                hint: self.hint,
            }),
            404 => Err(ApiError::NotFound {
                provider: self.provider.clone(),
                what: what.to_string(),
            }),
            status => Err(ApiError::Status {
                provider: self.provider.clone(),
                status,
                url: r.url.clone(),
                message: body_message(&r.body),
            }),
        }
    }

    pub(crate) fn malformed(&self, url: &str, message: impl Into<String>) -> ApiError {
        ApiError::Malformed {
            provider: self.provider.clone(),
            url: url.to_string(),
            message: message.into(),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = crate::redact::redact_text(&e.to_string());
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = crate::redact::redact_text(&c.to_string());
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A short message from an error body: the JSON `message` / `error.message` / `errors[0].message`, or the
/// start of the text.
pub(crate) fn body_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for ptr in ["/message", "/error/message", "/errors/0/message", "/error"] {
            if let Some(m) = v.pointer(ptr).and_then(|m| m.as_str()) {
                return m.to_string();
            }
        }
    }
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(r: &Response) -> Option<Duration> {
    let v = r.header("retry-after")?.trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs.max(1))),
        Err(_) => http_date(v),
    }
}

/// How long until an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(v: &str) -> Option<Duration> {
    let at = DateTime::parse_from_rfc2822(v.trim()).ok()?;
    Some(
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_secs(1)),
    )
}

fn header_u64(r: &Response, names: &[&str]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| r.header(n).and_then(|v| v.trim().parse().ok()))
}

fn until_epoch(epoch: u64) -> Duration {
    let now = Utc::now().timestamp().max(0) as u64;
    Duration::from_secs(epoch.saturating_sub(now).max(1))
}

/// Whether an answer says "rate limited", and for how long: `Retry-After`, else the reset time of the
/// `RateLimit-*` / `X-RateLimit-*` headers, else a default minute.
fn rate_limited(r: &Response) -> Option<(Duration, String)> {
    let remaining_zero =
        header_u64(r, &["x-ratelimit-remaining", "ratelimit-remaining"]) == Some(0);
    let retry_after = retry_after(r);
    // GitHub's secondary limits may come as a 403 with only a message.
    let says_rate_limit = body_message(&r.body)
        .to_ascii_lowercase()
        .contains("rate limit");
    let limited = r.status == 429
        || (r.status == 403 && (remaining_zero || retry_after.is_some() || says_rate_limit));
    if !limited {
        return None;
    }
    let wait = match retry_after {
        Some(wait) => wait,
        None => match header_u64(r, &["ratelimit-reset", "x-ratelimit-reset"]) {
            Some(epoch) => until_epoch(epoch),
            None => match r.header("ratelimit-resettime").and_then(http_date) {
                Some(at) => at,
                None => DEFAULT_RATE_LIMIT_WAIT,
            },
        },
    };
    Some((
        wait,
        format!(
            "HTTP {} rate limit: {}",
            r.status,
            body_message(&r.body).trim()
        ),
    ))
}

/// After a successful answer with no requests left in the window: how long until the reset.
fn exhausted(r: &Response) -> Option<Duration> {
    if header_u64(r, &["x-ratelimit-remaining", "ratelimit-remaining"]) != Some(0) {
        return None;
    }
    header_u64(r, &["ratelimit-reset", "x-ratelimit-reset"]).map(until_epoch)
}

/// The `rel="next"` target of a `Link` header.
pub(crate) fn link_next(r: &Response) -> Option<String> {
    let link = r.header("link")?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// A pagination link pinned to the API's own origin: the token goes with every page, so a link naming
/// another scheme, host or port (a misconfigured external URL, a proxy's view) is rewritten to the API's.
fn same_origin(base: &str, link: &str) -> String {
    let (Ok(base), Ok(mut next)) = (url::Url::parse(base), url::Url::parse(link)) else {
        return link.to_string();
    };
    if next.origin() != base.origin() {
        tracing::debug!("pagination link {link} points elsewhere; asking the API's own origin");
        let _ = next.set_scheme(base.scheme());
        let _ = next.set_host(base.host_str());
        let _ = next.set_port(base.port());
    }
    next.to_string()
}

/// Percent-encode a path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Walk a paginated listing: `next(page)` gives the next URL; stops at the end, on a repeated URL, or at
/// [`MAX_PAGES`].
pub(crate) async fn paginate<F>(
    api: &ApiClient,
    first: String,
    what: &str,
    mut each: F,
) -> Result<(), ApiError>
where
    F: FnMut(&serde_json::Value, &Response) -> Result<Option<String>, ApiError> + Send,
{
    let mut url = first;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..MAX_PAGES {
        url = same_origin(&api.base, &url);
        if !seen.insert(url.clone()) {
            return Err(api.malformed(&url, "the pagination loops back to a page already read"));
        }
        let (value, resp) = api.get_json(&url, what).await?;
        match each(&value, &resp)? {
            Some(next) => url = next,
            None => return Ok(()),
        }
    }
    Err(api.malformed(&url, format!("more than {MAX_PAGES} pages")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> Response {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Response {
            status,
            headers: map,
            body: b"{\"message\":\"slow down\"}".to_vec(),
            url: "u".into(),
        }
    }

    #[test]
    fn rate_limit_waits_come_from_the_documented_headers() {
        let epoch = (Utc::now().timestamp() + 120).to_string();
        let w = |r: Response| rate_limited(&r).map(|(d, _)| d.as_secs());
        assert_eq!(w(resp(429, &[("retry-after", "7")])), Some(7));
        assert_eq!(
            w(resp(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &epoch)
                ]
            ))
            .map(|s| s / 10),
            Some(12)
        );
        assert_eq!(
            w(resp(429, &[("ratelimit-reset", &epoch)])).map(|s| s / 10),
            Some(12)
        );
        assert_eq!(w(resp(429, &[])), Some(60));
        let mut plain = resp(403, &[]);
        plain.body = b"{\"message\":\"Resource not accessible by personal access token\"}".to_vec();
        assert_eq!(w(plain), None, "a plain 403 is a permission error");
        let mut secondary = resp(403, &[]);
        secondary.body = b"{\"message\":\"You have exceeded a secondary rate limit.\"}".to_vec();
        assert_eq!(
            w(secondary),
            Some(60),
            "GitHub's secondary limit without headers waits a minute"
        );
        let later = (Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        assert_eq!(
            w(resp(429, &[("retry-after", &later)])).map(|s| s / 10),
            Some(8)
        );
        assert_eq!(
            same_origin("https://h/api/v4", "http://internal:8080/api/v4/x?page=2"),
            "https://h/api/v4/x?page=2"
        );
        assert_eq!(w(resp(200, &[("retry-after", "5")])), None);
        assert!(
            exhausted(&resp(
                200,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &epoch)
                ]
            ))
            .is_some()
        );
    }

    #[test]
    fn budget_holds_when_spent() {
        let l = Limits::new(2);
        assert!(l.take().is_ok() && l.take().is_ok());
        let (wait, reason) = l.take().unwrap_err();
        assert!(wait > Duration::from_secs(3500) && reason.contains("max_requests_per_hour (2)"));
    }

    #[test]
    fn link_header_next() {
        let r = resp(
            200,
            &[(
                "link",
                "<https://h/api?page=1>; rel=\"first\", <https://h/api?page=3>; rel=\"next\"",
            )],
        );
        assert_eq!(link_next(&r).as_deref(), Some("https://h/api?page=3"));
        assert_eq!(
            link_next(&resp(200, &[("link", "<https://h/x>; rel=\"prev\"")])),
            None
        );
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }
}
