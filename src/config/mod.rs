//! Configuration: the main TOML file plus every `conf.d/*.toml` beside it, read in two stages.
//!
//! Stage one deserialises each file into raw serde structs (`deny_unknown_fields`, so a typo is an error that
//! names the file and line). Stage two merges the files and validates them into [`Config`]: compiled globs,
//! parsed cron schedules, resolved repository ids and clone URLs, and credentials that are checked to resolve
//! (a token file that cannot be read is reported before the first poll, not during it).
//!
//! Nothing here touches the network or the database.

mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::forge::ProviderKind;
use crate::git::{GitAuth, RemoteSpec};
use crate::model::FileFilter;
use crate::schedule::Schedule;
use crate::secret::{Secret, SecretError, TokenSource};
pub(crate) use crate::store::Database;

/// Where the configuration is looked for when neither `--config` nor `MODELMIRROR_CONFIG` is given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/modelmirror/config.toml";
/// Default `state_dir`: holds the mirrors and, unless `database` says otherwise, the database.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/modelmirror";
/// Default poll schedule: every five minutes.
pub(crate) const DEFAULT_SCHEDULE: &str = "*/5 * * * *";
/// Default number of polls that may run at once.
pub(crate) const DEFAULT_CONCURRENCY: usize = 4;
/// Default size limit of one model file (64 MiB).
pub(crate) const DEFAULT_MAX_MODEL_BYTES: u64 = 64 * 1024 * 1024;
/// Default discovery schedule: hourly.
pub(crate) const DEFAULT_DISCOVER_SCHEDULE: &str = "0 * * * *";
/// Default connect timeout for a provider, in seconds.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: u64 = 15;
/// Default read timeout for a provider, in seconds.
pub(crate) const DEFAULT_READ_TIMEOUT: u64 = 60;
/// How often a repository whose heads are checked over GraphQL lists its refs over git anyway.
pub(crate) const DEFAULT_HEAD_CHECK_FULL_EVERY: u32 = 12;
/// The name commit statuses are posted under unless `status_context` says otherwise.
pub(crate) const DEFAULT_STATUS_CONTEXT: &str = "modelmirror";

/// Everything that can be wrong with a configuration. Each message names the file (and line where the TOML
/// parser knows it) and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read configuration file {path}: {error} (pass --config PATH or set MODELMIRROR_CONFIG)"
    )]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot list {dir}: {error}")]
    ReadDir { dir: PathBuf, error: std::io::Error },
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

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The main file, for messages.
    pub(crate) path: PathBuf,
    /// Every file that was read, main file first.
    pub(crate) files: Vec<PathBuf>,
    /// Mirrors live in `<state_dir>/mirrors`; the database defaults to `<state_dir>/modelmirror.db`.
    pub(crate) state_dir: PathBuf,
    /// The catalog: a SQLite file, or a PostgreSQL database (`database = "postgresql://…"`).
    pub(crate) database: Database,
    /// A cap on the database's size (`database_max_bytes`): an import that would pass it fails like a full
    /// disk, keeping everything stored before, so the catalog cannot fill a disk other services need.
    pub(crate) database_max_bytes: Option<u64>,
    /// Upper bound on polls running at once, so hundreds of repositories do not open hundreds of connections.
    pub(crate) concurrency: usize,
    /// What files are considered, and how big one may be before it is recorded as skipped.
    pub(crate) filter: FileFilter,
    pub(crate) providers: Vec<ProviderConfig>,
    /// All repositories of all providers, in configuration order.
    pub(crate) repos: Vec<RepoConfig>,
    /// Things that work but that an operator should fix (shown by `check`).
    pub(crate) warnings: Vec<String>,
    /// How long deliveries and polls are kept in the database.
    pub(crate) events_retention_days: u32,
    /// This instance's name in leases, heartbeats, polls and `status` (`instance_name`; the host name).
    pub(crate) instance_name: String,
    /// How long a lease on a repository or a provider's discovery lasts unless renewed (`lease_seconds`):
    /// an instance that dies loses its work to the others within this time.
    pub(crate) lease_seconds: u64,
    /// The optional webhook listener.
    pub(crate) webhook: Option<WebhookConfig>,
    /// The optional web catalog.
    pub(crate) web: Option<WebConfig>,
    /// Counts the configurations loaded by this process: a reload gives a new one (for HTTP `ETag`s).
    pub(crate) generation: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`[metrics] listen`), if anywhere.
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// `log_level` (`error` … `trace`, or a tracing filter); `RUST_LOG` wins over it.
    pub(crate) log_level: Option<String>,
    /// `log_format`: `text` (default) or `json`.
    pub(crate) log_json: bool,
}

