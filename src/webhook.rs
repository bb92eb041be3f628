//! The optional webhook listener: verified push events nudge a repository's poll.
//!
//! The handler does only what fits in a few milliseconds: route, read the body within the size limit, verify
//! the signature (before parsing anything), map the payload, refuse replays, and hand the delivery to a
//! bounded queue. A dispatcher thread takes it from there: it matches the repository, records the delivery
//! in the database, and nudges the repository's poll loop. Nothing here runs git or waits for the database,
//! so an import in progress never slows an answer down.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, Secret};
use crate::provider::hooks::{Delivery, EventKind, RepoKey, normalize_url};
use crate::store::{DeliveryRecord, Store, now_rfc3339_millis};

/// How many delivery ids are remembered to refuse replays.
const SEEN_CAPACITY: usize = 10_000;
/// `Retry-After` sent with 503 when the queue is full.
const RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen for webhooks on {addr}: {source} (change [webhook] listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the handler hands to the dispatcher.
pub enum Item {
    /// A verified delivery to match and act on.
    Delivery {
        /// The provider's name (indices change when the configuration is reloaded).
        provider: String,
        received_at: String,
        delivery: Delivery,
    },
    /// A delivery answered by the handler itself (rejected, duplicate, ping): only recorded.
    Answered {
        provider: String,
        received_at: String,
        event: String,
        delivery_id: Option<String>,
        outcome: &'static str,
        reason: String,
    },
}

/// The repositories being mirrored and how to nudge them; kept current by the daemon.
#[derive(Default)]
pub struct Targets {
    /// Repository id → its configuration and the nudge its poll loop waits on.
    pub repos: std::collections::HashMap<String, (crate::config::RepoConfig, Arc<Nudge>)>,
}

/// A request to poll a repository now. Any number of nudges before the poll loop looks merge into one.
#[derive(Default)]
pub struct Nudge {
    pending: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Nudge {
    pub fn nudge(&self) {
        self.pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Wait for a nudge, and clear it.
    pub async fn wait(&self) {
        self.notify.notified().await;
        self.pending
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Take a nudge that arrived meanwhile (e.g. during a poll), if any.
    pub fn take(&self) -> bool {
        self.pending
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// The configuration in force, swapped by a reload.
pub type ConfigHandle = Arc<std::sync::RwLock<Arc<Config>>>;

/// The configuration in force now.
pub fn current(handle: &ConfigHandle) -> Arc<Config> {
    handle.read().unwrap_or_else(|p| p.into_inner()).clone()
}

struct HandlerState {
    config: ConfigHandle,
    queue: mpsc::Sender<Item>,
    seen: Mutex<Seen>,
}

/// Recent (provider, delivery id) pairs.
#[derive(Default)]
struct Seen {
    set: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl Seen {
    /// Remember a delivery; false when it was seen before.
    fn insert(&mut self, key: (String, String)) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn forget(&mut self, key: &(String, String)) {
        self.set.remove(key);
    }
}

/// Bind the listener now (so a bad address fails start-up), then serve until `stop`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })
}

/// Serve webhooks on `listener` and dispatch them, until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    config: ConfigHandle,
    store: Arc<Store>,
    targets: Arc<Mutex<Targets>>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(settings) = current(&config).webhook.clone() else {
        return;
    };
    let (tx, rx) = mpsc::channel(settings.queue_size);
    let mut seen = Seen::default();
    match store.recent_delivery_ids(SEEN_CAPACITY) {
        Ok(ids) => ids.into_iter().rev().for_each(|k| {
            seen.insert(k);
        }),
        Err(e) => tracing::warn!(
            "cannot read recent deliveries (replays after a restart may be polled): {e}"
        ),
    }
    let state = Arc::new(HandlerState {
        config: config.clone(),
        queue: tx,
        seen: Mutex::new(seen),
    });
    let dispatcher = {
        let (config, store, targets) = (config.clone(), store.clone(), targets.clone());
        std::thread::Builder::new()
            .name("webhook-dispatch".into())
            .spawn(move || dispatch_loop(rx, &config, &store, &targets))
    };
    if let Err(e) = &dispatcher {
        tracing::error!("cannot start the webhook dispatcher: {e}");
        return;
    }
    match listener.local_addr() {
        Ok(addr) => tracing::info!("webhook listener on {addr}"),
        Err(_) => tracing::info!("webhook listener started"),
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("webhook connection: {e}");
            }
        });
    }
    // Dropping the handler state closes the queue; the dispatcher drains it and ends.
    drop(state);
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, text: &str) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(state: Arc<HandlerState>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let config = current(&state.config);
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(if req.method() == Method::GET {
            answer(StatusCode::OK, "ok")
        } else {
            answer(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        });
    }
    let named = match path.strip_prefix("/hooks") {
        Some("") | Some("/") => None,
        Some(rest) if rest.starts_with('/') => Some(rest.trim_matches('/').to_string()),
        _ => {
            return Ok(answer(
                StatusCode::NOT_FOUND,
                "not found: POST /hooks/<provider> or /hooks",
            ));
        }
    };
    if req.method() != Method::POST {
        return Ok(answer(StatusCode::METHOD_NOT_ALLOWED, "use POST"));
    }
    let Some(settings) = &config.webhook else {
        return Ok(answer(StatusCode::NOT_FOUND, "webhooks are off"));
    };
    let candidates: Vec<usize> = match &named {
        Some(name) => match config.providers.iter().position(|p| &p.name == name) {
            Some(i) => vec![i],
            None => {
                return Ok(answer(
                    StatusCode::NOT_FOUND,
                    &format!("no provider named {name}"),
                ));
            }
        },
        None => (0..config.providers.len())
            .filter(|i| {
                config.providers[*i]
                    .kind
                    .hooks()
                    .webhook_detect(req.headers())
            })
            .collect(),
    };
    if candidates.is_empty() {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            "cannot tell which provider sent this; use POST /hooks/<provider>",
        ));
    }
    let too_big = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > settings.max_body_bytes);
    if too_big {
        return Ok(answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is over [webhook] max_body_bytes",
        ));
    }
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Ok(answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the body is over [webhook] max_body_bytes",
            ));
        }
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST, "cannot read the body")),
    };
    let headers = &parts.headers;
    let received_at = now_rfc3339_millis();
    // Verify before parsing: the first provider whose secret verifies wins.
    let mut refusal = String::new();
    let mut verified = None;
    for &i in &candidates {
        let p = &config.providers[i];
        let secrets: Vec<Secret> = p
            .webhook_secrets
            .iter()
            .filter_map(|s| s.resolve().ok())
            .collect();
        if secrets.is_empty() {
            if p.allow_unsigned_webhooks {
                verified = Some(i);
                break;
            }
            refusal = format!("provider {} has no usable webhook secret", p.name);
            continue;
        }
        match p.kind.hooks().webhook_verify(headers, &body, &secrets) {
            Ok(()) => {
                verified = Some(i);
                break;
            }
            Err(m) => refusal = m,
        }
    }
    let event_name = ["x-gitlab-event", "x-github-event", "x-event-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
        .to_string();
    let Some(index) = verified else {
        let provider = named.unwrap_or_else(|| config.providers[candidates[0]].name.clone());
        tracing::warn!(provider = %provider, "webhook rejected: {refusal}");
        record(
            &state,
            &provider,
            &received_at,
            &event_name,
            None,
            "rejected",
            refusal.clone(),
        );
        return Ok(answer(
            StatusCode::UNAUTHORIZED,
            &format!("rejected: {refusal}"),
        ));
    };
    let provider = config.providers[index].name.clone();
    let delivery = match config.providers[index]
        .kind
        .hooks()
        .webhook_parse(headers, &body)
    {
        Ok(d) => d,
        Err(m) => {
            record(
                &state,
                &provider,
                &received_at,
                &event_name,
                None,
                "rejected",
                m.clone(),
            );
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the payload: {m}"),
            ));
        }
    };
    let seen_key = delivery
        .delivery_id
        .clone()
        .map(|id| (provider.clone(), id));
    if let Some(key) = &seen_key {
        let fresh = state
            .seen
            .lock()
            .map(|mut s| s.insert(key.clone()))
            .unwrap_or(true);
        if !fresh {
            record(
                &state,
                &provider,
                &received_at,
                &delivery.event,
                delivery.delivery_id.clone(),
                "ignored",
                "a replay of a delivery already received".into(),
            );
            return Ok(answer(
                StatusCode::OK,
                "duplicate delivery: already received",
            ));
        }
    }
    if delivery.kind == EventKind::Ping {
        record(
            &state,
            &provider,
            &received_at,
            &delivery.event,
            delivery.delivery_id.clone(),
            "ignored",
            "ping: the webhook reaches modelmirror".into(),
        );
        return Ok(answer(StatusCode::OK, "pong"));
    }
    let item = Item::Delivery {
        provider: config.providers[index].name.clone(),
        received_at,
        delivery,
    };
    match state.queue.try_send(item) {
        Ok(()) => Ok(answer(StatusCode::ACCEPTED, "accepted")),
        Err(_) => {
            if let (Some(key), Ok(mut seen)) = (&seen_key, state.seen.lock()) {
                // Not processed: a redelivery must be accepted.
                seen.forget(key);
            }
            let mut r = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many deliveries queued; retry later",
            );
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(RETRY_AFTER_SECS),
            );
            Ok(r)
        }
    }
}

