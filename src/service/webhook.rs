//! The optional webhook listener: verified push events nudge a repository's poll.
//!
//! The handler does only what fits in a few milliseconds: route, read the body within the size limit, verify
//! the signature (before parsing anything), map the payload, refuse replays, and hand the delivery to a
//! bounded queue. A dispatcher thread takes it from there: it matches the repository, records the delivery
//! in the database, and nudges the repository's poll loop. Nothing here runs git or waits for the database,
//! so an import in progress never slows an answer down.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::http::{self, Answer};
use super::state::{ConfigHandle, Targets, current};
use crate::config::{Config, WebhookConfig};
use crate::forge::ProviderKind;
use crate::forge::webhook::{Delivery, EventKind, RepoKey, normalize_url};
use crate::secret::Secret;
use crate::store::{DeliveryRecord, RepoKeyRow, Store, StoreError, now_rfc3339_millis};

/// How many delivery ids are remembered to refuse replays.
const SEEN_CAPACITY: usize = 10_000;
/// `Retry-After` sent with 503 when the queue is full.
const RETRY_AFTER_SECS: u64 = 5;
/// How many rejected deliveries per provider and minute are stored (and logged); the rest are counted.
const REJECTED_PER_MINUTE: u32 = 30;
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Event names are the host's short words; anything longer is cut before it is stored.
const MAX_EVENT_LEN: usize = 64;
/// How many connections are served at once, and per client address: a host sends a delivery at a time per
/// hook and is answered in milliseconds, so 16 is plenty for one address, and one address (a flood of idle
/// or slow connections) can hold no more than a sixteenth of the listener. More are closed as they arrive.
const LIMITS: http::Limits = http::Limits {
    max_connections: 256,
    max_per_client: 16,
    proxies: Vec::new(),
    header_timeout: Duration::from_secs(10),
};

/// What the handler hands to the dispatcher.
pub(crate) enum Item {
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

struct HandlerState {
    config: ConfigHandle,
    /// Verified deliveries waiting for the dispatcher.
    queue: mpsc::Sender<Item>,
    /// Records of deliveries answered by the handler itself (rejected, duplicates, pings): a queue of their
    /// own, so a flood of junk can never crowd out real deliveries.
    records: mpsc::Sender<Item>,
    seen: Mutex<Seen>,
    /// Rejected deliveries this minute: recorded one by one up to a budget, then summed up per address.
    rejects: Mutex<Rejects>,
    /// `[webhook] trusted_proxies` as the listener started with them.
    proxies: Vec<IpAddr>,
    /// Deliveries in `queue` not yet dispatched.
    backlog: Arc<AtomicUsize>,
}

/// How many client addresses a minute's summary of rejected deliveries tells apart per provider; the rest
/// are summed up as "other addresses".
const MAX_REJECT_SOURCES: usize = 64;

/// Rejected deliveries of the current minute.
struct Rejects {
    since: std::time::Instant,
    /// Rows recorded this minute, per provider.
    recorded: HashMap<String, u32>,
    /// The rejections beyond the budget, per provider and client address (`None`: other addresses).
    beyond: HashMap<(String, Option<IpAddr>), Beyond>,
}

/// Rejected deliveries not recorded one by one: how many, when, and why.
struct Beyond {
    count: u64,
    first: String,
    last: String,
    event: String,
    /// The reasons given, the first few.
    reasons: Vec<String>,
}

impl Rejects {
    fn new() -> Rejects {
        Rejects {
            since: std::time::Instant::now(),
            recorded: HashMap::new(),
            beyond: HashMap::new(),
        }
    }

