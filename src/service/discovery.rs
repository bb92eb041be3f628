//! Discovery: one run lists a provider's repositories through its REST API and records them, so the service
//! knows which repositories to poll; the loop runs it on the provider's `discover_schedule`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, watch};

use super::state::Shared;
use crate::config::{Config, RepoConfig};
use crate::forge::api::{ApiClient, ApiError, Limits};
use crate::git;
use crate::query::discovered_repos;
use crate::secret::SecretError;
use crate::store::{Discovery, FoundRepo, Store, StoreError};

/// Blocking work (the database, which a long import may hold; the disk) from async code: the runtime moves its
/// other tasks off this worker meanwhile. Both runtimes that discover are multi-threaded.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// What one discovery run found: the repositories to mirror now.
pub(crate) struct Discovered {
    pub(crate) repos: Vec<RepoConfig>,
    /// Scopes that could not be listed (each error names the provider and says what to do).
    pub(crate) errors: Vec<ApiError>,
}

/// Why a discovery run listed nothing. Every message names the provider.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error("provider {provider}: {error}")]
    Secret {
        provider: String,
        error: SecretError,
    },
    /// The REST client could not be set up, or every scope failed (one error per scope).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Api(Vec<ApiError>),
    #[error("provider {provider}: {error}")]
    Store { provider: String, error: StoreError },
}

