//! `status` (each repository's state, the providers' discovery and the service's reloads) and `events`
//! (recent deliveries, polls and commit statuses).

use std::io::Write;
use std::process::ExitCode;

use super::CliError;
use super::output::{or_dash, print_json, print_table, terminal};
use crate::config::Config;
use crate::store::Store;

/// The state of every repository the database knows, and of configured ones never polled. With the
/// configuration (`None` when it does not load), a repository it no longer names shows as `unconfigured`.
pub(super) fn status(
    database: &crate::store::Database,
    config: Option<&Config>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(database)?;
    let rows = crate::query::repos(&store, config)?;
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
    print_service_and_providers(&store)?;
    print_instances(&store, &rows, config)?;
    Ok(ExitCode::SUCCESS)
}

/// Several instances on one PostgreSQL database: each one's heartbeat and leases, and which instance holds
/// each repository being polled now.
fn print_instances(
    store: &Store,
    rows: &[crate::store::RepoStatus],
    config: Option<&Config>,
) -> Result<(), CliError> {
    let lease = config.map_or(crate::config::DEFAULT_LEASE_SECONDS, |c| c.lease_seconds);
    let mut out = std::io::stdout().lock();
    for i in store.instances(lease)? {
        let line = format!(
            "instance {}: {}, heartbeat at {}, started at {}, polling {} repositories now",
            i.name,
            if i.live { "live" } else { "gone" },
            i.heartbeat_at,
            i.started_at,
            i.leases
        );
        writeln!(out, "{}", terminal(&line)).map_err(CliError::Output)?;
    }
    for r in rows {
        if let Some(instance) = &r.instance {
            let line = format!("{} is being polled by instance {instance}", r.repo);
            writeln!(out, "{}", terminal(&line)).map_err(CliError::Output)?;
        }
    }
    Ok(())
}

/// The lines below the table: the last reload, and each provider's discovery and rate-limit hold.
fn print_service_and_providers(store: &Store) -> Result<(), CliError> {
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
        writeln!(out, "{}", terminal(&line)).map_err(CliError::Output)?;
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
        writeln!(out, "{}", terminal(&line)).map_err(CliError::Output)?;
    }
    Ok(())
}

pub(super) fn events(
    config: &Config,
    repo: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<ExitCode, CliError> {
    let store = Store::open(&config.database)?;
    let rows = crate::query::Catalog {
        config,
        store: &store,
    }
    .events(repo, limit)?;
    if json {
        print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let table = rows
        .iter()
        .map(|e| {
            let detail = crate::query::event_detail(e);
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