/// `[webhook]`: where to listen for webhook nudges.
#[derive(Debug, Clone)]
pub(crate) struct WebhookConfig {
    pub(crate) listen: std::net::SocketAddr,
    /// Larger bodies get 413.
    pub(crate) max_body_bytes: u64,
    /// Deliveries waiting to be dispatched; when full, 503 with `Retry-After`.
    pub(crate) queue_size: usize,
    /// Reverse proxies in front of the listener: not held to one client's share of connections, and
    /// deliveries through them are counted against the client `X-Forwarded-For` names.
    pub(crate) trusted_proxies: Vec<std::net::IpAddr>,
}

/// The smallest `database_max_bytes` accepted: below it not even the schema fits.
pub(crate) const MIN_DATABASE_BYTES: u64 = 1 << 20;

/// Default `lease_seconds`.
pub(crate) const DEFAULT_LEASE_SECONDS: u64 = 60;

/// Default `events_retention_days`.
pub(crate) use crate::store::DEFAULT_RETENTION_DAYS as DEFAULT_EVENTS_RETENTION_DAYS;
/// `[web]`: the read-only web catalog and its JSON API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WebConfig {
    pub(crate) listen: std::net::SocketAddr,
    /// Apache htpasswd file with bcrypt entries: HTTP Basic authentication for pages and API.
    pub(crate) users_file: Option<PathBuf>,
    /// One token per line: `Authorization: Bearer` for the API. Re-read when it changes.
    pub(crate) tokens_file: Option<PathBuf>,
    /// Serve without authentication even on a non-loopback address.
    pub(crate) allow_anonymous: bool,
    /// The address users reach the catalog at (behind a TLS proxy), without a trailing slash: used for
    /// links that leave the page (the API's `next` links).
    pub(crate) public_url: Option<String>,
    /// Reverse proxies in front of the catalog. A request from one of them is counted against the client
    /// its `X-Forwarded-For` names (for the limit on failed sign-ins), and the proxy itself may hold any
    /// number of connections: behind a proxy every client arrives from the proxy's address.
    pub(crate) trusted_proxies: Vec<std::net::IpAddr>,
}

impl WebConfig {
    /// Whether anyone may read without credentials.
    pub(crate) fn anonymous(&self) -> bool {
        self.users_file.is_none() && self.tokens_file.is_none()
    }
}

/// Default `[webhook] max_body_bytes` (5 MiB).
pub(crate) const DEFAULT_WEBHOOK_MAX_BODY: u64 = 5 * 1024 * 1024;
/// Default `[webhook] queue_size`.
pub(crate) const DEFAULT_WEBHOOK_QUEUE: usize = 1024;

