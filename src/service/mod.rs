//! The daemon (`modelmirror run`): scheduling, concurrency, back-off, discovery, configuration reload,
//! shutdown, the listeners, and what the service tells systemd. Also what the one-shot `sync` shares with it.
//!
//! - [`supervisor`]: owns the repository and discovery loops, applies reloads, pings the watchdog.
//! - [`repos`]: one loop per repository over a cron parser (see docs/how-it-works.md for why not
//!   tokio-cron-scheduler): each loop computes its next firing from the wall clock every time, so a busy
//!   process can delay a poll but never stop a schedule. A repository's polls run one after another; a
//!   semaphore bounds how many run at once. A failing repository backs off exponentially, capped at 8 × its
//!   schedule period, and never affects the others; when its server could not be reached at all, each regular
//!   firing checks whether the server accepts a TCP connection again and polls at once if it does.
//! - [`discovery`]: one discovery run of a provider, and its loop.
//! - [`heads`]: default-branch heads checked in batches over GraphQL (`head_check = "graphql"`).
//! - [`status`]: commit statuses posted to the Git host after a poll, and the providers' REST budgets.
//! - [`state`]: what the parts share (the configuration in force, the targets of webhook nudges).
//! - [`http`]: the one small HTTP server of the [`webhook`] and [`metrics`] listeners.
//! - [`signals`] and [`systemd`]: what the service hears from and tells the system.

mod discovery;
mod heads;
mod http;
mod leases;
mod metrics;
mod repos;
mod signals;
mod state;
mod status;
mod supervisor;
mod systemd;
mod web;
mod webhook;

pub(crate) use discovery::discover_unless_running;
pub(crate) use repos::sync_once;
pub(crate) use signals::{shutdown_signal, signals, watch_config};
pub(crate) use status::{Budgets, Statuses};
pub(crate) use supervisor::run;
pub(crate) use web::auth::check_files as check_web_files;
pub(crate) use web::serve_alone as serve_web;

/// Errors that stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    #[error("cannot listen for {what} on {addr}: {error} (change {key})")]
    Bind {
        what: &'static str,
        key: &'static str,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("[web]: {0}")]
    WebAuth(web::auth::AuthFileError),
    #[error(
        "[web] listen is not set: the web catalog has nowhere to listen (see config.example.toml)"
    )]
    NoWeb,
    #[error(transparent)]
    Store(crate::store::StoreError),
}
