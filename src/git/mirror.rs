//! The bare mirror on disk: opened for a poll under an advisory lock, cleaned of what a killed process left,
//! deleted when a repository is pruned.

use std::path::Path;

use git2::Repository;

use super::GitError;

pub(super) fn mirror_error(path: &Path, e: git2::Error) -> GitError {
    // Polls hold the mirror's own lock, so a libgit2 lock file in the way is one `remove_leftovers` could
    // not remove: report it (it would otherwise stop every poll), never take it for a busy mirror.
    if e.code() == git2::ErrorCode::Locked {
        return GitError::StaleLock {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        };
    }
    GitError::Mirror {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    }
}

/// A bare mirror opened for a poll. This process holds it exclusively while the value lives: an advisory
/// lock (`flock`) on `modelmirror.flock` inside it, which the kernel releases when the process ends, however it
/// ends. Derefs to the libgit2 repository.
pub(crate) struct Mirror {
    repo: Repository,
    /// Held, never read: dropping it unlocks the mirror. `None` where the filesystem has no `flock`.
    _lock: Option<std::fs::File>,
}

impl std::ops::Deref for Mirror {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

/// The file whose advisory lock says "a modelmirror process is using this mirror".
const MIRROR_LOCK: &str = "modelmirror.flock";

/// Take the mirror at `path` (an existing folder) for this process: `Ok(None)` when the filesystem cannot
/// lock files (some network filesystems), which is logged.
fn lock_mirror(path: &Path) -> Result<Option<std::fs::File>, GitError> {
    let lock_err = |what: &str, e: std::io::Error| GitError::MirrorLock {
        path: path.to_path_buf(),
        message: format!("{what} {MIRROR_LOCK}: {e}"),
    };
    let file = path.join(MIRROR_LOCK);
    // A lock needs no write access: an existing file (perhaps made by another user) is opened to read.
    let lock = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .map_err(|e| lock_err("cannot create", e))?,
        Err(e) => return Err(lock_err("cannot open", e)),
    };
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Err(GitError::MirrorBusy {
            path: path.to_path_buf(),
        }),
        // ENOLCK, EOPNOTSUPP: no locks on this filesystem.
        Err(std::fs::TryLockError::Error(e))
            if e.kind() == std::io::ErrorKind::Unsupported
                || matches!(e.raw_os_error(), Some(37 | 95)) =>
        {
            tracing::warn!(
                "{}: the filesystem cannot lock files ({e}); leftovers of an interrupted update are not cleaned up there",
                path.display()
            );
            Ok(None)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(lock_err("cannot lock", e)),
    }
}

/// Open the bare mirror at `path` for a poll, creating it when missing.
///
/// Another modelmirror process using it (a `modelmirror sync` beside the service) gives
/// [`GitError::MirrorBusy`]. Once the lock is held nobody else can be writing the mirror, so what a process
/// killed mid-update left behind is removed (see [`remove_leftovers`]): libgit2 would otherwise refuse every
/// later update because of a stale `config.lock`, or keep a half-received pack forever.
pub(crate) fn open_mirror(path: &Path) -> Result<Mirror, GitError> {
    let mirror_err = |e: git2::Error| mirror_error(path, e);
    std::fs::create_dir_all(path).map_err(|e| GitError::Mirror {
        path: path.to_path_buf(),
        message: format!("cannot create folder: {e}"),
    })?;
    let lock = lock_mirror(path)?;
    if lock.is_some() {
        remove_leftovers(path);
    }
    let repo = if path.join("HEAD").exists() {
        if lock.is_some() {
            prune_templates(path);
        }
        Repository::open_bare(path).map_err(mirror_err)?
    } else {
        // No HEAD: new, or emptied by a `clear` that was cut short; whatever is left goes.
        if lock.is_some() {
            clear(path);
        }
        init_bare(path).map_err(mirror_err)?
    };
    Ok(Mirror { repo, _lock: lock })
}

/// What a mirror made before modelmirror left templates out still holds of them: git's sample hooks,
/// `description`, `info/exclude`. Nothing reads them; removed once, when the mirror is next polled.
fn prune_templates(path: &Path) {
    if let Ok(hooks) = std::fs::read_dir(path.join("hooks")) {
        for hook in hooks.flatten() {
            if hook.file_name().to_string_lossy().ends_with(".sample") {
                let _ = std::fs::remove_file(hook.path());
            }
        }
        let _ = std::fs::remove_dir(path.join("hooks"));
    }
    let _ = std::fs::remove_file(path.join("description"));
    let _ = std::fs::remove_file(path.join("info/exclude"));
    let _ = std::fs::remove_dir(path.join("info"));
}

