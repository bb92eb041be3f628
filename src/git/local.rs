//! A new mirror of a repository on this machine (`file://`) starts from the source's own object files, as
//! `git clone --local` does: hard links where the filesystem allows, copies elsewhere.
//!
//! Why: libgit2's local transport builds a pack in-process, computing deltas (about 60% of a local import's
//! CPU), only for the mirror to index it again. Git never rewrites an object file (packs, their indexes and
//! loose objects are only ever added and deleted), so sharing them is safe. Later polls fetch through the
//! transport as before: only the new objects, a small pack.
//!
//! Seeding is a shortcut, never a requirement: a source it cannot read whole (alternates, a shallow clone, a
//! repack racing the copy) is fetched the usual way, and a mirror it seeded is kept only when every object of
//! the source's history is in it (checked before anything uses the mirror).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};

/// What seeding did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Seeded {
    /// Files placed in the mirror (a pack and its index count as two).
    pub(super) files: usize,
    /// How many of them are copies (the rest are hard links).
    pub(super) copied: usize,
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
pub(super) fn seed(mirror: &Repository, source: &Path) -> Result<Option<Seeded>, String> {
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
    let result = place_all(&objects, &target, &mut placed).and_then(|()| {
        // Checked through a handle of its own: `mirror`'s object cache must not keep an object this check
        // read should the files be taken back.
        let fresh = Repository::open_bare(mirror.path()).map_err(|e| e.message().to_string())?;
        if complete(&fresh, head) {
            Ok(())
        } else {
            Err(format!(
                "the objects of commit {head} and its history were not all there (was the repository repacked meanwhile?)"
            ))
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
fn place_all(objects: &Path, target: &Path, placed: &mut Placed) -> Result<(), String> {
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
        }
    }
    for dir in list(objects)? {
        let Some(fan) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if fan.len() != 2 || !fan.bytes().all(|b| b.is_ascii_hexdigit()) || !dir.is_dir() {
            continue;
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

/// The entries of `dir` (none when it does not exist).
fn list(dir: &Path) -> Result<Vec<PathBuf>, String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().map(|e| e.path()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot list {}: {e}", dir.display())),
    }
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
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let own = std::fs::symlink_metadata(from).is_ok_and(|m| m.is_file() && m.uid() == me);
    if own && std::fs::hard_link(from, to).is_ok() {
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

/// Whether `repo` holds every commit, tree and blob reachable from `head` (submodule entries excepted).
fn complete(repo: &Repository, head: Oid) -> bool {
    let walk = || -> Result<bool, git2::Error> {
        let odb = repo.odb()?;
        let mut commits = repo.revwalk()?;
        commits.push(head)?;
        let (mut trees, mut blobs) = (HashSet::new(), HashSet::new());
        for commit in commits {
            let mut stack = vec![repo.find_commit(commit?)?.tree_id()];
            while let Some(id) = stack.pop() {
                if !trees.insert(id) {
                    continue;
                }
                for entry in repo.find_tree(id)?.iter() {
                    match entry.kind() {
                        Some(ObjectType::Tree) => stack.push(entry.id()),
                        Some(ObjectType::Blob)
                            if blobs.insert(entry.id()) && !odb.exists(entry.id()) =>
                        {
                            return Ok(false);
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(true)
    };
    walk().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
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
        let seeded = seed(&mirror, &src).unwrap().unwrap();
        // One pack and its index, and the second commit's loose commit, tree and blob.
        assert_eq!(
            seeded,
            Seeded {
                files: 5,
                copied: 0
            }
        );
        let head = Oid::from_str(&git(&src, &["rev-parse", "HEAD"])).unwrap();
        assert!(complete(&mirror, head));
        let pack = std::fs::read_dir(src.join(".git/objects/pack"))
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .unwrap();
        let linked = mirror.path().join("objects/pack").join(pack.file_name());
        assert_eq!(
            std::fs::metadata(&linked).unwrap().ino(),
            pack.metadata().unwrap().ino(),
            "a hard link, not a copy"
        );
        // Seeding again places nothing.
        assert_eq!(seed(&mirror, &src).unwrap().unwrap().files, 0);
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
        let pack = std::fs::read_dir(src.join(".git/objects/pack"))
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .unwrap()
            .path();
        std::os::unix::fs::chown(&pack, Some(65534), None).unwrap();
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        let seeded = seed(&mirror, &src).unwrap().unwrap();
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
        let head = Oid::from_str(&git(&src, &["rev-parse", "HEAD"])).unwrap();
        assert!(complete(&mirror, head));
    }

    #[test]
    fn a_source_missing_an_object_leaves_the_mirror_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        // The second commit's blob goes (as if a repack moved it meanwhile).
        let blob = git(&src, &["rev-parse", "HEAD:b.json"]);
        std::fs::remove_file(src.join(".git/objects").join(&blob[..2]).join(&blob[2..])).unwrap();
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        let err = seed(&mirror, &src).unwrap_err();
        assert!(err.contains("were not all there"), "{err}");
        let head = Oid::from_str(&git(&src, &["rev-parse", "HEAD"])).unwrap();
        assert!(mirror.find_commit(head).is_err(), "nothing stays behind");
        let left: Vec<_> = std::fs::read_dir(mirror.path().join("objects/pack"))
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn sources_whose_files_are_not_all_their_objects_are_not_seeded_from() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let mirror = super::super::mirror::init_bare(&dir.path().join("m.git")).unwrap();
        std::fs::create_dir_all(src.join(".git/objects/info")).unwrap();
        std::fs::write(src.join(".git/objects/info/alternates"), "/elsewhere\n").unwrap();
        assert_eq!(seed(&mirror, &src), Ok(None));
        assert_eq!(seed(&mirror, &dir.path().join("missing")), Ok(None));
        assert_eq!(
            source_path("file:///srv/r.git"),
            Some(PathBuf::from("/srv/r.git"))
        );
        assert_eq!(source_path("https://host/r.git"), None);
    }
}
