//! The supervisor: owns the repository loops and discovery loops, starts and stops them as the configuration
//! and discovery say, applies reloads, and is what pings the systemd watchdog and keeps `STATUS=` current, on
//! its own tick: a stuck supervisor is restarted by systemd, not just a dead process. A reload (SIGHUP, or a
//! change to the configuration files) validates the new configuration first: a broken one is rejected and the
//! running one stays.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::discovery::discovery_loop;
use super::metrics::Health;
use super::repos::repo_loop;
use super::state::{ConfigHandle, Control, Nudge, Shared, Targets, current, stall_limit};
use super::systemd::Notifier;
use super::{ServiceError, http, metrics, web, webhook};
use crate::config::{Config, ConfigError, ProviderIssue, RepoConfig};
use crate::query::discovered_repos;
use crate::store::Store;

/// Hand the memory the allocator holds free back to the system. Polls allocate large transient buffers (packs,
/// model files) on the blocking threads; glibc keeps what they freed in per-thread arenas, pinned by the small
/// long-lived allocations made beside them, so a resting service with thousands of repositories would keep
/// its startup wave's high-water mark for ever. Cheap (a walk of the free lists), every tick.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the supervisor ticks (watchdog, status) when systemd asks for no faster pings.
const TICK: Duration = Duration::from_secs(10);
/// How long shutdown waits for polls in progress before leaving (the database keeps its last committed
/// commit either way).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

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

/// Why a reload was rejected (the running configuration stays).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Secrets(Vec<ProviderIssue>),
}

/// Repositories found by a provider's discovery loop, sent to the supervisor.
type Found = (String, Vec<RepoConfig>);

/// What the supervisor loop keeps between events.
struct Supervisor {
    shared: Arc<Shared>,
    config_path: PathBuf,
    health: Arc<Health>,
    notifier: Notifier,
    /// Where discovery loops send what they found.
    found: mpsc::Sender<Found>,
    /// The webhook listener's address at start: a reload cannot move it.
    /// `[webhook] listen` and `trusted_proxies` as the listener started with them.
    webhook_listen: Option<(SocketAddr, Vec<std::net::IpAddr>)>,
    /// `[web]` at start: the web catalog reads it once (its address, credential files, proxies).
    web: Option<crate::config::WebConfig>,
    /// Repositories found by each provider's discovery, as last reported.
    discovered: HashMap<String, Vec<RepoConfig>>,
    discovery: HashMap<String, Task>,
    repos: HashMap<String, Task>,
}

