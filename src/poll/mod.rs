//! One poll of one repository: list refs → fetch → diff → parse → one transaction per commit.
//!
//! The catalog is kept equal to the tree of the last processed commit of the default branch. When the new head
//! descends from it along the first-parent chain, each commit on the way is one step (so every model version
//! is recorded with the commit that produced it); otherwise — force-push, rebase, a renamed default branch
//! with other history, changed `include` settings — the new head's tree is compared with what the database
//! holds, as one step ([`plan`]). Each step is read, parsed and written in one transaction ([`step`]). Polls
//! are blocking and run on `spawn_blocking`.

mod plan;
mod step;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use plan::plan;
use step::{StepContext, process_step};

use crate::config::{Config, RepoConfig};
use crate::forge::graphql::Head;
use crate::git::{self, GitError, Oid, RemoteHead, Repository};
use crate::secret::SecretError;
use crate::store::{
    Counts, PollRecord, RepoState, Store, StoreError, now_rfc3339, now_rfc3339_millis,
};

/// Why a poll failed. Every message starts with the repository id.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    #[error("{repo}: {error}")]
    Git { repo: String, error: GitError },
    #[error("{repo}: {error}")]
    Store { repo: String, error: StoreError },
    #[error("{repo}: credentials: {error}")]
    Secret { repo: String, error: SecretError },
    #[error(
        "{repo}: credentials: provider `{provider}` is not in the configuration any more; the repository's data is kept"
    )]
    ProviderGone { repo: String, provider: String },
    #[error(
        "{repo}: no local mirror at {}: nothing to rebuild from; `modelmirror sync {repo}` fetches it",
        path.display()
    )]
    NoMirror {
        repo: String,
        path: std::path::PathBuf,
    },
    #[error(
        "{repo}: the local mirror at {} has no branch yet; nothing was changed (`modelmirror sync {repo}` fetches it)",
        path.display()
    )]
    NoBranch {
        repo: String,
        path: std::path::PathBuf,
    },
    #[error(
        "{repo}: the remote has no default branch any more (empty repository, or HEAD deleted); the last imported data (commit {commit}) is kept"
    )]
    Emptied { repo: String, commit: String },
    #[error("{repo}: stopped by shutdown; the database holds the last fully processed commit")]
    Cancelled { repo: String },
    /// A bug: the message says so and names the commit where it applies.
    #[error("{repo}: {message}")]
    Internal { repo: String, message: String },
}

impl PollError {
    /// The repository the poll was of.
    pub(crate) fn repo(&self) -> &str {
        match self {
            PollError::Git { repo, .. }
            | PollError::Store { repo, .. }
            | PollError::Secret { repo, .. }
            | PollError::ProviderGone { repo, .. }
            | PollError::NoMirror { repo, .. }
            | PollError::NoBranch { repo, .. }
            | PollError::Emptied { repo, .. }
            | PollError::Cancelled { repo }
            | PollError::Internal { repo, .. } => repo,
        }
    }

    /// The message without the repository id it starts with, for a line that names the repository first.
    pub(crate) fn reason(&self) -> String {
        let text = self.to_string();
        match text
            .strip_prefix(self.repo())
            .and_then(|t| t.strip_prefix(": "))
        {
            Some(reason) => reason.to_string(),
            None => text,
        }
    }

    /// Not a failure of the repository (no error recorded, no back-off): shutdown, a concurrent writer, a
    /// lease lost (another instance polls it now).
    pub(crate) fn is_benign(&self) -> bool {
        matches!(
            self,
            PollError::Cancelled { .. }
                | PollError::Store {
                    error: StoreError::Conflict { .. } | StoreError::LeaseLost { .. },
                    ..
                }
                | PollError::Git {
                    error: GitError::MirrorBusy { .. } | GitError::Cancelled { .. },
                    ..
                }
        )
    }

    /// No connection to the git server could be made at all (it is down or cut off), as opposed to a
    /// server that answered with an error.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            PollError::Git {
                error: GitError::Unreachable { .. },
                ..
            }
        )
    }
}

/// An error inside a step, before the repository id is attached.
#[derive(Debug)]
enum StepError {
    Git(GitError),
    Store(StoreError),
    /// Shutdown arrived during the step: its transaction rolls back.
    Cancelled,
    /// A bug (the reading thread panicked): the step rolls back, the message names the commit.
    Internal(String),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Store(e)
    }
}

