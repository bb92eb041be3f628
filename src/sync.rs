//! One poll of one repository: list refs → fetch → diff → parse → one transaction per commit.
//!
//! The catalog is kept equal to the tree of the last processed commit of the default branch. When the new head
//! descends from it along the first-parent chain, each commit on the way is one step (so every model version
//! is recorded with the commit that produced it); otherwise — force-push, rebase, a renamed default branch
//! with other history, changed `include` settings — the new head's tree is compared with what the database
//! holds, as one step. Polls are blocking and run on `spawn_blocking`.
//!
//! Also one discovery run of one provider: list its repositories through the REST API and record them, so
//! the daemon knows which repositories to poll.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::git::{Oid, Repository};

use crate::config::{Config, RepoConfig};
use crate::git::GitAuth;
use crate::git::{self, Change, GitError, RemoteHead, RemoteSpec};
use crate::hubignore::HubIgnore;
use crate::model::{self, Parsed};
use crate::store::{
    Content, Counts, PollRecord, StepMeta, StepWriter, Store, StoreError, now_rfc3339,
    now_rfc3339_millis,
};

/// Why a poll failed. Every message starts with the repository id.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{repo}: {source}")]
    Git {
        repo: String,
        #[source]
        source: GitError,
    },
    #[error("{repo}: {source}")]
    Store {
        repo: String,
        #[source]
        source: StoreError,
    },
    #[error("{repo}: credentials: {message}")]
    Credentials { repo: String, message: String },
    #[error(
        "{repo}: the remote has no default branch any more (empty repository, or HEAD deleted); the last imported data (commit {commit}) is kept"
    )]
    Emptied { repo: String, commit: String },
    #[error("{repo}: stopped by shutdown; the database holds the last fully processed commit")]
    Cancelled { repo: String },
    #[error("{repo}: {message}")]
    Internal { repo: String, message: String },
}

impl SyncError {
    /// No connection to the git server could be made at all (it is down or cut off), as opposed to a
    /// server that answered with an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SyncError::Git {
                source: GitError::Unreachable { .. },
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
pub struct Progress {
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
    pub fn touch(&self) {
        self.last.store(Self::now_ms(), Ordering::Relaxed);
    }

    /// How long since the last sign of life.
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            Self::now_ms().saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    /// The thread running the poll (set when it starts).
    pub fn thread(&self) -> Option<std::thread::ThreadId> {
        self.thread.get().copied()
    }

