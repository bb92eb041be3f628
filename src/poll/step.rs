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
        let paths: Vec<String> = changes.iter().flat_map(change_paths).collect();
        w.unindex(paths.iter().map(String::as_str))?;
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
    // Many files: one thread reads and parses (with its own handle on the mirror) while this one writes. The
    // reader runs ahead by up to `AHEAD_BYTES` of parsed files (see `Ahead`); when writing stops early, the
    // reader stops before its next file.
    let (config, cancel, repo_id) = (ctx.config, ctx.cancel, &ctx.repo.id);
    let ahead = Ahead::default();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD_FILES);
        let reader_path = ctx.mirror.path().to_path_buf();
        let ahead = &ahead;
        let reader = std::thread::Builder::new()
            .name("modelmirror-read".into())
            .spawn_scoped(scope, move || {
                let reader = match git::open_mirror_to_read(&reader_path) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send((0, Err(e)));
                        return;
                    }
                };
                for change in changes {
                    if !ahead.wait_for_room(cancel) {
                        return;
                    }
                    let prepared = prepare(config, &reader, repo_id, change, commit);
                    let held = prepared.as_ref().map_or(0, Prepared::held_bytes);
                    ahead.add(held);
                    let failed = prepared.is_err();
                    if tx.send((held, prepared)).is_err() || failed {
                        return;
                    }
                }
            });
        // However writing ends, a reader waiting for room stops.
        let _closed = CloseOnDrop(ahead);
        let Ok(reader) = reader else {
            // No thread to be had: read here.
            return write_here(ctx, w, changes, commit);
        };
        for change in changes {
            if cancel.load(Ordering::Relaxed) {
                return Err(StepError::Cancelled);
            }
            let Ok((held, prepared)) = rx.recv() else {
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
            ahead.release(held);
            ctx.progress.touch();
            write(w, change, prepared?)?;
        }
        Ok(())
    })
}

/// How far the reader may run ahead of the writer: parsed files waiting to be written, by the memory they
/// hold (estimated, [`Prepared::held_bytes`]).
const AHEAD_BYTES: u64 = 32 << 20;
/// … and at most this many of them (a commit of many tiny files).
const AHEAD_FILES: usize = 1024;

/// The memory held by files read and parsed but not yet taken by the writer.
///
/// Why: reading and writing take turns being the slower one (a run of large models to parse, then a run of
/// models with many attributes to write); handing over one file at a time made each wait for the other about
/// a third of the time. The reader only starts a file while less than [`AHEAD_BYTES`] wait, so a large model
/// is still in memory at most twice (one being written, one waiting), and small ones at most that much more.
#[derive(Default)]
struct Ahead {
    /// Bytes waiting, and whether the writer is gone.
    state: std::sync::Mutex<(u64, bool)>,
    room: std::sync::Condvar,
}

impl Ahead {
    /// Wait until another file may be read; `false` when the writer is gone or on shutdown.
    fn wait_for_room(&self, cancel: &AtomicBool) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        loop {
            let (waiting, closed) = *state;
            if closed || cancel.load(Ordering::Relaxed) {
                return false;
            }
            if waiting < AHEAD_BYTES {
                return true;
            }
            // Woken when the writer takes a file; the timeout only bounds how late a shutdown is seen.
            state = match self
                .room
                .wait_timeout(state, std::time::Duration::from_millis(100))
            {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
    }

    /// A parsed file of `bytes` now waits for the writer.
    fn add(&self, bytes: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 += bytes;
        }
    }

    /// The writer took a file of `bytes`.
    fn release(&self, bytes: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = state.0.saturating_sub(bytes);
        }
        self.room.notify_all();
    }

    /// The writer is gone: a waiting reader stops.
    fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.1 = true;
        }
        self.room.notify_all();
    }
}

/// Closes an [`Ahead`] when dropped.
struct CloseOnDrop<'a>(&'a Ahead);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
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