/// One `[providers.NAME]` table.
#[derive(Debug, Clone)]
pub(crate) struct ProviderConfig {
    pub(crate) name: String,
    pub(crate) kind: ProviderKind,
    /// Base URL, without a trailing slash.
    pub(crate) base_url: String,
    /// REST API base (`api_url`, else derived from the base URL per kind); `None` for plain Git.
    pub(crate) api_url: Option<String>,
    pub(crate) credentials: Credentials,
    /// The file that defined this provider, for messages.
    pub(crate) file: PathBuf,
    /// Poll schedule of this provider's repositories.
    pub(crate) schedule: Schedule,
    pub(crate) backfill: bool,
    /// Discovery scopes: GitLab groups, Bitbucket Cloud workspaces (or `workspace/PROJECTKEY`), Bitbucket
    /// Data Center project keys, GitHub organisations or users. Empty: no discovery.
    pub(crate) discover: Vec<String>,
    /// Which discovered repositories are mirrored (globs on their paths).
    pub(crate) repo_filter: RepoFilter,
    pub(crate) discover_schedule: Schedule,
    /// Delete the data of repositories that discovery no longer finds (default: keep, marked `removed`).
    pub(crate) prune_removed: bool,
    /// REST request budget, so a large discovery cannot exhaust the host's rate limit.
    pub(crate) max_requests_per_hour: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    /// Extra CA bundle (PEM) for a server with a private CA, for git and REST.
    pub(crate) ca_file: Option<PathBuf>,
    /// Proxy for git and REST; may hold credentials, so it is a [`Secret`].
    pub(crate) proxy: Option<Secret>,
    /// Webhook secrets; several may be valid at once, so a secret can be rotated.
    pub(crate) webhook_secrets: Vec<TokenSource>,
    /// Accept webhooks without a signature (only when no secret is configured).
    pub(crate) allow_unsigned_webhooks: bool,
    /// Post a commit status on each new head a poll processes (the token then needs write access to
    /// statuses).
    pub(crate) commit_status: bool,
    /// The statuses' name (GitHub `context`, GitLab `name`, Bitbucket `key`): a later status under the same
    /// name replaces the earlier one on the host.
    pub(crate) status_context: String,
    /// Check the default-branch heads of this provider's repositories in batches over the host's GraphQL
    /// API before polling (`head_check = "graphql"`), so only repositories whose head moved are fetched.
    pub(crate) head_check_graphql: bool,
    /// With `head_check_graphql`: every this many scheduled polls, a repository lists its refs over git
    /// anyway, so an API that lags never hides a change for long.
    pub(crate) head_check_full_every: u32,
}

impl ProviderConfig {
    /// The configuration of one of this provider's repositories, at `path` with clone URL `url`.
    pub(crate) fn repo(&self, path: &str, url: &str) -> RepoConfig {
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
    pub(crate) fn git_auth(&self) -> Result<GitAuth, SecretError> {
        Ok(match &self.credentials.token {
            None => GitAuth::None,
            Some(source) => self
                .kind
                .forge()
                .git_auth(self.credentials.username.as_deref(), source.resolve()?),
        })
    }

    /// The repository at `path` on this provider (as discovery or a mirror's folder names it): its id and
    /// clone URL.
    pub(crate) fn discovered_repo(&self, path: &str) -> Result<RepoConfig, crate::forge::UrlError> {
        let resolved = crate::forge::resolve_repo(self.kind, &self.base_url, path)?;
        Ok(self.repo(&resolved.path, &resolved.url))
    }

    /// How git reaches `url` of this provider (its ssh files and proxy), presenting `auth`; `cancel` aborts
    /// the transfer, `alive` hears of every sign of progress.
    pub(crate) fn remote<'a>(
        &'a self,
        url: &'a str,
        auth: &'a GitAuth,
        cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
        alive: Option<&'a (dyn Fn() + Sync)>,
    ) -> RemoteSpec<'a> {
        RemoteSpec {
            url,
            auth,
            ssh_key_file: self.credentials.ssh_key_file.as_deref(),
            known_hosts_file: self.credentials.known_hosts_file.as_deref(),
            proxy: self.proxy.as_ref().map(Secret::expose),
            cancel,
            alive,
        }
    }

    /// What a REST client of this provider needs.
    pub(crate) fn api_settings(&self) -> crate::forge::api::ApiSettings<'_> {
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

    /// Check that every secret and credential file of this provider can be read now.
    pub(crate) fn check_secrets(&self) -> SecretCheck {
        let mut check = SecretCheck::default();
        let issue = |message: String| ProviderIssue {
            provider: self.name.clone(),
            message,
        };
        for s in &self.webhook_secrets {
            if let Err(e) = s.resolve() {
                check.errors.push(issue(format!("webhook secret: {e}")));
            }
        }
        if let Some(t) = &self.credentials.token {
            if let Err(e) = t.resolve() {
                check.errors.push(issue(e.to_string()));
            }
            if let TokenSource::File(file) = t
                && let Ok(path) = file.path()
                && path.is_file()
                && let Some(mode) = file_mode(&path)
                && mode & 0o077 != 0
            {
                check.warnings.push(issue(format!(
                    "token_file {} is readable by group or others (mode {:o}); run chmod 600 on it",
                    path.display(),
                    mode & 0o777
                )));
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
                check
                    .errors
                    .push(issue(format!("{key} {}: {e}", p.display())));
            }
        }
        check
    }
}

