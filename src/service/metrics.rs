//! The optional metrics listener (`[metrics] listen`): `/metrics` (the registry plus per-repository gauges
//! read from the database at scrape time), `/healthz` (the process answers) and `/readyz` (the scheduler is
//! ticking and the database is writable). A listener of its own, so it can stay on localhost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::http::{self, Answer, answer};
use crate::metrics::{Labels, global};
use crate::store::Store;

/// Scrapers and health checks are few; this many connections at once is plenty, and one address holds at
/// most an eighth of them.
const LIMITS: http::Limits = http::Limits {
    max_connections: 64,
    max_per_client: 8,
    proxies: Vec::new(),
    header_timeout: Duration::from_secs(10),
};

/// What `/readyz` looks at (the scheduler's last tick) and which repositories the service mirrors now (the
/// per-repository gauges leave out the ones it no longer polls, so their old errors raise no alert).
#[derive(Debug)]
pub(crate) struct Health {
    last_tick: Mutex<Instant>,
    /// A tick older than this means the scheduler is stuck.
    pub(crate) stale_after: Duration,
    /// The repositories polled now; `None` until the scheduler has said (then all but `removed` count).
    mirrored: Mutex<Option<std::collections::HashSet<String>>>,
}

impl Health {
    pub(crate) fn new(stale_after: Duration) -> Arc<Health> {
        Arc::new(Health {
            last_tick: Mutex::new(Instant::now()),
            stale_after,
            mirrored: Mutex::new(None),
        })
    }

    /// The repositories the service polls from now on.
    pub(crate) fn set_mirrored(&self, ids: impl IntoIterator<Item = String>) {
        *self.mirrored.lock().unwrap_or_else(|p| p.into_inner()) = Some(ids.into_iter().collect());
    }

    /// Whether the service polls `id` (true until it has said which it polls).
    pub(crate) fn is_mirrored(&self, id: &str) -> bool {
        self.mirrored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|m| m.contains(id))
    }

    pub(crate) fn tick(&self) {
        *self.last_tick.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub(crate) fn ticking(&self) -> bool {
        self.last_tick
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            < self.stale_after
    }
}

/// Gauges computed from the database at scrape time.
fn catalog_gauges(store: &Store, health: &Health) -> Vec<(&'static str, Labels, f64)> {
    let mut out = Vec::new();
    let Ok(rows) = store.status() else {
        return out;
    };
    let now = chrono::Utc::now();
    // Repositories no longer mirrored (removed by discovery, or no longer in the configuration) keep their
    // data but are not watched.
    for r in rows
        .into_iter()
        .filter(|r| r.state != "removed" && health.is_mirrored(&r.repo))
    {
        let repo = vec![("repo", r.repo.clone())];
        out.push(("modelmirror_models", repo.clone(), r.models as f64));
        out.push(("modelmirror_model_errors", repo.clone(), r.errors as f64));
        out.push((
            "modelmirror_repository_failing",
            repo.clone(),
            f64::from(u8::from(r.last_error.is_some())),
        ));
        let age = |t: Option<&str>| {
            t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|at| (now - at.with_timezone(&chrono::Utc)).num_seconds() as f64)
        };
        // Any poll, failed ones too: is the scheduler reaching this repository?
        if let Some(secs) = age(r.last_check_at.as_deref()) {
            out.push(("modelmirror_seconds_since_last_check", repo.clone(), secs));
        }
        // Emitted for failing repositories too (growing): alert on it going over a few periods.
        if let Some(secs) = age(r.last_success_at.as_deref()) {
            out.push(("modelmirror_seconds_since_last_success", repo, secs));
        }
    }
    out.push(("modelmirror_up", Vec::new(), 1.0));
    out
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
pub(super) async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    health: Arc<Health>,
    stop: watch::Receiver<bool>,
) {
    http::serve(listener, "metrics", LIMITS, stop, move |req, _| {
        respond(req, store.clone(), health.clone())
    })
    .await;
}

async fn respond(req: Request<Incoming>, store: Arc<Store>, health: Arc<Health>) -> Answer {
    const TEXT: &str = "text/plain";
    match req.uri().path() {
        "/metrics" => {
            let health = health.clone();
            let body = tokio::task::spawn_blocking(move || {
                global().render(&catalog_gauges(&store, &health))
            })
            .await
            .unwrap_or_default();
            answer(
                StatusCode::OK,
                body,
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/healthz" => answer(StatusCode::OK, "ok\n", TEXT),
        "/readyz" => {
            let ticking = health.ticking();
            let writable = tokio::task::spawn_blocking(move || store.writable())
                .await
                .unwrap_or(false);
            match (ticking, writable) {
                (true, true) => answer(StatusCode::OK, "ready\n", TEXT),
                (false, _) => answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the scheduler has not ticked recently\n",
                    TEXT,
                ),
                (_, false) => answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is not writable\n",
                    TEXT,
                ),
            }
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n",
            TEXT,
        ),
    }
}
