//! The long-running service (`modelmirror run`) and the one-shot `sync`: scheduling, concurrency, back-off,
//! signals.
//!
//! Scheduling is one small loop per repository over a cron parser (see the README for why not
//! tokio-cron-scheduler): each loop computes its next firing from the wall clock every time, so a busy process
//! can delay a poll but never stop a schedule. The loop of a repository runs its polls one after another, so
//! they cannot overlap; a semaphore bounds how many polls run at once across repositories. A failing
//! repository backs off exponentially, capped at 8 × its schedule period, and never affects the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{Config, RepoConfig};
use crate::store::Store;
use crate::sync::{self, PollOutcome, SyncError, Trigger};
use crate::webhook::{self, Nudge, Targets, WebhookError};
use std::sync::Mutex;

/// The longest start-time spread given to a repository: its offset is derived from its id, so the same
/// repository always polls at the same second and hundreds of repositories do not hit a server at once.
const MAX_JITTER: Duration = Duration::from_secs(60);

/// What the daemon shares with every repository loop.
struct Shared {
    config: Arc<Config>,
    store: Arc<Store>,
    /// Bounds polls running at once (`concurrency`).
    permits: Semaphore,
    /// Set on shutdown: transfers abort and multi-commit polls stop after the commit in progress.
    cancel: Arc<AtomicBool>,
    /// The repositories being mirrored and their nudge notifiers, for the webhook dispatcher.
    targets: Arc<Mutex<Targets>>,
}

