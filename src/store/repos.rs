//! Repositories and providers: what the next poll needs to know, checks and errors, discovery runs, rate-limit
//! holds, pruning and resetting.

use std::collections::HashMap;

use super::db::{Param, params};
use super::{Doing, Store, StoreError, now_rfc3339};

/// What the catalog holds for a repository, as the next poll needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct RepoState {
    /// The last processed commit of the default branch.
    pub(crate) commit: Option<String>,
    /// The filter fingerprint the catalog was built with.
    pub(crate) settings: Option<String>,
    /// The last poll failed (its error is recorded and not yet cleared by a poll that worked).
    pub(crate) failing: bool,
}

/// A repository as webhook matching sees it.
#[derive(Debug, Clone)]
pub(crate) struct RepoKeyRow {
    pub(crate) id: String,
    pub(crate) provider_id: Option<String>,
    pub(crate) default_branch: Option<String>,
    pub(crate) state: String,
}

/// One discovery run to record.
pub(crate) struct Discovery<'a> {
    pub(crate) provider: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) found: &'a [FoundRepo],
    /// Whether every scope was listed; only then can a missing repository be called removed.
    pub(crate) complete: bool,
}

/// What a discovery run changed.
#[derive(Debug, Default)]
pub(crate) struct DiscoveryChanges {
    /// Missing at two runs in a row: deleted when `prune_removed` is on.
    pub(crate) prunable: Vec<String>,
    /// Why nothing was marked removed, when that was held back.
    pub(crate) note: Option<String>,
}

/// A repository found by discovery, with its id and clone URL resolved.
#[derive(Debug, Clone)]
pub(crate) struct FoundRepo {
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) url: String,
    pub(crate) provider_id: String,
    pub(crate) web_url: Option<String>,
    pub(crate) archived: bool,
    pub(crate) empty: bool,
    /// Also listed in the provider's `repos`: it stays a configured repository.
    pub(crate) configured: bool,
}

impl Store {
    /// One write of a repository's or a provider's row, in a transaction that takes the catalog's
    /// generation row first (PostgreSQL): the order every catalog transaction locks in. Alone, the statement
    /// would lock the row and then (its trigger) the generation row, and deadlock with a discovery or a
    /// step of another instance holding the generation row and waiting for this row.
    fn write_row(&self, sql: &str, params: &[&dyn Param], doing: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = conn.begin_catalog().doing("starting a transaction")?;
        tx.execute(sql, params).doing(doing)?;
        tx.commit().doing(doing)?;
        Ok(())
    }

    /// Make sure the repository has a row, and keep its URL current.
    pub fn ensure_repo(
        &self,
        id: &str,
        provider: &str,
        path: &str,
        url: &str,
    ) -> Result<(), StoreError> {
        self.write_row(
            "INSERT INTO repos (id, provider, path, url) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET provider = excluded.provider, path = excluded.path, url = excluded.url",
            params![id, provider, path, url],
            "registering the repository",
        )
    }

    /// Whether the catalog has a repository of this id (polled or discovered, configured or not).
    pub(crate) fn has_repo(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        conn.query_opt("SELECT 1 FROM repos WHERE id = ?1", params![id], |_| Ok(()))
            .doing("looking for the repository")
            .map(|r| r.is_some())
    }

    pub(crate) fn repo_state(&self, id: &str) -> Result<RepoState, StoreError> {
        let mut conn = self.lock();
        let state = conn
            .query_opt(
                "SELECT commit_id, settings, failures > 0 OR last_error IS NOT NULL FROM repos WHERE id = ?1",
                params![id],
                |r| {
                    Ok(RepoState {
                        commit: r.get(0)?,
                        settings: r.get(1)?,
                        failing: r.get(2)?,
                    })
                },
            )
            .doing("reading the repository state")?;
        Ok(state.unwrap_or_default())
    }

    /// The catalog's files of a repository: path → blob id.
    pub(crate) fn model_blobs(&self, repo_id: &str) -> Result<HashMap<String, String>, StoreError> {
        let rows = self
            .lock()
            .query(
                "SELECT path, blob FROM models WHERE repo_id = ?1",
                params![repo_id],
                |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
            )
            .doing("reading the stored models")?;
        Ok(rows.into_iter().collect())
    }

