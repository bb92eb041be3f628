//! One step of a poll: the changes one commit (or one full comparison) makes to the catalog, read and parsed
//! and written in one transaction. A commit touching many files is read in the order the mirror's packs
//! store it, and from `PARALLEL_FROM` files on a second thread reads and parses while this one writes.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use super::plan::{
    HUBIGNORE, StepKind, change_paths, hubignore, reconcile_changes, without_ignored,
};
use super::{Progress, StepError};
use crate::config::{Config, RepoConfig};
use crate::git::{self, Change, GitError, Oid, Repository};
use crate::model::{self, Parsed};
use crate::store::{Content, Counts, StepMeta, StepWriter, Store};

/// What every step of one poll shares.
pub(super) struct StepContext<'a> {
    pub(super) config: &'a Config,
    pub(super) repo: &'a RepoConfig,
    pub(super) store: &'a Store,
    pub(super) mirror: &'a Repository,
    pub(super) branch: &'a str,
    pub(super) note: Option<&'a str>,
    pub(super) settings: &'a str,
    pub(super) expect_commit: Option<&'a str>,
    /// Read unchanged files again in a reconcile step (settings or parser changed).
    pub(super) reread: bool,
    /// Shutdown: a step in progress stops between two files and rolls back.
    pub(super) cancel: &'a AtomicBool,
    /// Where the mirror's objects are stored, to read many blobs in storage order.
    pub(super) packs: &'a std::cell::OnceCell<git::PackIndexes>,
    /// Touched for every file written: a long commit is alive.
    pub(super) progress: &'a Progress,
}

/// Apply one step: work out its changes, then read, parse and write them in one transaction.
pub(super) fn process_step(ctx: &StepContext<'_>, step: &StepKind) -> Result<Counts, StepError> {
    let (changes, note) = step_changes(ctx, step)?;
    let changes = in_storage_order(ctx.packs, ctx.mirror, changes);
    let info = git::commit_info(ctx.mirror, step.commit())?;
    let meta = StepMeta {
        repo_id: &ctx.repo.id,
        branch: ctx.branch,
        commit: &info,
        note,
        settings: ctx.settings,
        expect_commit: ctx.expect_commit,
    };
    ctx.store.apply_step(&meta, |w: &mut StepWriter<'_, '_>| {
        write_changes(ctx, w, &changes, &info.id)
    })
}

/// The changes a step makes to the catalog, and the note it is recorded with. `.hubignore` at the commit's
/// root decides what is left out; a commit that changes it is applied as a full comparison, so newly ignored
/// models leave the catalog and newly allowed ones come in.
fn step_changes<'a>(
    ctx: &StepContext<'a>,
    step: &StepKind,
) -> Result<(Vec<Change>, Option<&'a str>), StepError> {
    let (mirror, filter, repo_id) = (ctx.mirror, &ctx.config.filter, &ctx.repo.id);
    let commit = step.commit();
    let ignore_blob = git::root_blob(mirror, commit, HUBIGNORE)?;
    let ignore = hubignore(mirror, ignore_blob, repo_id);
    let StepKind::Diff { parent, .. } = *step else {
        // A reconcile step compares the tree with the catalog itself.
        let stored = ctx.store.model_blobs(repo_id)?;
        let mut tree = git::tree_files(mirror, commit, filter)?;
        tree.retain(|(p, _)| !ignore.is_ignored(p));
        return Ok((reconcile_changes(&stored, tree, ctx.reread), ctx.note));
    };
    // A diff step's changes are what differs from the catalog (which equals the parent's tree).
    let parent_blob = match parent {
        Some(p) => git::root_blob(mirror, p, HUBIGNORE)?,
        None => None,
    };
    let mut changes = without_ignored(git::diff_commits(mirror, parent, commit, filter)?, &ignore);
    if parent_blob == ignore_blob {
        return Ok((changes, ctx.note));
    }
    // The commit's own changes (renames kept), then what the new rules change: stored models now left out
    // go, files now allowed that the catalog lacks come in.
    let stored = ctx.store.model_blobs(repo_id)?;
    let touched: HashSet<String> = changes.iter().flat_map(change_paths).collect();
    for path in stored.keys() {
        if ignore.is_ignored(path) && !touched.contains(path) {
            changes.push(Change::Deleted { path: path.clone() });
        }
    }
    for (path, blob) in git::tree_files(mirror, commit, filter)? {
        if !ignore.is_ignored(&path) && !stored.contains_key(&path) && !touched.contains(&path) {
            changes.push(Change::Added { path, blob });
        }
    }
    Ok((changes, ctx.note.or(Some("hubignore-changed"))))
}

/// Read, parse and write every change of a step into its transaction.
fn write_changes(
    ctx: &StepContext<'_>,
    w: &mut StepWriter<'_, '_>,
    changes: &[Change],
    commit: &str,
) -> Result<(), StepError> {
    if changes.len() < PARALLEL_FROM {
        return write_here(ctx, w, changes, commit);
    }
    // Many files: one thread reads and parses (with its own handle on the mirror) while this one writes the
    // file before. The hand-over holds one file (a large model is in memory at most twice: being written,
    // and parsed and waiting); when writing stops early, the reader stops at its next hand-over.
    let (config, cancel, repo_id) = (ctx.config, ctx.cancel, &ctx.repo.id);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let reader_path = ctx.mirror.path().to_path_buf();
        let reader = std::thread::Builder::new()
            .name("modelmirror-read".into())
            .spawn_scoped(scope, move || {
                let reader = match git::open_mirror_to_read(&reader_path) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
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
            return write_here(ctx, w, changes, commit);
        };
        for change in changes {
            if cancel.load(Ordering::Relaxed) {
                return Err(StepError::Cancelled);
            }
            let Ok(prepared) = rx.recv() else {
                // The reader stopped without a word: shutdown, or it panicked (joined here, so the panic
                // ends this step, not the process).
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
}

/// Read, parse and write the changes one after another on this thread.
fn write_here(
    ctx: &StepContext<'_>,
    w: &mut StepWriter<'_, '_>,
    changes: &[Change],
    commit: &str,
) -> Result<(), StepError> {
    for change in changes {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(StepError::Cancelled);
        }
        ctx.progress.touch();
        let prepared = prepare(ctx.config, ctx.mirror, &ctx.repo.id, change, commit)?;
        write(w, change, prepared)?;
    }
    Ok(())
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
