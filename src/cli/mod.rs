//! The command line: argument definitions and what each command prints. `--json` output is one JSON array
//! (or object, for single things) with documented keys; everything else is for people.

mod catalog;
mod versions;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::service;
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
    /// Full-text search over model, entity and attribute names, technical names, paths and descriptions.
    Search {
        /// Plain words (prefixes, all must match; case and accents ignored), or FTS5 query syntax.
        query: String,
        #[arg(long)]
        repo: Option<String>,
        /// model | entity | attribute
        #[arg(long, value_parser = ["model", "entity", "attribute"])]
        kind: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Every version of one model, newest first, following renames.
    History {
        repo: String,
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// What changed inside a model between two versions (default: the last two).
    Changes {
        repo: String,
        path: String,
        /// The older version's commit (id or prefix).
        #[arg(long)]
        from: Option<String>,
        /// The newer version's commit (id or prefix).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One model in full: containers, entities with their attribute trees, relationships, views, definitions.
    Show {
        repo: String,
        path: String,
        /// A commit (id or prefix); the newest processed version by default.
        #[arg(long)]
        commit: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the catalog of every (or each named) repository from its local mirror, with no network.
    Rebuild { repos: Vec<String> },
    /// Recent webhook deliveries and polls, newest first: what arrived, what it did, what the poll found.
    Events {
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// How many lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to standard output, or with --dir write one page per command
    /// (modelmirror.1, modelmirror-check.1, ...) into that directory.
    Man {
        /// Write every page into this directory instead of printing the main one.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Check everything, like `nginx -t`: configuration, secrets, each provider's token and discovery, and
    /// each repository's refs. Exit status 0 only when every check passes.
    Check {
        #[arg(long)]
        json: bool,
    },
}

/// How to log.
#[derive(Debug, Default)]
pub struct LogSettings {
    pub level: Option<String>,
    pub json: bool,
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
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Secrets(Vec<crate::config::ProviderIssue>),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error(transparent)]
    Service(#[from] service::ServiceError),
    #[error(transparent)]
    Version(#[from] versions::VersionError),
    #[error("{0}")]
    Catalog(String),
}

impl Cli {
    /// Whether the command is the service (it logs at info by default; the others at warn).
    pub fn is_service(&self) -> bool {
        matches!(self.command, Command::Run)
    }

    /// `log_level` and `log_format` from the configuration, if it loads (its errors are reported later).
    pub fn log_settings(&self) -> LogSettings {
        match Config::load(&self.config) {
            Ok(c) => LogSettings {
                level: c.log_level,
                json: c.log_json,
            },
            Err(_) => LogSettings::default(),
        }
    }

    pub fn execute(self) -> Result<ExitCode, CliError> {
        match self.command {
            Command::Check { json } => return check(&self.config, json),
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "modelmirror", &mut std::io::stdout());
                return Ok(ExitCode::SUCCESS);
            }
            Command::Man { dir } => {
                let cmd = <Cli as clap::CommandFactory>::command();
                match dir {
                    Some(dir) => clap_mangen::generate_to(cmd, dir),
                    None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
                }
                .map_err(CliError::Output)?;
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
        let config = match Config::load(&self.config) {
            Ok(c) => c,
            // `status` still shows the service's state (and a rejected reload) with a broken file on disk.
            Err(e) if matches!(self.command, Command::Status { .. }) => {
                let Command::Status { json } = self.command else {
                    return Err(e.into());
                };
                eprintln!(
                    "error: {e}\n(showing the database's state; the running service keeps the configuration it loaded last)"
                );
                let database = crate::config::database_hint(&self.config);
                if !database.exists() {
                    return Err(e.into());
                }
                status(&database, None, json)?;
                return Ok(ExitCode::from(2));
            }
            Err(e) => return Err(e.into()),
        };
        match self.command {
            Command::Run => {
                prepare(&config)?;
                run(config)
            }
            Command::Sync { repos } => {
                prepare(&config)?;
                sync(config, &repos)
            }
            Command::Status { json } => status(&config.database, Some(&config), json),
            Command::Models { repo, json } => models(&config, repo.as_deref(), json),
            Command::Events { repo, limit, json } => events(&config, repo.as_deref(), limit, json),
            Command::Search {
                query,
                repo,
                kind,
                limit,
                json,
            } => catalog::search(
                &config,
                &query,
                repo.as_deref(),
                kind.as_deref(),
                limit,
                json,
            ),
            Command::History { repo, path, json } => catalog::history(&config, &repo, &path, json),
            Command::Changes {
                repo,
                path,
                from,
                to,
                json,
            } => catalog::changes(&config, &repo, &path, from.as_deref(), to.as_deref(), json),
            Command::Show {
                repo,
                path,
                commit,
                json,
            } => catalog::show(&config, &repo, &path, commit.as_deref(), json),
            Command::Rebuild { repos } => catalog::rebuild(config, &repos),
            Command::Check { .. } | Command::Completions { .. } | Command::Man { .. } => {
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Before any transfer: refuse to start with secrets that cannot be read, and set libgit2's process-wide
/// trust store and timeouts from the providers' `ca_file`, `connect_timeout` and `read_timeout`.
fn prepare(config: &Config) -> Result<(), CliError> {
    let secrets = config.check_secrets();
    for w in &secrets.warnings {
        tracing::warn!("{w}");
    }
    if !secrets.errors.is_empty() {
        return Err(CliError::Secrets(secrets.errors));
    }
    prepare_git(config)
}

fn prepare_git(config: &Config) -> Result<(), CliError> {
    let ca: Vec<&std::path::Path> = config
        .providers
        .iter()
        .filter_map(|p| p.ca_file.as_deref())
        .collect();
    crate::git::trust_ca_files(&ca)?;
    let longest = |f: fn(&crate::config::ProviderConfig) -> std::time::Duration, default: u64| {
        config
            .providers
            .iter()
            .map(f)
            .max()
            .unwrap_or(std::time::Duration::from_secs(default))
    };
    crate::git::set_timeouts(
        longest(
            |p| p.connect_timeout,
            crate::config::DEFAULT_CONNECT_TIMEOUT,
        ),
        longest(|p| p.read_timeout, crate::config::DEFAULT_READ_TIMEOUT),
    );
    Ok(())
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
    store.set_retention_days(config.events_retention_days);
    store.set_max_bytes(config.database_max_bytes)?;
    let rt = runtime()?;
    let path = config.path.clone();
    let result = rt.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(service::signals(tx.clone()));
        // Kept alive for as long as the service runs.
        let _watcher = service::watch_config(&path, tx);
        service::run(path, config, store, rx).await
    });
    // Polls still blocked in a transfer do not hold the exit up: the database is consistent either way.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

fn sync(config: Config, ids: &[String]) -> Result<ExitCode, CliError> {
    let store = Arc::new(Store::open(&config.database)?);
    store.set_retention_days(config.events_retention_days);
    store.set_max_bytes(config.database_max_bytes)?;
    let rt = runtime()?;
    // Discovery first, so `sync` also polls repositories found in groups, workspaces, projects and orgs.
    let mut discovery_ok = true;
    let mut all = config.repos.clone();
    for (index, provider) in config.providers.iter().enumerate() {
        if provider.discover.is_empty() {
            continue;
        }
        let limits = crate::forge::api::Limits::new(provider.max_requests_per_hour);
        match rt.block_on(service::discover(&config, index, &store, limits)) {
            Err(e) => {
                discovery_ok = false;
                println!("{} discovery error: {e}", provider.name);
            }
            Ok(d) => {
                for e in &d.errors {
                    discovery_ok = false;
                    println!("{} discovery error: {e}", provider.name);
                }
            }
        }
        for (path, url) in store.discovered_repos(&provider.name)? {
            let repo = provider.repo(&path, &url);
            if !all.iter().any(|r| r.id == repo.id) {
                all.push(repo);
            }
        }
    }
    let repos = if ids.is_empty() {
        all
    } else {
        ids.iter()
            .map(|id| {
                all.iter()
                    .find(|r| &r.id == id)
                    .cloned()
                    .ok_or_else(|| CliError::UnknownRepo(id.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let cancel_on_signal = cancel.clone();
    rt.spawn(async move {
        service::shutdown_signal().await;
        cancel_on_signal.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let ok = rt.block_on(service::sync_once(
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
    Ok(if ok && discovery_ok {
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

/// The state of every repository the database knows, and of configured ones never polled. With the
/// configuration (`None` when it does not load), a repository it no longer names shows as `unconfigured`.
fn status(
    database: &std::path::Path,
    config: Option<&Config>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(database)?;
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
    let repos = config.map_or(&[][..], |c| &c.repos[..]);
    // Configured repositories that were never polled are shown too.
    for repo in repos {
        if !rows.iter().any(|r| r.repo == repo.id) {
            rows.push(crate::store::RepoStatus {
                repo: repo.id.clone(),
                url: repo.url.clone(),
                state: "active".into(),
                origin: "configured".into(),
                state_reason: Some("not polled yet".into()),
                provider_id: None,
                web_url: None,
                held_until: None,
                held_reason: None,
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
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|r| {
            let state = match &r.state_reason {
                Some(reason) if r.state != "active" => format!("{} ({reason})", r.state),
                _ => r.state.clone(),
            };
            vec![
                r.repo.clone(),
                state,
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
            "STATE",
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
    let providers = store.provider_status()?;
    let mut out = std::io::stdout().lock();
    let service = store.service_state()?;
    if let Some(Some(at)) = service.get("last_reload_at") {
        let line = match service.get("last_reload_error") {
            Some(Some(e)) => format!(
                "service: configuration reload at {at} REJECTED (the previous configuration still runs): {e}"
            ),
            _ => format!("service: configuration reloaded at {at}"),
        };
        writeln!(out, "{line}").map_err(CliError::Output)?;
    }
    for p in providers {
        let mut line = format!("provider {}:", p.provider);
        if let Some(at) = &p.last_discovery_at {
            line.push_str(&format!(" discovery at {at}"));
            match (&p.last_discovery_error, p.repos_found) {
                (Some(e), _) => line.push_str(&format!(" failed: {e}")),
                (None, Some(n)) => line.push_str(&format!(" found {n} repositories")),
                _ => {}
            }
        }
        if let Some(until) = &p.held_until {
            line.push_str(&format!(
                "; held back until {until} ({})",
                p.held_reason.as_deref().unwrap_or("rate limit")
            ));
        }
        writeln!(out, "{line}").map_err(CliError::Output)?;
    }
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

fn events(
    config: &Config,
    repo: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let rows = store.events(repo, limit)?;
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|e| {
            let detail = if e.kind == "delivery" {
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
            };
            vec![
                e.time.clone(),
                e.kind.clone(),
                e.repo.clone().unwrap_or_else(|| "-".into()),
                detail,
            ]
        })
        .collect();
    print_table(&["TIME", "TYPE", "REPO", "DETAIL"], table)?;
    Ok(ExitCode::SUCCESS)
}

/// One line of `check`.
#[derive(Debug, Serialize)]
struct CheckResult {
    check: &'static str,
    target: String,
    /// ok | warning | error
    status: &'static str,
    message: String,
}

fn check(path: &std::path::Path, json: bool) -> Result<ExitCode, CliError> {
    let mut results = Vec::new();
    let mut add = |check, target: &str, status, message: String| {
        results.push(CheckResult {
            check,
            target: target.to_string(),
            status,
            message,
        });
    };
    match Config::load(path) {
        Err(e) => add(
            "config",
            &path.display().to_string(),
            "error",
            e.to_string(),
        ),
        Ok(config) => {
            let shown = config.path.display().to_string();
            add(
                "config",
                &shown,
                "ok",
                format!(
                    "{} file(s), {} provider(s), {} configured repositories",
                    config.files.len(),
                    config.providers.len(),
                    config.repos.len()
                ),
            );
            for w in &config.warnings {
                add("config", &shown, "warning", w.clone());
            }
            match Store::open(&config.database) {
                Ok(_) => add(
                    "database",
                    &config.database.display().to_string(),
                    "ok",
                    "opens and is migrated".into(),
                ),
                Err(e) => add(
                    "database",
                    &config.database.display().to_string(),
                    "error",
                    e.to_string(),
                ),
            }
            let secrets = config.check_secrets();
            for (issues, status) in [(secrets.errors, "error"), (secrets.warnings, "warning")] {
                for issue in issues {
                    add("secret", &issue.provider.clone(), status, issue.to_string());
                }
            }
            for p in &config.providers {
                let forge = p.kind.forge();
                if p.credentials.token.is_some()
                    && let Some(w) = forge.credentials_warning(p.credentials.username.as_deref())
                {
                    add(
                        "secret",
                        &p.name,
                        "warning",
                        format!("provider {}: {w}", p.name),
                    );
                }
            }
            if let Err(e) = prepare_git(&config) {
                add("config", &shown, "error", e.to_string());
            }
            let rt = runtime()?;
            for r in rt.block_on(check_remote(&config)) {
                results_push(&mut add, r);
            }
        }
    }
    let failed = results.iter().any(|r| r.status == "error");
    if json {
        print_json(&results)?;
    } else {
        let mut out = std::io::stdout().lock();
        for r in &results {
            let target = if r.target.is_empty() {
                String::new()
            } else {
                format!("{}: ", r.target)
            };
            writeln!(out, "{:<7} {:<9} {target}{}", r.status, r.check, r.message)
                .map_err(CliError::Output)?;
        }
        let summary = if failed {
            "some checks failed"
        } else {
            "all checks passed"
        };
        writeln!(out, "{summary}").map_err(CliError::Output)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn results_push(add: &mut impl FnMut(&'static str, &str, &'static str, String), r: CheckResult) {
    add(r.check, &r.target, r.status, r.message);
}

/// The network checks: each provider's token and discovery, then each repository's refs.
async fn check_remote(config: &Config) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let mut repos: Vec<crate::config::RepoConfig> = config.repos.clone();
    for p in &config.providers {
        if p.api_url.is_none() {
            continue;
        }
        let token = match p.credentials.token.as_ref().map(|t| t.resolve()) {
            Some(Err(_)) => continue, // reported with the secrets
            Some(Ok(t)) => Some(t),
            None => None,
        };
        let api = match crate::forge::api::ApiClient::new(
            &p.api_settings(),
            token.as_ref(),
            crate::forge::api::Limits::new(p.max_requests_per_hour),
        ) {
            Ok(api) => api,
            Err(e) => {
                out.push(CheckResult {
                    check: "token",
                    target: p.name.clone(),
                    status: "error",
                    message: e.to_string(),
                });
                continue;
            }
        };
        let forge = p.kind.forge();
        if token.is_some() {
            let probe = p.discover.first().map(String::as_str).or_else(|| {
                config
                    .repos
                    .iter()
                    .find(|r| r.provider == p.name)
                    .map(|r| r.path.as_str())
            });
            match forge.whoami(&api, probe).await {
                Ok(who) => out.push(CheckResult {
                    check: "token",
                    target: p.name.clone(),
                    status: "ok",
                    message: who,
                }),
                Err(e) => out.push(CheckResult {
                    check: "token",
                    target: p.name.clone(),
                    status: "error",
                    message: e.to_string(),
                }),
            }
        } else {
            out.push(CheckResult {
                check: "token",
                target: p.name.clone(),
                status: "warning",
                message: "no token: only public repositories can be read".into(),
            });
        }
        for scope in &p.discover {
            let target = format!("{}/{scope}", p.name);
            match forge.discover(&api, scope).await {
                Ok(found) => {
                    let archived = found.iter().filter(|r| r.archived).count();
                    let empty = found.iter().filter(|r| r.empty == Some(true)).count();
                    let allowed: Vec<_> = found
                        .iter()
                        .filter(|r| p.repo_filter.allows(&r.path))
                        .collect();
                    let excluded = found.len() - allowed.len();
                    for r in allowed.iter().filter(|r| !r.archived) {
                        if let Ok(resolved) =
                            crate::forge::resolve_repo(p.kind, &p.base_url, &r.path)
                        {
                            let repo = p.repo(&resolved.path, &resolved.url);
                            if !repos.iter().any(|x| x.id == repo.id) {
                                repos.push(repo);
                            }
                        }
                    }
                    out.push(CheckResult {
                        check: "discovery",
                        target,
                        status: "ok",
                        message: format!(
                            "found {} repositories ({archived} archived, {empty} empty, {excluded} excluded by include/exclude)",
                            found.len()
                        ),
                    });
                }
                Err(e) => out.push(CheckResult {
                    check: "discovery",
                    target,
                    status: "error",
                    message: e.to_string(),
                }),
            }
        }
    }
    // Every repository: list its refs (no fetch), a few at a time.
    let permits = Arc::new(tokio::sync::Semaphore::new(config.concurrency));
    let mut set = tokio::task::JoinSet::new();
    for (i, repo) in repos.into_iter().enumerate() {
        // Every repository of this configuration has its provider in it.
        let Some(provider) = config.provider(&repo).cloned() else {
            continue;
        };
        let permits = permits.clone();
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = tokio::task::spawn_blocking(move || {
                let auth = match provider.git_auth() {
                    Ok(auth) => auth,
                    Err(e) => return (repo.id, Err(e.to_string())),
                };
                let spec = crate::git::RemoteSpec {
                    url: &repo.url,
                    auth: &auth,
                    ssh_key_file: provider.credentials.ssh_key_file.as_deref(),
                    known_hosts_file: provider.credentials.known_hosts_file.as_deref(),
                    proxy: provider.proxy.as_ref().map(|p| p.expose()),
                    cancel: Arc::new(AtomicBool::new(false)),
                    alive: None,
                };
                let listed = crate::git::list_remote(&spec).map_err(|e| e.to_string());
                (repo.id, listed)
            })
            .await;
            (i, result)
        });
    }
    let mut listed = Vec::new();
    while let Some(Ok((i, joined))) = set.join_next().await {
        listed.push((i, joined));
    }
    listed.sort_by_key(|(i, _)| *i);
    for (_, joined) in listed {
        match joined {
            Ok((id, Ok(Some((branch, commit))))) => out.push(CheckResult {
                check: "repo",
                target: id,
                status: "ok",
                message: format!("default branch {branch} at {}", &commit.to_string()[..12]),
            }),
            Ok((id, Ok(None))) => out.push(CheckResult {
                check: "repo",
                target: id,
                status: "ok",
                message: "empty repository: it is polled until the first push".into(),
            }),
            Ok((id, Err(message))) => out.push(CheckResult {
                check: "repo",
                target: id,
                status: "error",
                message,
            }),
            Err(e) => out.push(CheckResult {
                check: "repo",
                target: String::new(),
                status: "error",
                message: e.to_string(),
            }),
        }
    }
    out
}
