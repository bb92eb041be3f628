//! What a commit's tree holds and how two trees differ, limited to the files a filter considers; reading
//! blobs.

use std::path::Path;

use git2::{Delta, DiffFile, DiffFindOptions, DiffOptions, Oid, Repository};

use super::{GitError, read_err};
use crate::hubignore::HubIgnore;
use crate::model::FileFilter;

/// One file change between two trees, limited to the files the filter considers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Added { path: String, blob: Oid },
    Modified { path: String, blob: Oid },
    Deleted { path: String },
    Renamed { from: String, to: String, blob: Oid },
}

/// Regular files only (modes 100644, 100755, and the old 100664): no symlinks, no submodules.
fn is_regular_file(file: &DiffFile<'_>) -> bool {
    u32::from(file.mode()) & 0o170000 == 0o100000
}

/// A path as git stores it (`/`-separated bytes), as text. Names that are not UTF-8 are skipped — in diffs
/// and tree listings alike, so both always agree — with a warning.
fn utf8_path(file: &DiffFile<'_>) -> Option<String> {
    let bytes = file.path_bytes()?;
    match std::str::from_utf8(bytes) {
        Ok(p) => Some(p.to_string()),
        Err(_) => {
            tracing::warn!(
                "skipping a file whose name is not UTF-8: {:?}",
                String::from_utf8_lossy(bytes)
            );
            None
        }
    }
}

/// The path of a side of a delta if the filter considers that file.
fn considered(file: &DiffFile<'_>, filter: &FileFilter) -> Option<String> {
    if !is_regular_file(file) {
        return None;
    }
    utf8_path(file).filter(|p| filter.matches(p))
}

fn tree_of(repo: &Repository, commit: Oid) -> Result<git2::Tree<'_>, GitError> {
    repo.find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(read_err(repo, format!("tree of commit {commit}")))
}

fn plain_diff<'r>(
    repo: &'r Repository,
    old: Option<&git2::Tree<'_>>,
    new: &git2::Tree<'_>,
    paths: &[&str],
) -> Result<git2::Diff<'r>, git2::Error> {
    let mut opts = DiffOptions::new();
    opts.skip_binary_check(true).ignore_submodules(true);
    if !paths.is_empty() {
        opts.disable_pathspec_match(true);
        for p in paths {
            opts.pathspec(*p);
        }
    }
    repo.diff_tree_to_tree(old, Some(new), Some(&mut opts))
}

/// The changes from `old`'s tree (or the empty tree) to `new`'s tree, limited to the files the filter
/// considers, with renames detected. libgit2 skips subtrees whose ids are equal, so the cost follows the size
/// of the change, not of the repository. Renames are paired by equal blob ids first; only the files left over
/// that the filter considers and that are within `max_model_bytes` are compared for similarity, so no other
/// file is ever loaded.
pub(crate) fn diff_commits(
    repo: &Repository,
    old: Option<Oid>,
    new: Oid,
    filter: &FileFilter,
) -> Result<Vec<Change>, GitError> {
    let new_tree = tree_of(repo, new)?;
    let old_tree = old.map(|o| tree_of(repo, o)).transpose()?;
    let diff = plain_diff(repo, old_tree.as_ref(), &new_tree, &[])
        .map_err(read_err(repo, format!("diff to commit {new}")))?;
    let mut changes = Vec::new();
    let mut added: Vec<(String, Oid)> = Vec::new();
    let mut deleted: Vec<(String, Oid)> = Vec::new();
    for delta in diff.deltas() {
        let (old_file, new_file) = (delta.old_file(), delta.new_file());
        match delta.status() {
            Delta::Added | Delta::Copied => {
                if let Some(p) = considered(&new_file, filter) {
                    added.push((p, new_file.id()));
                }
            }
            Delta::Deleted => {
                if let Some(p) = considered(&old_file, filter) {
                    deleted.push((p, old_file.id()));
                }
            }
            Delta::Modified | Delta::Typechange => {
                match (considered(&old_file, filter), considered(&new_file, filter)) {
                    (_, Some(p)) => changes.push(Change::Modified {
                        path: p,
                        blob: new_file.id(),
                    }),
                    (Some(p), None) => changes.push(Change::Deleted { path: p }),
                    (None, None) => {}
                }
            }
            _ => {}
        }
    }
    // Exact renames: the same blob under a new path.
    let mut renamed = Vec::new();
    added.retain(
        |(to, blob)| match deleted.iter().position(|(_, b)| b == blob) {
            Some(i) => {
                let (from, _) = deleted.remove(i);
                renamed.push(Change::Renamed {
                    from,
                    to: to.clone(),
                    blob: *blob,
                });
                false
            }
            None => true,
        },
    );
    // Renames with edits: compare only the remaining candidates, within the size limit.
    if !added.is_empty() && !deleted.is_empty() {
        let paths: Vec<&str> = added
            .iter()
            .chain(deleted.iter())
            .filter(|(_, b)| blob_size(repo, *b).is_ok_and(|s| s <= filter.max_model_bytes))
            .map(|(p, _)| p.as_str())
            .collect();
        let mut similar = plain_diff(repo, old_tree.as_ref(), &new_tree, &paths)
            .map_err(read_err(repo, format!("diff to commit {new}")))?;
        let mut find = DiffFindOptions::new();
        find.renames(true).rename_limit(1000);
        similar
            .find_similar(Some(&mut find))
            .map_err(read_err(repo, format!("renames in commit {new}")))?;
        for delta in similar.deltas().filter(|d| d.status() == Delta::Renamed) {
            let (Some(from), Some(to)) =
                (utf8_path(&delta.old_file()), utf8_path(&delta.new_file()))
            else {
                continue;
            };
            let (Some(di), Some(ai)) = (
                deleted.iter().position(|(p, _)| *p == from),
                added.iter().position(|(p, _)| *p == to),
            ) else {
                continue;
            };
            deleted.remove(di);
            let (to, blob) = added.remove(ai);
            renamed.push(Change::Renamed { from, to, blob });
        }
    }
    changes.extend(
        deleted
            .into_iter()
            .map(|(path, _)| Change::Deleted { path }),
    );
    changes.extend(renamed);
    changes.extend(
        added
            .into_iter()
            .map(|(path, blob)| Change::Added { path, blob }),
    );
    Ok(changes)
}

