//! The long-running service (`modelmirror run`) and the one-shot `sync`: scheduling, concurrency, back-off,
//! configuration reload, shutdown, and what the service tells systemd.
//!
//! Scheduling is one small loop per repository over a cron parser (see the README for why not
//! tokio-cron-scheduler): each loop computes its next firing from the wall clock every time, so a busy process
//! can delay a poll but never stop a schedule. The loop of a repository runs its polls one after another, so
//! they cannot overlap; a semaphore bounds how many polls run at once across repositories. A failing
//! repository backs off exponentially, capped at 8 × its schedule period, and never affects the others. When
//! its server could not be reached at all, each regular firing during the back-off checks whether the server
//! accepts a TCP connection again, and polls at once if it does: back-off spares a failing server the
//! requests, not the repository the time to catch up.
//!
//! The supervisor loop in [`run`] owns the set of repository loops and discovery loops. It is also what pings
//! the systemd watchdog and keeps `STATUS=` current, on its own tick: a stuck supervisor is restarted by
//! systemd, not just a dead process. A reload (SIGHUP, or a change to the configuration files) validates the
//! new configuration first: a broken one is rejected and the running one stays.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Config, RepoConfig};
use crate::metrics::Health;
use crate::store::Store;
use crate::sync::{self, PollOutcome, SyncError, Trigger};
use crate::systemd::Notifier;
use crate::webhook::{self, ConfigHandle, Nudge, Targets, WebhookError};

/// The longest start-time spread given to a repository: its offset is derived from its id, so the same
/// repository always polls at the same second and hundreds of repositories do not hit a server at once.
const MAX_JITTER: Duration = Duration::from_secs(60);
/// How often the supervisor ticks (watchdog, status) when systemd asks for no faster pings.
const TICK: Duration = Duration::from_secs(10);
/// How long shutdown waits for polls in progress before leaving (the database keeps its last committed
/// commit either way).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// What the daemon is told from outside.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Read the configuration again (why: SIGHUP, a file changed).
    Reload(String),
    Shutdown,
}

/// Errors that stop the service from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error("cannot listen for metrics on {addr}: {source} (change [metrics] listen)")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the daemon shares with every repository loop.
struct Shared {
    /// The configuration in force; a reload swaps it, and every poll reads it afresh.
    config: ConfigHandle,
    store: Arc<Store>,
    /// A second connection for the reads made on async tasks (the status line, the known repositories): in
    /// WAL mode they never wait for the writer, which may hold `store` for a whole long commit.
    reader: Arc<Store>,
    /// Bounds polls running at once (`concurrency`).
    permits: Semaphore,
    /// How many permits `permits` was sized for, to resize it on reload.
    permit_count: Mutex<usize>,
    /// One lock per repository, kept across the restarts of its loop by a reload: the old loop's poll in
    /// progress and the new loop's first poll never overlap.
    repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set on shutdown: transfers abort and multi-commit polls stop after the commit in progress.
    cancel: Arc<AtomicBool>,
    /// The repositories being mirrored and their nudge notifiers, for the webhook dispatcher.
    targets: Arc<Mutex<Targets>>,
    /// The polls in progress, by repository: their last sign of life, to tell a slow poll from a stuck one.
    polls: Mutex<HashMap<String, Arc<PollWatch>>>,
    /// No sign of life for this long means stuck: `STALL_FACTOR` × the longest git timeout libgit2 was given
    /// at start (process-wide: the longest `read_timeout` or `connect_timeout` of any provider; a live
    /// transfer gets data or fails within it) plus `STALL_MARGIN`.
    stall_limit: Duration,
    /// The git servers being checked for their return right now, by host and port: one check per server at
    /// a time however many of its repositories back off (resolving a host name takes a blocking thread
    /// while it lasts).
    probing: Mutex<std::collections::HashSet<(String, u16)>>,
}

/// One poll in progress, as the supervisor watches it.
struct PollWatch {
    progress: sync::Progress,
    /// See `Shared::stall_limit`.
    limit: Duration,
    /// Logged already (once per poll).
    reported: AtomicBool,
}

/// A poll with no sign of life for this many git timeouts, plus `STALL_MARGIN`, is stuck.
const STALL_FACTOR: u32 = 5;
/// Beyond the database's busy timeout (30 s) for another process's writes.
const STALL_MARGIN: Duration = Duration::from_secs(60);

