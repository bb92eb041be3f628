//! Configuration: the main TOML file plus every `conf.d/*.toml` beside it, read in two stages.
//!
//! Stage one deserialises each file into raw serde structs (`deny_unknown_fields`, so a typo is an error that
//! names the file and line). Stage two merges the files and validates them into [`Config`]: compiled globs,
//! parsed cron schedules, resolved repository ids and clone URLs, and credentials that are checked to resolve
//! (a token file that cannot be read is reported before the first poll, not during it).
//!
//! Nothing here touches the network or the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::model::{DEFAULT_FORMATS, FileFilter, FilterError};
use serde::Deserialize;

use crate::forge::{self, ProviderKind};
use crate::schedule::{Schedule, ScheduleError};
use crate::secret::{Secret, SecretFile, TokenSource, expand_vars};

/// Where the configuration is looked for when neither `--config` nor `MODELMIRROR_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/modelmirror/config.toml";
/// Default `state_dir`: holds the mirrors and, unless `database` says otherwise, the database.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/modelmirror";
/// Default poll schedule: every five minutes.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";
/// Default number of polls that may run at once.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default size limit of one model file (64 MiB).
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 64 * 1024 * 1024;
/// Default discovery schedule: hourly.
pub const DEFAULT_DISCOVER_SCHEDULE: &str = "0 * * * *";
/// Default connect timeout for a provider, in seconds.
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 15;
/// Default read timeout for a provider, in seconds.
pub const DEFAULT_READ_TIMEOUT: u64 = 60;

/// Everything that can be wrong with a configuration. Each message names the file (and line where the TOML
/// parser knows it) and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read configuration file {path}: {source} (pass --config PATH or set MODELMIRROR_CONFIG)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("provider `{name}` is defined twice: in {first} and in {second}; keep one of them")]
    DuplicateProvider {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("top-level key `{key}` is set in both {first} and {second}; set it in one file only")]
    DuplicateKey {
        key: &'static str,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("repository id `{id}` is configured twice (providers `{first}` and `{second}`)")]
    DuplicateRepo {
        id: String,
        first: String,
        second: String,
    },
}

// ---------------------------------------------------------------------------------------------------------
// Stage one: raw serde structs, one per file.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    state_dir: Option<PathBuf>,
    database: Option<PathBuf>,
    database_max_bytes: Option<u64>,
    schedule: Option<String>,
    concurrency: Option<usize>,
    max_model_bytes: Option<u64>,
    include: Option<Vec<String>>,
    formats: Option<Vec<String>>,
    backfill: Option<bool>,
    events_retention_days: Option<u32>,
    webhook: Option<RawWebhook>,
    metrics: Option<RawMetrics>,
    log_level: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    listen: String,
    max_body_bytes: Option<u64>,
    queue_size: Option<usize>,
}

/// A single value or a list of them (`webhook_secret_file = "a"` or `= ["a", "b"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: String,
    url: Option<String>,
    username: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
    token_env: Option<String>,
    ssh_key_file: Option<String>,
    known_hosts_file: Option<String>,
    #[serde(default)]
    repos: Vec<String>,
    schedule: Option<String>,
    backfill: Option<bool>,
    groups: Option<Vec<String>>,
    workspaces: Option<Vec<String>>,
    projects: Option<Vec<String>>,
    orgs: Option<Vec<String>>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    discover_schedule: Option<String>,
    prune_removed: Option<bool>,
    max_requests_per_hour: Option<u32>,
    connect_timeout: Option<u64>,
    read_timeout: Option<u64>,
    ca_file: Option<String>,
    proxy: Option<String>,
    api_url: Option<String>,
    webhook_secret_file: Option<OneOrMany>,
    webhook_secret_env: Option<OneOrMany>,
    allow_unsigned_webhooks: Option<bool>,
}

// ---------------------------------------------------------------------------------------------------------
// Stage two: validated types.

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main file, for messages.
    pub path: PathBuf,
    /// Every file that was read, main file first.
    pub files: Vec<PathBuf>,
    /// Mirrors live in `<state_dir>/mirrors`; the database defaults to `<state_dir>/modelmirror.db`.
    pub state_dir: PathBuf,
    pub database: PathBuf,
    /// A cap on the database's size (`database_max_bytes`): an import that would pass it fails like a full
    /// disk, keeping everything stored before, so the catalog cannot fill a disk other services need.
    pub database_max_bytes: Option<u64>,
    pub schedule: Schedule,
    /// Upper bound on polls running at once, so hundreds of repositories do not open hundreds of connections.
    pub concurrency: usize,
    /// What files are considered, and how big one may be before it is recorded as skipped.
    pub filter: FileFilter,
    pub providers: Vec<ProviderConfig>,
    /// All repositories of all providers, in configuration order.
    pub repos: Vec<RepoConfig>,
    /// Things that work but that an operator should fix (shown by `check`).
    pub warnings: Vec<String>,
    /// How long deliveries and polls are kept in the database.
    pub events_retention_days: u32,
    /// The optional webhook listener.
    pub webhook: Option<WebhookConfig>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`[metrics] listen`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `log_level` (`error` … `trace`, or a tracing filter); `RUST_LOG` wins over it.
    pub log_level: Option<String>,
    /// `log_format`: `text` (default) or `json`.
    pub log_json: bool,
}