/// One discovery run of one provider: list every scope, filter with include/exclude, record in the
/// database, and return the repositories to mirror. A scope that fails does not stop the others, but then
/// nothing is marked removed; a failure never makes repositories disappear. The result is `Err` only when
/// nothing could be listed at all.
pub(crate) async fn discover(
    config: &Config,
    index: usize,
    store: &Store,
    limits: Arc<Limits>,
) -> Result<Discovered, DiscoveryError> {
    let provider = &config.providers[index];
    let kind = provider.kind.as_str();
    // A hold recorded by another process (or before a restart) still applies.
    if let Ok(Some((until, reason))) = block(|| store.provider_hold(&provider.name))
        && let Ok(until) = chrono::DateTime::parse_from_rfc3339(&until)
    {
        limits.hold_until(until.with_timezone(&chrono::Utc), reason);
    }
    let result = discover_inner(config, index, store, limits.clone()).await;
    let hold = limits.hold();
    let until = hold
        .as_ref()
        .map(|h| h.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let record = block(|| {
        store.record_hold(
            &provider.name,
            kind,
            hold.as_ref()
                .zip(until.as_deref())
                .map(|(h, u)| (u, h.reason.as_str())),
        )
    });
    if let Err(e) = record {
        tracing::error!(provider = %provider.name, "cannot record the rate-limit state: {e}");
    }
    let error = match &result {
        Err(e) => Some(e.to_string()),
        Ok(d) if !d.errors.is_empty() => Some(DiscoveryError::Api(d.errors.clone()).to_string()),
        Ok(_) => None,
    };
    if let Some(message) = error
        && let Err(e) = block(|| store.record_discovery_error(&provider.name, kind, &message))
    {
        tracing::error!(provider = %provider.name, "cannot record the discovery error: {e}");
    }
    result
}

async fn discover_inner(
    config: &Config,
    index: usize,
    store: &Store,
    limits: Arc<Limits>,
) -> Result<Discovered, DiscoveryError> {
    let provider = &config.providers[index];
    let store_err = |error| DiscoveryError::Store {
        provider: provider.name.clone(),
        error,
    };
    let token = match &provider.credentials.token {
        Some(t) => Some(t.resolve().map_err(|error| DiscoveryError::Secret {
            provider: provider.name.clone(),
            error,
        })?),
        None => None,
    };
    let api = ApiClient::new(&provider.api_settings(), token.as_ref(), limits)
        .map_err(|e| DiscoveryError::Api(vec![e]))?;
    let forge = provider.kind.forge();
    let configured: Vec<&str> = config
        .repos
        .iter()
        .filter(|r| r.provider == provider.name)
        .map(|r| r.id.as_str())
        .collect();
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for scope in &provider.discover {
        let repos = match forge.discover(&api, scope).await {
            Ok(repos) => repos,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for r in repos {
            if !provider.repo_filter.allows(&r.path) || !seen.insert(r.path.clone()) {
                continue;
            }
            let repo = match provider.discovered_repo(&r.path) {
                Ok(repo) => repo,
                Err(e) => {
                    tracing::warn!(provider = %provider.name, "skipping discovered repository {:?}: {e}", r.path);
                    continue;
                }
            };
            found.push(FoundRepo {
                configured: configured.contains(&repo.id.as_str()),
                id: repo.id,
                path: repo.path,
                url: repo.url,
                provider_id: r.provider_id,
                web_url: r.web_url,
                archived: r.archived,
                empty: r.empty == Some(true),
            });
        }
    }
    if errors.len() == provider.discover.len() {
        return Err(DiscoveryError::Api(errors));
    }
    let record = Discovery {
        provider: &provider.name,
        kind: provider.kind.as_str(),
        found: &found,
        complete: errors.is_empty(),
    };
    let changes = block(|| store.record_discovery(&record)).map_err(store_err)?;
    if let Some(note) = &changes.note {
        tracing::warn!(provider = %provider.name, "{note}");
    }
    // Pruned only at the second run in a row that misses a repository: its poll loop stopped at the first.
    if provider.prune_removed {
        for id in changes.prunable {
            let path = id
                .strip_prefix(&format!("{}/", provider.name))
                .unwrap_or(&id);
            block(|| {
                store.prune_repo(&id)?;
                if let Err(e) = git::delete_mirror(&config.mirror_path(&provider.repo(path, ""))) {
                    tracing::warn!(provider = %provider.name, repo = %id, "{e}");
                }
                Ok::<_, StoreError>(())
            })
            .map_err(store_err)?;
            tracing::info!(provider = %provider.name, repo = %id, "pruned (prune_removed = true)");
        }
    }
    let repos: Vec<RepoConfig> = found
        .iter()
        .filter(|f| !f.archived && !f.configured)
        .map(|f| provider.repo(&f.path, &f.url))
        .collect();
    tracing::info!(provider = %provider.name, found = found.len(), mirrored = repos.len(), "discovery done");
    Ok(Discovered { repos, errors })
}

/// What a mirrored list is compared by: each repository's id and URL.
fn list_key(repos: &[RepoConfig]) -> Vec<String> {
    repos
        .iter()
        .map(|r| format!("{} {}", r.id, r.url))
        .collect()
}

/// For a one-shot `sync`: [`discover`], unless a running instance discovers the provider now (it holds the
/// provider's discovery lease, PostgreSQL): `None` then, and the catalog lists what that one finds.
pub(crate) async fn discover_unless_running(
    config: &Config,
    index: usize,
    store: &Arc<Store>,
    limits: Arc<Limits>,
) -> Result<Option<Discovered>, DiscoveryError> {
    let provider = &config.providers[index];
    let token = store.steps_under_lease(&super::leases::new_token());
    let lease = super::leases::try_hold(
        store,
        &format!("discovery:{}", provider.name),
        &config.instance_name,
        &token,
        config.lease_seconds,
    )
    .await
    .map_err(|error| DiscoveryError::Store {
        provider: provider.name.clone(),
        error,
    })?;
    let Some(lease) = lease else {
        return Ok(None);
    };
    let found = discover(config, index, store, limits).await;
    lease.release().await;
    found.map(Some)
}

/// Discover a provider's repositories now and then on its `discover_schedule`; after a rate-limit hold, not
/// before it ends. Stops when the provider goes away in a reload.
pub(super) async fn discovery_loop(
    shared: Arc<Shared>,
    name: String,
    found: mpsc::Sender<(String, Vec<RepoConfig>)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let config = shared.config();
        let Some(index) = config.providers.iter().position(|p| p.name == name) else {
            return;
        };
        let provider = &config.providers[index];
        let limits = shared.budgets.get(provider);
        // One instance at a time discovers a provider (its leader lease); the others mirror what the
        // database lists, as the leader records it.
        let lease = super::leases::take(&shared, &format!("discovery:{name}"), false).await;
        let follower = lease.is_none();
        let mut sent: Option<Vec<String>> = None;
        let run = match lease {
            // Shutdown must not wait for a discovery (it may be waiting out a rate limit).
            Some(lease) => {
                let r = tokio::select! {
                    r = discover(&config, index, &shared.store, limits.clone()) => r,
                    _ = stop.changed() => return,
                };
                lease.release().await;
                r
            }
            None => Ok(Discovered {
                repos: Vec::new(),
                errors: Vec::new(),
            }),
        };
        match run {
            Ok(d) => {
                for e in &d.errors {
                    tracing::warn!(provider = %name, "discovery incomplete (nothing marked removed): {e}");
                }
                // The database knows the full set (a partial run removed nothing): mirror what it lists.
                let repos = match discovered_repos(&shared.reader, provider) {
                    Ok(known) => Some(known),
                    Err(e) => {
                        tracing::error!(provider = %name, "cannot read discovered repositories: {e}");
                        // Another instance discovers (this one found nothing itself): keep what runs.
                        (!d.repos.is_empty()).then_some(d.repos)
                    }
                };
                if let Some(repos) = repos {
                    sent = Some(list_key(&repos));
                    if found.send((name.clone(), repos)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(provider = %name, "discovery failed (repositories unchanged): {e}")
            }
        }
        let now = Utc::now();
        let mut wait = match provider.discover_schedule.next_after(now) {
            Some(next) => (next - now).to_std().unwrap_or(Duration::ZERO),
            None => provider.discover_schedule.period(),
        };
        if let Some(hold) = limits.hold() {
            wait = wait.max((hold.until - now).to_std().unwrap_or(Duration::ZERO));
        }
        // Another instance discovers: it records what it finds a moment after this read (or a long run
        // later). Until the next firing, read the catalog's list every half lease period and mirror it
        // when it changed, so a repository found there is polled by the instance that prefers it.
        let follow = Duration::from_secs(config.lease_seconds / 2).max(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let step = if follower { left.min(follow) } else { left };
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = stop.changed() => return,
            }
            if !follower || tokio::time::Instant::now() >= deadline {
                continue;
            }
            match discovered_repos(&shared.reader, provider) {
                Ok(known) => {
                    let ids = list_key(&known);
                    if sent.as_ref() != Some(&ids) {
                        tracing::info!(provider = %name, repos = ids.len(), "repositories discovered by another instance");
                        sent = Some(ids);
                        if found.send((name.clone(), known)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = %name, "cannot read discovered repositories: {e}")
                }
            }
        }
    }
}