    /// A poll that found nothing new: note the check (and the branch name, which may have been renamed).
    pub(crate) fn record_check(
        &self,
        repo_id: &str,
        branch: Option<&str>,
        at: &str,
    ) -> Result<(), StoreError> {
        self.write_row(
            "UPDATE repos SET last_check_at = ?2, last_success_at = ?2, default_branch = COALESCE(?3, default_branch),
                 last_error = NULL, last_error_at = NULL, failures = 0,
                 state = CASE WHEN CAST(?3 AS TEXT) IS NULL THEN 'empty' WHEN state = 'empty' THEN 'active' ELSE state END,
                 state_reason = CASE WHEN CAST(?3 AS TEXT) IS NULL THEN 'empty repository: polled until the first push'
                                     WHEN state = 'empty' THEN NULL ELSE state_reason END
             WHERE id = ?1",
            params![repo_id, at, branch],
            "recording the check",
        )
    }

    /// A failed poll: keep all data, note the error, count the failure. Returns the consecutive failures.
    pub(crate) fn record_error(
        &self,
        repo_id: &str,
        error: &str,
        at: &str,
    ) -> Result<u32, StoreError> {
        let mut conn = self.lock();
        let mut tx = conn.begin_catalog().doing("starting a transaction")?;
        let n: i64 = tx
            .query_opt(
                "UPDATE repos SET last_error = ?2, last_error_at = ?3, last_check_at = ?3, failures = failures + 1
                 WHERE id = ?1 RETURNING failures",
                params![repo_id, error, at],
                |r| r.get(0),
            )
            .doing("recording the error")?
            .unwrap_or(1);
        tx.commit().doing("recording the error")?;
        Ok(n.max(0) as u32)
    }

