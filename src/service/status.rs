//! Commit statuses (`commit_status = true`): after a poll processes commits, one status on the new head (not
//! on every backfilled commit) tells the modeler, on the Git host, whether every model was read. Outbound only,
//! so it works behind a firewall. Posted in the background: a slow or failing host never fails or delays a
//! poll. A post that fails for a passing reason (network, rate limit, server error) is tried again with
//! back-off, from the provider's request budget; every outcome is recorded in `events` and counted in metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::state::ConfigHandle;

use crate::config::{Config, ProviderConfig, RepoConfig};
use crate::forge::api::{ApiClient, ApiError, Limits};
use crate::forge::status::{CommitStatus, StatusState};
use crate::poll::PollOutcome;
use crate::store::{ModelRow, StatusRecord, Store};

/// The waits before the second, third, … attempt of a post that failed for a passing reason.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(300),
];
/// The longest a rate-limit hold is waited out before the next attempt.
const MAX_HOLD_WAIT: Duration = Duration::from_secs(3600);
/// What a post that the process's end cut short records.
const STOPPED: &str =
    "not posted: modelmirror stopped before the host answered (the next new commit gets a status)";
/// How many failed models a status names (the host cuts the description anyway).
const MAX_NAMED: usize = 5;

/// The REST request budget and rate-limit hold of each provider, shared by everything in the process that
/// calls its API (discovery and statuses), so together they stay within `max_requests_per_hour`.
#[derive(Default)]
pub(crate) struct Budgets {
    by_provider: Mutex<HashMap<String, Arc<Limits>>>,
}

impl Budgets {
    /// The provider's budget; a new one when its `max_requests_per_hour` changed.
    pub(crate) fn get(&self, provider: &ProviderConfig) -> Arc<Limits> {
        let mut all = self.by_provider.lock().unwrap_or_else(|p| p.into_inner());
        let limits = all
            .entry(provider.name.clone())
            .or_insert_with(|| Limits::new(provider.max_requests_per_hour));
        if limits.max_per_hour() != provider.max_requests_per_hour {
            *limits = renewed(limits, provider.max_requests_per_hour);
        }
        limits.clone()
    }

    /// Start the provider's budget afresh (its settings changed in a reload); a rate-limit hold the host
    /// imposed stays.
    pub(crate) fn reset(&self, provider: &str) {
        let mut all = self.by_provider.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(limits) = all.get_mut(provider) {
            *limits = renewed(limits, limits.max_per_hour());
        }
    }
}

/// A fresh budget of `max_per_hour` that keeps `old`'s hold, if any.
fn renewed(old: &Limits, max_per_hour: u32) -> Arc<Limits> {
    let new = Limits::new(max_per_hour);
    if let Some(hold) = old.hold() {
        new.hold_until(hold.until, hold.reason);
    }
    new
}

/// The statuses being posted.
pub(crate) struct Statuses {
    /// Where outcomes are recorded.
    store: Arc<Store>,
    /// Where the models of a head are read (a reader that never waits for the writer, in the service).
    reader: Arc<Store>,
    budgets: Arc<Budgets>,
    /// The configuration in force (the service's, which a reload swaps): a retry after a reload uses the
    /// provider's new settings, and stops when `commit_status` was turned off. `None`: the one given (sync).
    live: Option<ConfigHandle>,
    /// Set when the process stops: posts still waiting give up and say so.
    stop: watch::Sender<bool>,
    /// The posts in flight, so a one-shot `sync` can wait for them before it exits.
    tasks: Mutex<JoinSet<()>>,
}