/// Run the service until told to shut down: every repository on its schedule (one startup poll each), a
/// discovery loop per provider with discovery scopes, the optional webhook and metrics listeners. Returns
/// once polls in progress have committed or rolled back (or after a grace period).
pub(crate) async fn run(
    config_path: PathBuf,
    config: Config,
    store: Arc<Store>,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), ServiceError> {
    let notifier = Notifier::from_env();
    let tick_every = notifier.watchdog_interval().map_or(TICK, |w| w.min(TICK));
    let health = Health::new(tick_every * 3);
    let handle: ConfigHandle = Arc::new(RwLock::new(Arc::new(config)));
    let config = current(&handle);
    let reader = match Store::open(store.database()) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::warn!(
                "cannot open a second database connection for reads, sharing the writer's: {e}"
            );
            store.clone()
        }
    };
    let budgets = Arc::new(super::Budgets::default());
    let shared = Arc::new(Shared {
        statuses: super::Statuses::new(
            store.clone(),
            reader.clone(),
            budgets.clone(),
            Some(handle.clone()),
        ),
        budgets,
        heads: Default::default(),
        webhook_backlog: Arc::default(),
        reader: reader.clone(),
        permits: Semaphore::new(config.concurrency),
        permit_count: Mutex::new(config.concurrency),
        repo_locks: Mutex::new(HashMap::new()),
        probing: Mutex::new(HashSet::new()),
        config: handle,
        store: store.clone(),
        cancel: Arc::new(AtomicBool::new(false)),
        targets: Arc::new(Mutex::new(Targets::default())),
        polls: Mutex::new(HashMap::new()),
        stall_limit: stall_limit(&config),
        instances: super::leases::Instances::new(&config.instance_name),
    });
    // Each step of a poll is written only while this process holds the repository's lease (PostgreSQL).
    let _ = store.steps_under_lease(&shared.instances.token);
    crate::metrics::global().set(
        "modelmirror_instance",
        &[("instance", &config.instance_name)],
        1.0,
    );
    // Known to the other instances on the database (and they to it) before the first polls; refused when
    // another live process already runs under this instance_name. Before the listeners: a delivery taken
    // while this waits would find no repository mirrored yet.
    // A stop asked for meanwhile is heeded (the wait for a stale name is 25 s); a reload is applied once
    // running.
    let mut reload_asked = None;
    {
        let joining = super::leases::join(&shared, TICK);
        tokio::pin!(joining);
        loop {
            tokio::select! {
                joined = &mut joining => {
                    joined.map_err(ServiceError::Store)?;
                    break;
                }
                c = control.recv() => match c {
                    None | Some(Control::Shutdown) => {
                        super::leases::retire(&shared).await;
                        return Ok(());
                    }
                    Some(Control::Reload(why)) => reload_asked = Some(why),
                },
            }
        }
    }
    if let Err(e) = store.record_start() {
        tracing::error!("cannot record the start: {e}");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let listeners = match start_listeners(&shared, &config, &health, stop_rx).await {
        Ok(l) => l,
        Err(e) => {
            super::leases::retire(&shared).await;
            return Err(e);
        }
    };
    let (found, mut found_rx) = mpsc::channel::<Found>(16);
    let mut sup = Supervisor {
        shared,
        config_path,
        health,
        notifier,
        found,
        webhook_listen: config
            .webhook
            .as_ref()
            .map(|w| (w.listen, w.trusted_proxies.clone())),
        web: config.web.clone(),
        discovered: HashMap::new(),
        discovery: HashMap::new(),
        repos: HashMap::new(),
    };
    // Another process took this instance_name over (this one's heartbeats failed for a while): stop.
    let (displaced, mut displaced_rx) = mpsc::channel::<crate::store::StoreError>(1);
    tokio::spawn(super::leases::heartbeat_loop(
        sup.shared.clone(),
        TICK,
        displaced,
    ));
    super::leases::start_listening(&sup.shared);
    sup.start_discovery(&config);
    sup.reconcile(&config);
    tracing::info!(
        repos = sup.repos.len(),
        concurrency = config.concurrency,
        database = %store.database(),
        "modelmirror running"
    );
    sup.notifier.ready(&sup.status_line());
    if let Some(why) = reload_asked {
        sup.on_reload(&why);
    }
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            c = control.recv() => match c {
                None | Some(Control::Shutdown) => break,
                Some(Control::Reload(why)) => sup.on_reload(&why),
            },
            Some((provider, repos)) = found_rx.recv() => sup.on_found(provider, repos),
            _ = tick.tick() => sup.on_tick(),
            Some(e) = displaced_rx.recv() => {
                tracing::error!("stopping: {e}");
                sup.shutdown(stop_tx, listeners).await;
                return Err(ServiceError::Store(e));
            }
        }
    }
    sup.shutdown(stop_tx, listeners).await;
    Ok(())
}

