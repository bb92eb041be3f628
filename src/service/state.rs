//! What the service's parts share: the configuration in force (swapped by a reload), the repositories being
//! mirrored with the nudge each poll loop waits on, and what the service is told from outside.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::{Config, DEFAULT_READ_TIMEOUT, RepoConfig};
use crate::poll::{Progress, Trigger};
use crate::store::Store;

/// What the daemon is told from outside.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Control {
    /// Read the configuration again (why: SIGHUP, a file changed).
    Reload(String),
    Shutdown,
}

/// The configuration in force, swapped by a reload.
pub(crate) type ConfigHandle = Arc<std::sync::RwLock<Arc<Config>>>;

/// The configuration in force now.
pub(crate) fn current(handle: &ConfigHandle) -> Arc<Config> {
    handle.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The repositories being mirrored and how to nudge them; kept current by the daemon.
#[derive(Default)]
pub(crate) struct Targets {
    /// Repository id → its configuration and the nudge its poll loop waits on.
    pub(crate) repos: HashMap<String, (RepoConfig, Arc<Nudge>)>,
}

/// A request to poll a repository now. Any number of nudges before the poll loop looks merge into one; the
/// poll they start is recorded as a webhook's when any of them was one, else as a takeover.
#[derive(Default)]
pub(crate) struct Nudge {
    /// `WEBHOOK` | `TAKEOVER` bits of the nudges not yet taken.
    pending: std::sync::atomic::AtomicU8,
    notify: tokio::sync::Notify,
}

const WEBHOOK: u8 = 1;
const TAKEOVER: u8 = 2;

impl Nudge {
    /// A webhook delivery (here or passed on by another instance) asks for a poll.
    pub(crate) fn nudge(&self) {
        self.raise(WEBHOOK);
    }

    /// This instance takes the repository over (another stopped beating, or held its lease): poll it now.
    pub(crate) fn take_over(&self) {
        self.raise(TAKEOVER);
    }

    fn raise(&self, bit: u8) {
        self.pending
            .fetch_or(bit, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Wait for a nudge, and clear it: the trigger of the poll it asks for. (A wake-up left by nudges
    /// already taken is no nudge.)
    pub(crate) async fn wait(&self) -> Trigger {
        loop {
            self.notify.notified().await;
            match self.pending.swap(0, std::sync::atomic::Ordering::SeqCst) {
                0 => continue,
                bits => return trigger_of(bits),
            }
        }
    }

    /// Take the nudges that arrived meanwhile (e.g. during a poll), if any: the trigger of the poll they ask
    /// for.
    pub(crate) fn take(&self) -> Option<Trigger> {
        match self.pending.swap(0, std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            bits => Some(trigger_of(bits)),
        }
    }
}

/// A webhook's poll when any nudge was one (it may poll a repository another instance prefers).
fn trigger_of(bits: u8) -> Trigger {
    if bits & WEBHOOK != 0 {
        Trigger::Webhook
    } else {
        Trigger::Takeover
    }
}

/// What the daemon shares with every repository loop.
pub(super) struct Shared {
    /// The configuration in force; a reload swaps it, and every poll reads it afresh.
    pub(super) config: ConfigHandle,
    pub(super) store: Arc<Store>,
    /// A second connection for the reads made on async tasks (the status line, the known repositories): in
    /// WAL mode they never wait for the writer, which may hold `store` for a whole long commit.
    pub(super) reader: Arc<Store>,
    /// Bounds polls running at once (`concurrency`).
    pub(super) permits: Semaphore,
    /// How many permits `permits` was sized for, to resize it on reload.
    pub(super) permit_count: Mutex<usize>,
    /// One lock per repository, kept across the restarts of its loop by a reload: the old loop's poll in
    /// progress and the new loop's first poll never overlap.
    pub(super) repo_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set on shutdown: transfers abort and multi-commit polls stop after the commit in progress.
    pub(super) cancel: Arc<AtomicBool>,
    /// The repositories being mirrored and their nudge notifiers, for the webhook dispatcher.
    pub(super) targets: Arc<Mutex<Targets>>,
    /// The polls in progress, by repository: their last sign of life, to tell a slow poll from a stuck one.
    pub(super) polls: Mutex<HashMap<String, Arc<PollWatch>>>,
    /// No sign of life for this long means stuck: `STALL_FACTOR` × the longest git timeout libgit2 was given
    /// at start (process-wide: the longest `read_timeout` or `connect_timeout` of any provider; a live
    /// transfer gets data or fails within it) plus `STALL_MARGIN`.
    pub(super) stall_limit: Duration,
    /// The git servers being checked for their return right now, by host and port: one check per server at
    /// a time however many of its repositories back off (resolving a host name takes a blocking thread
    /// while it lasts).
    pub(super) probing: Mutex<HashSet<(String, u16)>>,
    /// Each provider's REST budget, shared by discovery and commit statuses.
    pub(super) budgets: Arc<super::Budgets>,
    /// The commit statuses being posted.
    pub(super) statuses: Arc<super::Statuses>,
    /// The latest GraphQL head checks of each provider.
    pub(super) heads: super::heads::HeadChecks,
    /// Verified webhook deliveries accepted and not yet dispatched: a burst's nudges are still to come
    /// while there are any, so the poll after a burst waits for them (see `repos::settle_nudges`).
    pub(super) webhook_backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// The other instances on the same database (see `leases`).
    pub(super) instances: super::leases::Instances,
}

impl Shared {
    pub(super) fn config(&self) -> Arc<Config> {
        current(&self.config)
    }

    /// Start (`Some`) or end (`None`) watching the poll of `id`.
    pub(super) fn watch_poll(&self, id: &str, watch: Option<Arc<PollWatch>>) {
        let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        match watch {
            Some(w) => polls.insert(id.to_string(), w),
            None => polls.remove(id),
        };
    }

    /// How many polls are stuck (see [`stuck_polls`]).
    pub(super) fn stuck_polls(&self) -> usize {
        stuck_polls(
            &self.polls.lock().unwrap_or_else(|p| p.into_inner()),
            |thread| self.store.is_waiting(thread),
        )
    }

    /// Whether the git server at `target` accepts connections again; `false` without checking while
    /// another repository's check of the same server is under way.
    pub(super) async fn server_is_back(&self, target: &(String, u16), timeout: Duration) -> bool {
        /// Ends the check, however the future ends (a shutdown drops it mid-way).
        struct Checking<'a>(&'a Mutex<HashSet<(String, u16)>>, &'a (String, u16));
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

    pub(super) fn repo_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.repo_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }
}

/// One poll in progress, as the supervisor watches it.
pub(super) struct PollWatch {
    pub(super) progress: Progress,
    /// See `Shared::stall_limit`.
    pub(super) limit: Duration,
    /// Logged already (once per poll).
    pub(super) reported: AtomicBool,
}

/// A poll with no sign of life for this many git timeouts, plus `STALL_MARGIN`, is stuck.
const STALL_FACTOR: u32 = 5;
/// Beyond the database's busy timeout (30 s) for another process's writes.
const STALL_MARGIN: Duration = Duration::from_secs(60);

/// The stall limit for the git timeouts the process runs with (see `Shared::stall_limit`).
pub(super) fn stall_limit(config: &Config) -> Duration {
    config
        .providers
        .iter()
        .map(|p| p.read_timeout.max(p.connect_timeout))
        .max()
        .unwrap_or(Duration::from_secs(DEFAULT_READ_TIMEOUT))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A poll whose last sign of life is older than its limit is stuck (reported once), a live one is not,
    /// and a sign of life makes a stuck one live again.
    #[test]
    fn polls_without_a_sign_of_life_past_their_limit_are_stuck() {
        let watch = |limit_ms| {
            Arc::new(PollWatch {
                progress: Progress::default(),
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
}