/// How long posts that are told to stop may take to record that they did.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Statuses {
    pub(crate) fn new(
        store: Arc<Store>,
        reader: Arc<Store>,
        budgets: Arc<Budgets>,
        live: Option<ConfigHandle>,
    ) -> Arc<Statuses> {
        Arc::new(Statuses {
            store,
            reader,
            budgets,
            live,
            stop: watch::channel(false).0,
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    /// After a poll of `repo` that ended with `outcome`: when the repository's provider asks for commit
    /// statuses, describe the new head now (before the repository's next poll can change its catalog) and
    /// post it in the background.
    pub(crate) async fn after_poll(
        self: &Arc<Self>,
        config: &Config,
        repo: &RepoConfig,
        outcome: &PollOutcome,
    ) {
        let PollOutcome::Updated { commit, branch, .. } = outcome else {
            return;
        };
        let Some(provider) = config.provider(repo).filter(|p| p.commit_status).cloned() else {
            return;
        };
        let (reader, id) = (self.reader.clone(), repo.id.clone());
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((
                reader.repo_state(&id)?.commit,
                reader.models(Some(&id))?,
            ))
        })
        .await;
        let models = match read {
            // Another process (a `sync` beside the service) moved the repository on meanwhile: its own
            // poll posts for the newer head.
            Ok(Ok((head, _))) if head.as_deref() != Some(commit.as_str()) => {
                tracing::info!(repo = %repo.id, commit = %commit, "no commit status: the repository has moved on meanwhile");
                return;
            }
            Ok(Ok((_, models))) => models,
            Ok(Err(e)) => {
                tracing::error!(repo = %repo.id, "cannot read the models for the commit status: {e}");
                return;
            }
            Err(e) => {
                tracing::error!(repo = %repo.id, "commit status task failed: {e}");
                return;
            }
        };
        let (state, description) = describe(&models);
        let public_url = config.web.as_ref().and_then(|w| w.public_url.as_deref());
        let status = CommitStatus {
            repo_path: repo.path.clone(),
            sha: commit.clone(),
            branch: branch.clone(),
            state,
            context: provider.status_context.clone(),
            description,
            target_url: public_url.map(|u| catalog_link(u, &repo.id, commit)),
            repo_page: provider
                .kind
                .forge()
                .repo_page(&provider.base_url, &repo.path),
        };
        let (this, repo) = (self.clone(), repo.clone());
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the posts that ended.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move { this.post(provider, &repo, status).await });
    }

    /// Wait for the posts in flight, `within` at most; then tell those left to stop, and let them record
    /// that they did (a one-shot `sync` before it exits).
    pub(crate) async fn finish(&self, within: Duration) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(
                "gave up waiting for commit statuses after {}s",
                within.as_secs()
            );
            self.stop.send_replace(true);
            let _ = tokio::time::timeout(STOP_GRACE, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
        }
    }

    /// Tell the posts in flight to stop, and let them record that they did (the service's shutdown).
    pub(crate) async fn stop(&self) {
        self.signal_stop();
        self.finish(STOP_GRACE).await;
    }

    /// Tell the posts in flight to stop; they record that they did as they end.
    pub(crate) fn signal_stop(&self) {
        self.stop.send_replace(true);
    }

    /// The provider's settings in force now; `None` when it no longer posts statuses.
    fn current(&self, provider: &ProviderConfig) -> Option<ProviderConfig> {
        match &self.live {
            None => Some(provider.clone()),
            Some(handle) => super::state::current(handle)
                .providers
                .iter()
                .find(|p| p.name == provider.name && p.commit_status)
                .cloned(),
        }
    }

    /// Post `status`, trying again after passing failures, and record what came of it.
    async fn post(&self, provider: ProviderConfig, repo: &RepoConfig, status: CommitStatus) {
        let metrics = crate::metrics::global();
        let mut stop = self.stop.subscribe();
        let mut attempts = 0u32;
        let result = loop {
            let Some(provider) = self.current(&provider) else {
                break Err(
                    "not posted: commit_status was turned off (or the provider removed) meanwhile"
                        .to_string(),
                );
            };
            if *stop.borrow() {
                break Err(STOPPED.to_string());
            }
            attempts += 1;
            // The token is read for each attempt, so a rotated one applies at once.
            let token = match provider
                .credentials
                .token
                .as_ref()
                .map(|t| t.resolve())
                .transpose()
            {
                Ok(t) => t,
                Err(e) => break Err(e.to_string()),
            };
            let limits = self.budgets.get(&provider);
            let api = match ApiClient::new(&provider.api_settings(), token.as_ref(), limits) {
                Ok(api) => api,
                Err(e) => break Err(e.to_string()),
            };
            let posted = tokio::select! {
                r = crate::forge::status::post(provider.kind.forge(), &api, &status) => r,
                _ = stop.wait_for(|s| *s) => break Err(STOPPED.to_string()),
            };
            let error = match posted {
                Ok(posted) => break Ok(posted),
                Err(e) => e,
            };
            let Some(delay) = RETRY_DELAYS
                .get(attempts as usize - 1)
                .filter(|_| error.is_transient())
            else {
                break Err(error.to_string());
            };
            let wait = match &error {
                ApiError::RateLimited { until, .. } => (*until - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .clamp(*delay, MAX_HOLD_WAIT),
                _ => *delay,
            };
            tracing::warn!(repo = %repo.id, commit = %status.sha, "commit status not posted (trying again in {}s): {error}", wait.as_secs());
            metrics.inc(
                "modelmirror_commit_statuses_total",
                &[("provider", &provider.name), ("outcome", "retried")],
                1.0,
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => break Err(format!("{STOPPED} (after: {error})")),
            }
        };
        let (outcome, error) = match &result {
            Ok(posted) => (posted.as_str(), None),
            Err(e) => ("failed", Some(e.as_str())),
        };
        match error {
            None => {
                tracing::info!(repo = %repo.id, commit = %status.sha, state = status.state.as_str(), "commit status {outcome}")
            }
            Some(e) => {
                tracing::warn!(repo = %repo.id, commit = %status.sha, "commit status failed: {e}")
            }
        }
        metrics.inc(
            "modelmirror_commit_statuses_total",
            &[("provider", &provider.name), ("outcome", outcome)],
            1.0,
        );
        let store = self.store.clone();
        let (repo_id, provider_name, error) = (
            repo.id.clone(),
            provider.name.clone(),
            error.map(str::to_string),
        );
        let recorded = tokio::task::spawn_blocking(move || {
            store.record_status(&StatusRecord {
                repo_id: &repo_id,
                provider: &provider_name,
                commit: &status.sha,
                state: status.state.as_str(),
                description: &status.description,
                target_url: status.target_url.as_deref(),
                outcome,
                attempts,
                error: error.as_deref(),
            })
        })
        .await;
        if let Ok(Err(e)) = recorded {
            tracing::error!(repo = %repo.id, "cannot record the commit status: {e}");
        }
    }
}

