//! How a poll gets from what the catalog holds to the new head: the steps (one per commit along the
//! first-parent chain, or one full comparison), and the file changes `.hubignore` and a comparison make.

use std::collections::HashMap;

use crate::git::{self, Change, GitError, Oid, Repository};
use crate::hubignore::HubIgnore;
use crate::store::RepoState;

/// How to get from what the database holds to the new head.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) steps: Vec<StepKind>,
    /// Why the first step is a full comparison, if it is (`settings-changed`, `history-rewritten`).
    pub(super) note: Option<&'static str>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum StepKind {
    /// Apply the diff from the commit's first parent (or the empty tree) to the commit.
    Diff { parent: Option<Oid>, commit: Oid },
    /// Compare the commit's whole tree with the database.
    Reconcile { commit: Oid },
}

impl StepKind {
    pub(super) fn commit(&self) -> Oid {
        match *self {
            StepKind::Diff { commit, .. } | StepKind::Reconcile { commit } => commit,
        }
    }
}

pub(super) fn plan(
    mirror: &Repository,
    state: &RepoState,
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

pub(super) fn diff_plan(mirror: &Repository, chain: Vec<Oid>, mut parent: Option<Oid>) -> Plan {
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

/// The file at a repository's root that lists models and folders to leave out (gitignore syntax).
pub(super) const HUBIGNORE: &str = crate::hubignore::FILE;

/// The paths a change touches.
pub(super) fn change_paths(c: &Change) -> Vec<String> {
    match c {
        Change::Added { path, .. } | Change::Modified { path, .. } | Change::Deleted { path } => {
            vec![path.clone()]
        }
        Change::Renamed { from, to, .. } => vec![from.clone(), to.clone()],
    }
}

/// The rules of a `.hubignore` blob (none when absent or unreadable).
pub(super) fn hubignore(mirror: &Repository, blob: Option<Oid>, repo_id: &str) -> HubIgnore {
    match git::hubignore(mirror, blob) {
        Ok((rules, warnings)) => {
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
pub(super) fn without_ignored(changes: Vec<Change>, ignore: &HubIgnore) -> Vec<Change> {
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
pub(super) fn reconcile_changes(
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