impl From<GitError> for StepError {
    fn from(e: GitError) -> Self {
        StepError::Git(e)
    }
}

/// When a poll last showed a sign of life: bytes or progress messages from the server, a file or a commit
/// processed. The daemon reads it to tell a slow poll (alive) from a stuck one (e.g. a network read that never
/// returns). Measured on the monotonic clock: a wall-clock step neither fakes nor hides a stall.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Milliseconds since `EPOCH` at the last sign of life.
    last: std::sync::atomic::AtomicU64,
    /// The thread running the poll, once it started (to ask the store whether it waits for the writer).
    thread: std::sync::OnceLock<std::thread::ThreadId>,
}

/// The monotonic origin of `Progress` times.
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl Default for Progress {
    fn default() -> Self {
        let p = Progress {
            last: std::sync::atomic::AtomicU64::new(0),
            thread: std::sync::OnceLock::new(),
        };
        p.touch();
        p
    }
}

impl Progress {
    /// A sign of life now.
    pub(crate) fn touch(&self) {
        self.last.store(Self::now_ms(), Ordering::Relaxed);
    }

    /// How long since the last sign of life.
    pub(crate) fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            Self::now_ms().saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    /// The thread running the poll (set when it starts).
    pub(crate) fn thread(&self) -> Option<std::thread::ThreadId> {
        self.thread.get().copied()
    }

    /// The poll starts on `thread` (a sign of life too).
    pub(crate) fn started_on(&self, thread: std::thread::ThreadId) {
        let _ = self.thread.set(thread);
        self.touch();
    }

    fn now_ms() -> u64 {
        let epoch = EPOCH.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What a successful poll did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PollOutcome {
    /// The default branch is still at the processed commit: nothing was fetched.
    Unchanged { commit: String },
    /// The remote has no commits yet.
    Empty,
    /// New commits were processed.
    Updated {
        commit: String,
        /// The default branch the commit is the head of.
        branch: String,
        commits: u32,
        counts: Counts,
    },
}

impl PollOutcome {
    /// The one line `modelmirror sync` prints for a repository.
    pub(crate) fn line(&self, repo: &str) -> String {
        match self {
            PollOutcome::Unchanged { .. } => format!("{repo} unchanged"),
            PollOutcome::Empty => format!("{repo} unchanged (empty repository)"),
            PollOutcome::Updated { commit, counts, .. } => format!(
                "{repo} updated: +{} ~{} -{} models at {}",
                counts.added,
                counts.modified,
                counts.deleted,
                short(commit)
            ),
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// What started a poll, recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Schedule,
    Manual,
    Startup,
    Webhook,
    /// This instance took the repository over from another (see `service::leases`).
    Takeover,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Startup => "startup",
            Trigger::Webhook => "webhook",
            Trigger::Takeover => "takeover",
        }
    }
}

/// Poll one repository and record the outcome (the check, the error and the poll itself) in the database.
/// Returns the outcome and the number of consecutive failures after it (0 on success).
pub(crate) fn run_poll(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    trigger: Trigger,
    known: Option<&Head>,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> (Result<PollOutcome, PollError>, u32) {
    let started_at = now_rfc3339_millis();
    let started = Instant::now();
    progress.started_on(std::thread::current().id());
    // A bug must not take the service down silently: a panic in a poll becomes that poll's recorded error.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match known.and_then(|head| still_at(config, repo, store, head).transpose()) {
            Some(done) => done,
            None => poll(config, repo, store, cancel, progress),
        }
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(PollError::Internal {
            repo: repo.id.clone(),
            message: format!("internal error (a bug in modelmirror, please report it): {what}"),
        })
    });
    let (outcome_name, commits, counts, error) = match &result {
        Ok(PollOutcome::Unchanged { .. }) => ("unchanged", 0, Counts::default(), None),
        Ok(PollOutcome::Empty) => ("empty", 0, Counts::default(), None),
        Ok(PollOutcome::Updated {
            commits, counts, ..
        }) => ("updated", *commits, *counts, None),
        Err(e) => ("error", 0, Counts::default(), Some(e.to_string())),
    };
    let mut failures = 0;
    let benign = result.as_ref().err().is_some_and(PollError::is_benign);
    if let Some(message) = error.as_ref().filter(|_| !benign) {
        tracing::warn!(repo = %repo.id, "poll failed: {message}");
        match store.record_error(&repo.id, message, &now_rfc3339()) {
            Ok(n) => failures = n,
            Err(e) => tracing::error!(repo = %repo.id, "cannot record the error: {e}"),
        }
    }
    let m = crate::metrics::global();
    m.inc(
        "modelmirror_polls_total",
        &[("trigger", trigger.as_str()), ("result", outcome_name)],
        1.0,
    );
    m.observe("modelmirror_poll_duration_seconds", &[], started.elapsed());
    let record = PollRecord {
        repo_id: &repo.id,
        instance: &config.instance_name,
        trigger: trigger.as_str(),
        started_at: &started_at,
        duration: started.elapsed(),
        result: outcome_name,
        commits,
        counts,
        error: error.as_deref(),
    };
    match store.record_poll(&record) {
        Ok(poll_id) => {
            if let Err(e) = store.link_deliveries(&repo.id, poll_id, &started_at) {
                tracing::error!(repo = %repo.id, "cannot link deliveries to their poll: {e}");
            }
        }
        Err(e) => tracing::error!(repo = %repo.id, "cannot record the poll: {e}"),
    }
    (result, failures)
}

