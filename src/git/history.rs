//! Walking a mirror's history: first-parent chains, ancestry, and who made a commit.

use chrono::{DateTime, SecondsFormat, Utc};
use git2::{Oid, Repository, Sort};

use super::{GitError, read_err};

/// Commits from just after `from` up to and including `to`, oldest first, along the first-parent chain of
/// `to`. `None` when `from` is not on that chain (history rewritten, or merged in from a side branch).
/// With `from = None`, the whole first-parent history from the root commit.
pub(crate) fn first_parent_path(
    repo: &Repository,
    from: Option<Oid>,
    to: Oid,
) -> Result<Option<Vec<Oid>>, GitError> {
    let mut walk = repo.revwalk().map_err(read_err(repo, "history"))?;
    walk.simplify_first_parent()
        .map_err(read_err(repo, "history"))?;
    walk.set_sorting(Sort::NONE)
        .map_err(read_err(repo, "history"))?;
    walk.push(to)
        .map_err(read_err(repo, format!("commit {to}")))?;
    let mut chain = Vec::new();
    for oid in walk {
        let oid = oid.map_err(read_err(repo, format!("history of {to}")))?;
        if Some(oid) == from {
            chain.reverse();
            return Ok(Some(chain));
        }
        chain.push(oid);
    }
    if from.is_some() {
        return Ok(None);
    }
    chain.reverse();
    Ok(Some(chain))
}

/// Whether `ancestor` is an ancestor of `commit` (both present in the mirror).
pub(crate) fn is_ancestor(repo: &Repository, ancestor: Oid, commit: Oid) -> bool {
    repo.graph_descendant_of(commit, ancestor).unwrap_or(false)
}

/// The commit a revision names (an id, an unambiguous prefix, or anything else git understands).
pub(crate) fn resolve_commit(repo: &Repository, rev: &str) -> Result<Oid, GitError> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| GitError::UnknownCommit {
            rev: rev.to_string(),
            message: e.message().to_string(),
        })
}

/// Whether the mirror holds this commit.
pub(crate) fn has_commit(repo: &Repository, oid: Oid) -> bool {
    repo.find_commit(oid).is_ok()
}

/// The first parent of a commit, if any.
pub(crate) fn first_parent(repo: &Repository, oid: Oid) -> Result<Option<Oid>, GitError> {
    let commit = repo
        .find_commit(oid)
        .map_err(read_err(repo, format!("commit {oid}")))?;
    Ok(commit.parent_ids().next())
}

/// Who made a commit, when, and why.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub id: String,
    pub author_name: String,
    pub author_email: String,
    /// RFC 3339, UTC.
    pub authored_at: String,
    pub committed_at: String,
    pub message: String,
}

pub(crate) fn commit_info(repo: &Repository, oid: Oid) -> Result<CommitInfo, GitError> {
    let c = repo
        .find_commit(oid)
        .map_err(read_err(repo, format!("commit {oid}")))?;
    let author = c.author();
    let rfc3339 = |t: git2::Time| {
        DateTime::<Utc>::from_timestamp(t.seconds(), 0)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    Ok(CommitInfo {
        id: oid.to_string(),
        author_name: String::from_utf8_lossy(author.name_bytes()).into_owned(),
        author_email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
        authored_at: rfc3339(author.when()),
        committed_at: rfc3339(c.committer().when()),
        message: String::from_utf8_lossy(c.message_bytes()).into_owned(),
    })
}
