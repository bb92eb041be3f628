//! The optional webhook listener: verified push events nudge a repository's poll.
//!
//! The handler does only what fits in a few milliseconds: route, read the body within the size limit, verify
//! the signature (before parsing anything), map the payload, refuse replays, and hand the delivery to a
//! bounded queue. A dispatcher thread takes it from there: it matches the repository, records the delivery
//! in the database, and nudges the repository's poll loop. Nothing here runs git or waits for the database,
//! so an import in progress never slows an answer down.

use std::collections::{HashMap, HashSet, VecDeque};
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

use crate::config::Config;
use crate::forge::webhook::{Delivery, EventKind, RepoKey, normalize_url};
use crate::secret::Secret;
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
    /// Verified deliveries waiting for the dispatcher.
    queue: mpsc::Sender<Item>,
    /// Records of deliveries answered by the handler itself (rejected, duplicates, pings): a queue of their
    /// own, so a flood of junk can never crowd out real deliveries.
    records: mpsc::Sender<Item>,
    seen: Mutex<Seen>,
    /// Rejected records allowed this minute, per provider (a flood is counted, not stored row by row).
    rejected_budget: Mutex<(std::time::Instant, HashMap<String, u32>)>,
    /// Open connections, bounded.
    connections: Arc<tokio::sync::Semaphore>,
}

/// How many rejected deliveries per provider and minute are stored (and logged); the rest are counted.
const REJECTED_PER_MINUTE: u32 = 30;
/// How many connections are served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 128;
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Event names are the host's short words; anything longer is cut before it is stored.
const MAX_EVENT_LEN: usize = 64;

/// Recent (provider, delivery id) pairs of processed deliveries.
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
        self.order.retain(|k| k != key);
    }
}

/// Bind the listener now (so a bad address fails start-up), then serve until `stop`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })
}