impl Prepared {
    /// About how much memory this holds: the parsed model's rows and their text (a model in memory is many
    /// times its file when its attributes are short, or when a JSON Schema expands its `$ref`s).
    fn held_bytes(&self) -> u64 {
        fn text(s: &Option<String>) -> usize {
            s.as_ref().map_or(0, String::len)
        }
        fn attribute(a: &model::Attribute) -> usize {
            std::mem::size_of::<model::Attribute>()
                + a.path.len()
                + a.name.len()
                + text(&a.guid)
                + text(&a.code)
                + text(&a.data_type)
                + text(&a.mode)
                + text(&a.description)
        }
        let bytes = match self {
            Prepared::Remove => 0,
            Prepared::Put { content, .. } => match content {
                Outcome::Model(m) => {
                    std::mem::size_of::<model::Model>()
                        + m.entities
                            .iter()
                            .map(|e| {
                                std::mem::size_of::<model::Entity>()
                                    + e.name.len()
                                    + text(&e.description)
                                    + e.attributes.iter().map(attribute).sum::<usize>()
                            })
                            .sum::<usize>()
                        + m.definitions.iter().map(attribute).sum::<usize>()
                        + (m.relationships.len() + m.views.len() + m.containers.len()) * 256
                }
                Outcome::Error(e) | Outcome::Skipped(e) => e.len(),
                Outcome::NotModel => 0,
            },
        };
        bytes as u64
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_reader_runs_ahead_within_its_allowance_and_stops_when_writing_does() {
        let ahead = Ahead::default();
        let cancel = AtomicBool::new(false);
        // A file larger than the whole allowance may be read when nothing waits…
        assert!(ahead.wait_for_room(&cancel));
        ahead.add(AHEAD_BYTES * 2);
        // …and then nothing more until the writer takes it.
        std::thread::scope(|s| {
            let waiter = s.spawn(|| ahead.wait_for_room(&cancel));
            std::thread::sleep(Duration::from_millis(200));
            assert!(!waiter.is_finished(), "over the allowance: it waits");
            ahead.release(AHEAD_BYTES * 2);
            assert!(waiter.join().unwrap());
        });
        // Files go ahead while less than the allowance waits; then the reader waits, and stops when the
        // writer is gone.
        ahead.add(AHEAD_BYTES - 1);
        assert!(ahead.wait_for_room(&cancel));
        ahead.add(1);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| ahead.wait_for_room(&cancel));
            std::thread::sleep(Duration::from_millis(200));
            assert!(!waiter.is_finished());
            ahead.close();
            assert!(!waiter.join().unwrap(), "the writer is gone");
        });
        // Shutdown stops a waiting reader too.
        let fresh = Ahead::default();
        fresh.add(AHEAD_BYTES);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| fresh.wait_for_room(&cancel));
            std::thread::sleep(Duration::from_millis(50));
            cancel.store(true, Ordering::Relaxed);
            assert!(!waiter.join().unwrap());
        });
    }

    /// A parsed model is counted by what it holds, not by its file: many short attributes weigh far more
    /// than their JSON.
    #[test]
    fn a_parsed_model_is_counted_by_its_rows() {
        let json = format!(
            r#"{{"modelName": "m", "collections": [{{"collectionName": "e", "properties": [{}]}}]}}"#,
            (0..2000)
                .map(|i| format!(r#"{{"name": "a{i}", "type": "string"}}"#))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let model::Parsed::Model(m) = model::parse_hackolade(json.as_bytes()) else {
            panic!("a model");
        };
        assert_eq!(m.attribute_count(), 2000);
        let prepared = Prepared::Put {
            size: json.len() as u64,
            content: Outcome::Model(Box::new(m)),
        };
        assert!(
            prepared.held_bytes() > 5 * json.len() as u64,
            "{} for {} bytes of JSON",
            prepared.held_bytes(),
            json.len()
        );
        assert_eq!(Prepared::Remove.held_bytes(), 0);
    }
}