/// The stall limit for the git timeouts the process runs with (see `Shared::stall_limit`).
fn stall_limit(config: &Config) -> Duration {
    config
        .providers
        .iter()
        .map(|p| p.read_timeout.max(p.connect_timeout))
        .max()
        .unwrap_or(Duration::from_secs(crate::config::DEFAULT_READ_TIMEOUT))
        .saturating_mul(STALL_FACTOR)
        .saturating_add(STALL_MARGIN)
}

/// The polls with no sign of life for longer than their limit, each logged once (with what happens next),
/// counted in the `modelmirror_polls_stuck` gauge. A poll waiting for the database (`waiting`: another poll
/// is writing a long commit) is alive.
fn stuck_polls(
    polls: &HashMap<String, Arc<PollWatch>>,
    waiting: impl Fn(std::thread::ThreadId) -> bool,
) -> usize {
    let mut stuck = 0;
    for (id, w) in polls {
        if w.progress.thread().is_some_and(&waiting) {
            w.progress.touch();
            continue;
        }
        let idle = w.progress.idle();
        if idle <= w.limit {
            continue;
        }
        stuck += 1;
        if !w.reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                repo = %id,
                "the poll of {id} has shown no sign of life for {} s (a network read that never returns?): watchdog pings stop, so systemd restarts the service; without systemd, restart it",
                idle.as_secs()
            );
        }
    }
    crate::metrics::global().set("modelmirror_polls_stuck", &[], stuck as f64);
    stuck
}

impl Shared {
    fn config(&self) -> Arc<Config> {
        webhook::current(&self.config)
    }

    /// Start (`Some`) or end (`None`) watching the poll of `id`.
    fn watch_poll(&self, id: &str, watch: Option<Arc<PollWatch>>) {
        let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        match watch {
            Some(w) => polls.insert(id.to_string(), w),
            None => polls.remove(id),
        };
    }

    /// How many polls are stuck (see [`stuck_polls`]).
    fn stuck_polls(&self) -> usize {
        stuck_polls(
            &self.polls.lock().unwrap_or_else(|p| p.into_inner()),
            |thread| self.store.is_waiting(thread),
        )
    }

    /// Whether the git server at `target` accepts connections again; `false` without checking while
    /// another repository's check of the same server is under way.
    async fn server_is_back(&self, target: &(String, u16), timeout: Duration) -> bool {
        /// Ends the check, however the future ends (a shutdown drops it mid-way).
        struct Checking<'a>(
            &'a Mutex<std::collections::HashSet<(String, u16)>>,
            &'a (String, u16),
        );
        impl Drop for Checking<'_> {
            fn drop(&mut self) {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(self.1);
            }
        }
        if !self
            .probing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.clone())
        {
            return false;
        }
        let _checking = Checking(&self.probing, target);
        tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((target.0.as_str(), target.1)),
        )
        .await
        .is_ok_and(|connected| connected.is_ok())
    }

    fn repo_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }
}

/// A running loop (repository or discovery) and how to stop it.
struct Task {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
    /// For repository loops: the configuration it runs with (a change restarts it).
    repo: Option<RepoConfig>,
    /// For discovery loops: the provider's settings it started with (only a change restarts it, so saving
    /// an unrelated file neither rediscovers every host at once nor resets their request budgets).
    provider: String,
}

