//! `check`: everything, like `nginx -t`: configuration, database, secrets, each provider's token and
//! discovery, and each repository's refs. Exit status 0 only when every check passes.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::CliError;
use super::output::print_json;
use super::output::terminal;
use super::run::{prepare_git, runtime};
use crate::config::{Config, ProviderConfig, RepoConfig};
use crate::forge::api::{ApiClient, Limits};
use crate::forge::status::ScopeCheck;
use crate::git;
use crate::store::Store;

/// One line of `check`.
#[derive(Debug, Serialize)]
struct CheckResult {
    check: &'static str,
    target: String,
    /// ok | warning | error
    status: &'static str,
    message: String,
}

/// The lines of `check`, in order.
#[derive(Default)]
struct Results(Vec<CheckResult>);

impl Results {
    fn add(&mut self, check: &'static str, target: &str, status: &'static str, message: String) {
        self.0.push(CheckResult {
            check,
            target: target.to_string(),
            status,
            message,
        });
    }

    fn failed(&self) -> bool {
        self.0.iter().any(|r| r.status == "error")
    }
}

pub(super) fn check(path: &Path, json: bool) -> Result<ExitCode, CliError> {
    let mut results = Results::default();
    match Config::load(path) {
        Err(e) => results.add(
            "config",
            &path.display().to_string(),
            "error",
            e.to_string(),
        ),
        Ok(config) => {
            check_local(&config, &mut results);
            let rt = runtime()?;
            let repos = rt.block_on(check_providers_and_discover(&config, &mut results));
            rt.block_on(check_repos(&config, repos, &mut results));
        }
    }
    let failed = results.failed();
    if json {
        print_json(&results.0)?;
    } else {
        let mut out = std::io::stdout().lock();
        for r in &results.0 {
            let target = if r.target.is_empty() {
                String::new()
            } else {
                format!("{}: ", r.target)
            };
            writeln!(
                out,
                "{:<7} {:<9} {}",
                r.status,
                r.check,
                terminal(&format!("{target}{}", r.message))
            )
            .map_err(CliError::Output)?;
        }
        let warnings = results.0.iter().filter(|r| r.status == "warning").count();
        let summary = match (failed, warnings) {
            (true, _) => "some checks failed".to_string(),
            (false, 0) => "all checks passed".to_string(),
            (false, n) => format!("all checks passed, with {n} warning(s)"),
        };
        writeln!(out, "{summary}").map_err(CliError::Output)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What needs no network: the configuration's warnings, the database, secrets and credential files, and
/// libgit2's process-wide settings.
fn check_local(config: &Config, results: &mut Results) {
    let shown = config.path.display().to_string();
    results.add(
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
    if config.providers.is_empty() {
        results.add(
            "config",
            &shown,
            "warning",
            "no provider is configured, so nothing is mirrored: add a [providers.NAME] table (see config.example.toml)".into(),
        );
    }
    for w in &config.warnings {
        results.add("config", &shown, "warning", w.clone());
    }
    let database = config.database.to_string();
    match Store::open(&config.database) {
        Ok(store) => {
            results.add("database", &database, "ok", "opens and is migrated".into());
            match store.database_warnings() {
                Ok(warnings) => {
                    for w in warnings {
                        results.add("database", &database, "warning", w);
                    }
                }
                Err(e) => results.add("database", &database, "warning", e.to_string()),
            }
        }
        Err(e) => results.add("database", &database, "error", e.to_string()),
    }
    let secrets = config.check_secrets();
    for (issues, status) in [(secrets.errors, "error"), (secrets.warnings, "warning")] {
        for issue in issues {
            results.add("secret", &issue.provider, status, issue.to_string());
        }
    }
    for p in &config.providers {
        if p.credentials.token.is_some()
            && let Some(w) = p
                .kind
                .forge()
                .credentials_warning(p.credentials.username.as_deref())
        {
            results.add(
                "secret",
                &p.name,
                "warning",
                format!("provider {}: {w}", p.name),
            );
        }
    }
    if let Some(web) = &config.web {
        let target = web.listen.to_string();
        match crate::service::check_web_files(web) {
            Ok(()) if web.anonymous() => results.add(
                "web",
                &target,
                "ok",
                "the web catalog is open to anyone who can reach it (no users_file or tokens_file)"
                    .into(),
            ),
            Ok(()) => results.add("web", &target, "ok", "credential files read".into()),
            Err(e) => results.add("web", &target, "error", e.to_string()),
        }
    }
    if let Err(e) = prepare_git(config) {
        results.add("config", &shown, "error", e.to_string());
    }
}

/// Each provider with a REST API: who its token is, and what each discovery scope lists. Returns every
/// repository to check: the configured ones and those discovery would mirror.
async fn check_providers_and_discover(config: &Config, results: &mut Results) -> Vec<RepoConfig> {
    let mut repos = config.repos.clone();
    for p in config.providers.iter().filter(|p| p.api_url.is_some()) {
        let token = match p.credentials.token.as_ref().map(|t| t.resolve()) {
            Some(Err(_)) => continue, // reported with the secrets
            Some(Ok(t)) => Some(t),
            None => None,
        };
        let limits = Limits::new(p.max_requests_per_hour);
        let api = match ApiClient::new(&p.api_settings(), token.as_ref(), limits) {
            Ok(api) => api,
            Err(e) => {
                results.add("token", &p.name, "error", e.to_string());
                continue;
            }
        };
        if token.is_some() {
            let probe = p.discover.first().map(String::as_str).or_else(|| {
                config
                    .repos
                    .iter()
                    .find(|r| r.provider == p.name)
                    .map(|r| r.path.as_str())
            });
            match p.kind.forge().whoami(&api, probe).await {
                Ok(who) => results.add("token", &p.name, "ok", who),
                Err(e) => results.add("token", &p.name, "error", e.to_string()),
            }
            if p.commit_status {
                check_status_scope(p, &api, results).await;
            }
        } else if p.commit_status {
            results.add(
                "statuses",
                &p.name,
                "error",
                "commit_status = true needs a token that may post commit statuses: set token_file (or token_env)".into(),
            );
        } else {
            results.add(
                "token",
                &p.name,
                "warning",
                "no token: only public repositories can be read".into(),
            );
        }
        for repo in check_discovery(p, &api, results).await {
            if !repos.iter().any(|x| x.id == repo.id) {
                repos.push(repo);
            }
        }
    }
    repos
}

/// Whether `p`'s token may post commit statuses, as far as its host tells: an error when it says no, a
/// warning when it cannot say.
async fn check_status_scope(p: &ProviderConfig, api: &ApiClient, results: &mut Results) {
    let (level, message) = match p.kind.forge().status_scope(api).await {
        Ok(ScopeCheck::Allowed(m)) => ("ok", m),
        Ok(ScopeCheck::Missing(m)) => ("error", m),
        Ok(ScopeCheck::Unknown(m)) => ("warning", m),
        Err(e) => (
            "error",
            format!("cannot tell whether the token may post commit statuses: {e}"),
        ),
    };
    results.add("statuses", &p.name, level, message);
}

/// List each discovery scope of `p`: what it finds, and the repositories it would mirror.
async fn check_discovery(
    p: &ProviderConfig,
    api: &ApiClient,
    results: &mut Results,
) -> Vec<RepoConfig> {
    let mut repos = Vec::new();
    for scope in &p.discover {
        let target = format!("{}/{scope}", p.name);
        let found = match p.kind.forge().discover(api, scope).await {
            Ok(found) => found,
            Err(e) => {
                results.add("discovery", &target, "error", e.to_string());
                continue;
            }
        };
        let archived = found.iter().filter(|r| r.archived).count();
        let empty = found.iter().filter(|r| r.empty == Some(true)).count();
        let allowed: Vec<_> = found
            .iter()
            .filter(|r| p.repo_filter.allows(&r.path))
            .collect();
        let excluded = found.len() - allowed.len();
        repos.extend(
            allowed
                .iter()
                .filter(|r| !r.archived)
                .filter_map(|r| p.discovered_repo(&r.path).ok()),
        );
        results.add(
            "discovery",
            &target,
            "ok",
            format!(
                "found {} repositories ({archived} archived, {empty} empty, {excluded} excluded by include/exclude)",
                found.len()
            ),
        );
    }
    repos
}

/// Every repository: list its refs (no fetch), `concurrency` at a time; results in the order given.
async fn check_repos(config: &Config, repos: Vec<RepoConfig>, results: &mut Results) {
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
            let id = repo.id.clone();
            let listed = tokio::task::spawn_blocking(move || {
                let auth = provider.git_auth().map_err(|e| e.to_string())?;
                let spec =
                    provider.remote(&repo.url, &auth, Arc::new(AtomicBool::new(false)), None);
                git::list_remote(&spec).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the check failed unexpectedly: {e}")));
            (i, id, listed)
        });
    }
    let mut listed = Vec::new();
    while let Some(Ok(one)) = set.join_next().await {
        listed.push(one);
    }
    listed.sort_by_key(|(i, _, _)| *i);
    for (_, id, result) in listed {
        match result {
            Ok(Some((branch, commit))) => results.add(
                "repo",
                &id,
                "ok",
                format!(
                    "default branch {branch} at {}",
                    crate::query::short(&commit.to_string())
                ),
            ),
            Ok(None) => results.add(
                "repo",
                &id,
                "ok",
                "empty repository: it is polled until the first push".into(),
            ),
            Err(message) => results.add("repo", &id, "error", message),
        }
    }
}