/// Serve webhooks on `listener` and dispatch them, until `stop` turns true. On stop, deliveries already
/// accepted are still recorded and acted on (for a few seconds at most).
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
    let (records_tx, records_rx) = mpsc::channel(256);
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
        records: records_tx,
        seen: Mutex::new(seen),
        rejected_budget: Mutex::new((std::time::Instant::now(), HashMap::new())),
        connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
    });
    let spawn = |name: &str, rx: mpsc::Receiver<Item>| {
        let (config, store, targets) = (config.clone(), store.clone(), targets.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || dispatch_loop(rx, &config, &store, &targets))
    };
    let (Ok(dispatcher), Ok(recorder)) = (
        spawn("webhook-dispatch", rx),
        spawn("webhook-record", records_rx),
    ) else {
        tracing::error!("cannot start the webhook dispatcher");
        return;
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!("webhook listener on {addr}"),
        Err(_) => tracing::info!("webhook listener started"),
    }
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let Ok(permit) = state.connections.clone().try_acquire_owned() else {
            // Too many open connections: close this one at once.
            continue;
        };
        let state = state.clone();
        conns.spawn(async move {
            let _permit = permit;
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
    // Let answers in flight finish, then close the queues; the dispatchers drain them and end.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    drop(state);
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while !(dispatcher.is_finished() && recorder.is_finished())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// Whether a delivery carries a signature header of `kind` (checked before the body is even read).
fn signature_present(kind: crate::forge::ProviderKind, headers: &hyper::HeaderMap) -> bool {
    kind.forge()
        .signature_headers()
        .iter()
        .any(|h| headers.contains_key(*h))
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
    let received_at = now_rfc3339_millis();
    let event_name: String = crate::forge::ProviderKind::ALL
        .iter()
        .filter_map(|k| k.forge().event_header())
        .find_map(|h| req.headers().get(h).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
        .chars()
        .take(MAX_EVENT_LEN)
        .collect();
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
                // Recorded under one fixed name: the path is the sender's choice, and each new name would
                // be a new metric series and rejection budget.
                let shown: String = name.chars().take(MAX_EVENT_LEN).collect();
                record_rejected(
                    &state,
                    "?",
                    &received_at,
                    &event_name,
                    format!("no provider named {shown:?}"),
                );
                return Ok(answer(StatusCode::NOT_FOUND, "no provider of that name"));
            }
        },
        None => (0..config.providers.len())
            .filter(|i| {
                config.providers[*i]
                    .kind
                    .forge()
                    .webhook_detect(req.headers())
            })
            .collect(),
    };
    if candidates.is_empty() {
        record_rejected(
            &state,
            "?",
            &received_at,
            &event_name,
            "cannot tell which provider sent it".into(),
        );
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            "cannot tell which provider sent this; use POST /hooks/<provider>",
        ));
    }
    let first_name = named
        .clone()
        .unwrap_or_else(|| config.providers[candidates[0]].name.clone());
    // Refuse before reading the body when no candidate could verify it: the signature header is missing.
    let signed_ok = candidates.iter().any(|&i| {
        let p = &config.providers[i];
        p.webhook_secrets.is_empty() || signature_present(p.kind, req.headers())
    });
    if !signed_ok {
        let reason =
            "missing signature header (is the webhook's secret set on the host?)".to_string();
        record_rejected(
            &state,
            &first_name,
            &received_at,
            &event_name,
            reason.clone(),
        );
        return Ok(answer(
            StatusCode::UNAUTHORIZED,
            &format!("rejected: {reason}"),
        ));
    }
    let too_big = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > settings.max_body_bytes);
    let too_big_reason = format!(
        "the body is over [webhook] max_body_bytes ({})",
        settings.max_body_bytes
    );
    if too_big {
        record_rejected(
            &state,
            &first_name,
            &received_at,
            &event_name,
            too_big_reason.clone(),
        );
        return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, &too_big_reason));
    }
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            record_rejected(
                &state,
                &first_name,
                &received_at,
                &event_name,
                too_big_reason.clone(),
            );
            return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, &too_big_reason));
        }
        Ok(Err(_)) => return Ok(answer(StatusCode::BAD_REQUEST, "cannot read the body")),
        Err(_) => {
            record_rejected(
                &state,
                &first_name,
                &received_at,
                &event_name,
                "the body took too long to arrive".into(),
            );
            return Ok(answer(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            ));
        }
    };
    let headers = &parts.headers;
    // Verify before parsing: the first provider whose secret verifies wins. A provider with secrets
    // configured is verified even if none can be read now; only one with none configured may be unsigned.
    let mut refusal = String::new();
    let mut verified = None;
    for &i in &candidates {
        let p = &config.providers[i];
        if p.webhook_secrets.is_empty() {
            if p.allow_unsigned_webhooks {
                verified = Some(i);
                break;
            }
            refusal = "this provider has no webhook secret".into();
            continue;
        }
        let secrets: Vec<Secret> = p
            .webhook_secrets
            .iter()
            .filter_map(|s| s.resolve().ok())
            .collect();
        if secrets.is_empty() {
            tracing::error!(provider = %p.name, "no webhook secret can be read: every delivery is rejected until it is fixed");
            refusal = "the webhook secret cannot be verified".into();
            continue;
        }
        match p.kind.forge().webhook_verify(headers, &body, &secrets) {
            Ok(()) => {
                verified = Some(i);
                break;
            }
            Err(e) => refusal = e.to_string(),
        }
    }
    let Some(index) = verified else {
        record_rejected(
            &state,
            &first_name,
            &received_at,
            &event_name,
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
        .forge()
        .webhook_parse(headers, &body)
    {
        Ok(d) => d,
        Err(e) => {
            record_answered(
                &state,
                &provider,
                &received_at,
                &event_name,
                None,
                "rejected",
                e.to_string(),
            );
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the payload: {e}"),
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
            record_answered(
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
        record_answered(
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
        provider: provider.clone(),
        received_at: received_at.clone(),
        delivery,
    };
    match state.queue.try_send(item) {
        Ok(()) => Ok(answer(StatusCode::ACCEPTED, "accepted")),
        Err(_) => {
            if let (Some(key), Ok(mut seen)) = (&seen_key, state.seen.lock()) {
                // Not processed: a redelivery must be accepted.
                seen.forget(key);
            }
            record_rejected(
                &state,
                &provider,
                &received_at,
                &event_name,
                "the queue is full (503)".into(),
            );
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

/// Record a rejected delivery, at most `REJECTED_PER_MINUTE` per provider and minute (the rest are only
/// counted in the metrics), so a flood of junk cannot fill the disk or the log.
fn record_rejected(
    state: &HandlerState,
    provider: &str,
    received_at: &str,
    event: &str,
    reason: String,
) {
    let allowed = {
        let mut b = state
            .rejected_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if b.0.elapsed() > Duration::from_secs(60) {
            *b = (std::time::Instant::now(), HashMap::new());
        }
        let n = b.1.entry(provider.to_string()).or_insert(0);
        *n += 1;
        *n <= REJECTED_PER_MINUTE
    };
    if allowed {
        tracing::warn!(provider = %provider, "webhook rejected: {reason}");
        record_answered(
            state,
            provider,
            received_at,
            event,
            None,
            "rejected",
            reason,
        );
    } else {
        crate::metrics::global().inc(
            "modelmirror_webhook_deliveries_total",
            &[("provider", provider), ("outcome", "rejected")],
            1.0,
        );
    }
}

/// Queue a record of a delivery answered by the handler; dropped (with a log line) when that queue is full.
fn record_answered(
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
        event: event.chars().take(MAX_EVENT_LEN).collect(),
        delivery_id: delivery_id.map(|d| d.chars().take(128).collect()),
        outcome,
        reason,
    };
    if state.records.try_send(item).is_err() {
        tracing::debug!(provider = %provider, "webhook record queue full: a {outcome} delivery was not recorded");
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

/// Match a push to a repository, nudge the repository when its default branch changed, and record it. The
/// nudge comes first: recording waits for the database, which an import may hold.
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
    // Read through its own connection: never behind an import's write transaction.
    let rows = store.repos_of_provider_reader(&provider.name)?;
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
    // A push to the default branch as modelmirror last saw it, or as the (signed) payload says it is now;
    // with neither known, any branch push polls.
    let known = rows
        .iter()
        .find(|r| r.id == repo_id)
        .and_then(|r| r.default_branch.clone());
    let branches: Vec<String> = known
        .iter()
        .chain(repo.default_branch.iter())
        .cloned()
        .collect();
    let relevant = updates.iter().find(|u| {
        if branches.is_empty() {
            u.ref_name.starts_with("refs/heads/")
        } else {
            branches
                .iter()
                .any(|b| u.ref_name == format!("refs/heads/{b}"))
        }
    });
    let first_ref = updates.first().map(|u| u.ref_name.clone());
    match relevant {
        Some(u) => {
            notify.nudge();
            rec.ref_name = Some(&u.ref_name);
            rec.outcome = "polled";
            let reason = if u.deleted {
                "the default branch was deleted; the poll reports it"
            } else {
                "push to the default branch"
            };
            rec.reason = Some(reason);
            let id = store.record_delivery(&rec)?;
            Ok((id, "polled"))
        }
        None => {
            rec.ref_name = first_ref.as_deref();
            let reason = match (&first_ref, branches.first()) {
                (Some(r), Some(b)) => format!("push to {r}, not the default branch {b}"),
                (Some(r), None) => format!("push to {r}, not a branch"),
                (None, _) => "a push without ref changes".to_string(),
            };
            rec.reason = Some(&reason);
            store.record_delivery(&rec).map(|id| (id, "ignored"))
        }
    }
}

/// The provider id first (preferring a repository being mirrored: a renamed one leaves its old row
/// behind), then the path (case-insensitive), then a normalised clone URL — always within `provider`.
fn match_repo(
    provider: &str,
    key: &RepoKey,
    rows: &[crate::store::RepoKeyRow],
    targets: &Targets,
) -> Option<String> {
    if let Some(id) = &key.provider_id {
        let same_id: Vec<&crate::store::RepoKeyRow> = rows
            .iter()
            .filter(|r| r.provider_id.as_deref() == Some(id.as_str()))
            .collect();
        if let Some(row) = same_id
            .iter()
            .find(|r| targets.repos.contains_key(&r.id))
            .or(same_id.first())
        {
            return Some(row.id.clone());
        }
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
        .find(|(r, _)| r.provider == provider && urls.contains(&normalize_url(&r.url)))
        .map(|(r, _)| r.id.clone())
}
