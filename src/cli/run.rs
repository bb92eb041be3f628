//! `run` (the service) and `sync` (every repository polled once now), and what both do before any transfer.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::CliError;
use super::output::terminal;
use crate::config::{Config, DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, ProviderConfig};
use crate::store::Store;
use crate::{git, service};

/// Before any transfer: refuse to start with secrets that cannot be read, and set libgit2's process-wide
/// trust store and timeouts from the providers' `ca_file`, `connect_timeout` and `read_timeout`.
pub(super) fn prepare(config: &Config) -> Result<(), CliError> {
    let secrets = config.check_secrets();
    for w in &secrets.warnings {
        tracing::warn!("{w}");
    }
    if !secrets.errors.is_empty() {
        return Err(CliError::Secrets(secrets.errors));
    }
    prepare_git(config)
}

pub(super) fn prepare_git(config: &Config) -> Result<(), CliError> {
    let ca: Vec<&Path> = config
        .providers
        .iter()
        .filter_map(|p| p.ca_file.as_deref())
        .collect();
    git::trust_ca_files(&ca)?;
    let longest = |f: fn(&ProviderConfig) -> Duration, default: u64| {
        config
            .providers
            .iter()
            .map(f)
            .max()
            .unwrap_or(Duration::from_secs(default))
    };
    git::set_timeouts(
        longest(|p| p.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
        longest(|p| p.read_timeout, DEFAULT_READ_TIMEOUT),
    );
    Ok(())
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

pub(super) fn run(config: Config) -> Result<ExitCode, CliError> {
    let store = Arc::new(Store::open(&config.database)?);
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    for w in store.database_warnings().unwrap_or_default() {
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

pub(super) fn sync(config: Config, ids: &[String]) -> Result<ExitCode, CliError> {
    let store = Arc::new(Store::open(&config.database)?);
    store.set_retention_days(config.events_retention_days);
    store.set_max_bytes(config.database_max_bytes)?;
    let rt = runtime()?;
    // Discovery first, so `sync` also polls repositories found in groups, workspaces, projects and orgs.
    let mut discovery_ok = true;
    let mut all = config.repos.clone();
    let budgets = Arc::new(service::Budgets::default());
    for (index, provider) in config.providers.iter().enumerate() {
        if provider.discover.is_empty() {
            continue;
        }
        let limits = budgets.get(provider);
        match rt.block_on(service::discover_unless_running(
            &config, index, &store, limits,
        )) {
            Ok(None) => println!(
                "{}",
                terminal(&format!(
                    "{} discovery: another process holds its discovery lease (a running instance discovers it now, or one stopped and the lease expires within lease_seconds); the repositories the catalog lists are polled",
                    provider.name
                ))
            ),
            Err(e) => {
                discovery_ok = false;
                println!(
                    "{}",
                    terminal(&format!("{} discovery error: {e}", provider.name))
                );
            }
            Ok(Some(d)) => {
                for e in &d.errors {
                    discovery_ok = false;
                    println!(
                        "{}",
                        terminal(&format!("{} discovery error: {e}", provider.name))
                    );
                }
            }
        }
        for repo in crate::query::discovered_repos(&store, provider)? {
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
    let statuses = service::Statuses::new(store.clone(), store.clone(), budgets, None);
    let ok = rt.block_on(service::sync_once(
        Arc::new(config),
        store,
        statuses,
        repos,
        cancel,
        |repo, result| {
            let line = match result {
                Ok(outcome) => outcome.line(&repo.id),
                Err(e) => format!("{} error: {}", repo.id, e.reason()),
            };
            println!("{}", terminal(&line));
        },
    ));
    Ok(if ok && discovery_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `serve`: the web catalog alone.
pub(super) fn serve(config: Config) -> Result<ExitCode, CliError> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    runtime()?.block_on(service::serve_web(config))?;
    Ok(ExitCode::SUCCESS)
}