/// `[webhook]`: where to listen for webhook nudges.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub listen: std::net::SocketAddr,
    /// Larger bodies get 413.
    pub max_body_bytes: u64,
    /// Deliveries waiting to be dispatched; when full, 503 with `Retry-After`.
    pub queue_size: usize,
}

/// The smallest `database_max_bytes` accepted: below it not even the schema fits.
pub const MIN_DATABASE_BYTES: u64 = 1 << 20;

/// Default `events_retention_days`.
pub const DEFAULT_EVENTS_RETENTION_DAYS: u32 = 30;
/// Default `[webhook] max_body_bytes` (5 MiB).
pub const DEFAULT_WEBHOOK_MAX_BODY: u64 = 5 * 1024 * 1024;
/// Default `[webhook] queue_size`.
pub const DEFAULT_WEBHOOK_QUEUE: usize = 1024;

/// One `[providers.NAME]` table.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL, without a trailing slash.
    pub base_url: String,
    /// REST API base (`api_url`, else derived from the base URL per kind); `None` for plain Git.
    pub api_url: Option<String>,
    pub credentials: Credentials,
    /// The file that defined this provider, for messages.
    pub file: PathBuf,
    /// Poll schedule of this provider's repositories.
    pub schedule: Schedule,
    pub backfill: bool,
    /// Discovery scopes: GitLab groups, Bitbucket Cloud workspaces (or `workspace/PROJECTKEY`), Bitbucket
    /// Data Center project keys, GitHub organisations or users. Empty: no discovery.
    pub discover: Vec<String>,
    /// Which discovered repositories are mirrored (globs on their paths).
    pub repo_filter: RepoFilter,
    pub discover_schedule: Schedule,
    /// Delete the data of repositories that discovery no longer finds (default: keep, marked `removed`).
    pub prune_removed: bool,
    /// REST request budget, so a large discovery cannot exhaust the host's rate limit.
    pub max_requests_per_hour: u32,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Extra CA bundle (PEM) for a server with a private CA, for git and REST.
    pub ca_file: Option<PathBuf>,
    /// Proxy for git and REST; may hold credentials, so it is a [`Secret`].
    pub proxy: Option<Secret>,
    /// Webhook secrets; several may be valid at once, so a secret can be rotated.
    pub webhook_secrets: Vec<TokenSource>,
    /// Accept webhooks without a signature (only when no secret is configured).
    pub allow_unsigned_webhooks: bool,
}

impl ProviderConfig {
    /// The configuration of one of this provider's repositories, at `path` with clone URL `url`.
    pub fn repo(&self, path: &str, url: &str) -> RepoConfig {
        RepoConfig {
            id: format!("{}/{path}", self.name),
            provider: self.name.clone(),
            path: path.to_string(),
            url: url.to_string(),
            schedule: self.schedule.clone(),
            backfill: self.backfill,
        }
    }

    /// The credentials git presents to this provider, read now (so a rotated token file applies at once).
    pub fn git_auth(&self) -> Result<crate::git::GitAuth, crate::secret::SecretError> {
        Ok(match &self.credentials.token {
            None => crate::git::GitAuth::None,
            Some(source) => self
                .kind
                .forge()
                .git_auth(self.credentials.username.as_deref(), source.resolve()?),
        })
    }

    /// What a REST client of this provider needs.
    pub fn api_settings(&self) -> crate::forge::api::ApiSettings<'_> {
        crate::forge::api::ApiSettings {
            provider: &self.name,
            kind: self.kind,
            api_url: self.api_url.as_deref(),
            username: self.credentials.username.as_deref(),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            ca_file: self.ca_file.as_deref(),
            proxy: self.proxy.as_ref(),
        }
    }

    /// Check that every secret of this provider can be read now. Returns problems (errors) and warnings.
    pub fn check_secrets(&self) -> (Vec<String>, Vec<String>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let name = &self.name;
        for s in &self.webhook_secrets {
            if let Err(e) = s.resolve() {
                errors.push(format!("provider {name}: webhook secret: {e}"));
            }
        }
        if let Some(t) = &self.credentials.token {
            if let Err(e) = t.resolve() {
                errors.push(format!("provider {name}: {e}"));
            }
            if let TokenSource::File(file) = t
                && let Ok(path) = file.path()
                && let Some(mode) = file_mode(&path)
                && mode & 0o077 != 0
            {
                warnings.push(format!(
                    "provider {name}: token_file {} is readable by group or others (mode {:o}); run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                ));
            }
        }
        for (key, path) in [
            ("ssh_key_file", &self.credentials.ssh_key_file),
            ("known_hosts_file", &self.credentials.known_hosts_file),
            ("ca_file", &self.ca_file),
        ] {
            if let Some(p) = path
                && let Err(e) = std::fs::metadata(p)
            {
                errors.push(format!("provider {name}: {key} {}: {e}", p.display()));
            }
        }
        (errors, warnings)
    }
}

fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

/// `include` / `exclude` globs on repository paths (for discovered repositories).
#[derive(Debug, Clone)]
pub struct RepoFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl RepoFilter {
    fn new(include: &[String], exclude: &[String]) -> Result<RepoFilter, String> {
        let build = |patterns: &[String], key: &str| -> Result<Option<GlobSet>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                b.add(Glob::new(p).map_err(|e| format!("{key} glob `{p}`: {e}"))?);
            }
            b.build().map(Some).map_err(|e| format!("{key} globs: {e}"))
        };
        Ok(RepoFilter {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
        })
    }

    /// Whether a repository path passes: matched by `include` (when given) and not by `exclude`.
    pub fn allows(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }
}

