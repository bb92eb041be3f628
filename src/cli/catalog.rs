//! The catalog commands: `models`, `search`, `history`, `changes` and `show`.

use std::process::ExitCode;

use super::CliError;
use super::output::{or_dash, print_json, print_lines, print_table};
use crate::config::Config;
use crate::model::Model;
use crate::query::{Catalog, Changes};
use crate::store::Store;

/// Open the database and answer from the catalog.
fn catalog<T>(
    config: &Config,
    answer: impl FnOnce(&Catalog<'_>) -> Result<T, crate::query::QueryError>,
) -> Result<T, CliError> {
    let store = Store::open(&config.database)?;
    Ok(answer(&Catalog {
        config,
        store: &store,
    })?)
}

pub(super) fn search(
    config: &Config,
    query: &str,
    repo: Option<&str>,
    kind: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<ExitCode, CliError> {
    let hits = catalog(config, |c| c.search(query, repo, kind, limit))?;
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

pub(super) fn history(
    config: &Config,
    repo: &str,
    path: &str,
    json: bool,
) -> Result<ExitCode, CliError> {
    let rows = catalog(config, |c| c.history(repo, path))?;
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|r| {
            vec![
                r.commit.chars().take(12).collect(),
                r.time.as_deref().unwrap_or("-").to_string(),
                r.author.as_deref().unwrap_or("-").to_string(),
                r.change.clone(),
                r.attributes.map_or("-".into(), |a| a.to_string()),
                r.message
                    .as_deref()
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

pub(super) fn changes(
    config: &Config,
    repo_id: &str,
    path: &str,
    from: Option<&str>,
    to: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let out = catalog(config, |c| c.changes(repo_id, path, from, to))?;
    if json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_lines(changes_text(&out))?;
    Ok(ExitCode::SUCCESS)
}

/// The human form of `changes`: a heading, then one line per change.
fn changes_text(out: &Changes) -> Vec<String> {
    let d = &out.diff;
    let mut lines = vec![format!(
        "{} {}: {} → {}",
        out.repo,
        out.to.path,
        crate::query::short(&out.from.commit),
        crate::query::short(&out.to.commit)
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
    // Every property that differs, grouped: the model first, then by container, entity, relationship, view.
    for (heading, changes) in crate::model::properties::grouped(&d.properties_changed) {
        lines.push(format!("properties of {heading}:"));
        for c in changes {
            let mark = match (&c.from, &c.to) {
                (None, _) => '+',
                (_, None) => '-',
                _ => '~',
            };
            lines.push(format!(
                "  {mark} {}: {} → {}",
                crate::model::properties::what(c),
                crate::model::properties::shown(c.from.as_ref(), SHOWN_MAX),
                crate::model::properties::shown(c.to.as_ref(), SHOWN_MAX)
            ));
        }
    }
    if d.is_empty() {
        lines.push("no changes to entities, attributes or relationships".into());
    }
    lines
}

/// The longest value `changes` prints (in characters; `--json` has it whole).
const SHOWN_MAX: usize = 200;

/// The human form of `show`: the model's header, then its containers, entities with their attribute trees,
/// relationships, views and definitions.
fn show_text(repo_id: &str, path: &str, commit: &str, model: &Model) -> Vec<String> {
    let mut o = Vec::new();
    o.push(format!(
        "{} ({}) — {repo_id} {path} at {}",
        model.name,
        model.db_vendor.as_deref().unwrap_or("?"),
        crate::query::short(commit)
    ));
    if let Some(d) = &model.description {
        o.push(format!("  {d}"));
    }
    if !model.containers.is_empty() {
        let names: Vec<&str> = model.containers.iter().map(|c| c.name.as_str()).collect();
        o.push(format!("containers: {}", names.join(", ")));
    }
    for e in &model.entities {
        o.push(format!(
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
        ));
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
            o.push(format!(
                "  {indent}{}: {}{flags}",
                a.name,
                a.data_type.as_deref().unwrap_or("?")
            ));
        }
    }
    for r in &model.relationships {
        o.push(format!(
            "relationship {}: {} ({}) → {} ({})",
            r.name.as_deref().unwrap_or("-"),
            r.parent_entity.as_deref().unwrap_or("?"),
            r.parent_cardinality.as_deref().unwrap_or("?"),
            r.child_entity.as_deref().unwrap_or("?"),
            r.child_cardinality.as_deref().unwrap_or("?")
        ));
    }
    for v in &model.views {
        o.push(format!(
            "view {} on {}",
            v.name,
            v.view_on.as_deref().unwrap_or("?")
        ));
    }
    if !model.definitions.is_empty() {
        o.push(format!("definitions ({}):", model.definitions.len()));
        for d in &model.definitions {
            let indent = "  ".repeat(d.depth as usize);
            o.push(format!(
                "  {indent}{}: {}",
                d.name,
                d.data_type.as_deref().unwrap_or("?")
            ));
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
    let shown = catalog(config, |c| c.model(repo_id, path, commit))?;
    if json {
        print_json(&shown)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_lines(show_text(repo_id, path, &shown.commit, &shown.model))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn models(
    config: &Config,
    repo: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let rows = catalog(config, |c| c.models(repo))?;
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
