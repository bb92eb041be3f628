//! The catalog commands: `models`, `search`, `history`, `changes` and `show`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use super::CliError;
use super::output::{or_dash, print_json, print_table};
use super::versions::Versions;
use crate::config::{Config, RepoConfig};
use crate::model::diff::{self, ModelDiff};
use crate::model::{Model, Parsed};
use crate::service;
use crate::store::{Store, StoreError, fts_query};

/// A repository by id: configured, or discovered earlier (known to the database).
fn find_repo(config: &Config, store: &Store, id: &str) -> Result<RepoConfig, CliError> {
    if let Some(r) = config.repos.iter().find(|r| r.id == id) {
        return Ok(r.clone());
    }
    for p in &config.providers {
        if let Some(r) = service::discovered_repos(store, p)?
            .into_iter()
            .find(|r| r.id == id)
        {
            return Ok(r);
        }
    }
    Err(CliError::UnknownRepo(id.to_string()))
}

pub(super) fn search(
    config: &Config,
    query: &str,
    repo: Option<&str>,
    kind: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let q = fts_query(query);
    if q.trim().is_empty() {
        return Err(CliError::Catalog(
            "search: give some words to look for".into(),
        ));
    }
    let hits = store.search(&q, repo, kind, limit).map_err(|e| match e {
        StoreError::Query(m) => CliError::Catalog(format!("search: {m}")),
        other => CliError::Store(other),
    })?;
    if json {
        print_json(&hits)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = hits
        .iter()
        .map(|h| {
            vec![
                h.kind.clone(),
                h.repo.clone(),
                h.path.clone(),
                or_dash(&h.entity),
                or_dash(&h.attribute),
                h.snippet.replace('\n', " "),
            ]
        })
        .collect();
    print_table(
        &["KIND", "REPO", "PATH", "ENTITY", "ATTRIBUTE", "MATCH"],
        table,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// A version for people and `--json`: `change` says `renamed from …` for renames.
#[derive(Serialize)]
struct HistoryRow<'a> {
    commit: &'a str,
    author: Option<&'a str>,
    time: Option<&'a str>,
    message: Option<&'a str>,
    blob: Option<&'a str>,
    change: String,
    path: &'a str,
    entities: Option<i64>,
    attributes: Option<i64>,
    error: Option<&'a str>,
}

pub(super) fn history(
    config: &Config,
    repo: &str,
    path: &str,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let versions = store.history(repo, path)?;
    if versions.is_empty() {
        return Err(CliError::Catalog(format!(
            "no history for {path} in {repo}: `modelmirror models --repo {repo}` lists the paths"
        )));
    }
    let rows: Vec<HistoryRow<'_>> = versions
        .iter()
        .map(|v| HistoryRow {
            commit: &v.commit,
            author: v.author.as_deref(),
            time: v.time.as_deref(),
            message: v.message.as_deref(),
            blob: v.blob.as_deref(),
            change: match (&*v.change, &v.old_path) {
                ("renamed", Some(old)) => format!("renamed from {old}"),
                (c, _) => c.to_string(),
            },
            path: &v.path,
            entities: v.entities,
            attributes: v.attributes,
            error: v.error.as_deref(),
        })
        .collect();
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|r| {
            vec![
                r.commit.chars().take(12).collect(),
                r.time.unwrap_or("-").to_string(),
                r.author.unwrap_or("-").to_string(),
                r.change.clone(),
                r.attributes.map_or("-".into(), |a| a.to_string()),
                r.message
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "COMMIT",
            "TIME",
            "AUTHOR",
            "CHANGE",
            "ATTRIBUTES",
            "MESSAGE",
        ],
        table,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Load the model at a version, or say why it cannot be shown.
fn load_model(
    versions: &Versions<'_>,
    repo: &RepoConfig,
    commit: &str,
    path: &str,
) -> Result<(Model, String, String), CliError> {
    let (parsed, commit, blob) = versions.model_at(commit, path)?;
    match parsed {
        Parsed::Model(m) => Ok((m, commit, blob)),
        Parsed::Invalid(e) => Err(CliError::Catalog(format!(
            "{}: {path} at commit {commit} is not a readable model: {e}",
            repo.id
        ))),
        Parsed::NotModel => Err(CliError::Catalog(format!(
            "{}: {path} at commit {commit} is not a model",
            repo.id
        ))),
    }
}

#[derive(Serialize)]
struct Version {
    commit: String,
    blob: String,
    path: String,
}

#[derive(Serialize)]
struct ChangesOut {
    repo: String,
    from: Version,
    to: Version,
    #[serde(flatten)]
    diff: ModelDiff,
}

pub(super) fn changes(
    config: &Config,
    repo_id: &str,
    path: &str,
    from: Option<&str>,
    to: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let repo = find_repo(config, &store, repo_id)?;
    // Newest first, following renames; "renamed to" rows are where the model left this name.
    let versions: Vec<_> = store
        .history(repo_id, path)?
        .into_iter()
        .filter(|v| !v.change.starts_with("renamed to"))
        .collect();
    if versions.is_empty() {
        return Err(CliError::Catalog(format!(
            "no versions of {path} in {repo_id}: `modelmirror history` shows what there is"
        )));
    }
    let mirror = Versions::open(config, &repo)?;
    // The version in force at a commit: the newest version made at that commit or before it.
    let version_at = |rev: &str| -> Result<usize, CliError> {
        let full = mirror.resolve(rev)?;
        versions
            .iter()
            .position(|v| mirror.is_at_or_before(&v.commit, &full))
            .ok_or_else(|| CliError::Catalog(format!("{path} did not exist yet at commit {rev}")))
    };
    let usable = |i: usize, rev: &str| -> Result<(String, String), CliError> {
        let v = &versions[i];
        if v.blob.is_none() {
            return Err(CliError::Catalog(format!(
                "{path} was deleted at commit {} (asked: {rev})",
                super::short(&v.commit)
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
        Some(c) => {
            let i = version_at(c)?;
            usable(i, c)?
        }
        None => match versions.get(to_i + 1) {
            Some(v) if v.blob.is_some() => (v.commit.clone(), v.path.clone()),
            Some(_) => {
                return Err(CliError::Catalog(format!(
                    "{path} in {repo_id} was deleted before this version and added again: nothing earlier to compare (give --from COMMIT)"
                )));
            }
            None => {
                return Err(CliError::Catalog(format!(
                    "{path} in {repo_id} has only one version: nothing to compare (give --from COMMIT)"
                )));
            }
        },
    };
    let (old, old_commit, old_blob) = load_model(&mirror, &repo, &from_v.0, &from_v.1)?;
    let (new, new_commit, new_blob) = load_model(&mirror, &repo, &to_v.0, &to_v.1)?;
    let out = ChangesOut {
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
        diff: diff::diff(&old, &new),
    };
    if json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let lines = changes_text(&out);
    let mut stdout = std::io::stdout().lock();
    for l in lines {
        writeln!(stdout, "{l}").map_err(CliError::Output)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The human form of `changes`: a heading, then one line per change.
fn changes_text(out: &ChangesOut) -> Vec<String> {
    let d = &out.diff;
    let mut lines = vec![format!(
        "{} {}: {} → {}",
        out.repo,
        out.to.path,
        super::short(&out.from.commit),
        super::short(&out.to.commit)
    )];
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    lines.extend(d.entities_added.iter().map(|e| format!("+ entity {e}")));
    lines.extend(d.entities_removed.iter().map(|e| format!("- entity {e}")));
    lines.extend(
        d.entities_renamed
            .iter()
            .map(|r| format!("~ entity {} → {}", r.from, r.to)),
    );
    lines.extend(
        d.attributes_added
            .iter()
            .map(|a| format!("+ attribute {}.{}", a.entity, a.attribute)),
    );
    lines.extend(
        d.attributes_removed
            .iter()
            .map(|a| format!("- attribute {}.{}", a.entity, a.attribute)),
    );
    lines.extend(
        d.attributes_renamed
            .iter()
            .map(|a| format!("~ attribute {}.{} → {}", a.entity, a.from, a.to)),
    );
    lines.extend(d.attributes_changed.iter().map(|a| {
        format!(
            "~ attribute {}.{} {}: {} → {}",
            a.entity,
            a.attribute,
            a.field,
            opt(&a.from),
            opt(&a.to)
        )
    }));
    lines.extend(
        d.relationships_added
            .iter()
            .map(|r| format!("+ relationship {r}")),
    );
    lines.extend(
        d.relationships_removed
            .iter()
            .map(|r| format!("- relationship {r}")),
    );
    lines.extend(d.relationships_changed.iter().map(|r| {
        format!(
            "~ relationship {} {}: {} → {}",
            r.relationship,
            r.field,
            opt(&r.from),
            opt(&r.to)
        )
    }));
    if d.is_empty() {
        lines.push("no changes to entities, attributes or relationships".into());
    }
    lines
}

#[derive(Serialize)]
struct ShowOut<'a> {
    repo: &'a str,
    path: &'a str,
    commit: String,
    blob: String,
    model: Model,
}

/// The human form of `show`: the model's header, then its containers, entities with their attribute trees,
/// relationships, views and definitions.
fn show_text(repo_id: &str, path: &str, commit: &str, model: &Model) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} ({}) — {repo_id} {path} at {}",
        model.name,
        model.db_vendor.as_deref().unwrap_or("?"),
        super::short(commit)
    );
    if let Some(d) = &model.description {
        let _ = writeln!(o, "  {d}");
    }
    if !model.containers.is_empty() {
        let names: Vec<&str> = model.containers.iter().map(|c| c.name.as_str()).collect();
        let _ = writeln!(o, "containers: {}", names.join(", "));
    }
    for e in &model.entities {
        let _ = writeln!(
            o,
            "entity {}{}{} ({} attributes)",
            e.name,
            e.code
                .as_deref()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default(),
            e.container
                .as_deref()
                .map(|c| format!(" in {c}"))
                .unwrap_or_default(),
            e.attributes.len()
        );
        for a in &e.attributes {
            let mut flags = Vec::new();
            if a.primary_key {
                flags.push("pk");
            }
            if a.required {
                flags.push("required");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(", "))
            };
            let indent = "  ".repeat(a.depth as usize);
            let _ = writeln!(
                o,
                "  {indent}{}: {}{flags}",
                a.name,
                a.data_type.as_deref().unwrap_or("?")
            );
        }
    }
    for r in &model.relationships {
        let _ = writeln!(
            o,
            "relationship {}: {} ({}) → {} ({})",
            r.name.as_deref().unwrap_or("-"),
            r.parent_entity.as_deref().unwrap_or("?"),
            r.parent_cardinality.as_deref().unwrap_or("?"),
            r.child_entity.as_deref().unwrap_or("?"),
            r.child_cardinality.as_deref().unwrap_or("?")
        );
    }
    for v in &model.views {
        let _ = writeln!(
            o,
            "view {} on {}",
            v.name,
            v.view_on.as_deref().unwrap_or("?")
        );
    }
    if !model.definitions.is_empty() {
        let _ = writeln!(o, "definitions ({}):", model.definitions.len());
        for d in &model.definitions {
            let indent = "  ".repeat(d.depth as usize);
            let _ = writeln!(
                o,
                "  {indent}{}: {}",
                d.name,
                d.data_type.as_deref().unwrap_or("?")
            );
        }
    }
    o
}

pub(super) fn show(
    config: &Config,
    repo_id: &str,
    path: &str,
    commit: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let repo = find_repo(config, &store, repo_id)?;
    let commit = match commit {
        Some(c) => c.to_string(),
        None => store
            .models(Some(repo_id))?
            .into_iter()
            .find(|m| m.path == path)
            .map(|m| m.commit)
            .ok_or_else(|| {
                CliError::Catalog(format!(
                    "{path} is not in the catalog of {repo_id}: `modelmirror models --repo {repo_id}` lists the paths, or give --commit"
                ))
            })?,
    };
    let (model, commit, blob) = load_model(&Versions::open(config, &repo)?, &repo, &commit, path)?;
    if json {
        print_json(&ShowOut {
            repo: repo_id,
            path,
            commit,
            blob,
            model,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let o = show_text(repo_id, path, &commit, &model);
    std::io::stdout()
        .lock()
        .write_all(o.as_bytes())
        .map_err(CliError::Output)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn models(
    config: &Config,
    repo: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let rows = store.models(repo)?;
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|m| {
            vec![
                m.repo.clone(),
                m.path.clone(),
                or_dash(&m.name),
                or_dash(&m.target),
                m.entities.to_string(),
                m.attributes.to_string(),
                match (&m.status[..], &m.error) {
                    ("ok", _) => String::new(),
                    (s, Some(e)) => format!("{s}: {e}"),
                    (s, None) => s.to_string(),
                },
            ]
        })
        .collect();
    print_table(
        &[
            "REPO",
            "PATH",
            "NAME",
            "TARGET",
            "ENTITIES",
            "ATTRIBUTES",
            "ERROR",
        ],
        table,
    )?;
    Ok(ExitCode::SUCCESS)
}
