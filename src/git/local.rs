//! A new mirror of a repository on this machine (`file://`) starts from the source's own object files, as
//! `git clone --local` does: hard links where the filesystem allows, copies elsewhere.
//!
//! Why: libgit2's local transport builds a pack in-process, computing deltas (most of a local import's time),
//! only for the mirror to index it again. Git never rewrites an object file (packs, their indexes and loose
//! objects are only ever added and deleted), so sharing them is safe. Later polls fetch through the transport
//! as before: only the new objects, a small pack.
//!
//! Seeding is a shortcut, never a requirement: a source it cannot read whole (alternates, a shallow clone, a
//! folder that vanished under a repack) is fetched the usual way, and a mirror it seeded is kept only when
//! every object of the history of the source's `HEAD` is in it. Other objects copied with them (other
//! branches, a push landing meanwhile) are not checked here: whenever a fetch finds a new head already in the
//! mirror, [`super::remote::fetch_head`] checks that head's new history the same way ([`complete`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

/// What seeding did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Seeded {
    /// Files placed in the mirror (a pack and its index count as two).
    pub(super) files: usize,
    /// How many of them are copies (the rest are hard links).
    pub(super) copied: usize,
    /// The commit whose whole history was checked to be there (the source's `HEAD` when seeding began).
    pub(super) head: Oid,
}

/// What a long seeding reports to and hears from its poll: `alive` is called as files are placed and trees
/// read (the watchdog's sign of life); `cancel` stops it (shutdown).
pub(super) struct Watch<'a> {
    pub(super) alive: Option<&'a (dyn Fn() + Sync)>,
    pub(super) cancel: &'a std::sync::atomic::AtomicBool,
}

