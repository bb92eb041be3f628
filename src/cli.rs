//! The command line: argument definitions and what each command prints. `--json` output is one JSON array
//! with documented keys; everything else is for people.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::daemon;
use crate::store::{Store, StoreError};

#[derive(Debug, Parser)]
#[command(
    name = "modelmirror",
    version,
    about = "Keep a searchable SQLite replica of the data models kept in Git."
)]
pub struct Cli {
    /// Configuration file; every *.toml in the conf.d/ folder beside it is merged in.
    #[arg(long, global = true, env = "MODELMIRROR_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a service: poll every repository on its schedule until SIGTERM or SIGINT.
    Run,
    /// Poll every (or each named) repository once now, print one line per repository, and exit
    /// (status 1 when any failed).
    Sync {
        /// Repository ids (`<provider>/<path>`); all configured repositories when none is given.
        repos: Vec<String>,
    },
    /// Show each repository's state: default branch, last processed commit, checks, models, errors.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the models in the catalog.
    Models {
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration (and that tokens resolve and the database opens), print warnings.
    Check,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown repository `{0}`; `modelmirror status` lists the configured ones")]
    UnknownRepo(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

impl Cli {
    /// Whether the command is the service (it logs at info by default; the others at warn).
    pub fn is_service(&self) -> bool {
        matches!(self.command, Command::Run)
    }

    pub fn execute(self) -> Result<ExitCode, CliError> {
        let config = Config::load(&self.config)?;
        match self.command {
            Command::Run => run(config),
            Command::Sync { repos } => sync(config, &repos),
            Command::Status { json } => status(&config, json),
            Command::Models { repo, json } => models(&config, repo.as_deref(), json),
            Command::Check => check(&config),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

fn run(config: Config) -> Result<ExitCode, CliError> {
    let store = Arc::new(Store::open(&config.database)?);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    runtime()?.block_on(daemon::run(config, store, daemon::shutdown_signal()));
    Ok(ExitCode::SUCCESS)
}

fn sync(config: Config, ids: &[String]) -> Result<ExitCode, CliError> {
    let repos = if ids.is_empty() {
        config.repos.clone()
    } else {
        ids.iter()
            .map(|id| {
                config
                    .repos
                    .iter()
                    .find(|r| &r.id == id)
                    .cloned()
                    .ok_or_else(|| CliError::UnknownRepo(id.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let store = Arc::new(Store::open(&config.database)?);
    let cancel = Arc::new(AtomicBool::new(false));
    let rt = runtime()?;
    let cancel_on_signal = cancel.clone();
    rt.spawn(async move {
        daemon::shutdown_signal().await;
        cancel_on_signal.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let ok = rt.block_on(daemon::sync_once(
        Arc::new(config),
        store,
        repos,
        cancel,
        |repo, result| {
            let line = match result {
                Ok(outcome) => outcome.line(&repo.id),
                Err(e) => {
                    let msg = e.to_string();
                    let msg = msg
                        .strip_prefix(&format!("{}: ", repo.id))
                        .unwrap_or(&msg)
                        .to_string();
                    format!("{} error: {msg}", repo.id)
                }
            };
            println!("{line}");
        },
    ));
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_json<T: Serialize>(rows: &T) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, rows)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    writeln!(out).map_err(CliError::Output)
}

/// Print rows as aligned columns.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(header.iter().map(|h| h.to_string()).collect()).map_err(CliError::Output)?;
    for row in rows {
        line(row).map_err(CliError::Output)?;
    }
    Ok(())
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn status(config: &Config, json: bool) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let mut rows = store.status()?;
    // Configured repositories that were never polled are shown too.
    for repo in &config.repos {
        if !rows.iter().any(|r| r.repo == repo.id) {
            rows.push(crate::store::RepoStatus {
                repo: repo.id.clone(),
                url: repo.url.clone(),
                default_branch: None,
                commit: None,
                last_check_at: None,
                last_change_at: None,
                models: 0,
                errors: 0,
                last_error: None,
            });
        }
    }
    rows.sort_by(|a, b| a.repo.cmp(&b.repo));
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|r| {
            vec![
                r.repo.clone(),
                or_dash(&r.default_branch),
                r.commit
                    .as_deref()
                    .map_or("-".into(), |c| c.chars().take(12).collect()),
                r.models.to_string(),
                r.errors.to_string(),
                or_dash(&r.last_check_at),
                or_dash(&r.last_change_at),
                or_dash(&r.last_error),
            ]
        })
        .collect();
    print_table(
        &[
            "REPO",
            "BRANCH",
            "COMMIT",
            "MODELS",
            "ERRORS",
            "LAST CHECK",
            "LAST CHANGE",
            "LAST ERROR",
        ],
        table,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn models(config: &Config, repo: Option<&str>, json: bool) -> Result<ExitCode, CliError> {
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

fn check(config: &Config) -> Result<ExitCode, CliError> {
    let mut out = std::io::stdout().lock();
    let mut say = |s: String| writeln!(out, "{s}").map_err(CliError::Output);
    say(format!(
        "configuration OK: {} ({} file(s)), {} provider(s), {} repositories",
        config.path.display(),
        config.files.len(),
        config.providers.len(),
        config.repos.len()
    ))?;
    let store = Store::open(&config.database)?;
    say(format!("database OK: {}", store.path().display()))?;
    for repo in &config.repos {
        say(format!(
            "repo {} <- {} (schedule {:?})",
            repo.id,
            repo.url,
            repo.schedule.as_str()
        ))?;
    }
    for w in &config.warnings {
        say(format!("warning: {w}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