    /// Record one discovery run of a provider in one transaction: the repositories found (with their host
    /// ids, web URLs and states). When the run listed every scope (`complete`) and found something,
    /// repositories no longer found are marked `removed` (data kept); those already `removed` at the previous
    /// run and still missing are returned as ready to prune. Repositories also listed in `repos` only get their
    /// host id and web URL.
    pub(crate) fn record_discovery(
        &self,
        d: &Discovery<'_>,
    ) -> Result<DiscoveryChanges, StoreError> {
        let mut conn = self.lock();
        let mut tx = conn.begin_catalog().doing("starting a transaction")?;
        let now = now_rfc3339();
        for r in d.found {
            if r.configured {
                tx.execute(
                    "INSERT INTO repos (id, provider, path, url, provider_repo_id, web_url, origin)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'configured')
                     ON CONFLICT(id) DO UPDATE SET provider_repo_id = excluded.provider_repo_id,
                         web_url = excluded.web_url, origin = 'configured'",
                    params![r.id, d.provider, r.path, r.url, r.provider_id, r.web_url],
                )
                .doing("recording a discovered repository")?;
                continue;
            }
            let has_commit: bool = tx
                .query_opt(
                    "SELECT commit_id IS NOT NULL FROM repos WHERE id = ?1",
                    params![r.id],
                    |row| row.get(0),
                )
                .doing("reading a repository")?
                .unwrap_or(false);
            let (state, reason) = if r.archived {
                (
                    "archived",
                    Some(format!("archived on {}: not mirrored", d.provider)),
                )
            } else if r.empty && !has_commit {
                (
                    "empty",
                    Some("empty repository: polled until the first push".to_string()),
                )
            } else {
                ("active", None)
            };
            tx.execute(
                "INSERT INTO repos (id, provider, path, url, provider_repo_id, web_url, origin, state, state_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'discovered', ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET url = excluded.url, provider_repo_id = excluded.provider_repo_id,
                     web_url = excluded.web_url, origin = 'discovered', state = excluded.state,
                     state_reason = excluded.state_reason",
                params![r.id, d.provider, r.path, r.url, r.provider_id, r.web_url, state, reason],
            )
            .doing("recording a discovered repository")?;
        }
        let mut changes = DiscoveryChanges::default();
        let found: std::collections::HashSet<&str> =
            d.found.iter().map(|r| r.id.as_str()).collect();
        let known: Vec<(String, String)> = tx
            .query(
                "SELECT id, state FROM repos WHERE provider = ?1 AND origin = 'discovered'",
                params![d.provider],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .doing("reading discovered repositories")?;
        let missing: Vec<(String, String)> = known
            .into_iter()
            .filter(|(id, _)| !found.contains(id.as_str()))
            .collect();
        let listed_any = d.found.iter().any(|r| !r.configured);
        if !d.complete {
            changes.note =
                Some("some scopes could not be listed: no repository was marked removed".into());
        } else if !listed_any && !missing.is_empty() {
            // An empty answer where repositories were before is more likely a token that lost access than a
            // host that deleted everything: remove nothing.
            changes.note = Some(
                "discovery found no repositories at all (did the token lose access?): no repository was marked removed"
                    .into(),
            );
        } else {
            for (id, state) in missing {
                if state == "removed" {
                    changes.prunable.push(id);
                    continue;
                }
                tx.execute(
                    "UPDATE repos SET state = 'removed', state_reason = ?2 WHERE id = ?1",
                    params![id, format!("not found by discovery (or excluded by include/exclude) at {now}; data kept")],
                )
                .doing("marking a repository removed")?;
            }
        }
        tx.execute(
            "INSERT INTO providers (name, kind, last_discovery_at, last_discovery_error, repos_found)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, last_discovery_at = excluded.last_discovery_at,
                 last_discovery_error = excluded.last_discovery_error, repos_found = excluded.repos_found",
            params![d.provider, d.kind, now, changes.note, d.found.len() as i64],
        )
        .doing("recording the discovery")?;
        tx.commit().doing("committing the discovery")?;
        Ok(changes)
    }

    /// Delete a repository's catalog, history, polls, deliveries and statuses (`prune_removed`).
    pub(crate) fn prune_repo(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = conn.begin_catalog().doing("starting a transaction")?;
        for sql in [
            "DELETE FROM polls WHERE repo_id = ?1",
            "DELETE FROM deliveries WHERE repo_id = ?1",
            "DELETE FROM statuses WHERE repo_id = ?1",
            "DELETE FROM repos WHERE id = ?1",
        ] {
            tx.execute(sql, params![id]).doing("pruning a repository")?;
        }
        tx.commit().doing("pruning a repository")?;
        Ok(())
    }

    /// Forget a repository's catalog and history (models, versions, commits, steps) and its processed
    /// commit, in one transaction, so it can be imported again from its mirror (`rebuild`). Polls, deliveries
    /// and the repository's row (host id, state) stay.
    pub(crate) fn reset_catalog(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let mut tx = conn.begin_catalog().doing("starting a transaction")?;
        for sql in [
            "DELETE FROM models WHERE repo_id = ?1",
            "DELETE FROM model_versions WHERE repo_id = ?1",
            "DELETE FROM sync_steps WHERE repo_id = ?1",
            "DELETE FROM commits WHERE repo_id = ?1",
            "UPDATE repos SET commit_id = NULL, settings = NULL, last_change_at = NULL WHERE id = ?1",
        ] {
            tx.execute(sql, params![id]).doing("clearing the catalog")?;
        }
        tx.commit().doing("clearing the catalog")?;
        Ok(())
    }

    /// A provider's rate-limit hold as recorded (by this or another process), if it has not passed.
    pub(crate) fn provider_hold(
        &self,
        provider: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.lock()
            .query_opt(
                "SELECT held_until, COALESCE(held_reason, '') FROM providers WHERE name = ?1 AND held_until > ?2",
                params![provider, now_rfc3339()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .doing("reading the rate-limit hold")
    }

    /// A failed discovery run: nothing about the repositories changes.
    pub(crate) fn record_discovery_error(
        &self,
        provider: &str,
        kind: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.write_row(
            "INSERT INTO providers (name, kind, last_discovery_at, last_discovery_error) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET last_discovery_at = excluded.last_discovery_at,
                 last_discovery_error = excluded.last_discovery_error",
            params![provider, kind, now_rfc3339(), error],
            "recording the discovery error",
        )
    }

    /// Note (or clear, with `None`) that a provider is held back by rate limits.
    pub(crate) fn record_hold(
        &self,
        provider: &str,
        kind: &str,
        hold: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        self.write_row(
            "INSERT INTO providers (name, kind, held_until, held_reason) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET held_until = excluded.held_until, held_reason = excluded.held_reason",
            params![provider, kind, hold.map(|h| h.0), hold.map(|h| h.1)],
            "recording the rate-limit hold",
        )
    }

    /// The discovered repositories of a provider that are mirrored (not archived or removed): (path, url).
    pub(crate) fn discovered_repos(
        &self,
        provider: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.lock()
            .query(
                "SELECT path, url FROM repos WHERE provider = ?1 AND origin = 'discovered'
                 AND state IN ('active', 'empty') ORDER BY id",
                params![provider],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .doing("reading discovered repositories")
    }

    /// What webhook matching needs, read through a connection of its own (never waiting behind a write
    /// transaction, which WAL lets readers do).
    pub(crate) fn repos_of_provider_reader(
        &self,
        provider: &str,
    ) -> Result<Vec<RepoKeyRow>, StoreError> {
        self.read_aside(|conn| {
            conn.query(
                "SELECT id, provider_repo_id, default_branch, state FROM repos WHERE provider = ?1",
                params![provider],
                |r| {
                    Ok(RepoKeyRow {
                        id: r.get(0)?,
                        provider_id: r.get(1)?,
                        default_branch: r.get(2)?,
                        state: r.get(3)?,
                    })
                },
            )
            .doing("reading repositories")
        })
    }
}