/// A running repository loop.
struct RepoTask {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// Run the daemon until `shutdown` completes: every repository on its schedule, one startup poll each, and a
/// discovery loop per provider with discovery scopes. Returns once in-flight polls have committed or rolled
/// back.
pub async fn run(
    config: Config,
    store: Arc<Store>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WebhookError> {
    let config = Arc::new(config);
    let shared = Arc::new(Shared {
        permits: Semaphore::new(config.concurrency),
        config: config.clone(),
        store: store.clone(),
        cancel: Arc::new(AtomicBool::new(false)),
        targets: Arc::new(Mutex::new(Targets::default())),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // The webhook listener binds first, so a bad address stops the start instead of failing later.
    let listener = match &config.webhook {
        Some(w) => Some(webhook::bind(w.listen).await?),
        None => None,
    };
    let (found_tx, mut found_rx) = tokio::sync::mpsc::channel::<(usize, Vec<RepoConfig>)>(16);
    // Discovered repositories known from earlier runs start at once: a REST API that is down does not stop
    // mirroring.
    let mut discovered: Vec<Vec<RepoConfig>> = vec![Vec::new(); config.providers.len()];
    let mut discovery = JoinSet::new();
    for (index, provider) in config.providers.iter().enumerate() {
        if provider.discover.is_empty() {
            continue;
        }
        match store.discovered_repos(&provider.name) {
            Ok(known) => {
                discovered[index] = known
                    .iter()
                    .map(|(path, url)| provider.repo(index, path, url))
                    .collect()
            }
            Err(e) => {
                tracing::error!(provider = %provider.name, "cannot read known repositories: {e}")
            }
        }
        discovery.spawn(discovery_loop(
            shared.clone(),
            index,
            found_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(found_tx);
    let mut tasks: HashMap<String, RepoTask> = HashMap::new();
    reconcile(&shared, &mut tasks, &discovered, &stop_rx);
    let hooks = listener.map(|l| {
        tokio::spawn(webhook::serve(
            l,
            config.clone(),
            store.clone(),
            shared.targets.clone(),
            stop_rx.clone(),
        ))
    });
    tracing::info!(
        repos = tasks.len(),
        concurrency = config.concurrency,
        database = %shared.store.path().display(),
        "modelmirror running"
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some((index, repos)) = found_rx.recv() => {
                discovered[index] = repos;
                reconcile(&shared, &mut tasks, &discovered, &stop_rx);
            }
        }
    }
    tracing::info!(
        "shutting down: no new polls; waiting for polls in progress to commit or roll back"
    );
    shared.cancel.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for (_, task) in tasks.drain() {
        let _ = task.stop.send(true);
        let _ = task.handle.await;
    }
    while discovery.join_next().await.is_some() {}
    if let Some(h) = hooks {
        let _ = h.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Start loops for repositories that should be mirrored and are not, stop those that should not be.
fn reconcile(
    shared: &Arc<Shared>,
    tasks: &mut HashMap<String, RepoTask>,
    discovered: &[Vec<RepoConfig>],
    global_stop: &watch::Receiver<bool>,
) {
    let mut wanted: HashMap<String, RepoConfig> = HashMap::new();
    for repo in shared
        .config
        .repos
        .iter()
        .chain(discovered.iter().flatten())
    {
        wanted
            .entry(repo.id.clone())
            .or_insert_with(|| repo.clone());
    }
    let gone: Vec<String> = tasks
        .keys()
        .filter(|id| !wanted.contains_key(*id))
        .cloned()
        .collect();
    let mut targets = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
    for id in gone {
        targets.repos.remove(&id);
        if let Some(task) = tasks.remove(&id) {
            tracing::info!(repo = %id, "no longer mirrored: stopping its polls (data kept)");
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
        let handle = tokio::spawn(repo_loop(
            shared.clone(),
            repo,
            nudge,
            stop_rx,
            global_stop.clone(),
        ));
        tasks.insert(id, RepoTask { stop, handle });
    }
}

/// Discover a provider's repositories now and then on its `discover_schedule`; after a rate-limit hold, not
/// before it ends.
async fn discovery_loop(
    shared: Arc<Shared>,
    index: usize,
    found: tokio::sync::mpsc::Sender<(usize, Vec<RepoConfig>)>,
    mut stop: watch::Receiver<bool>,
) {
    let provider = &shared.config.providers[index];
    let limits = crate::provider::api::Limits::new(provider.max_requests_per_hour);
    loop {
        // Shutdown must not wait for a discovery (it may be waiting out a rate limit).
        let run = tokio::select! {
            r = sync::discover(&shared.config, index, &shared.store, limits.clone()) => r,
            _ = stop.changed() => return,
        };
        match run {
            Ok(d) => {
                for e in &d.errors {
                    tracing::warn!(provider = %provider.name, "discovery incomplete (nothing marked removed): {e}");
                }
                // The database knows the full set (a partial run removed nothing): mirror what it lists.
                let repos = match shared.store.discovered_repos(&provider.name) {
                    Ok(known) => known
                        .iter()
                        .map(|(path, url)| provider.repo(index, path, url))
                        .collect(),
                    Err(e) => {
                        tracing::error!(provider = %provider.name, "cannot read discovered repositories: {e}");
                        d.repos
                    }
                };
                if found.send((index, repos)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(provider = %provider.name, "discovery failed (repositories unchanged): {e}")
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
    mut global_stop: watch::Receiver<bool>,
) {
    let period = repo.schedule.period();
    let offset = jitter(&repo.id, period);
    // The startup poll is spread too, but over a few seconds at most.
    let mut wait = offset.min(Duration::from_secs(5));
    let mut trigger = Trigger::Startup;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = nudge.wait() => trigger = Trigger::Webhook,
            _ = stop.changed() => return,
            _ = global_stop.changed() => return,
        }
        let permit = tokio::select! {
            p = shared.permits.acquire() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
            _ = global_stop.changed() => return,
        };
        if *stop.borrow() || *global_stop.borrow() {
            return;
        }
        let task_shared = shared.clone();
        let task_repo = repo.clone();
        let joined = tokio::task::spawn_blocking(move || {
            sync::run_poll(
                &task_shared.config,
                &task_repo,
                &task_shared.store,
                trigger,
                &task_shared.cancel,
            )
        })
        .await;
        drop(permit);
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
                    _ = global_stop.changed() => return,
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
                sync::run_poll(&config, &r, &store, Trigger::Manual, &cancel).0
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

/// Resolves on the first SIGINT or SIGTERM; a second one exits the process at once. SIGHUP is logged and
/// otherwise ignored until configuration reload exists, so it does not kill the service.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the service with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::warn!("SIGHUP: configuration reload is not supported yet; restart to apply changes"),
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting at once");
        std::process::exit(1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