/// Queue a record of a delivery answered by the handler; dropped (with a log line) when the queue is full.
fn record(
    state: &HandlerState,
    provider: &str,
    received_at: &str,
    event: &str,
    delivery_id: Option<String>,
    outcome: &'static str,
    reason: String,
) {
    crate::metrics::global().inc(
        "modelmirror_webhook_deliveries_total",
        &[("provider", provider), ("outcome", outcome)],
        1.0,
    );
    let item = Item::Answered {
        provider: provider.to_string(),
        received_at: received_at.to_string(),
        event: event.to_string(),
        delivery_id,
        outcome,
        reason,
    };
    if state.queue.try_send(item).is_err() {
        tracing::warn!(provider = %provider, "webhook queue full: a {outcome} delivery was not recorded");
    }
}

fn dispatch_loop(
    mut rx: mpsc::Receiver<Item>,
    config: &ConfigHandle,
    store: &Store,
    targets: &Mutex<Targets>,
) {
    while let Some(item) = rx.blocking_recv() {
        let config = current(config);
        let result = match item {
            Item::Answered {
                provider,
                received_at,
                event,
                delivery_id,
                outcome,
                reason,
            } => store.record_delivery(&DeliveryRecord {
                received_at: &received_at,
                provider: &provider,
                event: &event,
                delivery_id: delivery_id.as_deref(),
                repo_id: None,
                ref_name: None,
                outcome,
                reason: Some(&reason),
            }),
            Item::Delivery {
                provider,
                received_at,
                delivery,
            } => match config.providers.iter().position(|p| p.name == provider) {
                Some(index) => {
                    let r = dispatch(&config, store, targets, index, &received_at, &delivery);
                    if let Ok(outcome) = &r {
                        crate::metrics::global().inc(
                            "modelmirror_webhook_deliveries_total",
                            &[("provider", &provider), ("outcome", outcome.1)],
                            1.0,
                        );
                    }
                    r.map(|(id, _)| id)
                }
                // The provider went away in a reload while the delivery waited.
                None => store.record_delivery(&DeliveryRecord {
                    received_at: &received_at,
                    provider: &provider,
                    event: &delivery.event,
                    delivery_id: delivery.delivery_id.as_deref(),
                    repo_id: None,
                    ref_name: None,
                    outcome: "ignored",
                    reason: Some("the provider is no longer configured"),
                }),
            },
        };
        if let Err(e) = result {
            tracing::error!("cannot record a webhook delivery: {e}");
        }
    }
}