/// Bind the optional webhook and metrics listeners (a bad address stops the start) and serve them until
/// `stop`.
async fn start_listeners(
    shared: &Arc<Shared>,
    config: &Config,
    health: &Arc<Health>,
    stop: watch::Receiver<bool>,
) -> Result<JoinSet<()>, ServiceError> {
    let hooks = match &config.webhook {
        Some(w) => Some(http::bind(w.listen, "webhooks", "[webhook] listen").await?),
        None => None,
    };
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(http::bind(*addr, "metrics", "[metrics] listen").await?),
        None => None,
    };
    let web_listener = match &config.web {
        Some(w) => {
            let listener = http::bind(w.listen, "the web catalog", "[web] listen").await?;
            let catalog = web::Web::new(shared.config.clone(), shared.store.database())?;
            Some((listener, Arc::new(catalog)))
        }
        None => None,
    };
    let mut listeners = JoinSet::new();
    if let Some(l) = hooks {
        let passing = shared.clone();
        let pass_on: webhook::PassOn =
            Arc::new(move |repo_id: &str| super::leases::pass_on(&passing, repo_id));
        listeners.spawn(webhook::serve(
            l,
            shared.config.clone(),
            shared.store.clone(),
            shared.targets.clone(),
            shared.webhook_backlog.clone(),
            pass_on,
            stop.clone(),
        ));
    }
    if let Some((l, catalog)) = web_listener {
        listeners.spawn(web::serve(l, catalog, stop.clone()));
    }
    if let Some(l) = metrics_listener {
        listeners.spawn(metrics::serve(
            l,
            shared.reader.clone(),
            health.clone(),
            stop,
        ));
    }
    Ok(listeners)
}

impl Supervisor {
    /// Apply a reload of the configuration (or keep the running one when the new one is broken).
    fn on_reload(&mut self, why: &str) {
        self.notifier.reloading();
        match reload(&self.config_path, &self.shared) {
            Ok(new) => {
                tracing::info!(
                    "configuration reloaded ({why}): {} repositories configured",
                    new.repos.len()
                );
                if new
                    .webhook
                    .as_ref()
                    .map(|w| (w.listen, w.trusted_proxies.clone()))
                    != self.webhook_listen
                {
                    tracing::warn!(
                        "[webhook] listen or trusted_proxies changed: restart the service to apply it"
                    );
                }
                // `public_url` is read on each request; the rest of `[web]` at start.
                let at_start = |w: &Option<crate::config::WebConfig>| {
                    w.clone().map(|mut w| {
                        w.public_url = None;
                        w
                    })
                };
                if at_start(&new.web) != at_start(&self.web) {
                    tracing::warn!(
                        "[web] changed: restart the service to apply it (public_url and the credential files' contents apply without one)"
                    );
                }
                let discovered = &mut self.discovered;
                self.discovery.retain(|name, t| {
                    let same = new.providers.iter().any(|p| {
                        &p.name == name && !p.discover.is_empty() && format!("{p:?}") == t.provider
                    });
                    if !same {
                        let _ = t.stop.send(true);
                        discovered.remove(name);
                    }
                    same
                });
                self.start_discovery(&new);
                self.reconcile(&new);
                record_reload(&self.shared.store, Ok(new.database_max_bytes));
            }
            Err(e) => {
                tracing::error!(
                    "configuration reload ({why}) rejected, the running configuration stays: {e}"
                );
                record_reload(&self.shared.store, Err(&e.to_string()));
            }
        }
        self.notifier.ready(&self.status_line());
    }

    /// A discovery loop reported the repositories its provider has.
    fn on_found(&mut self, provider: String, repos: Vec<RepoConfig>) {
        // A loop stopped by a reload may have sent this just before: only providers that still discover
        // count.
        let config = self.shared.config();
        if !config
            .providers
            .iter()
            .any(|p| p.name == provider && !p.discover.is_empty())
        {
            return;
        }
        self.discovered.insert(provider, repos);
        self.reconcile(&config);
    }

    /// The supervisor's own tick: readiness, the watchdog (not while a poll is stuck), the status line.
    fn on_tick(&self) {
        self.health.tick();
        // A stuck poll holds its repository (and a concurrency slot) for ever, and no thread can be stopped
        // from outside: let systemd restart the service instead of pretending all is well.
        let stuck = self.shared.stuck_polls();
        if stuck == 0 {
            self.notifier.watchdog();
        }
        let mut line = self.status_line();
        if stuck > 0 {
            line.push_str(&format!(", {stuck} poll(s) stuck"));
        }
        self.notifier.status(&line);
        give_back_free_memory();
    }