    /// The poll starts on `thread` (a sign of life too).
    pub fn started_on(&self, thread: std::thread::ThreadId) {
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
pub enum PollOutcome {
    /// The default branch is still at the processed commit: nothing was fetched.
    Unchanged { commit: String },
    /// The remote has no commits yet.
    Empty,
    /// New commits were processed.
    Updated {
        commit: String,
        commits: u32,
        counts: Counts,
    },
}

impl PollOutcome {
    /// The one line `modelmirror sync` prints for a repository.
    pub fn line(&self, repo: &str) -> String {
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
pub enum Trigger {
    Schedule,
    Manual,
    Startup,
    Webhook,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Startup => "startup",
            Trigger::Webhook => "webhook",
        }
    }
}

/// Poll one repository and record the outcome (the check, the error and the poll itself) in the database.
/// Returns the outcome and the number of consecutive failures after it (0 on success).
pub fn run_poll(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    trigger: Trigger,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> (Result<PollOutcome, SyncError>, u32) {
    let started_at = now_rfc3339_millis();
    let started = Instant::now();
    progress.started_on(std::thread::current().id());
    // A bug must not take the service down silently: a panic in a poll becomes that poll's recorded error.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll(config, repo, store, cancel, progress)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(SyncError::Internal {
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
    // Shutdown and a concurrent writer are not failures of the repository: no error, no back-off.
    let benign = matches!(
        &result,
        Err(SyncError::Cancelled { .. })
            | Err(SyncError::Store {
                source: StoreError::Conflict { .. },
                ..
            })
            | Err(SyncError::Git {
                source: GitError::MirrorBusy { .. } | GitError::Cancelled { .. },
                ..
            })
    );
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

/// Resolve the provider's credentials for git now (token files are re-read before every poll).
pub fn git_auth(config: &Config, repo: &RepoConfig) -> Result<GitAuth, String> {
    let provider = config.provider(repo).ok_or_else(|| {
        format!(
            "provider `{}` is not in the configuration any more; the repository's data is kept",
            repo.provider
        )
    })?;
    provider.git_auth().map_err(|e| e.to_string())
}

/// One poll, without the bookkeeping of [`run_poll`].
pub fn poll(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> Result<PollOutcome, SyncError> {
    let id = repo.id.clone();
    let git_err = |source| SyncError::Git {
        repo: id.clone(),
        source,
    };
    let store_err = |source| SyncError::Store {
        repo: id.clone(),
        source,
    };
    let auth = git_auth(config, repo).map_err(|message| SyncError::Credentials {
        repo: id.clone(),
        message,
    })?;
    store
        .ensure_repo(&repo.id, &repo.provider, &repo.path, &repo.url)
        .map_err(store_err)?;
    let mirror = git::open_mirror(&config.mirror_path(repo)).map_err(git_err)?;
    let provider = config
        .provider(repo)
        .ok_or_else(|| SyncError::Credentials {
            repo: id.clone(),
            message: format!(
                "provider `{}` is not in the configuration any more",
                repo.provider
            ),
        })?;
    let spec = RemoteSpec {
        url: &repo.url,
        auth: &auth,
        ssh_key_file: provider.credentials.ssh_key_file.as_deref(),
        known_hosts_file: provider.credentials.known_hosts_file.as_deref(),
        proxy: provider.proxy.as_ref().map(|p| p.expose()),
        cancel: cancel.clone(),
        alive: Some(&|| progress.touch()),
    };
    let fetch_started = Instant::now();
    let fetched = git::fetch_head(&mirror, &spec);
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
                return Err(SyncError::Emptied { repo: id, commit });
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
    state: &crate::store::RepoState,
    cancel: &Arc<AtomicBool>,
    progress: &Progress,
) -> Result<PollOutcome, SyncError> {
    let id = repo.id.clone();
    let settings = config.filter.fingerprint();
    let head_str = head.to_string();
    let plan =
        plan(mirror, state, head, repo.backfill, &settings).map_err(|source| SyncError::Git {
            repo: id.clone(),
            source,
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
            return Err(SyncError::Cancelled { repo: id });
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
            StepError::Cancelled => SyncError::Cancelled { repo: id.clone() },
            StepError::Git(source) => SyncError::Git {
                repo: id.clone(),
                source,
            },
            StepError::Store(source) => SyncError::Store {
                repo: id.clone(),
                source,
            },
            StepError::Internal(message) => SyncError::Internal {
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
        commits: done,
        counts,
    })
}

/// Rebuild a repository's catalog from its local mirror, with no network: forget what the database holds for
/// it and import the mirror's default branch again (its whole history, with `backfill`). For an upgrade that
/// parses more, or a lost database.
pub fn rebuild(
    config: &Config,
    repo: &RepoConfig,
    store: &Store,
    cancel: &Arc<AtomicBool>,
) -> Result<PollOutcome, SyncError> {
    let id = repo.id.clone();
    let path = config.mirror_path(repo);
    if !path.join("HEAD").exists() {
        return Err(SyncError::Internal {
            repo: id,
            message: format!(
                "no local mirror at {}: nothing to rebuild from; `modelmirror sync {}` fetches it",
                path.display(),
                repo.id
            ),
        });
    }
    let mirror = git::open_mirror_to_read(&path).map_err(|source| SyncError::Git {
        repo: id.clone(),
        source,
    })?;
    let store_err = |source| SyncError::Store {
        repo: id.clone(),
        source,
    };
    // Only a mirror with a branch replaces the catalog: an empty one (a failed first fetch) changes nothing.
    let Some((branch, head)) = git::mirror_head(&mirror) else {
        return Err(SyncError::Internal {
            repo: id,
            message: format!(
                "the local mirror at {} has no branch yet; nothing was changed (`modelmirror sync {}` fetches it)",
                path.display(),
                repo.id
            ),
        });
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
        &crate::store::RepoState::default(),
        cancel,
        &Progress::default(),
    )
}

/// A commit of the repository's mirror, given as an id or unambiguous prefix (or any revision git
/// understands): its full id.
pub fn resolve_commit(config: &Config, repo: &RepoConfig, rev: &str) -> Result<String, String> {
    if rev.trim().is_empty() {
        return Err(format!("{}: an empty commit", repo.id));
    }
    let mirror = Repository::open_bare(config.mirror_path(repo)).map_err(|_| {
        format!(
            "{}: no local mirror (`modelmirror sync {}` fetches it)",
            repo.id, repo.id
        )
    })?;
    mirror
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id().to_string())
        .map_err(|e| {
            format!(
                "{}: commit {rev:?}: {} (not in the mirror, or ambiguous)",
                repo.id,
                e.message()
            )
        })
}

/// Whether `ancestor` is `commit` itself or one of its ancestors, in the repository's mirror.
pub fn is_at_or_before(config: &Config, repo: &RepoConfig, ancestor: &str, commit: &str) -> bool {
    if ancestor == commit {
        return true;
    }
    let (Ok(mirror), Ok(a), Ok(c)) = (
        Repository::open_bare(config.mirror_path(repo)),
        Oid::from_str(ancestor),
        Oid::from_str(commit),
    ) else {
        return false;
    };
    git::is_ancestor(&mirror, a, c)
}

/// A model as stored in the mirror: at `commit` (a commit id or prefix; the newest processed version when
/// `None`) and `path`. Returns the model (or why it is not one), the commit and the blob id.
pub fn model_at(
    config: &Config,
    repo: &RepoConfig,
    commit: &str,
    path: &str,
) -> Result<(Parsed, String, String), String> {
    let mirror_path = config.mirror_path(repo);
    // Only an existing mirror: reading never creates one.
    let mirror = Repository::open_bare(&mirror_path).map_err(|_| {
        format!(
            "{}: no local mirror at {} (`modelmirror sync {}` fetches it)",
            repo.id,
            mirror_path.display(),
            repo.id
        )
    })?;
    let (commit, blob) = git::blob_at(&mirror, commit, path)
        .map_err(|e| format!("{}: {e}", repo.id))?
        .ok_or_else(|| format!("{}: there is no file {path} at commit {commit}", repo.id))?;
    let bytes = git::read_blob(&mirror, blob).map_err(|e| format!("{}: {e}", repo.id))?;
    Ok((
        config.filter.parse(path, &bytes),
        commit.to_string(),
        blob.to_string(),
    ))
}

/// How to get from what the database holds to the new head.
#[derive(Debug)]
struct Plan {
    steps: Vec<StepKind>,
    note: Option<&'static str>,
}

impl StepKind {
    fn commit(&self) -> Oid {
        match *self {
            StepKind::Diff { commit, .. } | StepKind::Reconcile { commit } => commit,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum StepKind {
    /// Apply the diff from the commit's first parent (or the empty tree) to the commit.
    Diff { parent: Option<Oid>, commit: Oid },
    /// Compare the commit's whole tree with the database.
    Reconcile { commit: Oid },
}

fn plan(
    mirror: &Repository,
    state: &crate::store::RepoState,
    head: Oid,
    backfill: bool,
    settings: &str,
) -> Result<Plan, GitError> {
    let reconcile = |note| Plan {
        steps: vec![StepKind::Reconcile { commit: head }],
        note,
    };
    let last = state.commit.as_deref().and_then(|c| Oid::from_str(c).ok());
    if state.settings.as_deref().is_some_and(|s| s != settings) {
        // include globs or the size limit changed: what the catalog holds no longer follows from Git alone.
        return Ok(reconcile(Some("settings-changed")));
    }
    let Some(last) = last else {
        if !backfill {
            return Ok(reconcile(None));
        }
        let chain = git::first_parent_path(mirror, None, head)?.unwrap_or_default();
        return Ok(diff_plan(mirror, chain, None));
    };
    if !git::has_commit(mirror, last) {
        return Ok(reconcile(Some("history-rewritten")));
    }
    match git::first_parent_path(mirror, Some(last), head)? {
        Some(chain) => Ok(diff_plan(mirror, chain, Some(last))),
        None if git::is_ancestor(mirror, last, head) => Ok(reconcile(None)),
        None => Ok(reconcile(Some("history-rewritten"))),
    }
}

fn diff_plan(mirror: &Repository, chain: Vec<Oid>, mut parent: Option<Oid>) -> Plan {
    let mut steps = Vec::with_capacity(chain.len());
    for (i, commit) in chain.into_iter().enumerate() {
        if i == 0 && parent.is_none() {
            // The root of a first import: its real parent, if the chain was cut, else the empty tree.
            parent = git::first_parent(mirror, commit).ok().flatten();
        }
        steps.push(StepKind::Diff { parent, commit });
        parent = Some(commit);
    }
    Plan { steps, note: None }
}

/// What every step of one poll shares.
struct StepContext<'a> {
    config: &'a Config,
    repo: &'a RepoConfig,
    store: &'a Store,
    mirror: &'a Repository,
    branch: &'a str,
    note: Option<&'a str>,
    settings: &'a str,
    expect_commit: Option<&'a str>,
    /// Read unchanged files again in a reconcile step (settings or parser changed).
    reread: bool,
    /// Shutdown: a step in progress stops between two files and rolls back.
    cancel: &'a AtomicBool,
    /// Where the mirror's objects are stored, to read many blobs in storage order.
    packs: &'a std::cell::OnceCell<git::PackIndexes>,
    /// Touched for every file written: a long commit is alive.
    progress: &'a Progress,
}

fn process_step(ctx: &StepContext<'_>, step: &StepKind) -> Result<Counts, StepError> {
    let StepContext {
        config,
        repo,
        store,
        mirror,
        ..
    } = *ctx;
    let filter = &config.filter;
    // `.hubignore` at the commit's root decides what is left out. A commit that changes it is applied as a
    // full comparison, so newly ignored models leave the catalog and newly allowed ones come in.
    let commit = step.commit();
    let ignore_blob = git::root_blob(mirror, commit, HUBIGNORE)?;
    let ignore = hubignore(mirror, ignore_blob, &repo.id);
    let mut note = ctx.note;
    let (diff_parent, rules_changed) = match *step {
        StepKind::Diff { parent, .. } => {
            let parent_blob = match parent {
                Some(p) => git::root_blob(mirror, p, HUBIGNORE)?,
                None => None,
            };
            (Some(parent), parent_blob != ignore_blob)
        }
        StepKind::Reconcile { .. } => (None, false),
    };
    if rules_changed {
        note = note.or(Some("hubignore-changed"));
    }
    // A diff step's changes are what differs from the catalog (which equals the parent's tree); a reconcile
    // step compares the tree with the catalog itself.
    let changes = match diff_parent {
        Some(parent) => {
            let mut changes =
                without_ignored(git::diff_commits(mirror, parent, commit, filter)?, &ignore);
            if rules_changed {
                // The commit's own changes (renames kept), then what the new rules change: stored models now
                // left out go, files now allowed that the catalog lacks come in.
                let stored = store.model_blobs(&repo.id)?;
                let touched: HashSet<String> = changes.iter().flat_map(change_paths).collect();
                for path in stored.keys() {
                    if ignore.is_ignored(path) && !touched.contains(path) {
                        changes.push(Change::Deleted { path: path.clone() });
                    }
                }
                for (path, blob) in git::tree_files(mirror, commit, filter)? {
                    if !ignore.is_ignored(&path)
                        && !stored.contains_key(&path)
                        && !touched.contains(&path)
                    {
                        changes.push(Change::Added { path, blob });
                    }
                }
            }
            changes
        }
        None => {
            let stored = store.model_blobs(&repo.id)?;
            let mut tree = git::tree_files(mirror, commit, filter)?;
            tree.retain(|(p, _)| !ignore.is_ignored(p));
            reconcile_changes(&stored, tree, ctx.reread)
        }
    };
    let changes = in_storage_order(ctx.packs, mirror, changes);
    let info = git::commit_info(mirror, commit)?;
    let meta = StepMeta {
        repo_id: &repo.id,
        branch: ctx.branch,
        commit: &info,
        note,
        settings: ctx.settings,
        expect_commit: ctx.expect_commit,
    };
    store.apply_step(
        &meta,
        |w: &mut StepWriter<'_, '_>| -> Result<(), StepError> {
            if changes.len() < PARALLEL_FROM {
                for change in &changes {
                    if ctx.cancel.load(Ordering::Relaxed) {
                        return Err(StepError::Cancelled);
                    }
                    ctx.progress.touch();
                    write(
                        w,
                        change,
                        prepare(config, mirror, &repo.id, change, &info.id)?,
                    )?;
                }
                return Ok(());
            }
            // Many files: one thread reads and parses (with its own handle on the mirror) while this one
            // writes the file before. The hand-over holds one file (a large model is in memory at most twice:
            // being written, and parsed and waiting); when writing stops early, the reader stops at its next
            // hand-over.
            std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel(0);
                let reader_path = mirror.path().to_path_buf();
                let (changes, cancel, repo_id, commit) = (&changes, ctx.cancel, &repo.id, &info.id);
                let reader = std::thread::Builder::new()
                    .name("modelmirror-read".into())
                    .spawn_scoped(scope, move || {
                        let reader = match Repository::open_bare(&reader_path) {
                            Ok(r) => r,
                            Err(e) => {
                                let _ = tx.send(Err(GitError::Mirror {
                                    path: reader_path,
                                    message: e.message().to_string(),
                                }));
                                return;
                            }
                        };
                        for change in changes {
                            if cancel.load(Ordering::Relaxed) {
                                return;
                            }
                            let prepared = prepare(config, &reader, repo_id, change, commit);
                            let failed = prepared.is_err();
                            if tx.send(prepared).is_err() || failed {
                                return;
                            }
                        }
                    });
                let Ok(reader) = reader else {
                    // No thread to be had: read here.
                    for change in changes {
                        if cancel.load(Ordering::Relaxed) {
                            return Err(StepError::Cancelled);
                        }
                        ctx.progress.touch();
                        write(w, change, prepare(config, mirror, repo_id, change, commit)?)?;
                    }
                    return Ok(());
                };
                for change in changes {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(StepError::Cancelled);
                    }
                    let Ok(prepared) = rx.recv() else {
                        // The reader stopped without a word: shutdown, or it panicked (joined here, so the
                        // panic ends this step, not the process).
                        drop(rx);
                        return Err(match reader.join() {
                            Err(_) if !cancel.load(Ordering::Relaxed) => StepError::Internal(format!(
                                "reading the files of commit {commit} failed unexpectedly (a bug: please report it with this commit); nothing of it was kept, and the next poll retries"
                            )),
                            _ => StepError::Cancelled,
                        });
                    };
                    ctx.progress.touch();
                    write(w, change, prepared?)?;
                }
                Ok(())
            })
        },
    )
}

/// From this many changes in one commit, reading and parsing run on a second thread beside the writer.
const PARALLEL_FROM: usize = 16;

/// Below this many blobs to read, the order they are read in makes no measurable difference.
const ORDER_FROM: usize = 64;

/// The step's changes with deletions first, then the blobs to read in the order the mirror's packs store
/// them (see [`git::PackIndexes`]: about three times faster for a first import). Reordering is safe: the
/// changes of one step touch distinct paths (a path is deleted or a rename's source only when it left the
/// tree, added or a rename's target only when it is new, modified only when it is in both).
fn in_storage_order(
    packs: &std::cell::OnceCell<git::PackIndexes>,
    mirror: &Repository,
    changes: Vec<Change>,
) -> Vec<Change> {
    let blob = |c: &Change| match c {
        Change::Added { blob, .. }
        | Change::Modified { blob, .. }
        | Change::Renamed { blob, .. } => Some(*blob),
        Change::Deleted { .. } => None,
    };
    let blobs: Vec<Oid> = changes.iter().filter_map(blob).collect();
    if blobs.len() < ORDER_FROM {
        return changes;
    }
    let positions: HashMap<Oid, (usize, u64)> = blobs
        .iter()
        .zip(
            packs
                .get_or_init(|| git::PackIndexes::read(mirror))
                .positions(&blobs),
        )
        .filter_map(|(b, p)| Some((*b, p?)))
        .collect();
    let mut changes = changes;
    // Stable: deletions keep their order, and so do blobs without a known position (after the others).
    changes.sort_by_key(|c| match blob(c) {
        None => (0, 0, 0),
        Some(b) => match positions.get(&b) {
            Some(&(pack, offset)) => (1, pack, offset),
            None => (2, 0, 0),
        },
    });
    changes
}

/// The file at a repository's root that lists models and folders to leave out (gitignore syntax).
pub const HUBIGNORE: &str = ".hubignore";

/// The paths a change touches.
fn change_paths(c: &Change) -> Vec<String> {
    match c {
        Change::Added { path, .. } | Change::Modified { path, .. } | Change::Deleted { path } => {
            vec![path.clone()]
        }
        Change::Renamed { from, to, .. } => vec![from.clone(), to.clone()],
    }
}

/// The rules of a `.hubignore` blob (none when absent or unreadable).
fn hubignore(mirror: &Repository, blob: Option<Oid>, repo_id: &str) -> HubIgnore {
    let Some(blob) = blob else {
        return HubIgnore::none();
    };
    match git::read_blob(mirror, blob) {
        Ok(bytes) => {
            let (rules, warnings) = HubIgnore::parse(&String::from_utf8_lossy(&bytes));
            for w in warnings {
                tracing::warn!(repo = %repo_id, "{w}");
            }
            rules
        }
        Err(e) => {
            tracing::warn!(repo = %repo_id, "cannot read .hubignore ({e}); nothing is left out");
            HubIgnore::none()
        }
    }
}

/// A diff's changes without the files `.hubignore` leaves out (the rules did not change in this commit, so
/// the catalog holds none of them).
fn without_ignored(changes: Vec<Change>, ignore: &HubIgnore) -> Vec<Change> {
    if ignore.is_empty() {
        return changes;
    }
    changes
        .into_iter()
        .filter_map(|c| match c {
            Change::Added { ref path, .. }
            | Change::Modified { ref path, .. }
            | Change::Deleted { ref path } => (!ignore.is_ignored(path)).then_some(c),
            Change::Renamed { from, to, blob } => {
                match (ignore.is_ignored(&from), ignore.is_ignored(&to)) {
                    (false, false) => Some(Change::Renamed { from, to, blob }),
                    (false, true) => Some(Change::Deleted { path: from }),
                    (true, false) => Some(Change::Added { path: to, blob }),
                    (true, true) => None,
                }
            }
        })
        .collect()
}

/// The changes that turn the stored catalog into `tree`, with renames found by equal blob ids. With
/// `reread`, files whose blob is unchanged are read again too (the settings or the parser changed, so the
/// same bytes may now be stored differently).
fn reconcile_changes(
    stored: &HashMap<String, String>,
    tree: Vec<(String, Oid)>,
    reread: bool,
) -> Vec<Change> {
    let in_tree: HashMap<&str, Oid> = tree.iter().map(|(p, o)| (p.as_str(), *o)).collect();
    let mut gone: HashMap<String, Vec<&str>> = HashMap::new();
    for (path, blob) in stored {
        if !in_tree.contains_key(path.as_str()) {
            gone.entry(blob.clone()).or_default().push(path);
        }
    }
    let mut changes = Vec::new();
    for (path, blob) in &tree {
        match stored.get(path) {
            Some(b) if *b == blob.to_string() && !reread => {}
            Some(_) => changes.push(Change::Modified {
                path: path.clone(),
                blob: *blob,
            }),
            None => match gone.get_mut(&blob.to_string()).and_then(|v| v.pop()) {
                Some(from) => changes.push(Change::Renamed {
                    from: from.to_string(),
                    to: path.clone(),
                    blob: *blob,
                }),
                None => changes.push(Change::Added {
                    path: path.clone(),
                    blob: *blob,
                }),
            },
        }
    }
    let mut removed: Vec<&str> = gone.into_values().flatten().collect();
    removed.sort_unstable();
    changes.extend(removed.into_iter().map(|p| Change::Deleted {
        path: p.to_string(),
    }));
    changes
}

/// What one change amounts to once its blob is read and parsed: everything but the database write, so it can
/// run on another thread.
enum Prepared {
    Remove,
    Put { size: u64, content: Outcome },
}

enum Outcome {
    Model(Box<model::Model>),
    Error(String),
    Skipped(String),
    NotModel,
}

/// Read and parse one change's blob (nothing to read for a deletion).
fn prepare(
    config: &Config,
    mirror: &Repository,
    repo_id: &str,
    change: &Change,
    commit: &str,
) -> Result<Prepared, GitError> {
    let (path, blob) = match change {
        Change::Deleted { .. } => return Ok(Prepared::Remove),
        Change::Added { path, blob }
        | Change::Modified { path, blob }
        | Change::Renamed { to: path, blob, .. } => (path, *blob),
    };
    let size = git::blob_size(mirror, blob)?;
    let max = config.filter.max_model_bytes;
    if size > max {
        let reason = format!(
            "{path} at commit {commit} is {size} bytes, over max_model_bytes ({max}); not read. Raise max_model_bytes to import it"
        );
        tracing::warn!(repo = %repo_id, "{reason}");
        return Ok(Prepared::Put {
            size,
            content: Outcome::Skipped(reason),
        });
    }
    // The blob is released before writing: a large model is not held as bytes and as rows at once.
    let parsed = git::with_blob(mirror, blob, |bytes| config.filter.parse(path, bytes))?;
    let content = match parsed {
        Parsed::Model(m) => Outcome::Model(Box::new(m)),
        Parsed::Invalid(e) => {
            tracing::warn!(repo = %repo_id, "{path} at commit {commit}: {e}");
            Outcome::Error(e.to_string())
        }
        Parsed::NotModel => Outcome::NotModel,
    };
    Ok(Prepared::Put { size, content })
}

/// Write one prepared change into the step's transaction.
fn write(w: &mut StepWriter<'_, '_>, change: &Change, prepared: Prepared) -> Result<(), StepError> {
    let (path, from, blob) = match change {
        Change::Deleted { path } => return Ok(w.remove(path)?),
        Change::Added { path, blob } | Change::Modified { path, blob } => (path, None, blob),
        Change::Renamed { from, to, blob } => (to, Some(from.as_str()), blob),
    };
    let Prepared::Put { size, content } = prepared else {
        return Ok(w.remove(path)?);
    };
    let blob = blob.to_string();
    match content {
        Outcome::Model(m) => w.put(path, from, &blob, size, &Content::Model(&m))?,
        Outcome::Error(e) => w.put(path, from, &blob, size, &Content::Error(e))?,
        Outcome::Skipped(reason) => w.put(path, from, &blob, size, &Content::Skipped(reason))?,
        Outcome::NotModel => {
            // Not (or no longer) a model: make sure no stale row is left at either path.
            if let Some(f) = from {
                w.remove(f)?;
            }
            w.remove(path)?;
        }
    }
    Ok(())
}

/// Blocking work (the database, which a long import may hold; the disk) from async code: the runtime moves its
/// other tasks off this worker meanwhile. Both runtimes that discover are multi-threaded.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What one discovery run found: the repositories to mirror now.
pub struct Discovered {
    pub repos: Vec<RepoConfig>,
    /// Scopes that could not be listed (each message names the provider and says what to do).
    pub errors: Vec<String>,
    /// Repositories deleted from the catalog because `prune_removed` is on.
    pub pruned: Vec<String>,
}

/// One discovery run of one provider: list every scope, filter with include/exclude, record in the
/// database, and return the repositories to mirror. A scope that fails does not stop the others, but then
/// nothing is marked removed; a failure never makes repositories disappear. The result is `Err` only when
/// nothing could be listed at all.
pub async fn discover(
    config: &Config,
    index: usize,
    store: &Store,
    limits: Arc<crate::forge::api::Limits>,
) -> Result<Discovered, String> {
    let provider = &config.providers[index];
    let kind = provider.kind.as_str();
    // A hold recorded by another process (or before a restart) still applies.
    if let Ok(Some((until, reason))) = block(|| store.provider_hold(&provider.name))
        && let Ok(until) = chrono::DateTime::parse_from_rfc3339(&until)
    {
        limits.hold_until(until.with_timezone(&chrono::Utc), reason);
    }
    let result = discover_inner(config, index, store, limits.clone()).await;
    let hold = limits.hold();
    let until = hold
        .as_ref()
        .map(|h| h.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let record = block(|| {
        store.record_hold(
            &provider.name,
            kind,
            hold.as_ref()
                .zip(until.as_deref())
                .map(|(h, u)| (u, h.reason.as_str())),
        )
    });
    if let Err(e) = record {
        tracing::error!(provider = %provider.name, "cannot record the rate-limit state: {e}");
    }
    let error = match &result {
        Err(m) => Some(m.clone()),
        Ok(d) if !d.errors.is_empty() => Some(d.errors.join("; ")),
        Ok(_) => None,
    };
    if let Some(message) = error
        && let Err(e) = block(|| store.record_discovery_error(&provider.name, kind, &message))
    {
        tracing::error!(provider = %provider.name, "cannot record the discovery error: {e}");
    }
    result
}

async fn discover_inner(
    config: &Config,
    index: usize,
    store: &Store,
    limits: Arc<crate::forge::api::Limits>,
) -> Result<Discovered, String> {
    let provider = &config.providers[index];
    let token = match &provider.credentials.token {
        Some(t) => Some(
            t.resolve()
                .map_err(|m| format!("provider {}: {m}", provider.name))?,
        ),
        None => None,
    };
    let api = crate::forge::api::ApiClient::new(&provider.api_settings(), token.as_ref(), limits)
        .map_err(|e| e.to_string())?;
    let forge = provider.kind.forge();
    let configured: Vec<&str> = config
        .repos
        .iter()
        .filter(|r| r.provider == provider.name)
        .map(|r| r.id.as_str())
        .collect();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for scope in &provider.discover {
        let repos = match forge.discover(&api, scope).await {
            Ok(repos) => repos,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        for r in repos {
            if !provider.repo_filter.allows(&r.path) || !seen.insert(r.path.clone()) {
                continue;
            }
            let resolved = match crate::forge::resolve_repo(
                provider.kind,
                &provider.base_url,
                &r.path,
            ) {
                Ok(resolved) => resolved,
                Err(m) => {
                    tracing::warn!(provider = %provider.name, "skipping discovered repository {:?}: {m}", r.path);
                    continue;
                }
            };
            let id = format!("{}/{}", provider.name, resolved.path);
            found.push(crate::store::FoundRepo {
                configured: configured.contains(&id.as_str()),
                id,
                path: resolved.path,
                url: resolved.url,
                provider_id: r.provider_id,
                web_url: r.web_url,
                archived: r.archived,
                empty: r.empty == Some(true),
            });
        }
    }
    if errors.len() == provider.discover.len() {
        return Err(errors.join("; "));
    }
    let record = crate::store::Discovery {
        provider: &provider.name,
        kind: provider.kind.as_str(),
        found: &found,
        complete: errors.is_empty(),
    };
    let changes = block(|| store.record_discovery(&record))
        .map_err(|e| format!("provider {}: {e}", provider.name))?;
    if let Some(note) = &changes.note {
        tracing::warn!(provider = %provider.name, "{note}");
    }
    // Pruned only at the second run in a row that misses a repository: its poll loop stopped at the first.
    let mut pruned = Vec::new();
    if provider.prune_removed {
        for id in changes.prunable {
            let path = id
                .strip_prefix(&format!("{}/", provider.name))
                .unwrap_or(&id);
            block(|| {
                store.prune_repo(&id)?;
                if let Err(e) = git::delete_mirror(&config.mirror_path(&provider.repo(path, ""))) {
                    tracing::warn!(provider = %provider.name, repo = %id, "{e}");
                }
                Ok::<_, StoreError>(())
            })
            .map_err(|e| format!("provider {}: {e}", provider.name))?;
            tracing::info!(provider = %provider.name, repo = %id, "pruned (prune_removed = true)");
            pruned.push(id);
        }
    }
    let repos: Vec<RepoConfig> = found
        .iter()
        .filter(|f| !f.archived && !f.configured)
        .map(|f| provider.repo(&f.path, &f.url))
        .collect();
    tracing::info!(provider = %provider.name, found = found.len(), mirrored = repos.len(), "discovery done");
    Ok(Discovered {
        repos,
        errors,
        pruned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn reconcile_finds_adds_modifies_deletes_and_renames() {
        let stored: HashMap<String, String> = [
            ("same.json", oid(1)),
            ("changed.json", oid(2)),
            ("gone.json", oid(3)),
            ("old-name.json", oid(4)),
        ]
        .into_iter()
        .map(|(p, o)| (p.to_string(), o.to_string()))
        .collect();
        let tree = vec![
            ("same.json".to_string(), oid(1)),
            ("changed.json".to_string(), oid(5)),
            ("new-name.json".to_string(), oid(4)),
            ("new.json".to_string(), oid(6)),
        ];
        let mut changes = reconcile_changes(&stored, tree, false);
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            changes,
            vec![
                Change::Added {
                    path: "new.json".into(),
                    blob: oid(6)
                },
                Change::Deleted {
                    path: "gone.json".into()
                },
                Change::Modified {
                    path: "changed.json".into(),
                    blob: oid(5)
                },
                Change::Renamed {
                    from: "old-name.json".into(),
                    to: "new-name.json".into(),
                    blob: oid(4)
                },
            ]
        );
    }
}