/// Run the service until told to shut down: every repository on its schedule (one startup poll each), a
/// discovery loop per provider with discovery scopes, the optional webhook and metrics listeners. Returns
/// once polls in progress have committed or rolled back (or after a grace period).
pub async fn run(
    config_path: PathBuf,
    config: Config,
    store: Arc<Store>,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let tick_every = notifier.watchdog_interval().map_or(TICK, |w| w.min(TICK));
    let health = Health::new(tick_every * 3);
    let handle: ConfigHandle = Arc::new(RwLock::new(Arc::new(config)));
    let config = webhook::current(&handle);
    let reader = match Store::open(store.path()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::warn!(
                "cannot open a second database connection for reads, sharing the writer's: {e}"
            );
            store.clone()
        }
    };
    if let Err(e) = store.record_start() {
        tracing::error!("cannot record the start: {e}");
    }
    let shared = Arc::new(Shared {
        reader: reader.clone(),
        permits: Semaphore::new(config.concurrency),
        permit_count: Mutex::new(config.concurrency),
        repo_locks: Mutex::new(HashMap::new()),
        probing: Mutex::new(std::collections::HashSet::new()),
        config: handle.clone(),
        store: store.clone(),
        cancel: Arc::new(AtomicBool::new(false)),
        targets: Arc::new(Mutex::new(Targets::default())),
        polls: Mutex::new(HashMap::new()),
        stall_limit: stall_limit(&config),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Listeners bind first, so a bad address stops the start instead of failing later.
    let hooks_listener = match &config.webhook {
        Some(w) => Some(webhook::bind(w.listen).await?),
        None => None,
    };
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics {
                    addr: *addr,
                    source,
                })?,
        ),
        None => None,
    };
    let mut listeners = JoinSet::new();
    if let Some(l) = hooks_listener {
        listeners.spawn(webhook::serve(
            l,
            handle.clone(),
            store.clone(),
            shared.targets.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(l) = metrics_listener {
        listeners.spawn(crate::metrics::serve(
            l,
            reader.clone(),
            health.clone(),
            stop_rx.clone(),
        ));
    }

    let (found_tx, mut found_rx) = mpsc::channel::<(String, Vec<RepoConfig>)>(16);
    let mut discovered: HashMap<String, Vec<RepoConfig>> = HashMap::new();
    let mut discovery: HashMap<String, Task> = HashMap::new();
    let mut repos: HashMap<String, Task> = HashMap::new();
    start_discovery(&shared, &config, &mut discovered, &mut discovery, &found_tx);
    reconcile(&shared, &config, &mut repos, &discovered);
    health.set_mirrored(repos.keys().cloned());
    tracing::info!(
        repos = repos.len(),
        concurrency = config.concurrency,
        database = %store.path().display(),
        "modelmirror running"
    );
    notifier.ready(&status_line(&reader, &health));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            c = control.recv() => match c {
                None | Some(Control::Shutdown) => break,
                Some(Control::Reload(why)) => {
                    notifier.reloading();
                    match reload(&config_path, &shared) {
                        Ok(new) => {
                            tracing::info!("configuration reloaded ({why}): {} repositories configured", new.repos.len());
                            if new.webhook.as_ref().map(|w| w.listen) != config_listen(&config) {
                                tracing::warn!("[webhook] listen changed: restart the service to apply it");
                            }
                            discovery.retain(|name, t| {
                                let same = new.providers.iter().any(|p| {
                                    &p.name == name && !p.discover.is_empty() && format!("{p:?}") == t.provider
                                });
                                if !same {
                                    let _ = t.stop.send(true);
                                    discovered.remove(name);
                                }
                                same
                            });
                            start_discovery(&shared, &new, &mut discovered, &mut discovery, &found_tx);
                            reconcile(&shared, &new, &mut repos, &discovered);
                            health.set_mirrored(repos.keys().cloned());
                            record_reload(&store, Ok(new.database_max_bytes));
                        }
                        Err(message) => {
                            tracing::error!("configuration reload ({why}) rejected, the running configuration stays: {message}");
                            record_reload(&store, Err(&message));
                        }
                    }
                    notifier.ready(&status_line(&reader, &health));
                }
            },
            Some((provider, found)) = found_rx.recv() => {
                // A loop stopped by a reload may have sent this just before: only providers that still
                // discover count.
                let current = shared.config();
                if !current.providers.iter().any(|p| p.name == provider && !p.discover.is_empty()) {
                    continue;
                }
                discovered.insert(provider, found);
                let current = shared.config();
                reconcile(&shared, &current, &mut repos, &discovered);
                health.set_mirrored(repos.keys().cloned());
            }
            _ = tick.tick() => {
                health.tick();
                // A stuck poll holds its repository (and a concurrency slot) for ever, and no thread can be
                // stopped from outside: let systemd restart the service instead of pretending all is well.
                let stuck = shared.stuck_polls();
                if stuck == 0 {
                    notifier.watchdog();
                }
                let mut line = status_line(&reader, &health);
                if stuck > 0 {
                    line.push_str(&format!(", {stuck} poll(s) stuck"));
                }
                notifier.status(&line);
            }
        }
    }
    notifier.stopping();
    tracing::info!(
        "shutting down: no new polls; waiting for polls in progress to commit or roll back"
    );
    shared.cancel.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let all: Vec<Task> = repos.into_values().chain(discovery.into_values()).collect();
    // Every loop is told at once (none starts another poll), then awaited.
    shared.permits.close();
    for t in &all {
        let _ = t.stop.send(true);
    }
    let wait_all = async {
        for t in all {
            let _ = t.handle.await;
        }
        while listeners.join_next().await.is_some() {}
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, wait_all)
        .await
        .is_err()
    {
        tracing::warn!(
            "polls in progress did not finish within {}s; leaving now (the database keeps its last committed commit)",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    tracing::info!("stopped");
    Ok(())
}

fn config_listen(c: &Config) -> Option<std::net::SocketAddr> {
    c.webhook.as_ref().map(|w| w.listen)
}

/// Recorded on a blocking thread: the writer connection may be busy with a long commit, and the supervisor
/// must keep answering the watchdog. An applied reload first sets its `database_max_bytes` (`Ok`); a
/// rejected one records why (`Err`).
fn record_reload(store: &Arc<Store>, outcome: Result<Option<u64>, &str>) {
    crate::metrics::global().inc(
        "modelmirror_reloads_total",
        &[(
            "result",
            if outcome.is_err() {
                "rejected"
            } else {
                "applied"
            },
        )],
        1.0,
    );
    let (store, outcome) = (store.clone(), outcome.map_err(str::to_string));
    tokio::task::spawn_blocking(move || {
        if let Ok(max_bytes) = outcome
            && let Err(e) = store.set_max_bytes(max_bytes)
        {
            tracing::error!("cannot apply database_max_bytes: {e}");
        }
        if let Err(e) = store.record_reload(outcome.err().as_deref()) {
            tracing::error!("cannot record the reload: {e}");
        }
    });
}

/// Load and validate the configuration again; on success make it the one in force.
fn reload(path: &std::path::Path, shared: &Arc<Shared>) -> Result<Arc<Config>, String> {
    let new = Config::load(path).map_err(|e| e.to_string())?;
    let secrets = new.check_secrets();
    for w in &secrets.warnings {
        tracing::warn!("{w}");
    }
    if !secrets.errors.is_empty() {
        let errors: Vec<String> = secrets.errors.iter().map(ToString::to_string).collect();
        return Err(errors.join("; "));
    }
    // libgit2's trust store and timeouts are process-wide and may only be set before transfers run.
    let old = shared.config();
    let git_settings = |c: &Config| {
        c.providers
            .iter()
            .map(|p| (p.ca_file.clone(), p.connect_timeout, p.read_timeout))
            .collect::<Vec<_>>()
    };
    if git_settings(&old) != git_settings(&new) {
        tracing::warn!(
            "ca_file, connect_timeout or read_timeout changed: git transfers use them after a restart (REST calls at once)"
        );
    }
    shared.store.set_retention_days(new.events_retention_days);
    // Resize the poll slots.
    {
        let mut count = shared
            .permit_count
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if new.concurrency > *count {
            shared.permits.add_permits(new.concurrency - *count);
        } else if new.concurrency < *count {
            // Only free permits can be forgotten now; the rest are taken back as polls return them.
            let excess = *count - new.concurrency;
            let owed = excess - shared.permits.forget_permits(excess);
            if let Ok(owed) = u32::try_from(owed)
                && owed > 0
            {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Ok(p) = shared.permits.acquire_many(owed).await {
                        p.forget();
                    }
                });
            }
        }
        *count = new.concurrency;
    }
    let new = Arc::new(new);
    *shared.config.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
    Ok(new)
}