/// What [`Config::check_secrets`] found: errors (`run` and `sync` refuse to start on them) and warnings.
#[derive(Debug, Default)]
pub(crate) struct SecretCheck {
    pub(crate) errors: Vec<ProviderIssue>,
    pub(crate) warnings: Vec<ProviderIssue>,
}

/// A problem with one provider's settings found at run time (not by loading the configuration).
#[derive(Debug, Clone)]
pub(crate) struct ProviderIssue {
    /// The provider's name.
    pub(crate) provider: String,
    pub(crate) message: String,
}

impl std::fmt::Display for ProviderIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "provider {}: {}", self.provider, self.message)
    }
}

fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode())
}

/// A glob of `include` / `exclude` that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("{key} {}: {error}", pattern.as_ref().map_or_else(|| "globs".to_string(), |p| format!("glob `{p}`")))]
pub(crate) struct RepoFilterError {
    key: &'static str,
    pattern: Option<String>,
    error: globset::Error,
}

/// `include` / `exclude` globs on repository paths (for discovered repositories).
#[derive(Debug, Clone)]
pub(crate) struct RepoFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl RepoFilter {
    fn new(include: &[String], exclude: &[String]) -> Result<RepoFilter, RepoFilterError> {
        let build = |patterns: &[String], key: &'static str| {
            if patterns.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                b.add(Glob::new(p).map_err(|error| RepoFilterError {
                    key,
                    pattern: Some(p.clone()),
                    error,
                })?);
            }
            b.build().map(Some).map_err(|error| RepoFilterError {
                key,
                pattern: None,
                error,
            })
        };
        Ok(RepoFilter {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
        })
    }

    /// Whether a repository path passes: matched by `include` (when given) and not by `exclude`.
    pub(crate) fn allows(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }
}

/// How to authenticate to a provider. The token itself is read when it is needed, so a rotated
/// `token_file` is picked up without a restart.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    pub(crate) username: Option<String>,
    pub(crate) token: Option<TokenSource>,
    pub(crate) ssh_key_file: Option<PathBuf>,
    pub(crate) known_hosts_file: Option<PathBuf>,
}

/// One repository to mirror.
#[derive(Debug, Clone)]
pub(crate) struct RepoConfig {
    /// `<provider>/<path>`: the key in the database and on the command line.
    pub(crate) id: String,
    pub(crate) provider: String,
    /// Path relative to the provider, as written in `repos` (for `git` URLs: the URL's path without `.git`).
    pub(crate) path: String,
    /// Clone URL, never with credentials in it.
    pub(crate) url: String,
    pub(crate) schedule: Schedule,
    /// Whether the first import walks the whole first-parent history (true) or imports only the head.
    pub(crate) backfill: bool,
}

impl Config {
    /// Read and validate the configuration at `path` and every `*.toml` in the `conf.d/` folder beside it.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut files = vec![path.to_path_buf()];
        let dir = path.parent().unwrap_or(Path::new("."));
        let conf_d = dir.join("conf.d");
        if conf_d.is_dir() {
            let mut extra = Vec::new();
            let entries = std::fs::read_dir(&conf_d).map_err(|error| ConfigError::ReadDir {
                dir: conf_d.clone(),
                error,
            })?;
            for entry in entries {
                let entry = entry.map_err(|error| ConfigError::ReadDir {
                    dir: conf_d.clone(),
                    error,
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
            let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
                path: file.clone(),
                error,
            })?;
            parsed.push((file.clone(), raw::parse_file(file, &text)?));
        }
        validate::validate(path, dir, parsed)
    }

