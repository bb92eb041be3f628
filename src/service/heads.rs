//! Batched head checks (`head_check = "graphql"`): instead of each repository listing its refs over git on
//! every scheduled poll, the first one of a cycle asks the host's GraphQL API for the default-branch heads of
//! all the provider's repositories at once, and the rest of the cycle reads that answer. A repository whose
//! head is still the processed commit is then done without touching git; one whose head moved, or that the
//! answer left out (missing, no access, an error), polls over git as usual. Every `head_check_full_every`
//! scheduled polls a repository lists its refs over git anyway, so an API that lags never hides a change for
//! long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{ProviderConfig, RepoConfig};
use crate::forge::api::ApiClient;
use crate::forge::graphql::Head;

use super::Budgets;

/// The heads of one provider's repositories, from one batch of requests.
#[derive(Default)]
struct Batch {
    /// When it was asked for (`None`: never).
    at: Option<Instant>,
    /// By repository path; repositories the answer left out are absent.
    heads: HashMap<String, Head>,
}

/// Each provider's latest batch.
#[derive(Default)]
pub(crate) struct HeadChecks {
    by_provider: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Batch>>>>,
}

impl HeadChecks {
    /// The head the host reports for `repo`: from the provider's batch when it is younger than `fresh`,
    /// else from a new batch over `repos` (all the provider's repositories being mirrored). `None` when the
    /// host gave none, or the batch failed (then the poll lists refs over git, and the error is logged).
    pub(crate) async fn head(
        &self,
        provider: &ProviderConfig,
        repo: &RepoConfig,
        repos: impl FnOnce() -> Vec<String>,
        budgets: &Budgets,
        fresh: Duration,
    ) -> Option<Head> {
        let batch = self
            .by_provider
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(provider.name.clone())
            .or_default()
            .clone();
        // One batch at a time per provider: the loops that wake meanwhile wait for it and read it.
        let mut batch = batch.lock().await;
        if batch.at.is_none_or(|at| at.elapsed() >= fresh) {
            let paths = repos();
            batch.at = Some(Instant::now());
            batch.heads = match ask(provider, &paths, budgets).await {
                Ok(heads) => paths
                    .into_iter()
                    .zip(heads)
                    .filter_map(|(path, head)| Some((path, head?)))
                    .collect(),
                Err(e) => {
                    tracing::warn!(provider = %provider.name, "head check over GraphQL failed (polling over git instead): {e}");
                    HashMap::new()
                }
            };
            crate::metrics::global().inc(
                "modelmirror_head_checks_total",
                &[("provider", &provider.name)],
                1.0,
            );
        }
        batch.heads.get(&repo.path).cloned()
    }
}

/// One batch of GraphQL requests for `paths`.
async fn ask(
    provider: &ProviderConfig,
    paths: &[String],
    budgets: &Budgets,
) -> Result<Vec<Option<Head>>, String> {
    let token = provider
        .credentials
        .token
        .as_ref()
        .map(|t| t.resolve())
        .transpose()
        .map_err(|e| e.to_string())?;
    let api = ApiClient::new(
        &provider.api_settings(),
        token.as_ref(),
        budgets.get(provider),
    )
    .map_err(|e| e.to_string())?;
    provider
        .kind
        .forge()
        .graphql_heads(&api, paths)
        .await
        .map_err(|e| e.to_string())
}
