//! One repository's poll loop: on its schedule (offset by a stable jitter), at once when nudged by a webhook,
//! backing off after failures, and checking whether an unreachable server is back. Also the one-shot
//! `sync` of a list of repositories.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::state::{Nudge, PollWatch, Shared};
use crate::config::{Config, RepoConfig};
use crate::forge::graphql::Head;
use crate::poll::{self, PollError, PollOutcome, Progress, Trigger};
use crate::store::Store;

/// The longest start-time spread given to a repository: its offset is derived from its id, so the same
/// repository always polls at the same second and hundreds of repositories do not hit a server at once.
const MAX_JITTER: Duration = Duration::from_secs(60);

/// A stable offset in `[0, min(period / 4, MAX_JITTER))` for a repository.
pub(super) fn jitter(repo_id: &str, period: Duration) -> Duration {
    let span = (period / 4).min(MAX_JITTER);
    if span.is_zero() {
        return Duration::ZERO;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    repo_id.hash(&mut h);
    Duration::from_millis(h.finish() % span.as_millis().max(1) as u64)
}

/// How long to wait after `failures` consecutive failures: one period, then doubling, at most 8 periods.
pub(super) fn backoff(period: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(3);
    period.saturating_mul(factor)
}

/// How long nudges must pause before the poll that follows a burst of them.
const NUDGE_QUIET: Duration = Duration::from_millis(400);
/// The longest a continuous stream of nudges delays that poll.
const NUDGE_MAX_DELAY: Duration = Duration::from_secs(2);
/// The longest deliveries still queued for the dispatcher (received, not yet dispatched: a loaded
/// database records them slower than they arrive) delay it: they are the same burst.
const NUDGE_BACKLOG_MAX_DELAY: Duration = Duration::from_secs(8);

/// One repository's polls: on its schedule, and at once when nudged by a webhook. Nudges that arrive while a
/// poll runs merge into one more poll after it, taken once they pause (`NUDGE_QUIET`, at most
/// `NUDGE_MAX_DELAY` later): a burst of any size costs two polls, a single push none of the wait.
pub(super) async fn repo_loop(
    shared: Arc<Shared>,
    repo: RepoConfig,
    nudge: Arc<Nudge>,
    stop: watch::Receiver<bool>,
) {
    let period = repo.schedule.period();
    let offset = jitter(&repo.id, period);
    let mut r = RepoLoop {
        shared,
        repo,
        nudge,
        stop,
        offset,
        since_full: 0,
        retry: None,
        retry_webhook: AtomicBool::new(false),
    };
    // The startup poll is spread too, but over a few seconds at most.
    let mut wait = offset.min(Duration::from_secs(5));
    let mut trigger = Trigger::Startup;
    // Backing off from a server that could not be reached at all: where to check, at each regular firing,
    // whether it accepts connections again (then the poll runs at once instead of at the back-off's end).
    let mut probe: Option<(String, u16)> = None;
    loop {
        match r.wait(wait, probe.take()).await {
            Waited::Stop => return,
            Waited::Nudged(why) => trigger = why,
            Waited::Due => {}
        }
        let Some((failures, unreachable)) = r.poll(trigger).await else {
            return;
        };
        probe = unreachable;
        trigger = Trigger::Schedule;
        if let Some(why) = r.nudge.take() {
            // Nudged during the poll: one more, once the nudges pause.
            let Some(why) = r.settle_nudges(why).await else {
                return;
            };
            trigger = why;
            wait = Duration::ZERO;
            continue;
        }
        wait = if failures > 0 {
            let delay = backoff(period, failures);
            tracing::info!(repo = %r.repo.id, failures, "backing off for {}s", delay.as_secs());
            delay
        } else {
            next_wait(&r.repo, offset)
        };
    }
}

/// One repository's loop and what it waits on.
struct RepoLoop {
    shared: Arc<Shared>,
    repo: RepoConfig,
    nudge: Arc<Nudge>,
    stop: watch::Receiver<bool>,
    /// The repository's fixed offset from its schedule's firings.
    offset: Duration,
    /// Scheduled polls since the last that listed refs over git (with `head_check = "graphql"`).
    since_full: u32,
    /// The pending retry of a poll whose lease another instance held (see `poll`).
    retry: Option<tokio::task::JoinHandle<()>>,
    /// A webhook's poll is owed: one found the lease held, and no poll has run since.
    retry_webhook: AtomicBool,
}

/// How a wait ended.
enum Waited {
    Due,
    Nudged(Trigger),
    Stop,
}

impl RepoLoop {
    /// Wait `wait`, or less: a webhook nudge ends it, and while `probe` is set (the server could not be
    /// reached), each regular firing checks whether the server accepts connections again.
    async fn wait(&mut self, wait: Duration, probe: Option<(String, u16)>) -> Waited {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let step = match &probe {
                Some(_) => next_wait(&self.repo, self.offset)
                    .max(Duration::from_millis(100))
                    .min(left),
                None => left,
            };
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                why = self.nudge.wait() => return Waited::Nudged(why),
                _ = self.stop.changed() => return Waited::Stop,
            }
            if tokio::time::Instant::now() >= until {
                return Waited::Due;
            }
            let Some(target) = &probe else { continue };
            let timeout = self
                .shared
                .config()
                .provider(&self.repo)
                .map_or(Duration::from_secs(15), |p| p.connect_timeout);
            let back = tokio::select! {
                back = self.shared.server_is_back(target, timeout) => back,
                why = self.nudge.wait() => return Waited::Nudged(why),
                _ = self.stop.changed() => return Waited::Stop,
            };
            if back {
                tracing::info!(repo = %self.repo.id, "{}:{} accepts connections again: polling now", target.0, target.1);
                return Waited::Due;
            }
        }
    }

    /// One poll, once the repository is free (a reload's new loop waits for the old loop's poll) and a slot
    /// is: the consecutive failures after it, and where to check for the server's return when it could not
    /// be reached. `None`: stop.
    async fn poll(&mut self, trigger: Trigger) -> Option<(u32, Option<(String, u16)>)> {
        let shared = &self.shared;
        let repo_lock = shared.repo_lock(&self.repo.id);
        let running = tokio::select! {
            g = repo_lock.lock_owned() => g,
            _ = self.stop.changed() => return None,
        };
        // Another instance on the same database polls it: nothing to do here. Held by another now (its poll
        // runs, or it died and its lease has not expired yet): try again in a third of the lease period, so
        // a repository taken over from a dead instance is not left until its next firing.
        // A webhook's poll still owed (its lease was held; see below) makes this poll the webhook's.
        let trigger = if self.retry_webhook.load(Ordering::SeqCst) {
            Trigger::Webhook
        } else {
            trigger
        };
        let lease = match super::leases::take_or_say(
            &self.shared,
            &self.repo.id,
            trigger == Trigger::Webhook,
        )
        .await
        {
            // This poll stands for any webhook a pending retry was to poll for.
            Ok(mut lease) => {
                lease.keep(running);
                self.retry_webhook.store(false, Ordering::SeqCst);
                if let Some(r) = self.retry.take() {
                    r.abort();
                }
                lease
            }
            Err(super::leases::NotTaken::NotMine) => return Some((0, None)),
            Err(super::leases::NotTaken::Held) => {
                // One retry pending at a time, however many firings and nudges found it held; a webhook's
                // among them is owed until a poll runs (which this instance may run without preferring
                // the repository).
                if trigger == Trigger::Webhook {
                    self.retry_webhook.store(true, Ordering::SeqCst);
                }
                self.retry_later();
                return Some((0, None));
            }
        };
        let mut stop = self.stop.clone();
        let known = tokio::select! {
            k = self.known_head(trigger) => k,
            _ = stop.changed() => return None,
        };
        let shared = &self.shared;
        let permit = tokio::select! {
            p = shared.permits.acquire() => p.ok()?,
            _ = self.stop.changed() => return None,
        };
        if *self.stop.borrow() {
            return None;
        }
        // Queued for a slot meanwhile: another instance may prefer it now (one came back). A webhook's
        // poll runs here anyway.
        if trigger != Trigger::Webhook && !super::leases::still_preferred(shared, &self.repo.id) {
            lease.release().await;
            return Some((0, None));
        }
        let watch = Arc::new(PollWatch {
            progress: Progress::default(),
            limit: shared.stall_limit,
            reported: AtomicBool::new(false),
        });
        shared.watch_poll(&self.repo.id, Some(watch.clone()));
        let (task_shared, task_repo, task_watch) =
            (shared.clone(), self.repo.clone(), watch.clone());
        let joined = tokio::task::spawn_blocking(move || {
            // The configuration in force now: a reload's new credentials and settings apply at once.
            let config = task_shared.config();
            poll::run_poll(
                &config,
                &task_repo,
                &task_shared.store,
                trigger,
                known.as_ref(),
                &task_shared.cancel,
                &task_watch.progress,
            )
        })
        .await;
        shared.watch_poll(&self.repo.id, None);
        // The repository's lock is kept to the end of this poll (its statuses posted).
        let _running = lease.release().await;
        if watch.reported.load(Ordering::Relaxed) {
            tracing::warn!(repo = %self.repo.id, "the poll reported stuck has ended after all");
        }
        drop(permit);
        let mut probe = None;
        if let Ok((Err(e), _)) = &joined
            && e.is_unreachable()
        {
            // The failed connection was made to the server itself (not through a proxy, see
            // `git::classify`), so a direct connection tells whether it is back.
            probe = crate::git::endpoint(&self.repo.url);
        }
        let failures = match joined {
            Ok((Ok(outcome), _)) => {
                if let PollOutcome::Updated { .. } = outcome {
                    tracing::info!("{}", outcome.line(&self.repo.id));
                }
                shared
                    .statuses
                    .after_poll(&shared.config(), &self.repo, &outcome)
                    .await;
                0
            }
            Ok((Err(PollError::Cancelled { .. }), _)) => return None,
            Ok((Err(e), _)) if e.is_benign() => {
                tracing::info!(repo = %self.repo.id, "{}", e.reason());
                // Its lease lapsed mid-poll (the leases' connection was down): whoever holds it now polls;
                // if no one does, this instance tries again, rather than at the next firing.
                if matches!(
                    e,
                    PollError::Store {
                        error: crate::store::StoreError::LeaseLost { .. },
                        ..
                    }
                ) {
                    self.retry_later();
                }
                0
            }
            Ok((Err(_), failures)) => failures.max(1),
            Err(e) => {
                tracing::error!(repo = %self.repo.id, "poll task failed: {e}");
                1
            }
        };
        Some((failures, probe))
    }

    /// Try again a third of `lease_seconds` from now (a takeover nudge), unless a retry is pending already.
    fn retry_later(&mut self) {
        if self.retry.as_ref().is_none_or(|r| r.is_finished()) {
            let (nudge, secs) = (self.nudge.clone(), self.shared.config().lease_seconds);
            self.retry = Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs / 3)).await;
                nudge.take_over();
            }));
        }
    }

    /// With `head_check = "graphql"`, for a scheduled poll that need not list refs over git this time: the
    /// head the host's API reports (`None`: list them).
    async fn known_head(&mut self, trigger: Trigger) -> Option<Head> {
        let config = self.shared.config();
        let provider = config.provider(&self.repo)?.clone();
        if !provider.head_check_graphql {
            return None;
        }
        if trigger != Trigger::Schedule {
            self.since_full = 0;
            return None;
        }
        self.since_full += 1;
        if self.since_full >= provider.head_check_full_every {
            self.since_full = 0;
            return None;
        }
        let (targets, name) = (self.shared.targets.clone(), provider.name.clone());
        let repos = move || {
            let mut paths: Vec<String> = targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .repos
                .values()
                .filter(|(r, _)| r.provider == name)
                .map(|(r, _)| r.path.clone())
                .collect();
            paths.sort();
            paths
        };
        // Fresh for the rest of this firing's spread (repositories poll up to a quarter period apart).
        let fresh = (self.repo.schedule.period() / 2).max(Duration::from_secs(1));
        self.shared
            .heads
            .head(&provider, &self.repo, repos, &self.shared.budgets, fresh)
            .await
    }

    /// Let a burst of nudges (the first asked for a poll by `first`) pause (`NUDGE_QUIET`, at most
    /// `NUDGE_MAX_DELAY`), then clear them: a webhook's trigger if any of them was one. `None`: stop.
    async fn settle_nudges(&mut self, first: Trigger) -> Option<Trigger> {
        let started = tokio::time::Instant::now();
        let mut deadline = started + NUDGE_MAX_DELAY;
        let mut heard = first;
        let mut hear = |why: Trigger| {
            if heard != Trigger::Webhook {
                heard = why;
            }
        };
        loop {
            tokio::select! {
                why = self.nudge.wait() => hear(why),
                // Quiet, and no delivery left to dispatch (a busy database can pause the dispatcher while
                // more of the burst waits in its queue).
                _ = tokio::time::sleep(NUDGE_QUIET) => {
                    if self.shared.webhook_backlog.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if self.shared.webhook_backlog.load(Ordering::SeqCst) == 0
                        || started.elapsed() >= NUDGE_BACKLOG_MAX_DELAY
                    {
                        break;
                    }
                    deadline = tokio::time::Instant::now() + Duration::from_millis(100);
                }
                _ = self.stop.changed() => return None,
            }
        }
        if let Some(why) = self.nudge.take() {
            hear(why);
        }
        Some(heard)
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
/// completes through `report`; then wait for the commit statuses those polls post (a few minutes at most).
/// Returns whether all polls succeeded.
pub(crate) async fn sync_once(
    config: Arc<Config>,
    store: Arc<Store>,
    statuses: Arc<super::Statuses>,
    repos: Vec<RepoConfig>,
    cancel: Arc<AtomicBool>,
    mut report: impl FnMut(&RepoConfig, &Result<PollOutcome, PollError>),
) -> bool {
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut set = JoinSet::new();
    // Beside running instances (PostgreSQL), each repository is polled under its lease, as they poll it.
    let token = store.steps_under_lease(&super::leases::new_token());
    for repo in repos {
        let (config, store, permits, cancel, token) = (
            config.clone(),
            store.clone(),
            permits.clone(),
            cancel.clone(),
            token.clone(),
        );
        set.spawn(async move {
            let permit = permits.acquire_owned().await;
            let lease = super::leases::wait_for(
                &store,
                &repo.id,
                &config.instance_name,
                &token,
                config.lease_seconds,
                &cancel,
            )
            .await;
            let lease = match lease {
                Ok(lease) => lease,
                Err(error) => {
                    let repo_id = repo.id.clone();
                    return (
                        repo,
                        Err(PollError::Store {
                            repo: repo_id,
                            error,
                        }),
                    );
                }
            };
            if cancel.load(Ordering::Relaxed) {
                if let Some(lease) = lease {
                    lease.release().await;
                }
                let repo_id = repo.id.clone();
                return (repo, Err(PollError::Cancelled { repo: repo_id }));
            }
            let r = repo.clone();
            let result = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                poll::run_poll(
                    &config,
                    &r,
                    &store,
                    Trigger::Manual,
                    None,
                    &cancel,
                    &Progress::default(),
                )
                .0
            })
            .await
            .unwrap_or_else(|e| {
                Err(PollError::Internal {
                    repo: repo.id.clone(),
                    message: format!("poll task failed: {e}"),
                })
            });
            if let Some(lease) = lease {
                lease.release().await;
            }
            (repo, result)
        });
    }
    let mut ok = true;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((repo, result)) => {
                ok &= result.is_ok();
                if let Ok(outcome) = &result {
                    statuses.after_poll(&config, &repo, outcome).await;
                }
                report(&repo, &result);
            }
            Err(e) => {
                ok = false;
                tracing::error!("poll task failed: {e}");
            }
        }
    }
    // Wait for the statuses; an interrupt (the `cancel` flag) ends the wait, and they record so.
    let interrupted = async {
        while !cancel.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let finish = statuses.finish(SYNC_STATUS_WAIT);
    tokio::pin!(finish);
    tokio::select! {
        _ = &mut finish => {}
        _ = interrupted => {
            statuses.signal_stop();
            finish.await;
        }
    }
    ok
}

/// How long a one-shot `sync` waits for its commit statuses before it exits (their retries included).
const SYNC_STATUS_WAIT: Duration = Duration::from_secs(120);

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