/// "14 repos, 0 failing, last change 3 min ago" for systemd's `STATUS=`.
pub fn status_line(store: &Store, health: &Health) -> String {
    let Ok(mut rows) = store.status() else {
        return "running".into();
    };
    rows.retain(|r| r.state != "removed" && health.is_mirrored(&r.repo));
    let failing = rows.iter().filter(|r| r.last_error.is_some()).count();
    let last = rows
        .iter()
        .filter_map(|r| r.last_change_at.as_deref())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .max();
    let last = match last {
        None => "no change yet".to_string(),
        Some(t) => {
            let mins = (Utc::now() - t.with_timezone(&Utc)).num_minutes().max(0);
            match mins {
                0 => "last change just now".to_string(),
                m if m < 120 => format!("last change {m} min ago"),
                m => format!("last change {} h ago", m / 60),
            }
        }
    };
    format!("{} repos, {failing} failing, {last}", rows.len())
}

/// Start a discovery loop for each provider with discovery scopes, seeded with what the database knows.
fn start_discovery(
    shared: &Arc<Shared>,
    config: &Config,
    discovered: &mut HashMap<String, Vec<RepoConfig>>,
    discovery: &mut HashMap<String, Task>,
    found: &mpsc::Sender<(String, Vec<RepoConfig>)>,
) {
    for provider in &config.providers {
        if provider.discover.is_empty() || discovery.contains_key(&provider.name) {
            continue;
        }
        // Repositories known from earlier runs start at once: a REST API that is down does not stop mirroring.
        match shared.reader.discovered_repos(&provider.name) {
            Ok(known) => {
                let repos = known
                    .iter()
                    .map(|(path, url)| provider.repo(path, url))
                    .collect();
                discovered.insert(provider.name.clone(), repos);
            }
            Err(e) => {
                tracing::error!(provider = %provider.name, "cannot read known repositories: {e}")
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(discovery_loop(
            shared.clone(),
            provider.name.clone(),
            found.clone(),
            stop_rx,
        ));
        discovery.insert(
            provider.name.clone(),
            Task {
                stop,
                handle,
                repo: None,
                provider: format!("{provider:?}"),
            },
        );
    }
}

/// Start loops for repositories that should be mirrored and are not, stop those that should not be, and
/// restart those whose configuration changed.
fn reconcile(
    shared: &Arc<Shared>,
    config: &Config,
    tasks: &mut HashMap<String, Task>,
    discovered: &HashMap<String, Vec<RepoConfig>>,
) {
    let mut wanted: HashMap<String, RepoConfig> = HashMap::new();
    for repo in config.repos.iter().chain(discovered.values().flatten()) {
        wanted
            .entry(repo.id.clone())
            .or_insert_with(|| repo.clone());
    }
    let mut targets = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
    let stale: Vec<String> = tasks
        .iter()
        .filter(|(id, t)| match (wanted.get(*id), &t.repo) {
            (Some(w), Some(r)) => !same_repo(w, r),
            _ => true,
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        targets.repos.remove(&id);
        if let Some(task) = tasks.remove(&id) {
            if wanted.contains_key(&id) {
                tracing::info!(repo = %id, "configuration changed: restarting its polls");
            } else {
                tracing::info!(repo = %id, "no longer mirrored: stopping its polls (data kept)");
            }
            // The loop finishes a poll in progress, then ends.
            let _ = task.stop.send(true);
        }
    }
    for (id, repo) in wanted {
        if tasks.contains_key(&id) {
            continue;
        }
        let (stop, stop_rx) = watch::channel(false);
        let nudge = Arc::new(Nudge::default());
        targets
            .repos
            .insert(id.clone(), (repo.clone(), nudge.clone()));
        let handle = tokio::spawn(repo_loop(shared.clone(), repo.clone(), nudge, stop_rx));
        tasks.insert(
            id,
            Task {
                stop,
                handle,
                repo: Some(repo),
                provider: String::new(),
            },
        );
    }
}

/// Whether two configurations of a repository poll the same way.
fn same_repo(a: &RepoConfig, b: &RepoConfig) -> bool {
    a.url == b.url
        && a.provider == b.provider
        && a.path == b.path
        && a.backfill == b.backfill
        && a.schedule.as_str() == b.schedule.as_str()
}

/// Discover a provider's repositories now and then on its `discover_schedule`; after a rate-limit hold, not
/// before it ends. Stops when the provider goes away in a reload.
async fn discovery_loop(
    shared: Arc<Shared>,
    name: String,
    found: mpsc::Sender<(String, Vec<RepoConfig>)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut limits = None;
    loop {
        let config = shared.config();
        let Some(index) = config.providers.iter().position(|p| p.name == name) else {
            return;
        };
        let provider = &config.providers[index];
        let limits = limits
            .get_or_insert_with(|| crate::forge::api::Limits::new(provider.max_requests_per_hour))
            .clone();
        // Shutdown must not wait for a discovery (it may be waiting out a rate limit).
        let run = tokio::select! {
            r = sync::discover(&config, index, &shared.store, limits.clone()) => r,
            _ = stop.changed() => return,
        };
        match run {
            Ok(d) => {
                for e in &d.errors {
                    tracing::warn!(provider = %name, "discovery incomplete (nothing marked removed): {e}");
                }
                // The database knows the full set (a partial run removed nothing): mirror what it lists.
                let repos = match shared.reader.discovered_repos(&name) {
                    Ok(known) => known
                        .iter()
                        .map(|(path, url)| provider.repo(path, url))
                        .collect(),
                    Err(e) => {
                        tracing::error!(provider = %name, "cannot read discovered repositories: {e}");
                        d.repos
                    }
                };
                if found.send((name.clone(), repos)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(provider = %name, "discovery failed (repositories unchanged): {e}")
            }
        }
        let now = Utc::now();
        let mut wait = match provider.discover_schedule.next_after(now) {
            Some(next) => (next - now).to_std().unwrap_or(Duration::ZERO),
            None => provider.discover_schedule.period(),
        };
        if let Some(hold) = limits.hold() {
            wait = wait.max((hold.until - now).to_std().unwrap_or(Duration::ZERO));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A stable offset in `[0, min(period / 4, MAX_JITTER))` for a repository.
pub fn jitter(repo_id: &str, period: Duration) -> Duration {
    let span = (period / 4).min(MAX_JITTER);
    if span.is_zero() {
        return Duration::ZERO;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    repo_id.hash(&mut h);
    Duration::from_millis(h.finish() % span.as_millis().max(1) as u64)
}

/// How long to wait after `failures` consecutive failures: one period, then doubling, at most 8 periods.
pub fn backoff(period: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(3);
    period.saturating_mul(factor)
}

/// How long nudges must pause before the poll that follows a burst of them.
const NUDGE_QUIET: Duration = Duration::from_millis(150);
/// The longest a continuous stream of nudges delays that poll.
const NUDGE_MAX_DELAY: Duration = Duration::from_secs(2);

/// One repository's polls: on its schedule, and at once when nudged by a webhook. Nudges that arrive while a
/// poll runs merge into one more poll after it, taken once they pause (`NUDGE_QUIET`, at most
/// `NUDGE_MAX_DELAY` later): a burst of any size costs two polls, a single push none of the wait.
async fn repo_loop(
    shared: Arc<Shared>,
    repo: RepoConfig,
    nudge: Arc<Nudge>,
    mut stop: watch::Receiver<bool>,
) {
    let period = repo.schedule.period();
    let offset = jitter(&repo.id, period);
    // The startup poll is spread too, but over a few seconds at most.
    let mut wait = offset.min(Duration::from_secs(5));
    let mut trigger = Trigger::Startup;
    // Backing off from a server that could not be reached at all: where to check, at each regular firing,
    // whether it accepts connections again (then the poll runs at once instead of at the back-off's end).
    let mut probe: Option<(String, u16)> = None;
    loop {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let step = match &probe {
                Some(_) => next_wait(&repo, offset)
                    .max(Duration::from_millis(100))
                    .min(left),
                None => left,
            };
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = nudge.wait() => {
                    trigger = Trigger::Webhook;
                    break;
                }
                _ = stop.changed() => return,
            }
            if tokio::time::Instant::now() >= until {
                break;
            }
            if let Some(target) = &probe {
                let timeout = shared
                    .config()
                    .provider(&repo)
                    .map_or(Duration::from_secs(15), |p| p.connect_timeout);
                let back = tokio::select! {
                    back = shared.server_is_back(target, timeout) => back,
                    _ = nudge.wait() => {
                        trigger = Trigger::Webhook;
                        break;
                    }
                    _ = stop.changed() => return,
                };
                if back {
                    tracing::info!(repo = %repo.id, "{}:{} accepts connections again: polling now", target.0, target.1);
                    break;
                }
            }
        }
        probe = None;
        let repo_lock = shared.repo_lock(&repo.id);
        let _running = tokio::select! {
            g = repo_lock.lock_owned() => g,
            _ = stop.changed() => return,
        };
        let permit = tokio::select! {
            p = shared.permits.acquire() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        let task_shared = shared.clone();
        let task_repo = repo.clone();
        let watch = Arc::new(PollWatch {
            progress: sync::Progress::default(),
            limit: shared.stall_limit,
            reported: AtomicBool::new(false),
        });
        shared.watch_poll(&repo.id, Some(watch.clone()));
        let task_watch = watch.clone();
        let joined = tokio::task::spawn_blocking(move || {
            // The configuration in force now: a reload's new credentials and settings apply at once.
            let config = task_shared.config();
            sync::run_poll(
                &config,
                &task_repo,
                &task_shared.store,
                trigger,
                &task_shared.cancel,
                &task_watch.progress,
            )
        })
        .await;
        shared.watch_poll(&repo.id, None);
        if watch.reported.load(Ordering::Relaxed) {
            tracing::warn!(repo = %repo.id, "the poll reported stuck has ended after all");
        }
        drop(permit);
        if let Ok((Err(e), _)) = &joined
            && e.is_unreachable()
        {
            // The failed connection was made to the server itself (not through a proxy, see
            // `git::classify`), so a direct connection tells whether it is back.
            probe = crate::git::endpoint(&repo.url);
        }
        let failures = match joined {
            Ok((Ok(outcome), _)) => {
                if let PollOutcome::Updated { .. } = outcome {
                    tracing::info!("{}", outcome.line(&repo.id));
                }
                0
            }
            Ok((Err(SyncError::Cancelled { .. }), _)) => return,
            Ok((Err(_), failures)) => failures.max(1),
            Err(e) => {
                tracing::error!(repo = %repo.id, "poll task failed: {e}");
                1
            }
        };
        trigger = Trigger::Schedule;
        if nudge.take() {
            // Nudged during the poll: one more, once the nudges pause.
            let deadline = tokio::time::Instant::now() + NUDGE_MAX_DELAY;
            loop {
                tokio::select! {
                    _ = nudge.wait() => {}
                    _ = tokio::time::sleep(NUDGE_QUIET) => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = stop.changed() => return,
                }
            }
            nudge.take();
            trigger = Trigger::Webhook;
            wait = Duration::ZERO;
            continue;
        }
        wait = if failures > 0 {
            let delay = backoff(period, failures);
            tracing::info!(repo = %repo.id, failures, "backing off for {}s", delay.as_secs());
            delay
        } else {
            next_wait(&repo, offset)
        };
    }
}

/// Time until the schedule's next firing after now, plus the repository's offset.
fn next_wait(repo: &RepoConfig, offset: Duration) -> Duration {
    let now = Utc::now();
    match repo.schedule.next_after(now) {
        Some(next) => (next - now).to_std().unwrap_or(Duration::ZERO) + offset,
        None => repo.schedule.period(),
    }
}

/// Poll the given repositories once each (at most `concurrency` at a time) and report every outcome as it
/// completes through `report`. Returns whether all succeeded.
pub async fn sync_once(
    config: Arc<Config>,
    store: Arc<Store>,
    repos: Vec<RepoConfig>,
    cancel: Arc<AtomicBool>,
    mut report: impl FnMut(&RepoConfig, &Result<PollOutcome, SyncError>),
) -> bool {
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut set = JoinSet::new();
    for repo in repos {
        let (config, store, permits, cancel) = (
            config.clone(),
            store.clone(),
            permits.clone(),
            cancel.clone(),
        );
        set.spawn(async move {
            let permit = permits.acquire_owned().await;
            let r = repo.clone();
            let result = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                sync::run_poll(
                    &config,
                    &r,
                    &store,
                    Trigger::Manual,
                    &cancel,
                    &sync::Progress::default(),
                )
                .0
            })
            .await
            .unwrap_or_else(|e| {
                Err(SyncError::Internal {
                    repo: repo.id.clone(),
                    message: format!("poll task failed: {e}"),
                })
            });
            (repo, result)
        });
    }
    let mut ok = true;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((repo, result)) => {
                ok &= result.is_ok();
                report(&repo, &result);
            }
            Err(e) => {
                ok = false;
                tracing::error!("poll task failed: {e}");
            }
        }
    }
    ok
}

/// Turn signals into [`Control`]: SIGTERM and SIGINT shut down (a second one exits at once), SIGHUP
/// reloads.
pub async fn signals(control: mpsc::Sender<Control>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the service with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = control.send(Control::Reload("SIGHUP".into())).await;
            }
        }
    }
    let _ = control.send(Control::Shutdown).await;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: exiting at once");
    std::process::exit(1);
}