    /// The minute's summaries when it has passed (or `now`), and a new minute.
    fn take_summaries(&mut self, now: bool) -> Vec<Item> {
        if !now && self.since.elapsed() < Duration::from_secs(60) {
            return Vec::new();
        }
        let old = std::mem::replace(self, Rejects::new());
        old.beyond
            .into_iter()
            .map(|((provider, from), b)| {
                let from = from.map_or_else(|| "other addresses".to_string(), |ip| ip.to_string());
                Item::Answered {
                    provider,
                    received_at: b.last.clone(),
                    event: b.event,
                    delivery_id: None,
                    outcome: "rejected",
                    reason: format!(
                        "{} more rejected deliveries from {from} between {} and {}: {}",
                        b.count,
                        b.first,
                        b.last,
                        b.reasons.join("; ")
                    ),
                }
            })
            .collect()
    }
}

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

/// Passes a repository's nudge on to the instance that prefers it, when that is another one on the same
/// database: its name (`None`: poll here).
pub(super) type PassOn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Serve webhooks on `listener` and dispatch them, until `stop` turns true. On stop, deliveries already
/// accepted are still recorded and acted on (for a few seconds at most).
pub(super) async fn serve(
    listener: TcpListener,
    config: ConfigHandle,
    store: Arc<Store>,
    targets: Arc<Mutex<Targets>>,
    backlog: Arc<AtomicUsize>,
    pass_on: PassOn,
    stop: watch::Receiver<bool>,
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
        rejects: Mutex::new(Rejects::new()),
        proxies: settings.trusted_proxies.clone(),
        backlog: backlog.clone(),
    });
    let spawn = |name: &str, rx: mpsc::Receiver<Item>| {
        let (config, store, targets, backlog, pass_on) = (
            config.clone(),
            store.clone(),
            targets.clone(),
            backlog.clone(),
            pass_on.clone(),
        );
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || dispatch_loop(rx, &config, &store, &targets, &backlog, &*pass_on))
    };
    let (Ok(dispatcher), Ok(recorder)) = (
        spawn("webhook-dispatch", rx),
        spawn("webhook-record", records_rx),
    ) else {
        tracing::error!("cannot start the webhook dispatcher");
        return;
    };
    let handler_state = state.clone();
    // A minute's summary of rejected deliveries is recorded when the minute has passed, deliveries or not.
    let summarizer = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                record_summaries(&state, false);
            }
        })
    };
    let limits = http::Limits {
        proxies: settings.trusted_proxies.clone(),
        ..LIMITS
    };
    http::serve(listener, "webhook", limits, stop, move |req, peer| {
        handle(handler_state.clone(), req, peer)
    })
    .await;
    summarizer.abort();
    record_summaries(&state, true);
    // Close the queues; the dispatchers drain them and end.
    drop(state);
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while !(dispatcher.is_finished() && recorder.is_finished())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn text(status: StatusCode, text: &str) -> Answer {
    http::answer(status, format!("{text}\n"), "text/plain; charset=utf-8")
}

/// A delivery as it arrived: when, from where, and the event its headers name (for the records of
/// refusals).
struct Arrival {
    received_at: String,
    from: IpAddr,
    event: String,
}

impl Arrival {
    /// Record a refusal under `provider` (when it has a reason) and answer it.
    fn refuse(&self, state: &HandlerState, provider: &str, refusal: Refusal) -> Answer {
        if let Some(reason) = refusal.reason {
            record_rejected(state, provider, self, reason);
        }
        text(refusal.status, &refusal.text)
    }
}

/// Why a delivery is refused: the answer's status and text, and the reason recorded (`None`: not recorded).
struct Refusal {
    status: StatusCode,
    text: String,
    reason: Option<String>,
}

impl Refusal {
    /// A refusal whose answer is `text` and whose record says `reason`.
    fn new(status: StatusCode, text: impl Into<String>, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            text: text.into(),
            reason: Some(reason.into()),
        }
    }

    /// A delivery that failed verification: 401 saying why.
    fn rejected(reason: impl Into<String>) -> Refusal {
        let reason = reason.into();
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            format!("rejected: {reason}"),
            reason,
        )
    }

    /// A refusal whose answer says `reason` as it is recorded.
    fn saying(status: StatusCode, reason: impl Into<String>) -> Refusal {
        let reason = reason.into();
        Refusal::new(status, reason.clone(), reason)
    }
}