impl Watch<'_> {
    /// Report life; `false` once cancelled.
    fn tick(&self) -> bool {
        if let Some(alive) = self.alive {
            alive();
        }
        !self.cancel.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The folder of a `file://` URL.
pub(super) fn source_path(url: &str) -> Option<PathBuf> {
    let parsed = url::Url::parse(url).ok()?;
    (parsed.scheme() == "file")
        .then(|| parsed.to_file_path().ok())
        .flatten()
}

/// Give the empty mirror `mirror` the object files of the repository at `source`. `Ok(None)` when the source
/// is not one to seed from (the caller fetches the usual way); an error names what went wrong, and whatever
/// was placed is removed again.
pub(super) fn seed(
    mirror: &Repository,
    source: &Path,
    watch: &Watch<'_>,
) -> Result<Option<Seeded>, String> {
    let Ok(src) = Repository::open(source) else {
        return Ok(None);
    };
    if src.is_shallow() {
        return Ok(None);
    }
    let objects = src.commondir().join("objects");
    // Objects borrowed from another repository are not in these files.
    if objects.join("info/alternates").exists() {
        return Ok(None);
    }
    let Some(head) = src.head().ok().and_then(|h| h.target()) else {
        return Ok(None);
    };
    drop(src);
    let target = mirror.path().join("objects");
    let mut placed = Placed::default();
    let result = place_all(&objects, &target, &mut placed, watch).and_then(|()| {
        // Checked through a handle of its own: `mirror`'s object cache must not keep an object this check
        // read should the files be taken back.
        let fresh = Repository::open_bare(mirror.path()).map_err(|e| e.message().to_string())?;
        match complete(&fresh, head, None, watch) {
            Ok(Complete::Yes) => Ok(()),
            Ok(Complete::No) => Err(format!(
                "the objects of commit {head} and its history were not all there (was the repository repacked meanwhile?)"
            )),
            Ok(Complete::Stopped) => Err("stopped by shutdown".into()),
            Err(e) => Err(e.message().to_string()),
        }
    });
    match result {
        Ok(()) => {
            // libgit2 looks for new packs when an object is missing anyway; this only saves that miss.
            if let Ok(odb) = mirror.odb() {
                let _ = odb.refresh();
            }
            Ok(Some(Seeded {
                files: placed.files.len(),
                copied: placed.copied,
                head,
            }))
        }
        Err(e) => {
            placed.undo();
            Err(e)
        }
    }
}

/// The files placed so far, to take back when seeding fails.
#[derive(Default)]
struct Placed {
    files: Vec<PathBuf>,
    copied: usize,
}

impl Placed {
    fn undo(self) {
        for f in self.files.iter().rev() {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Every pack (with its index) and every loose object of `objects` that `target` lacks. A pack goes in before
/// its index: libgit2 only looks at packs that have one.
fn place_all(
    objects: &Path,
    target: &Path,
    placed: &mut Placed,
    watch: &Watch<'_>,
) -> Result<(), String> {
    let stopped = || "stopped by shutdown".to_string();
    let pack_dir = objects.join("pack");
    let mut packs: Vec<PathBuf> = list(&pack_dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .filter(|p| p.with_extension("idx").is_file())
        .collect();
    packs.sort();
    let scratch = target.join("pack");
    for pack in packs {
        for file in [pack.clone(), pack.with_extension("idx")] {
            let Some(name) = file.file_name() else {
                continue;
            };
            place(&file, &scratch.join(name), &scratch, placed)?;
            if !watch.tick() {
                return Err(stopped());
            }
        }
    }
    for dir in list(objects)? {
        let Some(fan) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if fan.len() != 2 || !fan.bytes().all(|b| b.is_ascii_hexdigit()) || !is_dir {
            continue;
        }
        if !watch.tick() {
            return Err(stopped());
        }
        for file in list(&dir)? {
            let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.len() != 38 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let into = target.join(fan);
            std::fs::create_dir_all(&into)
                .map_err(|e| format!("cannot create {}: {e}", into.display()))?;
            place(&file, &into.join(name), &scratch, placed)?;
        }
    }
    Ok(())
}

/// The entries of `dir`. A folder that is not there is an error: one listed a moment ago vanished under a
/// repack, and what it held may now be elsewhere.
fn list(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    entries
        .map(|e| {
            e.map(|e| e.path())
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))
        })
        .collect()
}

/// Put `from` at `to` (unless something is there): a hard link when this process's user owns the file (a file
/// another user owns could be rewritten in place by them), else a copy made under a temporary name in
/// `scratch` and renamed into place, so `to` is never seen half written. The temporary name starts with
/// `pack_git2_`, which the mirror's clean-up removes should the process die meanwhile.
fn place(from: &Path, to: &Path, scratch: &Path, placed: &mut Placed) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if to.exists() {
        return Ok(());
    }
    // Only regular files (never what a symbolic link points to); a file gone meanwhile is an error.
    let meta = std::fs::symlink_metadata(from)
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    if !meta.is_file() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me && std::fs::hard_link(from, to).is_ok() {
        placed.files.push(to.to_path_buf());
        return Ok(());
    }
    let temp = scratch.join(format!("pack_git2_seed_{}", placed.files.len()));
    let copied = std::fs::copy(from, &temp)
        .and_then(|_| std::fs::rename(&temp, to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            format!("cannot copy {}: {e}", from.display())
        });
    copied?;
    placed.files.push(to.to_path_buf());
    placed.copied += 1;
    Ok(())
}

/// Whether a history is all there.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Complete {
    Yes,
    No,
    /// Cancelled (shutdown) before the answer.
    Stopped,
}

/// Whether `repo` holds every commit, tree and blob reachable from `head` and not from `known` (submodule
/// entries excepted). Trees and blobs are each looked at once.
///
/// An object that is not there is `No`; any other failure to read (an I/O error, too many open files) is
/// the error, so a mirror is never emptied for a passing problem.
pub(super) fn complete(
    repo: &Repository,
    head: Oid,
    known: Option<Oid>,
    watch: &Watch<'_>,
) -> Result<Complete, git2::Error> {
    let walk = || -> Result<Complete, git2::Error> {
        let odb = repo.odb()?;
        let mut commits = repo.revwalk()?;
        commits.push(head)?;
        if let Some(known) = known {
            commits.hide(known)?;
        }
        let (mut trees, mut blobs) = (HashSet::new(), HashSet::new());
        for commit in commits {
            let mut stack = vec![repo.find_commit(commit?)?.tree_id()];
            while let Some(id) = stack.pop() {
                if !trees.insert(id) {
                    continue;
                }
                if trees.len() % 256 == 0 && !watch.tick() {
                    return Ok(Complete::Stopped);
                }
                for entry in repo.find_tree(id)?.iter() {
                    match entry.kind() {
                        Some(ObjectType::Tree) => stack.push(entry.id()),
                        Some(ObjectType::Blob)
                            if blobs.insert(entry.id()) && !odb.exists(entry.id()) =>
                        {
                            return Ok(Complete::No);
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(Complete::Yes)
    };
    match walk() {
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(Complete::No),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use crate::git::test_support::git;

    fn head(src: &Path) -> Oid {
        Oid::from_str(&git(src, &["rev-parse", "HEAD"])).unwrap()
    }

    /// The source's one pack file.
    fn source_pack(src: &Path) -> PathBuf {
        std::fs::read_dir(src.join(".git/objects/pack"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pack"))
            .unwrap()
    }

    /// Take away the loose object `rev` names in the source (as if a repack moved it meanwhile).
    fn lose(src: &Path, rev: &str) {
        let id = git(src, &["rev-parse", rev]);
        std::fs::remove_file(src.join(".git/objects").join(&id[..2]).join(&id[2..])).unwrap();
    }

    /// What the mirror's pack folder holds (nothing, after an undone seeding).
    fn mirror_packs(mirror: &Repository) -> Vec<PathBuf> {
        std::fs::read_dir(mirror.path().join("objects/pack"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect()
    }

    static NOT_CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn running() -> Watch<'static> {
        Watch {
            alive: None,
            cancel: &NOT_CANCELLED,
        }
    }

    /// A bare source with two commits: the first packed, the second loose.
    fn source(dir: &Path) -> PathBuf {
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        for (i, name) in ["a.json", "b.json"].iter().enumerate() {
            std::fs::write(work.join(name), format!("{{\"n\": {i}}}")).unwrap();
            git(&work, &["add", "-A"]);
            git(
                &work,
                &[
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@example.com",
                    "commit",
                    "-q",
                    "-m",
                    name,
                ],
            );
            if i == 0 {
                git(&work, &["repack", "-a", "-d", "-q"]);
            }
        }
        work
    }

    #[test]
    fn a_mirror_takes_the_sources_files_and_its_whole_history() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        let seeded = seed(&mirror, &src, &running()).unwrap().unwrap();
        let head = head(&src);
        // One pack and its index, and the second commit's loose commit, tree and blob.
        assert_eq!(
            seeded,
            Seeded {
                files: 5,
                copied: 0,
                head
            }
        );
        assert_eq!(
            complete(&mirror, head, None, &running()).unwrap(),
            Complete::Yes
        );
        let pack = source_pack(&src);
        let linked = mirror
            .path()
            .join("objects/pack")
            .join(pack.file_name().unwrap());
        assert_eq!(
            std::fs::metadata(&linked).unwrap().ino(),
            std::fs::metadata(&pack).unwrap().ino(),
            "a hard link, not a copy"
        );
        // Seeding again places nothing.
        assert_eq!(seed(&mirror, &src, &running()).unwrap().unwrap().files, 0);
    }

    /// Files another user owns are copied: they could rewrite a shared inode in place. Needs root (to give a
    /// file away), like the other tests that change owners; fails, never skips, without it.
    #[test]
    fn files_of_another_user_are_copied_not_linked() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test gives a file to another user and must run as root (run scripts/test.sh as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let pack = source_pack(&src);
        std::os::unix::fs::chown(&pack, Some(65534), None).unwrap();
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        let seeded = seed(&mirror, &src, &running()).unwrap().unwrap();
        assert_eq!(seeded.files, 5);
        assert_eq!(seeded.copied, 1, "only the other user's pack");
        let copy = mirror
            .path()
            .join("objects/pack")
            .join(pack.file_name().unwrap());
        assert_ne!(
            std::fs::metadata(&copy).unwrap().ino(),
            std::fs::metadata(&pack).unwrap().ino()
        );
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&pack).unwrap());
        assert_eq!(
            complete(&mirror, head(&src), None, &running()).unwrap(),
            Complete::Yes
        );
    }

    #[test]
    fn a_source_missing_an_object_leaves_the_mirror_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        lose(&src, "HEAD:b.json");
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        let err = seed(&mirror, &src, &running()).unwrap_err();
        assert!(err.contains("were not all there"), "{err}");
        assert!(
            mirror.find_commit(head(&src)).is_err(),
            "nothing stays behind"
        );
        assert_eq!(mirror_packs(&mirror), Vec::<PathBuf>::new());
    }

    #[test]
    fn shutdown_stops_seeding_and_takes_back_what_was_placed() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        let cancel = std::sync::atomic::AtomicBool::new(true);
        let ticks = std::sync::atomic::AtomicUsize::new(0);
        let alive = || {
            ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let watch = Watch {
            alive: Some(&alive),
            cancel: &cancel,
        };
        assert_eq!(
            seed(&mirror, &src, &watch),
            Err("stopped by shutdown".to_string())
        );
        assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert_eq!(mirror_packs(&mirror), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_history_missing_a_tree_is_not_complete_past_what_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let repo = Repository::open(&src).unwrap();
        let head = repo.head().unwrap().target().unwrap();
        let first = repo.find_commit(head).unwrap().parent_id(0).unwrap();
        // The second commit's tree is loose: take it away.
        lose(&src, "HEAD^{tree}");
        let repo = Repository::open(&src).unwrap();
        assert_eq!(
            complete(&repo, head, None, &running()).unwrap(),
            Complete::No
        );
        assert_eq!(
            complete(&repo, head, Some(first), &running()).unwrap(),
            Complete::No
        );
        assert_eq!(
            complete(&repo, first, None, &running()).unwrap(),
            Complete::Yes
        );
    }

    /// A long history walk hears a shutdown (every 256 trees) and says it stopped, not that objects lack.
    #[test]
    fn a_history_walk_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let mut parent: Option<Oid> = None;
        for i in 0..300 {
            let blob = repo.blob(format!("{{\"n\": {i}}}").as_bytes()).unwrap();
            let mut tree = repo.treebuilder(None).unwrap();
            tree.insert("m.json", blob, 0o100_644).unwrap();
            let tree = repo.find_tree(tree.write().unwrap()).unwrap();
            let parents: Vec<git2::Commit<'_>> = parent
                .iter()
                .map(|p| repo.find_commit(*p).unwrap())
                .collect();
            let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
            parent = Some(repo.commit(None, &sig, &sig, "c", &tree, &refs).unwrap());
        }
        let head = parent.unwrap();
        assert_eq!(
            complete(&repo, head, None, &running()).unwrap(),
            Complete::Yes
        );
        let cancel = std::sync::atomic::AtomicBool::new(true);
        let stopping = Watch {
            alive: None,
            cancel: &cancel,
        };
        assert_eq!(
            complete(&repo, head, None, &stopping).unwrap(),
            Complete::Stopped
        );
    }

    #[test]
    fn sources_whose_files_are_not_all_their_objects_are_not_seeded_from() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        std::fs::create_dir_all(src.join(".git/objects/info")).unwrap();
        std::fs::write(src.join(".git/objects/info/alternates"), "/elsewhere\n").unwrap();
        assert_eq!(seed(&mirror, &src, &running()), Ok(None));
        assert_eq!(
            seed(&mirror, &dir.path().join("missing"), &running()),
            Ok(None)
        );
        assert_eq!(
            source_path("file:///srv/r.git"),
            Some(PathBuf::from("/srv/r.git"))
        );
        assert_eq!(source_path("https://host/r.git"), None);
    }
}