/// Match a push to a repository, record it, and nudge the repository when its default branch changed.
fn dispatch(
    config: &Config,
    store: &Store,
    targets: &Mutex<Targets>,
    index: usize,
    received_at: &str,
    delivery: &Delivery,
) -> Result<(i64, &'static str), crate::store::StoreError> {
    let provider = &config.providers[index];
    let mut rec = DeliveryRecord {
        received_at,
        provider: &provider.name,
        event: &delivery.event,
        delivery_id: delivery.delivery_id.as_deref(),
        repo_id: None,
        ref_name: None,
        outcome: "ignored",
        reason: None,
    };
    let EventKind::Push { repo, updates } = &delivery.kind else {
        let reason = format!("event `{}` is not a push", delivery.event);
        rec.reason = Some(&reason);
        return store.record_delivery(&rec).map(|id| (id, "ignored"));
    };
    let rows = store.repos_of_provider(&provider.name)?;
    let guard = targets.lock().unwrap_or_else(|p| p.into_inner());
    let matched = match_repo(&provider.name, repo, &rows, &guard);
    let Some(repo_id) = matched else {
        drop(guard);
        let reason = format!(
            "no mirrored repository of provider {} matches {} (id {})",
            provider.name,
            repo.path.as_deref().unwrap_or("?"),
            repo.provider_id.as_deref().unwrap_or("?")
        );
        rec.reason = Some(&reason);
        return store.record_delivery(&rec).map(|id| (id, "ignored"));
    };
    rec.repo_id = Some(&repo_id);
    let Some((_, notify)) = guard.repos.get(&repo_id) else {
        drop(guard);
        let state = rows
            .iter()
            .find(|r| r.id == repo_id)
            .map_or("unknown", |r| r.state.as_str());
        let reason = format!("repository {repo_id} is not mirrored (state {state})");
        rec.reason = Some(&reason);
        return store.record_delivery(&rec).map(|id| (id, "ignored"));
    };
    let notify = notify.clone();
    drop(guard);
    // The default branch as modelmirror last saw it, else the payload's; unknown → any branch push polls.
    let known = rows
        .iter()
        .find(|r| r.id == repo_id)
        .and_then(|r| r.default_branch.clone());
    let branch = known.or_else(|| repo.default_branch.clone());
    let relevant = updates.iter().find(|u| match &branch {
        Some(b) => u.ref_name == format!("refs/heads/{b}"),
        None => u.ref_name.starts_with("refs/heads/"),
    });
    let first_ref = updates.first().map(|u| u.ref_name.clone());
    match relevant {
        Some(u) => {
            rec.ref_name = Some(&u.ref_name);
            rec.outcome = "polled";
            let reason = if u.deleted {
                "the default branch was deleted; the poll reports it"
            } else {
                "push to the default branch"
            };
            rec.reason = Some(reason);
            let id = store.record_delivery(&rec)?;
            notify.nudge();
            Ok((id, "polled"))
        }
        None => {
            rec.ref_name = first_ref.as_deref();
            let reason = match (&first_ref, &branch) {
                (Some(r), Some(b)) => format!("push to {r}, not the default branch {b}"),
                (Some(r), None) => format!("push to {r}, not a branch"),
                (None, _) => "a push without ref changes".to_string(),
            };
            rec.reason = Some(&reason);
            store.record_delivery(&rec).map(|id| (id, "ignored"))
        }
    }
}

/// The provider id first, then the path (case-insensitive), then a normalised clone URL.
fn match_repo(
    provider: &str,
    key: &RepoKey,
    rows: &[crate::store::RepoKeyRow],
    targets: &Targets,
) -> Option<String> {
    if let Some(id) = &key.provider_id
        && let Some(row) = rows
            .iter()
            .find(|r| r.provider_id.as_deref() == Some(id.as_str()))
    {
        return Some(row.id.clone());
    }
    if let Some(path) = &key.path {
        let id = format!("{provider}/{path}").to_lowercase();
        if let Some(found) = targets
            .repos
            .keys()
            .chain(rows.iter().map(|r| &r.id))
            .find(|r| r.to_lowercase() == id)
        {
            return Some(found.clone());
        }
    }
    let urls: Vec<String> = key.clone_urls.iter().map(|u| normalize_url(u)).collect();
    targets
        .repos
        .values()
        .find(|(r, _)| urls.contains(&normalize_url(&r.url)))
        .map(|(r, _)| r.id.clone())
}