    /// Validate one file's text as the main configuration at `path` (no `conf.d/`): what `load` does after
    /// reading the files. For the fuzz target and tests.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        validate::validate(
            path,
            dir,
            vec![(path.to_path_buf(), raw::parse_file(path, text)?)],
        )
    }

    /// Read every secret now: the errors (a token file that cannot be read, …) and warnings (a token file
    /// others may read). `run` and `sync` refuse to start on errors; `check` reports both.
    pub(crate) fn check_secrets(&self) -> SecretCheck {
        let mut all = SecretCheck::default();
        for p in &self.providers {
            let check = p.check_secrets();
            all.errors.extend(check.errors);
            all.warnings.extend(check.warnings);
        }
        all
    }

    /// The provider of a repository, looked up by name in this configuration (a repository loop that
    /// outlived a reload reads the provider's settings and credentials as they are now). `None` when a reload
    /// removed the provider.
    pub(crate) fn provider(&self, repo: &RepoConfig) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == repo.provider)
    }

    pub(crate) fn mirrors_dir(&self) -> PathBuf {
        self.state_dir.join("mirrors")
    }

    /// Where the bare mirror of a repository lives: `<state_dir>/mirrors/<provider>/<path>.git`.
    pub(crate) fn mirror_path(&self, repo: &RepoConfig) -> PathBuf {
        let mut p = self.mirrors_dir().join(&repo.provider);
        for seg in repo.path.split('/') {
            p.push(seg);
        }
        let mut os = p.into_os_string();
        os.push(".git");
        PathBuf::from(os)
    }
}

/// Expand `${VAR}` in a path (so `token_file = "${CREDENTIALS_DIRECTORY}/gitlab"` works under systemd) and
/// make it absolute relative to the configuration file's folder.
/// Where the database most likely is when the configuration does not load (for `status`, which still
/// shows the service's state then): `database` or `state_dir` read from the main file alone, if that much
/// parses, else the default.
pub(crate) fn database_hint(path: &Path) -> Database {
    let base = path.parent().unwrap_or(Path::new("."));
    let table = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .unwrap_or_default();
    let raw = |k: &str| {
        table
            .get(k)
            .and_then(|v| v.as_str())
            .map(|v| (v.to_string(), path.to_path_buf()))
    };
    let password = (raw("database_password_file"), raw("database_password_env"));
    if let Some(Ok(db)) = raw("database").map(|(r, _)| validate::database(&r, password, base, path))
    {
        return db;
    }
    let state_dir = raw("state_dir")
        .and_then(|(r, _)| validate::resolve_path(&r, base, path, "state_dir").ok())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Database::Sqlite(state_dir.join("modelmirror.db"))
}

/// What is wrong with a logging filter (`log_level`, `RUST_LOG`), if anything. A filter is a level
/// (`error`, `warn`, `info`, `debug`, `trace`, `off`) or directives like `info,modelmirror=debug`. It must
/// parse, and it must give modelmirror's own lines a level: a bare level for everything, or a directive for a
/// `modelmirror` target. A word that is no level (`degub`), or a misspelt target (`modelmirorr=debug`), would
/// otherwise be read as another module's filter and silence every line, warnings included.
pub fn log_filter_problem(filter: &str) -> Option<String> {
    if filter.trim().is_empty() {
        return Some("it is empty".into());
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(filter) {
        return Some(format!("it does not parse ({e})"));
    }
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let default_level = directives.iter().any(|d| {
        LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d))
            || matches!(*d, "0" | "1" | "2" | "3" | "4" | "5")
    });
    // The logging library matches targets by prefix: only `modelmirror` itself covers all of its lines.
    let ours = directives
        .iter()
        .any(|d| d.split(['=', '[']).next().map(str::trim) == Some("modelmirror"));
    if !default_level && !ours {
        let words: Vec<&str> = directives
            .iter()
            .map(|d| d.split(['=', '[']).next().unwrap_or(d))
            .collect();
        return Some(format!(
            "it gives no level to modelmirror's own lines: {} is no level and no modelmirror module, so every line would be silenced",
            words
                .iter()
                .map(|w| format!("{w:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

/// The advice that follows a bad logging filter.
pub const LOG_FILTER_HELP: &str = "use one of error, warn, info, debug, trace, off, or directives like \"info,modelmirror=debug\"";