async fn handle(state: Arc<HandlerState>, req: Request<Incoming>, peer: SocketAddr) -> Answer {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return if req.method() == Method::GET {
            text(StatusCode::OK, "ok")
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        };
    }
    let arrival = Arrival {
        received_at: now_rfc3339_millis(),
        from: http::client_key(http::forwarded_client(
            &state.proxies,
            peer.ip(),
            req.headers(),
        )),
        event: event_name(req.headers()),
    };
    let named = match path.strip_prefix("/hooks") {
        Some("") | Some("/") => None,
        Some(rest) if rest.starts_with('/') => Some(rest.trim_matches('/').to_string()),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: POST /hooks/<provider> or /hooks",
            );
        }
    };
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let config = current(&state.config);
    let Some(settings) = &config.webhook else {
        return text(StatusCode::NOT_FOUND, "webhooks are off");
    };
    let candidates = match candidates(&config, named.as_deref(), req.headers()) {
        Ok(c) => c,
        Err(refusal) => return arrival.refuse(&state, "?", refusal),
    };
    let first_name = named
        .clone()
        .unwrap_or_else(|| config.providers[candidates[0]].name.clone());
    if let Err(refusal) = precheck(&config, &candidates, req.headers(), settings) {
        return arrival.refuse(&state, &first_name, refusal);
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, settings).await {
        Ok(body) => body,
        Err(refusal) => return arrival.refuse(&state, &first_name, refusal),
    };
    let headers = &parts.headers;
    let index = match verify(&config, &candidates, headers, &body) {
        Ok(index) => index,
        Err(reason) => {
            return arrival.refuse(&state, &first_name, Refusal::rejected(reason));
        }
    };
    let provider = config.providers[index].name.clone();
    let delivery = match config.providers[index]
        .kind
        .forge()
        .webhook_parse(headers, &body)
    {
        Ok(d) => d,
        Err(e) => {
            let (record, answer) = (e.to_string(), format!("cannot read the payload: {e}"));
            record_answered(
                &state,
                &provider,
                &arrival.received_at,
                &arrival.event,
                None,
                "rejected",
                record,
            );
            return text(StatusCode::BAD_REQUEST, &answer);
        }
    };
    accept(&state, provider, arrival, delivery)
}

/// The event name a delivery's headers give, whichever host sent it (cut to `MAX_EVENT_LEN`; a delivery
/// that carries the headers of several hosts gives the first in `ProviderKind::ALL`'s order).
fn event_name(headers: &HeaderMap) -> String {
    ProviderKind::ALL
        .iter()
        .filter_map(|k| k.forge().event_header())
        .find_map(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
        .chars()
        .take(MAX_EVENT_LEN)
        .collect()
}

/// The providers that may have sent a delivery: the one named in the path, or every provider whose kind
/// recognises the headers. `Err`: the reason to record and the answer.
fn candidates(
    config: &Config,
    named: Option<&str>,
    headers: &HeaderMap,
) -> Result<Vec<usize>, Refusal> {
    let found: Vec<usize> = match named {
        Some(name) => match config.providers.iter().position(|p| p.name == name) {
            Some(i) => vec![i],
            None => {
                // Recorded under one fixed name: the path is the sender's choice, and each new name would
                // be a new metric series and rejection budget.
                let shown: String = name.chars().take(MAX_EVENT_LEN).collect();
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    "no provider of that name",
                    format!("no provider named {shown:?}"),
                ));
            }
        },
        None => (0..config.providers.len())
            .filter(|i| config.providers[*i].kind.forge().webhook_detect(headers))
            .collect(),
    };
    if found.is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "cannot tell which provider sent this; use POST /hooks/<provider>",
            "cannot tell which provider sent it",
        ));
    }
    Ok(found)
}

/// What can be refused before the body is read: a signature header given twice (400), no candidate could
/// verify it (its signature header is missing), or it says it is over `max_body_bytes`.
fn precheck(
    config: &Config,
    candidates: &[usize],
    headers: &HeaderMap,
    settings: &WebhookConfig,
) -> Result<(), Refusal> {
    // A delivery carries one signature: two (the same or not) leave which one counts to chance.
    for &i in candidates {
        for name in config.providers[i].kind.forge().signature_headers() {
            if headers.get_all(*name).iter().count() > 1 {
                return Err(Refusal::saying(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the {name} header is given more than once: a delivery carries one signature"
                    ),
                ));
            }
        }
    }
    let signed_ok = candidates.iter().any(|&i| {
        let p = &config.providers[i];
        p.webhook_secrets.is_empty() || signature_present(p.kind, headers)
    });
    if !signed_ok {
        let reason = "missing signature header (is the webhook's secret set on the host?)";
        return Err(Refusal::rejected(reason));
    }
    let too_big = headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > settings.max_body_bytes);
    if too_big {
        return Err(Refusal::saying(
            StatusCode::PAYLOAD_TOO_LARGE,
            too_big_reason(settings),
        ));
    }
    Ok(())
}

fn too_big_reason(settings: &WebhookConfig) -> String {
    format!(
        "the body is over [webhook] max_body_bytes ({})",
        settings.max_body_bytes
    )
}

