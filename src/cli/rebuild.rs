//! `rebuild`: the catalog of every (or each named) repository built again from its local mirror, with no
//! network.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::CliError;
use super::output::terminal;
use crate::config::Config;
use crate::poll::{self, PollOutcome};
use crate::store::Store;

/// The mirrors on disk below `dir`: paths (relative, without `.git`) of bare repositories.
fn mirrors_below(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.extension().is_some_and(|x| x == "git") && p.join("HEAD").exists() {
                if let Ok(rel) = p.strip_prefix(dir) {
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    out.push(rel.trim_end_matches(".git").to_string());
                }
            } else {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

pub(super) fn rebuild(config: Config, ids: &[String]) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    store.set_max_bytes(config.database_max_bytes)?;
    let mut repos = config.repos.clone();
    for p in &config.providers {
        let mut found = crate::query::discovered_repos(&store, p)?;
        // A lost database forgets discovered repositories; their mirrors remember them.
        if !p.discover.is_empty() {
            for path in mirrors_below(&config.mirrors_dir().join(&p.name)) {
                found.extend(p.discovered_repo(&path).ok());
            }
        }
        for r in found {
            if !repos.iter().any(|x| x.id == r.id) {
                repos.push(r);
            }
        }
    }
    if !ids.is_empty() {
        repos = ids
            .iter()
            .map(|id| {
                repos
                    .iter()
                    .find(|r| &r.id == id)
                    .cloned()
                    .ok_or_else(|| CliError::UnknownRepo(id.clone()))
            })
            .collect::<Result<_, _>>()?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let mut ok = true;
    for repo in &repos {
        let line = match poll::rebuild(&config, repo, &store, &cancel) {
            Ok(PollOutcome::Updated {
                commit, commits, ..
            }) => {
                let models = store.models(Some(&repo.id))?.len();
                format!(
                    "{} rebuilt: {models} models from {commits} commits, at {}",
                    repo.id,
                    crate::query::short(&commit)
                )
            }
            Ok(_) => format!("{} rebuilt: empty repository", repo.id),
            Err(e) => {
                ok = false;
                format!("{} error: {}", repo.id, e.reason())
            }
        };
        println!("{}", terminal(&line));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `migrate --to URL`: the SQLite catalog copied into an empty PostgreSQL database.
pub(super) fn migrate(
    config: &Config,
    to: &str,
    password_file: Option<&std::path::Path>,
    password_env: Option<&str>,
) -> Result<ExitCode, CliError> {
    let password = match (password_file, password_env) {
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give --password-file or --password-env, not both".into(),
            ));
        }
        (Some(f), None) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", f.display())))?,
        ),
        (None, Some(v)) => Some(std::env::var(v).map_err(|_| {
            CliError::Usage(format!(
                "environment variable {v} (--password-env) is not set"
            ))
        })?),
        (None, None) => None,
    };
    let password = password
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    if password
        .as_deref()
        .is_some_and(|p| p.chars().any(char::is_control))
    {
        return Err(CliError::Usage(
            "the password holds a line break or other control character; the file or variable must hold the password alone".into(),
        ));
    }
    let password = password.map(crate::secret::Secret::new);
    if config.database.sqlite_path().is_none() {
        return Err(CliError::Usage(format!(
            "`database` is already PostgreSQL ({}): migrate copies a SQLite catalog",
            config.database
        )));
    }
    let target = crate::store::Database::Postgres(Box::new(
        crate::store::PgTarget::parse(to, password).map_err(CliError::Store)?,
    ));
    let source = Store::open_read_only(&config.database)?;
    let into = Store::open(&target)?;
    let counts = source.copy_into(&into)?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    for (table, n) in &counts {
        println!("{table:<15} {n}");
    }
    println!(
        "{}",
        terminal(&format!(
            "copied {total} rows from {} into {target}; now set `database = \"{target}\"` (and its password key) in the configuration and restart the service",
            config.database
        ))
    );
    Ok(ExitCode::SUCCESS)
}