/// Every file the filter considers in a commit's tree: path → blob id. Listed through the same diff
/// machinery as [`diff_commits`] (against the empty tree), so both see exactly the same files.
pub(crate) fn tree_files(
    repo: &Repository,
    commit: Oid,
    filter: &FileFilter,
) -> Result<Vec<(String, Oid)>, GitError> {
    let tree = tree_of(repo, commit)?;
    let diff = plain_diff(repo, None, &tree, &[])
        .map_err(read_err(repo, format!("tree of commit {commit}")))?;
    Ok(diff
        .deltas()
        .filter_map(|d| {
            let f = d.new_file();
            considered(&f, filter).map(|p| (p, f.id()))
        })
        .collect())
}

/// The blob of a file at the root of a commit's tree (e.g. `.hubignore`), if it is there.
pub(crate) fn root_blob(
    repo: &Repository,
    commit: Oid,
    name: &str,
) -> Result<Option<Oid>, GitError> {
    let tree = tree_of(repo, commit)?;
    Ok(tree
        .get_name(name)
        .filter(|e| e.kind() == Some(git2::ObjectType::Blob))
        .map(|e| e.id()))
}

/// The mirror's default branch (short name) and its commit, if it has one.
pub(crate) fn mirror_head(repo: &Repository) -> Option<(String, Oid)> {
    let head = repo.find_reference("HEAD").ok()?;
    let target = head.symbolic_target().ok().flatten()?.to_string();
    let commit = repo.refname_to_id(&target).ok()?;
    Some((
        target
            .strip_prefix("refs/heads/")
            .unwrap_or(&target)
            .to_string(),
        commit,
    ))
}

/// The blob at `path` in `commit` (a full id or an unambiguous prefix): the resolved commit and the blob.
pub(crate) fn blob_at(
    repo: &Repository,
    commit: &str,
    path: &str,
) -> Result<Option<(Oid, Oid)>, GitError> {
    // A commit the mirror does not have is the caller's mistake, not damage to the mirror.
    let id = super::resolve_commit(repo, commit)?;
    let commit = repo
        .find_commit(id)
        .map_err(read_err(repo, format!("commit {id}")))?;
    let tree = commit
        .tree()
        .map_err(read_err(repo, format!("tree of commit {}", commit.id())))?;
    match tree.get_path(Path::new(path)) {
        Ok(entry) if entry.kind() == Some(git2::ObjectType::Blob) => {
            Ok(Some((commit.id(), entry.id())))
        }
        _ => Ok(None),
    }
}

/// A blob's size, read from the object header without loading the object.
pub(crate) fn blob_size(repo: &Repository, blob: Oid) -> Result<u64, GitError> {
    let odb = repo.odb().map_err(read_err(repo, "object database"))?;
    let (size, _) = odb
        .read_header(blob)
        .map_err(read_err(repo, format!("blob {blob}")))?;
    Ok(size as u64)
}

/// A blob's content.
pub(crate) fn read_blob(repo: &Repository, blob: Oid) -> Result<Vec<u8>, GitError> {
    with_blob(repo, blob, <[u8]>::to_vec)
}

/// The `.hubignore` rules of a `.hubignore` blob (none without one), and the warnings its lines gave.
pub(crate) fn hubignore(
    repo: &Repository,
    blob: Option<Oid>,
) -> Result<(HubIgnore, Vec<String>), GitError> {
    let Some(blob) = blob else {
        return Ok((HubIgnore::none(), Vec::new()));
    };
    let bytes = read_blob(repo, blob)?;
    Ok(HubIgnore::parse(&String::from_utf8_lossy(&bytes)))
}

/// `f` applied to a blob's content, without copying it (a large model is then held once, not twice).
pub(crate) fn with_blob<T>(
    repo: &Repository,
    blob: Oid,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T, GitError> {
    let b = repo
        .find_blob(blob)
        .map_err(read_err(repo, format!("blob {blob}")))?;
    Ok(f(b.content()))
}
