//! The one query layer of the catalog: what the command line's `--json` prints and what the web catalog's
//! API and pages show come from the functions here, so the two always agree. Each answer is a plain
//! serialisable value; the command line renders it as JSON or text, the web catalog as JSON or HTML.

mod versions;

use serde::Serialize;

use crate::config::{Config, ProviderConfig, RepoConfig};
use crate::model::diff::{self, ModelDiff};
use crate::model::properties;
use crate::model::{Model, Parsed};
use crate::store::{
    EventRow, ModelRow, RepoStatus, SearchHit, Store, StoreError, VersionRow, fts_query,
};
pub(crate) use versions::{ModelFile, VersionError, Versions};

/// Why a question about the catalog has no answer. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("unknown repository `{0}`; `modelmirror status` lists the configured ones")]
    UnknownRepo(String),
    /// Nothing is there: no such path, version or commit.
    #[error("{0}")]
    NotFound(String),
    /// A question that cannot be answered as asked (an empty search, a search FTS5 cannot read, a model that
    /// is not readable at that version).
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Version(#[from] VersionError),
}

/// A version of a model for people and `--json`: `change` says `renamed from …` for renames.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HistoryRow {
    pub(crate) commit: String,
    pub(crate) author: Option<String>,
    pub(crate) time: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) blob: Option<String>,
    pub(crate) change: String,
    pub(crate) path: String,
    pub(crate) entities: Option<i64>,
    pub(crate) attributes: Option<i64>,
    pub(crate) error: Option<String>,
}

/// One side of a comparison.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Version {
    pub(crate) commit: String,
    pub(crate) blob: String,
    pub(crate) path: String,
}

/// What changed inside a model between two versions (`changes`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Changes {
    pub(crate) repo: String,
    pub(crate) from: Version,
    pub(crate) to: Version,
    #[serde(flatten)]
    pub(crate) diff: ModelDiff,
}

/// One model in full at one version (`show`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelVersion {
    pub(crate) repo: String,
    pub(crate) path: String,
    pub(crate) commit: String,
    pub(crate) blob: String,
    pub(crate) model: Model,
}

/// The catalog as one configuration and one database see it.
pub(crate) struct Catalog<'a> {
    pub(crate) config: &'a Config,
    pub(crate) store: &'a Store,
}