/// Resolves on the first SIGINT or SIGTERM (for one-shot commands); a second one exits at once.
pub async fn shutdown_signal() {
    let (tx, mut rx) = mpsc::channel(4);
    tokio::spawn(signals(tx));
    while let Some(c) = rx.recv().await {
        if c == Control::Shutdown {
            return;
        }
    }
}

/// Watch the configuration file's folder and `conf.d/` and ask for a reload when a `.toml` file changes.
/// Events are debounced (editors write a temporary file and rename it over the old one), so one save is one
/// reload. Returns the watcher, which must be kept alive.
pub fn watch_config(
    config_path: &std::path::Path,
    control: mpsc::Sender<Control>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let main_name = config_path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            p.extension().is_some_and(|e| e == "toml")
                || (main_name.is_some() && p.file_name() == main_name.as_deref())
        });
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| {
        tracing::warn!("cannot watch the configuration for changes (SIGHUP still reloads): {e}")
    })
    .ok()?;
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {} (SIGHUP still reloads): {e}", dir.display());
        return None;
    }
    let conf_d = dir.join("conf.d");
    if conf_d.is_dir()
        && let Err(e) = watcher.watch(&conf_d, RecursiveMode::NonRecursive)
    {
        tracing::warn!(
            "cannot watch {} (SIGHUP still reloads): {e}",
            conf_d.display()
        );
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait for a quiet half second.
            loop {
                match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if control
                .send(Control::Reload("configuration files changed".into()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poll whose last sign of life is older than its limit is stuck (reported once), a live one is not,
    /// and a sign of life makes a stuck one live again.
    #[test]
    fn polls_without_a_sign_of_life_past_their_limit_are_stuck() {
        let watch = |limit_ms| {
            Arc::new(PollWatch {
                progress: sync::Progress::default(),
                limit: Duration::from_millis(limit_ms),
                reported: AtomicBool::new(false),
            })
        };
        let mut polls = HashMap::new();
        polls.insert("g/slow".to_string(), watch(60_000));
        polls.insert("g/quiet".to_string(), watch(30));
        let none = |_| false;
        assert_eq!(stuck_polls(&polls, none), 0);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(stuck_polls(&polls, none), 1);
        assert!(polls["g/quiet"].reported.load(Ordering::Relaxed));
        assert!(!polls["g/slow"].reported.load(Ordering::Relaxed));
        assert_eq!(stuck_polls(&polls, none), 1, "still stuck, logged once");
        polls["g/quiet"].progress.touch();
        assert_eq!(stuck_polls(&polls, none), 0);
        // Waiting for the database (another poll's long commit) is not stuck.
        let waiter = watch(30);
        let thread = std::thread::current().id();
        waiter.progress.started_on(thread);
        polls.insert("g/waiting".to_string(), waiter);
        std::thread::sleep(Duration::from_millis(80));
        polls["g/quiet"].progress.touch();
        assert_eq!(stuck_polls(&polls, |t| t == thread), 0);
        assert_eq!(
            stuck_polls(&polls, none),
            0,
            "its wait counted as a sign of life"
        );
    }

    #[test]
    fn backoff_doubles_and_caps_at_eight_periods() {
        let p = Duration::from_secs(300);
        let waits: Vec<u64> = (1..=6).map(|f| backoff(p, f).as_secs() / 300).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let p = Duration::from_secs(300);
        assert_eq!(jitter("a/b", p), jitter("a/b", p));
        let spread: std::collections::HashSet<_> =
            (0..100).map(|i| jitter(&format!("p/r{i}"), p)).collect();
        assert!(spread.len() > 50);
        assert!(spread.iter().all(|j| *j < Duration::from_secs(60)));
        assert!(jitter("x", Duration::from_secs(1)) < Duration::from_millis(250));
    }
}
