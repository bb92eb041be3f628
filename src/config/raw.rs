//! Stage one: each file deserialised into raw serde structs (`deny_unknown_fields`, so a typo is an error
//! that names the file and line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) database: Option<String>,
    pub(super) database_password_file: Option<String>,
    pub(super) database_password_env: Option<String>,
    pub(super) database_max_bytes: Option<u64>,
    pub(super) schedule: Option<String>,
    pub(super) concurrency: Option<usize>,
    pub(super) max_model_bytes: Option<u64>,
    pub(super) include: Option<Vec<String>>,
    pub(super) formats: Option<Vec<String>>,
    pub(super) backfill: Option<bool>,
    pub(super) events_retention_days: Option<u32>,
    pub(super) instance_name: Option<String>,
    pub(super) lease_seconds: Option<u64>,
    pub(super) webhook: Option<RawWebhook>,
    pub(super) web: Option<RawWeb>,
    pub(super) metrics: Option<RawMetrics>,
    pub(super) log_level: Option<String>,
    pub(super) log_format: Option<String>,
    #[serde(default)]
    pub(super) providers: BTreeMap<String, RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    pub(super) listen: String,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) queue_size: Option<usize>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    pub(super) listen: String,
    pub(super) users_file: Option<String>,
    pub(super) tokens_file: Option<String>,
    pub(super) allow_anonymous: Option<bool>,
    pub(super) public_url: Option<String>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

/// A single value or a list of them (`webhook_secret_file = "a"` or `= ["a", "b"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) kind: String,
    pub(super) url: Option<String>,
    pub(super) username: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) ssh_key_file: Option<String>,
    pub(super) known_hosts_file: Option<String>,
    #[serde(default)]
    pub(super) repos: Vec<String>,
    pub(super) schedule: Option<String>,
    pub(super) backfill: Option<bool>,
    pub(super) groups: Option<Vec<String>>,
    pub(super) workspaces: Option<Vec<String>>,
    pub(super) projects: Option<Vec<String>>,
    pub(super) orgs: Option<Vec<String>>,
    #[serde(default)]
    pub(super) include: Vec<String>,
    #[serde(default)]
    pub(super) exclude: Vec<String>,
    pub(super) discover_schedule: Option<String>,
    pub(super) prune_removed: Option<bool>,
    pub(super) max_requests_per_hour: Option<u32>,
    pub(super) connect_timeout: Option<u64>,
    pub(super) read_timeout: Option<u64>,
    pub(super) ca_file: Option<String>,
    pub(super) proxy: Option<String>,
    pub(super) api_url: Option<String>,
    pub(super) webhook_secret_file: Option<OneOrMany>,
    pub(super) webhook_secret_env: Option<OneOrMany>,
    pub(super) allow_unsigned_webhooks: Option<bool>,
    pub(super) commit_status: Option<bool>,
    pub(super) status_context: Option<String>,
    pub(super) head_check: Option<String>,
    pub(super) head_check_full_every: Option<u32>,
}

pub(super) fn parse_file(path: &Path, text: &str) -> Result<RawFile, ConfigError> {
    toml::from_str::<RawFile>(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