/// A new bare repository without templates: git's sample hooks, `description` and `info/exclude` are about
/// 100 KB a mirror on disk, which no mirror uses (with 10,000 repositories, a gigabyte).
pub(crate) fn init_bare(path: &Path) -> Result<Repository, git2::Error> {
    let mut opts = git2::RepositoryInitOptions::new();
    opts.bare(true).external_template(false);
    let repo = Repository::init_opts(path, &opts)?;
    // libgit2's own minimal template still writes these; nothing reads them.
    let _ = std::fs::remove_file(path.join("description"));
    let _ = std::fs::remove_dir_all(path.join("hooks"));
    let _ = std::fs::remove_dir_all(path.join("info"));
    // Empty folders git makes when it needs them.
    let _ = std::fs::remove_dir(path.join("objects/info"));
    let _ = std::fs::remove_dir(path.join("refs/tags"));
    Ok(repo)
}

/// Open an existing mirror only to read it (`rebuild`): no lock, nothing changed in it. Objects are only
/// ever added by atomic renames, so reading beside a poll that fetches is safe.
pub(crate) fn open_mirror_to_read(path: &Path) -> Result<Repository, GitError> {
    Repository::open_bare(path).map_err(|e| mirror_error(path, e))
}

/// Delete a mirror (`prune_removed`), once no other process is polling it.
pub(crate) fn delete_mirror(path: &Path) -> Result<(), GitError> {
    if !path.exists() {
        return Ok(());
    }
    // Wait for a poll of another process (a manual `sync`) to end rather than pull the folder from under it.
    if let Ok(lock) = std::fs::File::open(path.join(MIRROR_LOCK)) {
        let _ = lock.lock();
    }
    std::fs::remove_dir_all(path).map_err(|e| GitError::Mirror {
        path: path.to_path_buf(),
        message: format!("cannot delete it: {e}"),
    })
}

/// Empty a mirror this process holds (its lock file stays, and holds): the next [`open_mirror`] makes it
/// anew. For a mirror whose objects cannot be trusted; failures are logged.
pub(super) fn clear(path: &Path) {
    // The branch first: a mirror cut short by a kill keeps no ref to commits whose objects went (a ref makes
    // libgit2's fetch leave out everything reachable from it).
    for first in ["HEAD", "packed-refs"] {
        let _ = std::fs::remove_file(path.join(first));
    }
    let _ = std::fs::remove_dir_all(path.join("refs"));
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name() == MIRROR_LOCK {
            continue;
        }
        let file = entry.path();
        let gone = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&file),
            _ => std::fs::remove_file(&file),
        };
        if let Err(e) = gone {
            tracing::warn!("cannot remove {}: {e}", file.display());
        }
    }
}

/// Remove what an update interrupted by a crash or `kill -9` leaves in a mirror: lock files (`config.lock`,
/// `HEAD.lock`, `packed-refs.lock`, `refs/**/*.lock`, `objects/pack/*.lock`) and libgit2's temporary packs
/// (`objects/pack/pack_git2_*`). Only called while holding the mirror's lock. Failures are logged, not fatal:
/// libgit2 then reports the lock itself.
fn remove_leftovers(path: &Path) {
    fn is_leftover(name: &str) -> bool {
        name.ends_with(".lock") || name.starts_with("pack_git2_")
    }
    let mut dirs = vec![path.to_path_buf(), path.join("objects/pack")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                // Only the refs hierarchy is walked down; the mirror's top level holds no lock folders.
                if file.starts_with(path.join("refs")) {
                    dirs.push(file);
                }
                continue;
            }
            if !entry.file_name().to_str().is_some_and(is_leftover) {
                continue;
            }
            match std::fs::remove_file(&file) {
                Ok(()) => tracing::warn!(
                    "removed {} left in the local mirror by a modelmirror process that stopped mid-update",
                    file.display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", file.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_file_that_cannot_be_made_is_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.git");
        std::fs::create_dir_all(&path).unwrap();
        // A dangling link into a missing folder: neither opened nor created (even as root).
        std::os::unix::fs::symlink(dir.path().join("missing/x"), path.join(MIRROR_LOCK)).unwrap();
        let err = open_mirror(&path).err().unwrap();
        assert!(matches!(err, GitError::MirrorLock { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(MIRROR_LOCK) && text.contains("must own that folder"),
            "{text}"
        );
        assert!(
            !text.contains("delete that folder"),
            "never advises deleting the data: {text}"
        );
    }
    #[test]
    fn a_mirror_is_held_by_one_user_at_a_time_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.git");
        let held = open_mirror(&path).unwrap();
        // A second open, even in this process (flock locks belong to the open file), is refused.
        assert!(matches!(
            open_mirror(&path),
            Err(GitError::MirrorBusy { .. })
        ));
        std::fs::write(path.join("HEAD.lock"), b"").unwrap();
        std::fs::write(path.join("refs/heads/x.lock"), b"").unwrap();
        std::fs::write(path.join("description.keep"), b"").unwrap();
        drop(held);
        let _again = open_mirror(&path).unwrap();
        assert!(!path.join("HEAD.lock").exists());
        assert!(!path.join("refs/heads/x.lock").exists());
        assert!(path.join("description.keep").exists(), "only leftovers go");
        assert!(path.join(MIRROR_LOCK).exists(), "its own lock file stays");
    }
}