impl Catalog<'_> {
    /// A repository by id: configured, or discovered earlier (known to the database).
    pub(crate) fn find_repo(&self, id: &str) -> Result<RepoConfig, QueryError> {
        if let Some(r) = self.config.repos.iter().find(|r| r.id == id) {
            return Ok(r.clone());
        }
        for p in &self.config.providers {
            if let Some(r) = discovered_repos(self.store, p)?
                .into_iter()
                .find(|r| r.id == id)
            {
                return Ok(r);
            }
        }
        Err(QueryError::UnknownRepo(id.to_string()))
    }

    /// Every repository (`status`): see [`repos`].
    pub(crate) fn repos(&self) -> Result<Vec<RepoStatus>, QueryError> {
        repos(self.store, Some(self.config))
    }

    /// A repository named as a filter must be one the configuration or the catalog knows: a typo is an
    /// error, not an empty answer.
    fn known(&self, repo: Option<&str>) -> Result<(), QueryError> {
        match repo {
            Some(id)
                if !self.store.has_repo(id)? && !self.config.repos.iter().any(|r| r.id == id) =>
            {
                Err(QueryError::UnknownRepo(id.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// The models in the catalog, of one repository or all (`models`).
    pub(crate) fn models(&self, repo: Option<&str>) -> Result<Vec<ModelRow>, QueryError> {
        self.known(repo)?;
        Ok(self.store.models(repo)?)
    }

    /// One model's current row (its status and error included), when the catalog has it.
    pub(crate) fn model_row(&self, repo: &str, path: &str) -> Result<Option<ModelRow>, QueryError> {
        Ok(self.store.model_row(repo, path)?)
    }

    /// Full-text search (`search`): plain words, or FTS5 syntax. Matched words in the snippets are between
    /// `[` and `]`.
    pub(crate) fn search(
        &self,
        query: &str,
        repo: Option<&str>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, QueryError> {
        self.search_marked(query, repo, kind, limit, ("[", "]"))
    }

    /// [`Catalog::search`] with the matched words between `marks` (for a renderer whose marks cannot be
    /// confused with the text).
    pub(crate) fn search_marked(
        &self,
        query: &str,
        repo: Option<&str>,
        kind: Option<&str>,
        limit: usize,
        marks: (&str, &str),
    ) -> Result<Vec<SearchHit>, QueryError> {
        if fts_query(query).trim().is_empty() {
            return Err(QueryError::BadRequest(
                "search: give some words to look for".into(),
            ));
        }
        self.known(repo)?;
        self.store
            .search_marked(query, repo, kind, limit, marks)
            .map_err(|e| match e {
                StoreError::Query(m) => QueryError::BadRequest(format!("search: {m}")),
                other => QueryError::Store(other),
            })
    }

    /// Every version of one model, newest first, following renames (`history`).
    pub(crate) fn history(&self, repo: &str, path: &str) -> Result<Vec<HistoryRow>, QueryError> {
        let versions = self.store.history(repo, path)?;
        if versions.is_empty() {
            return Err(QueryError::NotFound(format!(
                "no history for {path} in {repo}: `modelmirror models --repo {repo}` lists the paths"
            )));
        }
        Ok(versions.into_iter().map(history_row).collect())
    }

    /// Recent deliveries, polls and commit statuses, newest first (`events`).
    pub(crate) fn events(
        &self,
        repo: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRow>, QueryError> {
        self.known(repo)?;
        Ok(self.store.events(repo, limit)?)
    }

    /// One model in full, at `commit` (an id or prefix) or its newest processed version (`show`).
    pub(crate) fn model(
        &self,
        repo_id: &str,
        path: &str,
        commit: Option<&str>,
    ) -> Result<ModelVersion, QueryError> {
        let repo = self.find_repo(repo_id)?;
        let commit = match commit {
            Some(c) => c.to_string(),
            None => self
                .store
                .model_row(repo_id, path)?
                .map(|m| m.commit)
                .ok_or_else(|| {
                    QueryError::NotFound(format!(
                        "{path} is not in the catalog of {repo_id}: `modelmirror models --repo {repo_id}` lists the paths, or give --commit"
                    ))
                })?,
        };
        let mirror = Versions::open(self.config, &repo)?;
        let (model, commit, blob) = load_model(&mirror, &repo, &commit, path)?;
        Ok(ModelVersion {
            repo: repo_id.to_string(),
            path: path.to_string(),
            commit,
            blob,
            model,
        })
    }

    /// What changed inside a model between two versions (`changes`): the versions in force at `from` and
    /// `to` (any commit the mirror has), by default the last two.
    pub(crate) fn changes(
        &self,
        repo_id: &str,
        path: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Changes, QueryError> {
        let repo = self.find_repo(repo_id)?;
        // Newest first, following renames; "renamed to" rows are where the model left this name.
        let versions: Vec<VersionRow> = self
            .store
            .history(repo_id, path)?
            .into_iter()
            .filter(|v| !v.change.starts_with("renamed to"))
            .collect();
        if versions.is_empty() {
            return Err(QueryError::NotFound(format!(
                "no versions of {path} in {repo_id}: `modelmirror history` shows what there is"
            )));
        }
        // The mirror is opened only where it is needed, so the catalog's own answers come first.
        let lookup = match from.is_some() || to.is_some() {
            true => Some(Versions::open(self.config, &repo)?),
            false => None,
        };
        // The version in force at a commit: the newest version made at that commit or before it.
        let version_at = |rev: &str| -> Result<usize, QueryError> {
            let Some(mirror) = &lookup else {
                return Err(QueryError::NotFound(format!(
                    "{path}: no version at commit {rev}"
                )));
            };
            let full = mirror.resolve(rev)?;
            versions
                .iter()
                .position(|v| mirror.is_at_or_before(&v.commit, &full))
                .ok_or_else(|| {
                    QueryError::NotFound(format!("{path} did not exist yet at commit {rev}"))
                })
        };
        let usable = |i: usize, rev: &str| -> Result<(String, String), QueryError> {
            let v = &versions[i];
            if v.blob.is_none() {
                return Err(QueryError::NotFound(format!(
                    "{path} was deleted at commit {} (asked: {rev})",
                    short(&v.commit)
                )));
            }
            Ok((v.commit.clone(), v.path.clone()))
        };
        let to_i = match to {
            Some(c) => version_at(c)?,
            None => versions.iter().position(|v| v.blob.is_some()).unwrap_or(0),
        };
        let to_v = usable(to_i, to.unwrap_or("the newest version"))?;
        let from_v = match from {
            Some(c) => usable(version_at(c)?, c)?,
            None => match versions.get(to_i + 1) {
                Some(v) if v.blob.is_some() => (v.commit.clone(), v.path.clone()),
                Some(_) => {
                    return Err(QueryError::NotFound(format!(
                        "{path} in {repo_id} was deleted before this version and added again: nothing earlier to compare (give --from COMMIT)"
                    )));
                }
                None => {
                    return Err(QueryError::NotFound(format!(
                        "{path} in {repo_id} has only one version: nothing to compare (give --from COMMIT)"
                    )));
                }
            },
        };
        let mirror = match lookup {
            Some(m) => m,
            None => Versions::open(self.config, &repo)?,
        };
        let (old, old_file, old_commit, old_blob) =
            load_model_file(&mirror, &repo, &from_v.0, &from_v.1)?;
        let (new, new_file, new_commit, new_blob) =
            load_model_file(&mirror, &repo, &to_v.0, &to_v.1)?;
        let mut diff = diff::diff(&old, &new);
        // Compared property by property as the newer version's format reads files.
        if let (Some(format), Some(a), Some(b)) =
            (new_file.format, &old_file.bytes, &new_file.bytes)
        {
            diff.properties_changed = properties::properties_changed(
                format,
                properties::Version {
                    model: &old,
                    bytes: a,
                },
                properties::Version {
                    model: &new,
                    bytes: b,
                },
            )
            .map_err(|e| {
                QueryError::BadRequest(format!(
                    "{repo_id}: {path} cannot be compared property by property: {e}"
                ))
            })?;
        }
        Ok(Changes {
            repo: repo_id.to_string(),
            from: Version {
                commit: old_commit,
                blob: old_blob,
                path: from_v.1,
            },
            to: Version {
                commit: new_commit,
                blob: new_blob,
                path: to_v.1,
            },
            diff,
        })
    }
}

/// The repositories of `provider` that earlier discovery runs recorded as mirrored (not archived or removed).
pub(crate) fn discovered_repos(
    store: &Store,
    provider: &ProviderConfig,
) -> Result<Vec<RepoConfig>, StoreError> {
    Ok(store
        .discovered_repos(&provider.name)?
        .iter()
        .map(|(path, url)| provider.repo(path, url))
        .collect())
}

/// The state of every repository the database knows, and of configured ones never polled, sorted by id.
/// With the configuration (`None` when it does not load), a repository it no longer names is marked
/// `unconfigured`.
pub(crate) fn repos(store: &Store, config: Option<&Config>) -> Result<Vec<RepoStatus>, QueryError> {
    let mut rows = store.status()?;
    if let Some(config) = config {
        for row in rows.iter_mut().filter(|r| r.state != "removed") {
            let provider = row.repo.split('/').next().unwrap_or_default();
            let reason = match config.providers.iter().find(|p| p.name == provider) {
                None => Some(format!(
                    "provider `{provider}` is not in the configuration; its data is kept"
                )),
                // Listed in `repos` once (discovered ones come and go with discovery, which marks them).
                Some(_)
                    if row.origin == "configured"
                        && !config.repos.iter().any(|c| c.id == row.repo) =>
                {
                    Some(format!(
                        "not in the `repos` of provider `{provider}` any more; its data is kept"
                    ))
                }
                Some(_) => None,
            };
            if let Some(reason) = reason {
                row.state = "unconfigured".into();
                row.state_reason = Some(reason);
            }
        }
    }
    let configured = config.map_or(&[][..], |c| &c.repos[..]);
    // Configured repositories that were never polled are shown too.
    for repo in configured {
        if !rows.iter().any(|r| r.repo == repo.id) {
            rows.push(RepoStatus {
                repo: repo.id.clone(),
                url: repo.url.clone(),
                state: "active".into(),
                origin: "configured".into(),
                state_reason: Some("not polled yet".into()),
                provider_id: None,
                web_url: None,
                held_until: None,
                held_reason: None,
                instance: None,
                default_branch: None,
                commit: None,
                last_check_at: None,
                last_success_at: None,
                last_change_at: None,
                models: 0,
                errors: 0,
                last_error: None,
            });
        }
    }
    rows.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(rows)
}

fn history_row(v: VersionRow) -> HistoryRow {
    let change = match (&*v.change, &v.old_path) {
        ("renamed", Some(old)) => format!("renamed from {old}"),
        (c, _) => c.to_string(),
    };
    HistoryRow {
        commit: v.commit,
        author: v.author,
        time: v.time,
        message: v.message,
        blob: v.blob,
        change,
        path: v.path,
        entities: v.entities,
        attributes: v.attributes,
        error: v.error,
    }
}

/// The model at a version, or why it cannot be shown.
fn load_model(
    versions: &Versions<'_>,
    repo: &RepoConfig,
    commit: &str,
    path: &str,
) -> Result<(Model, String, String), QueryError> {
    let (parsed, commit, blob) = versions.model_at(commit, path)?;
    model_or_error(parsed, repo, commit, blob, path)
}

/// [`load_model`], with the file's format and bytes.
fn load_model_file(
    versions: &Versions<'_>,
    repo: &RepoConfig,
    commit: &str,
    path: &str,
) -> Result<(Model, ModelFile, String, String), QueryError> {
    let (mut file, commit, blob) = versions.file_at(commit, path, true)?;
    let parsed = std::mem::replace(&mut file.parsed, Parsed::NotModel);
    let (model, commit, blob) = model_or_error(parsed, repo, commit, blob, path)?;
    Ok((model, file, commit, blob))
}

fn model_or_error(
    parsed: Parsed,
    repo: &RepoConfig,
    commit: String,
    blob: String,
    path: &str,
) -> Result<(Model, String, String), QueryError> {
    match parsed {
        Parsed::Model(m) => Ok((m, commit, blob)),
        Parsed::Invalid(e) => Err(QueryError::BadRequest(format!(
            "{}: {path} at commit {commit} is not a readable model: {e}",
            repo.id
        ))),
        Parsed::NotModel => Err(QueryError::BadRequest(format!(
            "{}: {path} at commit {commit} is not a model",
            repo.id
        ))),
    }
}

/// One line saying what a delivery or a poll was and what came of it (`events`).
pub(crate) fn event_detail(e: &EventRow) -> String {
    if e.kind == "status" {
        let commit = e.commit.as_deref().unwrap_or("?");
        let mut d = format!(
            "{} status {} on {} → {}",
            e.provider.as_deref().unwrap_or("?"),
            e.state.as_deref().unwrap_or("?"),
            commit.get(..12).unwrap_or(commit),
            e.outcome.as_deref().unwrap_or("?")
        );
        if let Some(n) = e.attempts.filter(|n| *n > 1) {
            d.push_str(&format!(" after {n} attempts"));
        }
        if let Some(text) = &e.description {
            d.push_str(&format!(": {text}"));
        }
        if let Some(err) = &e.error {
            d.push_str(&format!(" — {err}"));
        }
        return d;
    }
    if e.kind == "delivery" {
        let mut d = format!(
            "{} {}{} → {}",
            e.provider.as_deref().unwrap_or("?"),
            e.event.as_deref().unwrap_or("?"),
            e.ref_name
                .as_deref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default(),
            e.outcome.as_deref().unwrap_or("?")
        );
        if let Some(p) = e.poll_id {
            d.push_str(&format!(" (poll {p})"));
        }
        if let Some(r) = &e.reason {
            d.push_str(&format!(": {r}"));
        }
        if let Some(id) = &e.delivery_id {
            d.push_str(&format!(" [delivery {id}]"));
        }
        d
    } else {
        let mut d = format!(
            "poll {} ({}): {} in {} ms",
            e.id,
            e.trigger.as_deref().unwrap_or("?"),
            e.result.as_deref().unwrap_or("?"),
            e.duration_ms.unwrap_or(0)
        );
        if e.result.as_deref() == Some("updated") {
            d.push_str(&format!(
                ", {} commits, +{} ~{} -{} models",
                e.commits.unwrap_or(0),
                e.models_added.unwrap_or(0),
                e.models_modified.unwrap_or(0),
                e.models_deleted.unwrap_or(0)
            ));
        }
        if let Some(err) = &e.error {
            d.push_str(&format!(": {err}"));
        }
        d
    }
}

/// The first 12 characters of a commit id, as people see it.
pub(crate) fn short(c: &str) -> &str {
    c.get(..12).unwrap_or(c)
}