/// When the host's API says the default branch is still at the commit the catalog has processed, with the
/// same settings: the poll's outcome, with nothing fetched (`None`: poll over git).
fn still_at(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    head: &Head,
) -> Result<Option<PollOutcome>, PollError> {
    let store_err = |error| PollError::Store {
        repo: repo.id.clone(),
        error,
    };
    let state = store.repo_state(&repo.id).map_err(store_err)?;
    // A repository whose last poll failed polls over git: only git working again clears its error (the API
    // may well answer while git cannot: a token without git access, a blocked port).
    if state.failing
        || state.commit.as_deref() != Some(head.commit.as_str())
        || state.settings.as_deref() != Some(config.filter.fingerprint().as_str())
    {
        return Ok(None);
    }
    store
        .record_check(&repo.id, Some(&head.branch), &now_rfc3339())
        .map_err(store_err)?;
    Ok(Some(PollOutcome::Unchanged {
        commit: head.commit.clone(),
    }))
}

/// One poll, without the bookkeeping of [`run_poll`].
pub(crate) fn poll(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> Result<PollOutcome, PollError> {
    let id = repo.id.clone();
    let git_err = |error| PollError::Git {
        repo: id.clone(),
        error,
    };
    let store_err = |error| PollError::Store {
        repo: id.clone(),
        error,
    };
    let provider = config
        .provider(repo)
        .ok_or_else(|| PollError::ProviderGone {
            repo: id.clone(),
            provider: repo.provider.clone(),
        })?;
    let auth = provider.git_auth().map_err(|error| PollError::Secret {
        repo: id.clone(),
        error,
    })?;
    store
        .ensure_repo(&repo.id, &repo.provider, &repo.path, &repo.url)
        .map_err(store_err)?;
    let mut mirror = git::open_mirror(&config.mirror_path(repo)).map_err(git_err)?;
    let alive = || progress.touch();
    let spec = provider.remote(&repo.url, &auth, cancel.clone(), Some(&alive));
    let fetch_started = Instant::now();
    let mut fetched = git::fetch_head(&mirror, &spec);
    if let Err(e @ GitError::Incomplete { .. }) = &fetched {
        // The mirror was emptied: made anew, it is fetched whole, once, in this poll.
        tracing::warn!(repo = %id, "{e}");
        drop(mirror);
        mirror = git::open_mirror(&config.mirror_path(repo)).map_err(git_err)?;
        fetched = git::fetch_head(&mirror, &spec);
    }
    crate::metrics::global().observe(
        "modelmirror_fetch_duration_seconds",
        &[],
        fetch_started.elapsed(),
    );
    let head = fetched.map_err(git_err)?;
    let state = store.repo_state(&repo.id).map_err(store_err)?;
    let settings = config.filter.fingerprint();
    let (branch, head) = match head {
        RemoteHead::Empty => {
            if let Some(commit) = state.commit {
                return Err(PollError::Emptied { repo: id, commit });
            }
            store
                .record_check(&repo.id, None, &now_rfc3339())
                .map_err(store_err)?;
            return Ok(PollOutcome::Empty);
        }
        RemoteHead::Branch {
            name,
            commit,
            bytes,
        } => {
            crate::metrics::global().inc("modelmirror_fetched_bytes_total", &[], bytes as f64);
            (name, commit)
        }
    };
    let head_str = head.to_string();
    if state.commit.as_deref() == Some(head_str.as_str())
        && state.settings.as_deref() == Some(settings.as_str())
    {
        store
            .record_check(&repo.id, Some(&branch), &now_rfc3339())
            .map_err(store_err)?;
        return Ok(PollOutcome::Unchanged { commit: head_str });
    }

    catch_up(
        config, repo, store, &mirror, &branch, head, &state, cancel, progress,
    )
}

/// Bring the catalog from what `state` says it holds to `head` of `branch`, one transaction per commit.
#[allow(clippy::too_many_arguments)]
fn catch_up(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    mirror: &Repository,
    branch: &str,
    head: Oid,
    state: &RepoState,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> Result<PollOutcome, PollError> {
    let id = repo.id.clone();
    let settings = config.filter.fingerprint();
    let head_str = head.to_string();
    let plan =
        plan(mirror, state, head, repo.backfill, &settings).map_err(|error| PollError::Git {
            repo: id.clone(),
            error,
        })?;
    let mut counts = Counts::default();
    let mut done = 0u32;
    // The processed-commit pointer each step starts from; each step moves it.
    let mut pointer = state.commit.clone();
    // The mirror's pack indexes, read once per poll when a step first needs them (the packs do not change
    // while the poll processes commits).
    let packs = std::cell::OnceCell::new();
    for (i, step) in plan.steps.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(PollError::Cancelled { repo: id });
        }
        progress.touch();
        let ctx = StepContext {
            config,
            repo,
            store,
            mirror,
            branch,
            note: if i == 0 { plan.note } else { None },
            settings: &settings,
            expect_commit: pointer.as_deref(),
            reread: plan.note == Some("settings-changed"),
            cancel,
            progress,
            packs: &packs,
        };
        let c = process_step(&ctx, step).map_err(|e| match e {
            StepError::Cancelled => PollError::Cancelled { repo: id.clone() },
            StepError::Git(error) => PollError::Git {
                repo: id.clone(),
                error,
            },
            StepError::Store(error) => PollError::Store {
                repo: id.clone(),
                error,
            },
            StepError::Internal(message) => PollError::Internal {
                repo: id.clone(),
                message,
            },
        })?;
        counts.add(c);
        done += 1;
        pointer = Some(step.commit().to_string());
    }
    tracing::info!(
        repo = %repo.id,
        commit = %head_str,
        commits = done,
        added = counts.added,
        modified = counts.modified,
        deleted = counts.deleted,
        "updated"
    );
    Ok(PollOutcome::Updated {
        commit: head_str,
        branch: branch.to_string(),
        commits: done,
        counts,
    })
}