/// How to authenticate to a provider. The token itself is read when it is needed, so a rotated
/// `token_file` is picked up without a restart.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub token: Option<TokenSource>,
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
}

/// One repository to mirror.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// `<provider>/<path>`: the key in the database and on the command line.
    pub id: String,
    pub provider: String,
    /// Path relative to the provider, as written in `repos` (for `git` URLs: the URL's path without `.git`).
    pub path: String,
    /// Clone URL, never with credentials in it.
    pub url: String,
    pub schedule: Schedule,
    /// Whether the first import walks the whole first-parent history (true) or imports only the head.
    pub backfill: bool,
}

impl Config {
    /// Read and validate the configuration at `path` and every `*.toml` in the `conf.d/` folder beside it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut files = vec![path.to_path_buf()];
        let dir = path.parent().unwrap_or(Path::new("."));
        let conf_d = dir.join("conf.d");
        if conf_d.is_dir() {
            let mut extra = Vec::new();
            let entries = std::fs::read_dir(&conf_d).map_err(|source| ConfigError::ReadDir {
                dir: conf_d.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| ConfigError::ReadDir {
                    dir: conf_d.clone(),
                    source,
                })?;
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
                    extra.push(p);
                }
            }
            extra.sort();
            files.extend(extra);
        }
        let mut parsed = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            parsed.push((file.clone(), parse_file(file, &text)?));
        }
        validate(path, dir, parsed)
    }

    /// Validate one file's text as the main configuration at `path` (no `conf.d/`): what `load` does after
    /// reading the files. For the fuzz target and tests.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        validate(
            path,
            dir,
            vec![(path.to_path_buf(), parse_file(path, text)?)],
        )
    }

    /// Read every secret now: the errors (a token file that cannot be read, …) and warnings (a token file
    /// others may read). `run` and `sync` refuse to start on errors; `check` reports both.
    pub fn check_secrets(&self) -> (Vec<String>, Vec<String>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for p in &self.providers {
            let (e, w) = p.check_secrets();
            errors.extend(e);
            warnings.extend(w);
        }
        (errors, warnings)
    }

    /// The provider of a repository, looked up by name in this configuration (a repository loop that
    /// outlived a reload reads the provider's settings and credentials as they are now). `None` when a reload
    /// removed the provider.
    pub fn provider(&self, repo: &RepoConfig) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == repo.provider)
    }

    pub fn mirrors_dir(&self) -> PathBuf {
        self.state_dir.join("mirrors")
    }

    /// Where the bare mirror of a repository lives: `<state_dir>/mirrors/<provider>/<path>.git`.
    pub fn mirror_path(&self, repo: &RepoConfig) -> PathBuf {
        let mut p = self.mirrors_dir().join(&repo.provider);
        for seg in repo.path.split('/') {
            p.push(seg);
        }
        let mut os = p.into_os_string();
        os.push(".git");
        PathBuf::from(os)
    }
}

fn parse_file(path: &Path, text: &str) -> Result<RawFile, ConfigError> {
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

/// Take a top-level key from whichever single file sets it.
fn merge_key<T>(
    key: &'static str,
    slot: &mut Option<(T, PathBuf)>,
    value: Option<T>,
    file: &Path,
) -> Result<(), ConfigError> {
    if let Some(v) = value {
        if let Some((_, first)) = slot {
            return Err(ConfigError::DuplicateKey {
                key,
                first: first.clone(),
                second: file.to_path_buf(),
            });
        }
        *slot = Some((v, file.to_path_buf()));
    }
    Ok(())
}

/// Expand `${VAR}` in a path (so `token_file = "${CREDENTIALS_DIRECTORY}/gitlab"` works under systemd) and
/// make it absolute relative to the configuration file's folder.
/// Where the database most likely is when the configuration does not load (for `status`, which still
/// shows the service's state then): `database` or `state_dir` read from the main file alone, if that much
/// parses, else the default.
pub fn database_hint(path: &Path) -> PathBuf {
    let base = path.parent().unwrap_or(Path::new("."));
    let table = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .unwrap_or_default();
    let key = |k: &str| {
        table
            .get(k)
            .and_then(|v| v.as_str())
            .and_then(|raw| resolve_path(raw, base, path, k).ok())
    };
    key("database").unwrap_or_else(|| {
        key("state_dir")
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
            .join("modelmirror.db")
    })
}

fn resolve_path(raw: &str, base: &Path, file: &Path, key: &str) -> Result<PathBuf, ConfigError> {
    let out = expand_vars(raw).map_err(|e| invalid(file, format!("{key} = {raw:?}: {e}")))?;
    let p = PathBuf::from(out);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}

fn invalid(file: &Path, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: file.to_path_buf(),
        message,
    }
}