    /// Stop taking new work, cancel transfers, and wait (for `SHUTDOWN_GRACE` at most) for the polls in
    /// progress to commit or roll back, and for the listeners to finish.
    async fn shutdown(self, stop: watch::Sender<bool>, mut listeners: JoinSet<()>) {
        self.notifier.stopping();
        tracing::info!(
            "shutting down: no new polls; waiting for polls in progress to commit or roll back"
        );
        self.shared.cancel.store(true, Ordering::Relaxed);
        let _ = stop.send(true);
        let all: Vec<Task> = self
            .repos
            .into_values()
            .chain(self.discovery.into_values())
            .collect();
        // Every loop is told at once (none starts another poll), then awaited.
        self.shared.permits.close();
        for t in &all {
            let _ = t.stop.send(true);
        }
        let wait_all = async {
            for t in all {
                let _ = t.handle.await;
            }
            while listeners.join_next().await.is_some() {}
        };
        let timed_out = tokio::time::timeout(SHUTDOWN_GRACE, wait_all)
            .await
            .is_err();
        // Commit statuses still waiting for their host give up, and say so in the events.
        self.shared.statuses.stop().await;
        super::leases::retire(&self.shared).await;
        if timed_out {
            tracing::warn!(
                "polls in progress did not finish within {}s; leaving now (the database keeps its last committed commit)",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        tracing::info!("stopped");
    }

    fn status_line(&self) -> String {
        status_line(&self.shared.reader, &self.health)
    }

    /// Start a discovery loop for each provider with discovery scopes, seeded with what the database knows.
    fn start_discovery(&mut self, config: &Config) {
        let (shared, discovered, discovery, found) = (
            &self.shared,
            &mut self.discovered,
            &mut self.discovery,
            &self.found,
        );
        for provider in &config.providers {
            if provider.discover.is_empty() || discovery.contains_key(&provider.name) {
                continue;
            }
            // Repositories known from earlier runs start at once: a REST API that is down does not stop mirroring.
            match discovered_repos(&shared.reader, provider) {
                Ok(known) => {
                    discovered.insert(provider.name.clone(), known);
                }
                Err(e) => {
                    tracing::error!(provider = %provider.name, "cannot read known repositories: {e}")
                }
            }
            // A provider whose settings changed starts with a fresh request budget.
            shared.budgets.reset(&provider.name);
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
    /// restart those whose configuration changed; then tell the metrics which ones are mirrored.
    fn reconcile(&mut self, config: &Config) {
        let (shared, tasks, discovered) = (&self.shared, &mut self.repos, &self.discovered);
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
        drop(targets);
        self.health.set_mirrored(self.repos.keys().cloned());
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
fn reload(path: &Path, shared: &Arc<Shared>) -> Result<Arc<Config>, ReloadError> {
    let mut new = Config::load(path)?;
    let secrets = new.check_secrets();
    for w in &secrets.warnings {
        tracing::warn!("{w}");
    }
    if !secrets.errors.is_empty() {
        return Err(ReloadError::Secrets(secrets.errors));
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
    // The store's connections were made with the database settings at start, and the other instances know
    // this one by its name (heartbeats, leases, nudges): both stay until a restart.
    if new.database != old.database {
        tracing::warn!(
            "database (or its password) changed: restart the service to apply it; the running service keeps its connection settings until then"
        );
        new.database = old.database.clone();
    }
    if new.instance_name != old.instance_name {
        tracing::warn!(
            "instance_name changed to {:?}: restart the service to apply it; this instance stays {:?} until then",
            new.instance_name,
            old.instance_name
        );
        new.instance_name = old.instance_name.clone();
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
fn status_line(store: &Store, health: &Health) -> String {
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