/// What a status says of a head whose catalog holds `models`: success with the counts when every model was
/// read, else failure naming the files that were not (parse errors with line and column, files skipped).
pub(crate) fn describe(models: &[ModelRow]) -> (StatusState, String) {
    let n = models.len();
    let plural =
        |k: usize, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
    let mut failed: Vec<&ModelRow> = models.iter().filter(|m| m.status != "ok").collect();
    if failed.is_empty() {
        let entities: i64 = models.iter().map(|m| m.entities).sum();
        return (
            StatusState::Success,
            format!(
                "{}, {}",
                plural(n, "model", "models"),
                plural(usize::try_from(entities).unwrap_or(0), "entity", "entities")
            ),
        );
    }
    failed.sort_by(|a, b| a.path.cmp(&b.path));
    let skipped = failed.iter().any(|m| m.status == "skipped");
    let mut text = format!(
        "{} of {} failed to parse{}: ",
        failed.len(),
        plural(n, "model", "models"),
        if skipped { " or were skipped" } else { "" }
    );
    let named: Vec<String> = failed
        .iter()
        .take(MAX_NAMED)
        .map(|m| {
            let why = m.error.as_deref().unwrap_or("no reason recorded");
            match m.status.as_str() {
                "skipped" => format!("{} skipped: {why}", m.path),
                _ => format!("{} {why}", m.path),
            }
        })
        .collect();
    text.push_str(&named.join("; "));
    if failed.len() > MAX_NAMED {
        text.push_str(&format!("; and {} more", failed.len() - MAX_NAMED));
    }
    // Hosts show it as plain text; control characters from file names or messages go.
    let text = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    (StatusState::Failure, text)
}

/// The web catalog's page of a repository's models at `commit`.
fn catalog_link(public_url: &str, repo: &str, commit: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("repo", repo)
        .append_pair("commit", commit)
        .finish();
    format!("{}/models?{query}", public_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(path: &str, status: &str, entities: i64, error: Option<&str>) -> ModelRow {
        ModelRow {
            repo: "p/r".into(),
            path: path.into(),
            name: None,
            target: None,
            entities,
            attributes: 0,
            commit: "c".into(),
            blob: "b".into(),
            status: status.into(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn success_counts_models_and_entities() {
        let (state, text) = describe(&[row("a.json", "ok", 3, None), row("b.json", "ok", 1, None)]);
        assert_eq!(state, StatusState::Success);
        assert_eq!(text, "2 models, 4 entities");
        assert_eq!(describe(&[row("a", "ok", 1, None)]).1, "1 model, 1 entity");
        assert_eq!(describe(&[]).1, "0 models, 0 entities");
    }

    #[test]
    fn failures_name_each_file_and_skipped_ones_say_so() {
        let (state, text) = describe(&[
            row("z.json", "ok", 3, None),
            row("b.json", "error", 0, Some("line 3, column 7: expected `,`")),
            row(
                "a\u{1b}[31m.json",
                "skipped",
                0,
                Some("larger than max_model_bytes"),
            ),
        ]);
        assert_eq!(state, StatusState::Failure);
        assert_eq!(
            text,
            "2 of 3 models failed to parse or were skipped: a [31m.json skipped: larger than max_model_bytes; b.json line 3, column 7: expected `,`"
        );
        let many: Vec<ModelRow> = (0..8)
            .map(|i| row(&format!("m{i}.json"), "error", 0, Some("bad")))
            .collect();
        assert!(
            describe(&many).1.ends_with("; and 3 more"),
            "{}",
            describe(&many).1
        );
    }

    #[test]
    fn links_go_to_the_models_of_the_commit() {
        assert_eq!(
            catalog_link("https://models.example.com/", "gl/a b", "abc"),
            "https://models.example.com/models?repo=gl%2Fa+b&commit=abc"
        );
    }
}