fn validate(
    main: &Path,
    base: &Path,
    files: Vec<(PathBuf, RawFile)>,
) -> Result<Config, ConfigError> {
    let mut state_dir = None;
    let mut database = None;
    let mut database_max_bytes = None;
    let mut schedule = None;
    let mut concurrency = None;
    let mut max_model_bytes = None;
    let mut include = None;
    let mut backfill = None;
    let mut formats = None;
    let mut events_retention_days = None;
    let mut webhook = None;
    let mut metrics = None;
    let mut log_level = None;
    let mut log_format = None;
    let mut raw_providers: BTreeMap<String, (RawProvider, PathBuf)> = BTreeMap::new();
    let mut provider_order = Vec::new();
    for (file, raw) in files {
        merge_key("state_dir", &mut state_dir, raw.state_dir, &file)?;
        merge_key("database", &mut database, raw.database, &file)?;
        merge_key(
            "database_max_bytes",
            &mut database_max_bytes,
            raw.database_max_bytes,
            &file,
        )?;
        merge_key("schedule", &mut schedule, raw.schedule, &file)?;
        merge_key("concurrency", &mut concurrency, raw.concurrency, &file)?;
        merge_key(
            "max_model_bytes",
            &mut max_model_bytes,
            raw.max_model_bytes,
            &file,
        )?;
        merge_key("include", &mut include, raw.include, &file)?;
        merge_key("backfill", &mut backfill, raw.backfill, &file)?;
        merge_key("formats", &mut formats, raw.formats, &file)?;
        merge_key(
            "events_retention_days",
            &mut events_retention_days,
            raw.events_retention_days,
            &file,
        )?;
        merge_key("webhook", &mut webhook, raw.webhook, &file)?;
        merge_key("metrics", &mut metrics, raw.metrics, &file)?;
        merge_key("log_level", &mut log_level, raw.log_level, &file)?;
        merge_key("log_format", &mut log_format, raw.log_format, &file)?;
        for (name, p) in raw.providers {
            if let Some((_, first)) = raw_providers.get(&name) {
                return Err(ConfigError::DuplicateProvider {
                    name,
                    first: first.clone(),
                    second: file.clone(),
                });
            }
            provider_order.push(name.clone());
            raw_providers.insert(name, (p, file.clone()));
        }
    }

    let mut warnings = Vec::new();
    let state_dir = match state_dir {
        Some((p, f)) => resolve_path(&p.to_string_lossy(), base, &f, "state_dir")?,
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let database = match database {
        Some((p, f)) => resolve_path(&p.to_string_lossy(), base, &f, "database")?,
        None => state_dir.join("modelmirror.db"),
    };
    let database_max_bytes = match database_max_bytes {
        Some((n, f)) if n < MIN_DATABASE_BYTES => {
            return Err(invalid(
                &f,
                format!("database_max_bytes must be at least {MIN_DATABASE_BYTES} (1 MiB)"),
            ));
        }
        Some((n, _)) => Some(n),
        None => None,
    };
    let schedule = match schedule {
        Some((s, f)) => parse_schedule(&s, &f, "schedule")?,
        None => Schedule::parse(DEFAULT_SCHEDULE).map_err(|e| invalid(main, e.to_string()))?,
    };
    let concurrency = match concurrency {
        Some((0, f)) => return Err(invalid(&f, "concurrency must be at least 1".into())),
        Some((n, _)) => n,
        None => DEFAULT_CONCURRENCY,
    };
    let max_model_bytes = match max_model_bytes {
        Some((0, f)) => return Err(invalid(&f, "max_model_bytes must be at least 1".into())),
        Some((n, _)) => n,
        None => DEFAULT_MAX_MODEL_BYTES,
    };
    let (formats, formats_file) = match formats {
        Some((v, f)) => (v, f),
        None => (
            DEFAULT_FORMATS.iter().map(|s| s.to_string()).collect(),
            main.to_path_buf(),
        ),
    };
    if formats.is_empty() {
        return Err(invalid(
            &formats_file,
            "formats is empty: name at least one of hackolade, jsonschema, avro".into(),
        ));
    }
    let (include, include_file) = match include {
        Some((v, f)) => (Some(v), f),
        None => (None, main.to_path_buf()),
    };
    if include.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid(
            &include_file,
            "include is empty, so no file would ever be considered; remove it to use the default [\"**/*.json\"]"
                .into(),
        ));
    }
    let filter =
        FileFilter::new(&formats, include.as_deref(), max_model_bytes).map_err(|e| match e {
            FilterError::UnknownFormat(_) => invalid(&formats_file, e.to_string()),
            FilterError::Glob { .. } | FilterError::Globs(_) => {
                invalid(&include_file, e.to_string())
            }
        })?;
    let backfill = backfill.map(|(b, _)| b).unwrap_or(true);
    let events_retention_days = match events_retention_days {
        Some((0, f)) => {
            return Err(invalid(
                &f,
                "events_retention_days must be at least 1".into(),
            ));
        }
        Some((n, _)) => n,
        None => DEFAULT_EVENTS_RETENTION_DAYS,
    };
    let metrics_listen = match metrics {
        None => None,
        Some((m, f)) => Some(m.listen.parse().map_err(|_| {
            invalid(
                &f,
                format!(
                    "[metrics] listen = {:?}: write an address and port, e.g. \"127.0.0.1:9464\"",
                    m.listen
                ),
            )
        })?),
    };
    let log_json = match log_format {
        None => false,
        Some((f, _)) if f == "text" => false,
        Some((f, _)) if f == "json" => true,
        Some((f, file)) => {
            return Err(invalid(
                &file,
                format!("log_format = {f:?}: use \"text\" or \"json\""),
            ));
        }
    };
    let log_level = log_level.map(|(l, _)| l);
    let webhook = match webhook {
        None => None,
        Some((w, f)) => {
            let listen = w.listen.parse().map_err(|_| {
                invalid(
                    &f,
                    format!(
                        "[webhook] listen = {:?}: write an address and port, e.g. \"0.0.0.0:8080\"",
                        w.listen
                    ),
                )
            })?;
            Some(WebhookConfig {
                listen,
                max_body_bytes: w
                    .max_body_bytes
                    .filter(|n| *n > 0)
                    .unwrap_or(DEFAULT_WEBHOOK_MAX_BODY),
                queue_size: w
                    .queue_size
                    .filter(|n| *n > 0)
                    .unwrap_or(DEFAULT_WEBHOOK_QUEUE),
            })
        }
    };

    let mut providers = Vec::new();
    let mut repos: Vec<RepoConfig> = Vec::new();
    let mut seen_ids: BTreeMap<String, String> = BTreeMap::new();
    for name in provider_order {
        let Some((raw, file)) = raw_providers.remove(&name) else {
            continue;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(
                &file,
                format!(
                    "[providers.{name}]: a provider name may hold only lowercase letters, digits and `-`"
                ),
            ));
        }
        let kind = ProviderKind::parse(&raw.kind).ok_or_else(|| {
            invalid(
                &file,
                format!(
                    "[providers.{name}] kind = {:?}: use one of gitlab, bitbucket-cloud, bitbucket-datacenter, github, git",
                    raw.kind
                ),
            )
        })?;
        let base_url = forge::base_url(kind, raw.url.as_deref(), base).map_err(|m| {
            let shown = raw
                .url
                .as_deref()
                .map(crate::redact::redact_url)
                .unwrap_or_default();
            invalid(&file, format!("[providers.{name}] url {shown:?}: {m}"))
        })?;

        let mut sources = Vec::new();
        if let Some(t) = raw.token {
            sources.push(TokenSource::Literal(Secret::new(t)));
            warnings.push(format!(
                "{}: [providers.{name}] has a literal `token`; move it to token_file (or a systemd credential) so it is not in the configuration",
                file.display()
            ));
        }
        if let Some(f) = &raw.token_file {
            sources.push(TokenSource::File(SecretFile::new(f, base)));
        }
        if let Some(e) = raw.token_env {
            sources.push(TokenSource::Env(e));
        }
        if sources.len() > 1 {
            return Err(invalid(
                &file,
                format!("[providers.{name}]: set only one of token, token_file and token_env"),
            ));
        }
        let token = sources.pop();
        if let Some(u) = &raw.username
            && (u.chars().any(char::is_control) || u.contains(':'))
        {
            return Err(invalid(
                &file,
                format!("[providers.{name}] username may not hold `:` or control characters"),
            ));
        }
        let credentials = Credentials {
            username: raw.username.filter(|u| !u.is_empty()),
            token,
            ssh_key_file: raw
                .ssh_key_file
                .as_deref()
                .map(|p| resolve_path(p, base, &file, "ssh_key_file"))
                .transpose()?,
            known_hosts_file: raw
                .known_hosts_file
                .as_deref()
                .map(|p| resolve_path(p, base, &file, "known_hosts_file"))
                .transpose()?,
        };
        let provider_schedule = match &raw.schedule {
            Some(s) => parse_schedule(s, &file, &format!("[providers.{name}] schedule"))?,
            None => schedule.clone(),
        };
        let forge = kind.forge();
        let mut discover = Vec::new();
        for (key, value) in [
            ("groups", raw.groups),
            ("workspaces", raw.workspaces),
            ("projects", raw.projects),
            ("orgs", raw.orgs),
        ] {
            let Some(value) = value else { continue };
            if forge.scopes_key() != Some(key) {
                let hint = match forge.scopes_key() {
                    Some(k) => format!("kind {} discovers with `{k}`", kind.as_str()),
                    None => format!("kind {} has no discovery; list `repos`", kind.as_str()),
                };
                return Err(invalid(
                    &file,
                    format!("[providers.{name}] `{key}` does not apply: {hint}"),
                ));
            }
            for scope in &value {
                if scope.trim().is_empty() || scope.contains("..") {
                    return Err(invalid(
                        &file,
                        format!("[providers.{name}] {key} entry {scope:?} is not a valid name"),
                    ));
                }
            }
            discover = value;
        }
        if (!raw.include.is_empty() || !raw.exclude.is_empty()) && discover.is_empty() {
            warnings.push(format!(
                "{}: [providers.{name}] include/exclude filter discovered repositories, but no discovery scope is set",
                file.display()
            ));
        }
        let repo_filter = RepoFilter::new(&raw.include, &raw.exclude)
            .map_err(|m| invalid(&file, format!("[providers.{name}] {m}")))?;
        let discover_schedule = parse_schedule(
            raw.discover_schedule
                .as_deref()
                .unwrap_or(DEFAULT_DISCOVER_SCHEDULE),
            &file,
            &format!("[providers.{name}] discover_schedule"),
        )?;
        let max_requests_per_hour = match raw.max_requests_per_hour {
            Some(0) => {
                return Err(invalid(
                    &file,
                    format!("[providers.{name}] max_requests_per_hour must be at least 1"),
                ));
            }
            Some(n) => n,
            None => forge.default_requests_per_hour(),
        };
        let seconds = |v: Option<u64>, default: u64, key: &str| match v {
            Some(0) => Err(invalid(
                &file,
                format!("[providers.{name}] {key} must be at least 1 second"),
            )),
            Some(n) => Ok(Duration::from_secs(n)),
            None => Ok(Duration::from_secs(default)),
        };
        let connect_timeout = seconds(
            raw.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
            "connect_timeout",
        )?;
        let read_timeout = seconds(raw.read_timeout, DEFAULT_READ_TIMEOUT, "read_timeout")?;
        let ca_file = raw
            .ca_file
            .as_deref()
            .map(|p| resolve_path(p, base, &file, "ca_file"))
            .transpose()?;
        let proxy = match raw
            .proxy
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            Some(p) => {
                let scheme_ok = ["http://", "https://"].iter().any(|s| p.starts_with(s));
                if !scheme_ok {
                    return Err(invalid(
                        &file,
                        format!(
                            "[providers.{name}] proxy {:?}: write it as http://[user:pass@]host:port",
                            crate::redact::redact_url(p)
                        ),
                    ));
                }
                Some(Secret::new(p.to_string()))
            }
            None => None,
        };
        let api_url = match raw
            .api_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            Some(u) => Some(u.trim_end_matches('/').to_string()),
            None => forge.api_url(&base_url),
        };
        if api_url.is_none() && !discover.is_empty() {
            return Err(invalid(
                &file,
                format!("[providers.{name}] discovery needs a REST API"),
            ));
        }
        if raw.repos.is_empty() && discover.is_empty() {
            warnings.push(format!(
                "{}: [providers.{name}] lists no repos and no discovery scope, so nothing is mirrored from it",
                file.display()
            ));
        }
        let mut webhook_secrets = Vec::new();
        for f in raw
            .webhook_secret_file
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
        {
            webhook_secrets.push(TokenSource::File(SecretFile::new(&f, base)));
        }
        for e in raw
            .webhook_secret_env
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
        {
            webhook_secrets.push(TokenSource::Env(e));
        }
        let allow_unsigned_webhooks = raw.allow_unsigned_webhooks.unwrap_or(false);
        if allow_unsigned_webhooks && !webhook_secrets.is_empty() {
            return Err(invalid(
                &file,
                format!(
                    "[providers.{name}] sets both a webhook secret and allow_unsigned_webhooks: a provider with a secret always verifies; remove allow_unsigned_webhooks"
                ),
            ));
        }
        if webhook.is_some()
            && forge.event_header().is_some()
            && webhook_secrets.is_empty()
            && !allow_unsigned_webhooks
        {
            return Err(invalid(
                &file,
                format!(
                    "[providers.{name}] has no webhook_secret_file or webhook_secret_env while [webhook] is on: set the secret configured on the host, or allow_unsigned_webhooks = true"
                ),
            ));
        }
        let provider = ProviderConfig {
            name: name.clone(),
            kind,
            base_url,
            api_url,
            credentials,
            file: file.clone(),
            schedule: provider_schedule,
            backfill: raw.backfill.unwrap_or(backfill),
            discover,
            repo_filter,
            discover_schedule,
            prune_removed: raw.prune_removed.unwrap_or(false),
            max_requests_per_hour,
            connect_timeout,
            read_timeout,
            ca_file,
            proxy,
            webhook_secrets,
            allow_unsigned_webhooks,
        };
        let ssh_ready = provider.credentials.ssh_key_file.is_some()
            && provider.credentials.known_hosts_file.is_some();
        if provider.credentials.token.is_some() && provider.base_url.starts_with("http://") {
            warnings.push(format!(
                "{}: [providers.{name}] url is http://: the token travels unencrypted; use https",
                file.display()
            ));
        }
        for entry in &raw.repos {
            let is_ssh = entry.starts_with("ssh://")
                || (!entry.contains("://") && entry.contains('@') && entry.contains(':'));
            if is_ssh && !ssh_ready {
                return Err(invalid(
                    &file,
                    format!(
                        "[providers.{name}] repos entry {:?} is an ssh URL: set ssh_key_file and known_hosts_file",
                        crate::redact::redact_url(entry)
                    ),
                ));
            }
            let resolved = forge::resolve_repo(kind, &provider.base_url, entry).map_err(|m| {
                invalid(
                    &file,
                    format!(
                        "[providers.{name}] repos entry {:?}: {m}",
                        crate::redact::redact_url(entry)
                    ),
                )
            })?;
            let repo = provider.repo(&resolved.path, &resolved.url);
            if let Some(first) = seen_ids.insert(repo.id.clone(), name.clone()) {
                return Err(ConfigError::DuplicateRepo {
                    id: repo.id,
                    first,
                    second: name.clone(),
                });
            }
            repos.push(repo);
        }
        providers.push(provider);
    }

    let mut all_files = vec![main.to_path_buf()];
    all_files.extend(
        providers
            .iter()
            .map(|p| p.file.clone())
            .filter(|f| f != main),
    );
    all_files.dedup();
    Ok(Config {
        path: main.to_path_buf(),
        files: all_files,
        state_dir,
        database,
        database_max_bytes,
        schedule,
        concurrency,
        filter,
        providers,
        repos,
        warnings,
        events_retention_days,
        webhook,
        metrics_listen,
        log_level,
        log_json,
    })
}