/// The body, within `max_body_bytes` and `BODY_TIMEOUT`.
async fn read_body(body: Incoming, settings: &WebhookConfig) -> Result<Bytes, Refusal> {
    let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Refusal::saying(
                StatusCode::PAYLOAD_TOO_LARGE,
                too_big_reason(settings),
            ))
        }
        Ok(Err(_)) => Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            text: "cannot read the body".into(),
            reason: None,
        }),
        Err(_) => Err(Refusal::saying(
            StatusCode::REQUEST_TIMEOUT,
            "the body took too long to arrive",
        )),
    }
}

/// The first candidate whose secret verifies the delivery (before anything parses it). A provider with
/// secrets configured is verified even if none can be read now; only one with none configured may be
/// unsigned. `Err`: why it was refused.
fn verify(
    config: &Config,
    candidates: &[usize],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<usize, String> {
    let mut refusal = String::new();
    for &i in candidates {
        let p = &config.providers[i];
        if p.webhook_secrets.is_empty() {
            if p.allow_unsigned_webhooks {
                return Ok(i);
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
        match p.kind.forge().webhook_verify(headers, body, &secrets) {
            Ok(()) => return Ok(i),
            Err(e) => refusal = e.to_string(),
        }
    }
    Err(refusal)
}

/// A verified, mapped delivery: refuse a replay, answer a ping, queue the rest for the dispatcher.
fn accept(state: &HandlerState, provider: String, arrival: Arrival, delivery: Delivery) -> Answer {
    let seen_key = delivery
        .delivery_id
        .clone()
        .map(|id| (provider.clone(), id));
    // Answered here and recorded as ignored (a replay, a ping).
    let ignored = |reason: &str, answer: &str| {
        record_answered(
            state,
            &provider,
            &arrival.received_at,
            &delivery.event,
            delivery.delivery_id.clone(),
            "ignored",
            reason.into(),
        );
        text(StatusCode::OK, answer)
    };
    if let Some(key) = &seen_key {
        let fresh = state
            .seen
            .lock()
            .map(|mut s| s.insert(key.clone()))
            .unwrap_or(true);
        if !fresh {
            return ignored(
                "a replay of a delivery already received",
                "duplicate delivery: already received",
            );
        }
    }
    if delivery.kind == EventKind::Ping {
        return ignored("ping: the webhook reaches modelmirror", "pong");
    }
    let item = Item::Delivery {
        provider: provider.clone(),
        received_at: arrival.received_at.clone(),
        delivery,
    };
    state.backlog.fetch_add(1, Ordering::SeqCst);
    if state.queue.try_send(item).is_ok() {
        return text(StatusCode::ACCEPTED, "accepted");
    }
    state.backlog.fetch_sub(1, Ordering::SeqCst);
    if let (Some(key), Ok(mut seen)) = (&seen_key, state.seen.lock()) {
        // Not processed: a redelivery must be accepted.
        seen.forget(key);
    }
    let refusal = Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy: too many deliveries queued; retry later",
        "the queue is full (503)",
    );
    let mut r = arrival.refuse(state, &provider, refusal);
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(RETRY_AFTER_SECS),
    );
    r
}

/// Whether a delivery carries a signature header of `kind` (checked before the body is even read).
fn signature_present(kind: ProviderKind, headers: &HeaderMap) -> bool {
    kind.forge()
        .signature_headers()
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// Record a rejected delivery: one row each for the first `REJECTED_PER_MINUTE` per provider and minute, and
/// for the rest one row per client address and minute that sums them up ("N more rejected deliveries from
/// ADDRESS between T1 and T2: reasons"), so a flood of junk cannot fill the disk or the log, and nothing
/// goes unsaid.
fn record_rejected(state: &HandlerState, provider: &str, arrival: &Arrival, reason: String) {
    let (allowed, summaries) = {
        let mut r = state.rejects.lock().unwrap_or_else(|p| p.into_inner());
        let summaries = r.take_summaries(false);
        let n = r.recorded.entry(provider.to_string()).or_insert(0);
        let allowed = *n < REJECTED_PER_MINUTE;
        if allowed {
            *n += 1;
        } else {
            let sources = r.beyond.keys().filter(|(p, _)| p == provider).count();
            let mut key = (provider.to_string(), Some(arrival.from));
            if !r.beyond.contains_key(&key) && sources >= MAX_REJECT_SOURCES {
                key.1 = None;
            }
            let b = r.beyond.entry(key).or_insert_with(|| Beyond {
                count: 0,
                first: arrival.received_at.clone(),
                last: arrival.received_at.clone(),
                event: String::new(),
                reasons: Vec::new(),
            });
            b.count += 1;
            b.last = arrival.received_at.clone();
            b.event = arrival.event.chars().take(MAX_EVENT_LEN).collect();
            if b.reasons.len() < 3 && !b.reasons.contains(&reason) {
                b.reasons.push(reason.clone());
            }
        }
        (allowed, summaries)
    };
    send_summaries(state, summaries);
    if allowed {
        tracing::warn!(provider = %provider, "webhook rejected: {reason}");
        record_answered(
            state,
            provider,
            &arrival.received_at,
            &arrival.event,
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

/// Record the summaries of a minute of rejected deliveries that has passed (`now`: whatever is there).
fn record_summaries(state: &HandlerState, now: bool) {
    let summaries = state
        .rejects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take_summaries(now);
    send_summaries(state, summaries);
}

fn send_summaries(state: &HandlerState, summaries: Vec<Item>) {
    for item in summaries {
        if let Item::Answered {
            provider, reason, ..
        } = &item
        {
            tracing::warn!(provider = %provider, "webhook rejected: {reason}");
        }
        if let Err(e) = state.records.try_send(item) {
            tracing::warn!(
                "webhook record queue full: a summary of rejected deliveries was not recorded ({e})"
            );
        }
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
    backlog: &AtomicUsize,
    pass_on: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) {
    while let Some(item) = rx.blocking_recv() {
        let config = current(config);
        // Counted out once dispatched (its nudge given), whatever became of it.
        let _dispatched = matches!(item, Item::Delivery { .. }).then(|| Dispatched(backlog));
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
                    let r = dispatch(
                        &config,
                        store,
                        targets,
                        index,
                        &received_at,
                        &delivery,
                        pass_on,
                    );
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

/// A queued delivery, counted out of the backlog when dropped.
struct Dispatched<'a>(&'a AtomicUsize);

impl Drop for Dispatched<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Match a push to a repository, nudge the repository when its default branch changed, and record it. The
/// nudge comes before the recording, which waits for the database (an import may hold it); with several
/// instances a quick read for an earlier copy of the delivery comes first.
fn dispatch(
    config: &Config,
    store: &Store,
    targets: &Mutex<Targets>,
    index: usize,
    received_at: &str,
    delivery: &Delivery,
    pass_on: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) -> Result<(i64, &'static str), StoreError> {
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
    // Read through its own connection: never behind an import's write transaction. Unreadable (the database
    // away): matched against the repositories this instance mirrors, by path and clone URL.
    let rows = store
        .repos_of_provider_reader(&provider.name)
        .unwrap_or_else(|e| {
            tracing::warn!(
                "cannot read the repositories of provider {} (matching the delivery by path and clone URL): {e}",
                provider.name
            );
            Vec::new()
        });
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
            rec.ref_name = Some(&u.ref_name);
            // Several instances on one database: another may have received this very delivery (a
            // redelivery, a load balancer retrying).
            // A check that fails counts as not seen: a second poll is cheap, a lost one is not.
            if let Some(id) = delivery.delivery_id.as_deref()
                && store.database().sqlite_path().is_none()
                && store.delivery_seen(&provider.name, id).unwrap_or_else(|e| {
                    tracing::warn!(
                        "cannot look for an earlier delivery {id} (polling anyway): {e}"
                    );
                    false
                })
            {
                rec.reason = Some("a replay of a delivery another instance received");
                return store.record_delivery(&rec).map(|id| (id, "ignored"));
            }
            let passed = pass_on(&repo_id);
            if passed.is_none() {
                notify.nudge();
            }
            rec.outcome = "polled";
            let what = if u.deleted {
                "the default branch was deleted; the poll reports it"
            } else {
                "push to the default branch"
            };
            let reason = match &passed {
                Some(other) => format!("{what}; passed on to instance {other}, which polls it"),
                None => what.to_string(),
            };
            rec.reason = Some(&reason);
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
    rows: &[RepoKeyRow],
    targets: &Targets,
) -> Option<String> {
    if let Some(id) = &key.provider_id {
        let same_id: Vec<&RepoKeyRow> = rows
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