/// Rebuild a repository's catalog from its local mirror, with no network: forget what the database holds for
/// it and import the mirror's default branch again (its whole history, with `backfill`). For an upgrade that
/// parses more, or a lost database.
pub(crate) fn rebuild(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    cancel: &Arc<AtomicBool>,
) -> Result<PollOutcome, PollError> {
    let id = repo.id.clone();
    let path = config.mirror_path(repo);
    if !path.join("HEAD").exists() {
        return Err(PollError::NoMirror { repo: id, path });
    }
    let mirror = git::open_mirror_to_read(&path).map_err(|error| PollError::Git {
        repo: id.clone(),
        error,
    })?;
    let store_err = |error| PollError::Store {
        repo: id.clone(),
        error,
    };
    // Only a mirror with a branch replaces the catalog: an empty one (a failed first fetch) changes nothing.
    let Some((branch, head)) = git::mirror_head(&mirror) else {
        return Err(PollError::NoBranch { repo: id, path });
    };
    store
        .ensure_repo(&repo.id, &repo.provider, &repo.path, &repo.url)
        .map_err(store_err)?;
    store.reset_catalog(&repo.id).map_err(store_err)?;
    // With no network to spare, a rebuild always walks the whole history the mirror holds.
    let full = RepoConfig {
        backfill: true,
        ..repo.clone()
    };
    catch_up(
        config,
        &full,
        store,
        &mirror,
        &branch,
        head,
        &RepoState::default(),
        cancel,
        &Progress::default(),
    )
}