fn parse_schedule(text: &str, file: &Path, key: &str) -> Result<Schedule, ConfigError> {
    Schedule::parse(text)
        .map_err(|e: ScheduleError| invalid(file, format!("{key} = {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Every key the configuration accepts is described in config.example.toml, in its own table (set, or
    /// commented out with its default), and in a row of one of the README's tables. The accepted keys come
    /// from the parser itself: an unknown key's error lists every expected one, so a key added to the code
    /// without documentation fails here.
    #[test]
    fn every_key_is_documented_in_the_example_and_readme() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = std::fs::read_to_string(root.join("config.example.toml")).unwrap();
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        // The example's text per table: "" (top level), "webhook", "metrics", "providers".
        let mut sections: BTreeMap<String, String> = BTreeMap::new();
        let mut current = String::new();
        for line in example.lines() {
            let header = line
                .trim_start_matches("# ")
                .strip_prefix('[')
                .and_then(|rest| {
                    rest.split([']', '.'])
                        .next()
                        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase()))
                });
            if let Some(name) = header {
                current = name.to_string();
            }
            let text = sections.entry(current.clone()).or_default();
            text.push('\n');
            text.push_str(line);
        }
        // The first cell of every README table row.
        let rows: Vec<&str> = readme
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .collect();
        let path = Path::new("/etc/modelmirror/config.toml");
        let tables = [
            ("", "zz_unknown = 1\n"),
            (
                "webhook",
                "[webhook]\nlisten = \"127.0.0.1:0\"\nzz_unknown = 1\n",
            ),
            (
                "metrics",
                "[metrics]\nlisten = \"127.0.0.1:0\"\nzz_unknown = 1\n",
            ),
            (
                "providers",
                "[providers.x]\nkind = \"git\"\nzz_unknown = 1\n",
            ),
        ];
        let (mut checked, mut missing) = (0, Vec::new());
        for (table, text) in tables {
            let err = Config::from_text(path, text).unwrap_err().to_string();
            let expected = err
                .split_once("expected one of ")
                .or_else(|| err.split_once("expected "))
                .unwrap_or_else(|| panic!("{table}: no list of keys in {err}"))
                .1;
            let section = sections.get(table).map(String::as_str).unwrap_or_default();
            for key in expected.split(',').filter_map(|k| k.split('`').nth(1)) {
                let is_table =
                    ["webhook", "metrics", "providers"].contains(&key) && table.is_empty();
                let in_example = if is_table {
                    sections.contains_key(key)
                } else {
                    [format!("\n{key} ="), format!("\n# {key} =")]
                        .iter()
                        .any(|form| section.contains(form.as_str()))
                };
                if !in_example {
                    missing.push(format!("[{table}] {key} is not in config.example.toml"));
                }
                let forms = if is_table {
                    vec![format!("`[{key}]"), format!("`[{key}.")]
                } else if table.is_empty() || table == "providers" {
                    vec![format!("`{key}`")]
                } else {
                    vec![format!("`[{table}] {key}`"), format!("`[{table}] {key}`,")]
                };
                let in_readme = rows
                    .iter()
                    .any(|cell| forms.iter().any(|f| cell.contains(f.as_str())))
                    || (table == "webhook"
                        && rows.iter().any(|cell| {
                            cell.starts_with("`[webhook]") && cell.contains(&format!("`{key}`"))
                        }));
                if !in_readme {
                    missing.push(format!("[{table}] {key} is not in a README table"));
                }
                checked += 1;
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
        assert!(checked > 30, "only {checked} keys found");
        // And the example itself is a valid configuration.
        if let Err(e) = Config::from_text(path, &example) {
            panic!("config.example.toml does not load: {e}");
        }
    }

    #[test]
    fn defaults_and_repo_ids() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[providers.gl]\nkind = \"gitlab\"\nrepos = [\"group/sub/project\"]\n",
        );
        let c = Config::load(&main).unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            c.database,
            PathBuf::from(DEFAULT_STATE_DIR).join("modelmirror.db")
        );
        assert_eq!(c.concurrency, 4);
        assert_eq!(c.filter.max_model_bytes, 64 * 1024 * 1024);
        assert!(c.filter.matches("a/b/c.json") && c.filter.matches("top.json"));
        assert!(!c.filter.matches("a/b/c.yaml"));
        assert_eq!(c.repos[0].id, "gl/group/sub/project");
        assert_eq!(c.repos[0].url, "https://gitlab.com/group/sub/project.git");
        assert_eq!(
            c.mirror_path(&c.repos[0]),
            PathBuf::from("/var/lib/modelmirror/mirrors/gl/group/sub/project.git")
        );
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "state_dir = \"/tmp/x\"\n\n[providers.gl]\nkind = \"gitlab\"\nrepoz = [\"a/b\"]\n",
        );
        let e = Config::load(&main).unwrap_err().to_string();
        assert!(e.contains("config.toml:5:"), "{e}");
        assert!(e.contains("repoz"), "{e}");
    }

    #[test]
    fn provider_defined_twice_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "config.toml", "state_dir = \"s\"\n");
        write(
            dir.path(),
            "conf.d/a.toml",
            "[providers.gl]\nkind = \"gitlab\"\n",
        );
        write(
            dir.path(),
            "conf.d/b.toml",
            "[providers.gl]\nkind = \"github\"\n",
        );
        let e = Config::load(&main).unwrap_err().to_string();
        assert!(
            e.contains("a.toml") && e.contains("b.toml") && e.contains("`gl`"),
            "{e}"
        );
    }

    #[test]
    fn conf_d_merges_and_relative_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "state_dir = \"state\"\nschedule = \"0 * * * *\"\n",
        );
        write(dir.path(), "token", "s3cret\n");
        write(
            dir.path(),
            "conf.d/gh.toml",
            "[providers.gh]\nkind = \"github\"\ntoken_file = \"token\"\nschedule = \"*/10 * * * * *\"\nrepos = [\"o/r\"]\n",
        );
        let c = Config::load(&main).unwrap();
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(c.repos[0].id, "gh/o/r");
        assert_eq!(c.repos[0].schedule.period(), Duration::from_secs(10));
        assert_eq!(c.schedule.period(), Duration::from_secs(3600));
        let tok = c.providers[0]
            .credentials
            .token
            .as_ref()
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(tok.expose(), "s3cret");
        assert!(!format!("{:?}", c).contains("s3cret"));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("[providers.GL]\nkind = \"gitlab\"\n", "lowercase"),
            ("[providers.gl]\nkind = \"gitlub\"\n", "use one of"),
            ("schedule = \"every minute\"\n", "schedule"),
            ("concurrency = 0\n", "concurrency"),
            (
                "[providers.d]\nkind = \"bitbucket-datacenter\"\nrepos = [\"P/r\"]\n",
                "url",
            ),
            (
                "[providers.g]\nkind = \"gitlab\"\nrepos = [\"../etc\"]\n",
                "..",
            ),
            (
                "[providers.g]\nkind = \"git\"\nrepos = [\"https://u:p@h/x.git\"]\n",
                "token_file",
            ),
            (
                "[providers.g]\nkind = \"gitlab\"\nurl = \"https://u:p@h\"\n",
                "token_file",
            ),
            ("include = [\"[\"]\n", "include"),
            ("state_dir = 3\n", "config.toml:1:"),
            ("this is not toml", "config.toml:1:"),
        ];
        for (text, needle) in cases {
            let main = write(dir.path(), "config.toml", text);
            let e = Config::load(&main).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e}");
            assert!(!e.contains("u:p@"), "{e}");
        }
    }

    #[test]
    fn literal_token_warns_and_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[providers.g]\nkind = \"github\"\ntoken = \"ghp_literal\"\nrepos = [\"o/r\"]\n",
        );
        let c = Config::load(&main).unwrap();
        assert!(c.warnings.iter().any(|w| w.contains("literal")));
        assert!(!format!("{c:?}").contains("ghp_literal"));
    }

    #[test]
    fn secrets_are_checked_apart_from_parsing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[providers.g]\nkind = \"gitlab\"\ntoken_file = \"missing\"\n[providers.h]\nkind = \"github\"\ntoken_file = \"open\"\n[providers.e]\nkind = \"github\"\ntoken_env = \"MODELMIRROR_TEST_UNSET_VAR\"\n",
        );
        let open = write(dir.path(), "open", "tok\n");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(&main).unwrap();
        let (errors, warnings) = c.check_secrets();
        assert_eq!(errors.len(), 2, "{errors:?}");
        let has = |a: &str, b: &str| errors.iter().any(|e| e.contains(a) && e.contains(b));
        assert!(has("provider g", "cannot read token_file"), "{errors:?}");
        assert!(has("MODELMIRROR_TEST_UNSET_VAR", "not set"), "{errors:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("readable by group or others")
                && warnings[0].contains("chmod 600")
        );
    }

    #[test]
    fn discovery_keys_belong_to_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(
            dir.path(),
            "config.toml",
            "[providers.g]\nkind = \"gitlab\"\norgs = [\"x\"]\n",
        );
        let e = Config::load(&main).unwrap_err().to_string();
        assert!(
            e.contains("`orgs` does not apply") && e.contains("`groups`"),
            "{e}"
        );
        let main = write(
            dir.path(),
            "config.toml",
            "[providers.g]\nkind = \"gitlab\"\ngroups = [\"data\"]\nexclude = [\"data/archive/**\"]\nproxy = \"http://u:secret@proxy:3128\"\n",
        );
        let c = Config::load(&main).unwrap();
        let p = &c.providers[0];
        assert_eq!(p.discover, vec!["data"]);
        assert_eq!(p.api_url.as_deref(), Some("https://gitlab.com/api/v4"));
        assert!(p.repo_filter.allows("data/models") && !p.repo_filter.allows("data/archive/old"));
        assert_eq!(p.discover_schedule.period(), Duration::from_secs(3600));
        assert!(
            !format!("{c:?}").contains("u:secret@"),
            "the proxy password is redacted"
        );
    }
}
