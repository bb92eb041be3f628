//! Stage two: the files merged (a top-level key may be set in one file only, a provider defined once) and
//! validated into a [`Config`]: compiled globs, parsed cron schedules, resolved repository ids and clone
//! URLs. Each function here validates one part and names the file, the table and the key in its errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{OneOrMany, RawFile, RawMetrics, RawProvider, RawWeb, RawWebhook};
use super::{
    Config, ConfigError, Credentials, DEFAULT_CONCURRENCY, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISCOVER_SCHEDULE, DEFAULT_EVENTS_RETENTION_DAYS, DEFAULT_HEAD_CHECK_FULL_EVERY,
    DEFAULT_LEASE_SECONDS, DEFAULT_MAX_MODEL_BYTES, DEFAULT_READ_TIMEOUT, DEFAULT_SCHEDULE,
    DEFAULT_STATE_DIR, DEFAULT_STATUS_CONTEXT, DEFAULT_WEBHOOK_MAX_BODY, DEFAULT_WEBHOOK_QUEUE,
    MIN_DATABASE_BYTES, ProviderConfig, RepoConfig, RepoFilter, WebConfig, WebhookConfig,
};
use crate::forge::{self, Forge, ProviderKind};
use crate::model::{DEFAULT_FORMATS, FileFilter, FilterError};
use crate::redact::redact_url;
use crate::schedule::Schedule;
use crate::secret::{Secret, SecretFile, TokenSource, expand_vars};
use crate::store::Database;

/// Configurations loaded by this process, for [`Config::generation`].
static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A value and the file that set it.
type Set<T> = Option<(T, PathBuf)>;

/// The top-level keys of all files, each from the one file that sets it, and the providers in order.
#[derive(Default)]
struct Merged {
    state_dir: Set<PathBuf>,
    database: Set<String>,
    database_password_file: Set<String>,
    database_password_env: Set<String>,
    database_max_bytes: Set<u64>,
    schedule: Set<String>,
    concurrency: Set<usize>,
    max_model_bytes: Set<u64>,
    include: Set<Vec<String>>,
    backfill: Set<bool>,
    formats: Set<Vec<String>>,
    events_retention_days: Set<u32>,
    instance_name: Set<String>,
    lease_seconds: Set<u64>,
    webhook: Set<RawWebhook>,
    web: Set<RawWeb>,
    metrics: Set<RawMetrics>,
    log_level: Set<String>,
    log_format: Set<String>,
    /// In the order the files define them.
    providers: Vec<(String, RawProvider, PathBuf)>,
}

/// Take each named key from whichever single file sets it.
macro_rules! merge_keys {
    ($merged:ident, $raw:ident, $file:ident; $($key:ident),* $(,)?) => {
        $( merge_key(stringify!($key), &mut $merged.$key, $raw.$key, &$file)?; )*
    };
}

impl Merged {
    fn from_files(files: Vec<(PathBuf, RawFile)>) -> Result<Merged, ConfigError> {
        let mut m = Merged::default();
        for (file, raw) in files {
            merge_keys!(m, raw, file;
                state_dir, database, database_password_file, database_password_env, database_max_bytes, schedule, concurrency, max_model_bytes, include,
                backfill, formats, events_retention_days, instance_name, lease_seconds, webhook, web, metrics, log_level, log_format,
            );
            for (name, p) in raw.providers {
                if let Some((_, _, first)) = m.providers.iter().find(|(n, _, _)| *n == name) {
                    return Err(ConfigError::DuplicateProvider {
                        name,
                        first: first.clone(),
                        second: file.clone(),
                    });
                }
                m.providers.push((name, p, file.clone()));
            }
        }
        Ok(m)
    }
}

fn merge_key<T>(
    key: &'static str,
    slot: &mut Set<T>,
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

/// The settings every provider inherits unless it sets its own.
struct Defaults {
    schedule: Schedule,
    backfill: bool,
    /// Whether the webhook listener is on (then signing providers need a secret).
    webhooks: bool,
}

/// Validate the merged files of the configuration whose main file is `main`, with relative paths taken from
/// `base`.
pub(super) fn validate(
    main: &Path,
    base: &Path,
    files: Vec<(PathBuf, RawFile)>,
) -> Result<Config, ConfigError> {
    let mut m = Merged::from_files(files)?;
    let state_dir = match m.state_dir.take() {
        Some((p, f)) => resolve_path(&p.to_string_lossy(), base, &f, "state_dir")?,
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let password = (
        m.database_password_file.take(),
        m.database_password_env.take(),
    );
    let database = match m.database.take() {
        Some((raw, f)) => database(&raw, password, base, &f)?,
        None => match password {
            (Some((_, f)), _) | (None, Some((_, f))) => {
                return Err(invalid(
                    &f,
                    "database_password_file / database_password_env are for a PostgreSQL `database`; none is set"
                        .into(),
                ));
            }
            (None, None) => Database::Sqlite(state_dir.join("modelmirror.db")),
        },
    };
    if let (Database::Postgres(_), Some((_, f))) = (&database, &m.database_max_bytes) {
        return Err(invalid(
            f,
            "database_max_bytes caps a SQLite file; for PostgreSQL, limit the database's size in PostgreSQL itself (a tablespace on its own disk or quota) and remove database_max_bytes".into(),
        ));
    }
    let database_max_bytes = match m.database_max_bytes.take() {
        Some((n, f)) if n < MIN_DATABASE_BYTES => {
            return Err(invalid(
                &f,
                format!("database_max_bytes must be at least {MIN_DATABASE_BYTES} (1 MiB)"),
            ));
        }
        Some((n, _)) => Some(n),
        None => None,
    };
    let schedule = match m.schedule.take() {
        Some((s, f)) => parse_schedule(&s, &f, "schedule")?,
        None => Schedule::parse(DEFAULT_SCHEDULE).map_err(|e| invalid(main, e.to_string()))?,
    };
    let concurrency =
        at_least_one(m.concurrency.take(), "concurrency")?.unwrap_or(DEFAULT_CONCURRENCY);
    let filter = file_filter(&mut m, main)?;
    let events_retention_days =
        at_least_one(m.events_retention_days.take(), "events_retention_days")?
            .unwrap_or(DEFAULT_EVENTS_RETENTION_DAYS);
    let instance_name = match m.instance_name.take() {
        Some((n, f)) => {
            if n.is_empty()
                || n.chars().count() > 64
                || n.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(invalid(
                    &f,
                    format!(
                        "instance_name {n:?} must be 1 to 64 characters, without spaces or control characters"
                    ),
                ));
            }
            n
        }
        None => host_name(),
    };
    let lease_seconds = match m.lease_seconds.take() {
        Some((n, f)) if !(30..=3600).contains(&n) => {
            return Err(invalid(
                &f,
                format!("lease_seconds must be 30 to 3600, not {n}"),
            ));
        }
        Some((n, _)) => n,
        None => DEFAULT_LEASE_SECONDS,
    };
    let metrics_listen = match m.metrics.take() {
        None => None,
        Some((raw, f)) => Some(listen_address(
            &raw.listen,
            &f,
            "[metrics] listen",
            "127.0.0.1:9464",
        )?),
    };
    let log_level = match m.log_level.take() {
        Some((level, file)) => match super::log_filter_problem(&level) {
            Some(problem) => {
                return Err(invalid(
                    &file,
                    format!(
                        "log_level = {level:?}: {problem}; {}",
                        super::LOG_FILTER_HELP
                    ),
                ));
            }
            None => Some(level),
        },
        None => None,
    };
    let log_json = match m.log_format.take() {
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
    let webhook = match m.webhook.take() {
        None => None,
        Some((w, f)) => Some(WebhookConfig {
            listen: listen_address(&w.listen, &f, "[webhook] listen", "0.0.0.0:8080")?,
            max_body_bytes: at_least_one(
                w.max_body_bytes.map(|n| (n, f.clone())),
                "[webhook] max_body_bytes",
            )?
            .unwrap_or(DEFAULT_WEBHOOK_MAX_BODY),
            queue_size: at_least_one(w.queue_size.map(|n| (n, f.clone())), "[webhook] queue_size")?
                .unwrap_or(DEFAULT_WEBHOOK_QUEUE),
            trusted_proxies: proxies(w.trusted_proxies.as_deref(), &f, "[webhook]")?,
        }),
    };
    let web = match m.web.take() {
        None => None,
        Some((raw, f)) => Some(web(raw, &f, base)?),
    };
    let defaults = Defaults {
        schedule,
        backfill: m.backfill.take().map(|(b, _)| b).unwrap_or(true),
        webhooks: webhook.is_some(),
    };

    let mut warnings = Vec::new();
    let mut providers = Vec::new();
    let mut repos: Vec<RepoConfig> = Vec::new();
    let mut seen_ids: BTreeMap<String, String> = BTreeMap::new();
    for (name, raw, file) in std::mem::take(&mut m.providers) {
        let (provider, entries) = provider(
            &name,
            raw,
            &file,
            base,
            &defaults,
            &mut warnings,
            &mut seen_ids,
        )?;
        repos.extend(entries);
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
        concurrency,
        filter,
        providers,
        repos,
        warnings,
        events_retention_days,
        instance_name,
        lease_seconds,
        webhook,
        web,
        generation: LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        metrics_listen,
        log_level,
        log_json,
    })
}

/// A count that must be at least 1 when set.
fn at_least_one<T: PartialEq + From<u8>>(
    value: Set<T>,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match value {
        Some((n, f)) if n == T::from(0) => Err(invalid(&f, format!("{key} must be at least 1"))),
        Some((n, _)) => Ok(Some(n)),
        None => Ok(None),
    }
}

/// `formats`, `include` and `max_model_bytes`: which files are read, and how.
fn file_filter(m: &mut Merged, main: &Path) -> Result<FileFilter, ConfigError> {
    let max_model_bytes = at_least_one(m.max_model_bytes.take(), "max_model_bytes")?
        .unwrap_or(DEFAULT_MAX_MODEL_BYTES);
    let (formats, formats_file) = match m.formats.take() {
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
    let (include, include_file) = match m.include.take() {
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
    FileFilter::new(&formats, include.as_deref(), max_model_bytes).map_err(|e| match e {
        FilterError::UnknownFormat(_) => invalid(&formats_file, e.to_string()),
        FilterError::Glob { .. } | FilterError::Globs(_) => invalid(&include_file, e.to_string()),
    })
}

fn listen_address(
    text: &str,
    file: &Path,
    key: &str,
    example: &str,
) -> Result<std::net::SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            file,
            format!("{key} = {text:?}: write an address and port, e.g. \"{example}\""),
        )
    })
}

/// `[web]`: the listener, its credentials, and the address users reach it at.
fn web(raw: RawWeb, file: &Path, base: &Path) -> Result<WebConfig, ConfigError> {
    let listen = listen_address(&raw.listen, file, "[web] listen", "127.0.0.1:8090")?;
    let path = |p: &Option<String>, key: &str| {
        p.as_deref()
            .map(|p| resolve_path(p, base, file, key))
            .transpose()
    };
    let public_url = match raw
        .public_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        None => None,
        Some(u) => {
            let parsed = url::Url::parse(u).ok().filter(|p| {
                matches!(p.scheme(), "http" | "https") && p.host().is_some() && p.query().is_none()
            });
            match parsed {
                Some(p) if p.username().is_empty() && p.password().is_none() => {
                    Some(u.trim_end_matches('/').to_string())
                }
                Some(_) => {
                    return Err(invalid(
                        file,
                        format!(
                            "[web] public_url {:?} holds credentials; remove them",
                            redact_url(u)
                        ),
                    ));
                }
                None => {
                    return Err(invalid(
                        file,
                        format!(
                            "[web] public_url = {:?}: write the address users reach the catalog at, e.g. \"https://models.example.com\"",
                            redact_url(u)
                        ),
                    ));
                }
            }
        }
    };
    let trusted_proxies = proxies(raw.trusted_proxies.as_deref(), file, "[web]")?;
    let web = WebConfig {
        listen,
        users_file: path(&raw.users_file, "users_file")?,
        tokens_file: path(&raw.tokens_file, "tokens_file")?,
        allow_anonymous: raw.allow_anonymous.unwrap_or(false),
        public_url,
        trusted_proxies,
    };
    if web.anonymous() && !web.allow_anonymous && !listen.ip().is_loopback() {
        return Err(invalid(
            file,
            format!(
                "[web] listen = {:?} is reachable from other hosts, and neither users_file nor tokens_file is set: set one (or both), or allow_anonymous = true to let anyone on the network read the catalog",
                raw.listen
            ),
        ));
    }
    Ok(web)
}

/// `trusted_proxies` of the table `table`: IP addresses.
fn proxies(
    list: Option<&[String]>,
    file: &Path,
    table: &str,
) -> Result<Vec<std::net::IpAddr>, ConfigError> {
    list.unwrap_or_default()
        .iter()
        .map(|a| {
            a.trim()
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.to_canonical())
                .map_err(|_| {
                invalid(
                    file,
                    format!(
                        "{table} trusted_proxies: {a:?} is not an IP address: list the addresses your proxies connect from, e.g. [\"127.0.0.1\"]"
                    ),
                )
            })
        })
        .collect()
}

/// One `[providers.NAME]` table: the provider, and the repositories its `repos` lists.
fn provider(
    name: &str,
    raw: RawProvider,
    file: &Path,
    base: &Path,
    defaults: &Defaults,
    warnings: &mut Vec<String>,
    seen_ids: &mut BTreeMap<String, String>,
) -> Result<(ProviderConfig, Vec<RepoConfig>), ConfigError> {
    let fail = |message: String| invalid(file, format!("[providers.{name}]{message}"));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(fail(
            ": a provider name may hold only lowercase letters, digits and `-`".into(),
        ));
    }
    let kind = ProviderKind::parse(&raw.kind).ok_or_else(|| {
        let kinds: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
        fail(format!(
            " kind = {:?}: use one of {}",
            raw.kind,
            kinds.join(", ")
        ))
    })?;
    let forge = kind.forge();
    let base_url = forge::base_url(kind, raw.url.as_deref(), base).map_err(|e| {
        let shown = raw.url.as_deref().map(redact_url).unwrap_or_default();
        fail(format!(" url {shown:?}: {e}"))
    })?;
    let credentials = credentials(name, &raw, file, base, warnings)?;
    let schedule = match &raw.schedule {
        Some(s) => parse_schedule(s, file, &format!("[providers.{name}] schedule"))?,
        None => defaults.schedule.clone(),
    };
    let (discover, repo_filter, discover_schedule) =
        discovery(name, &raw, kind, forge, file, warnings)?;
    let max_requests_per_hour = match raw.max_requests_per_hour {
        Some(0) => return Err(fail(" max_requests_per_hour must be at least 1".into())),
        Some(n) => n,
        None => forge.default_requests_per_hour(),
    };
    let seconds = |v: Option<u64>, default: u64, key: &str| match v {
        Some(0) => Err(fail(format!(" {key} must be at least 1 second"))),
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
        .map(|p| resolve_path(p, base, file, "ca_file"))
        .transpose()?;
    let proxy = match raw
        .proxy
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        Some(p) if !["http://", "https://"].iter().any(|s| p.starts_with(s)) => {
            return Err(fail(format!(
                " proxy {:?}: write it as http://[user:pass@]host:port",
                redact_url(p)
            )));
        }
        Some(p) => Some(Secret::new(p.to_string())),
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
        return Err(fail(" discovery needs a REST API".into()));
    }
    if raw.repos.is_empty() && discover.is_empty() {
        warnings.push(format!(
            "{}: [providers.{name}] lists no repos and no discovery scope, so nothing is mirrored from it",
            file.display()
        ));
    }
    let (webhook_secrets, allow_unsigned_webhooks) =
        webhook_secrets(name, &raw, forge, file, base, defaults)?;
    if credentials.token.is_some() && base_url.starts_with("http://") {
        warnings.push(format!(
            "{}: [providers.{name}] url is http://: the token travels unencrypted; use https",
            file.display()
        ));
    }
    let commit_status = raw.commit_status.unwrap_or(false);
    if commit_status && !forge.has_statuses() {
        return Err(fail(format!(
            " commit_status = true: kind {} has no commit status API; remove commit_status",
            kind.as_str()
        )));
    }
    if commit_status && api_url.is_none() {
        return Err(fail(
            " commit_status = true needs a REST API (api_url)".into(),
        ));
    }
    let status_context = match raw.status_context.as_deref().map(str::trim) {
        None => DEFAULT_STATUS_CONTEXT.to_string(),
        Some(c) if c.is_empty() || c.chars().count() > 100 || c.chars().any(char::is_control) => {
            return Err(fail(format!(
                " status_context = {c:?}: give a short name (1 to 100 characters, no control characters), e.g. \"modelmirror\""
            )));
        }
        Some(c) => c.to_string(),
    };
    let head_check_graphql = match raw.head_check.as_deref() {
        None | Some("git") => false,
        Some("graphql") if forge.has_graphql_heads() => true,
        Some("graphql") => {
            return Err(fail(format!(
                " head_check = \"graphql\": kind {} has no GraphQL API for default-branch heads (only gitlab and github); use \"git\"",
                kind.as_str()
            )));
        }
        Some(other) => {
            return Err(fail(format!(
                " head_check = {other:?}: use \"git\" (list each repository's refs) or \"graphql\" (gitlab and github: many heads per request)"
            )));
        }
    };
    let head_check_full_every = match raw.head_check_full_every {
        Some(0) => return Err(fail(" head_check_full_every must be at least 1".into())),
        Some(n) => n,
        None => DEFAULT_HEAD_CHECK_FULL_EVERY,
    };
    let provider = ProviderConfig {
        name: name.to_string(),
        kind,
        base_url,
        api_url,
        credentials,
        file: file.to_path_buf(),
        schedule,
        backfill: raw.backfill.unwrap_or(defaults.backfill),
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
        commit_status,
        status_context,
        head_check_graphql,
        head_check_full_every,
    };
    let mut repos = Vec::new();
    for entry in &raw.repos {
        let repo = repo_entry(&provider, entry)?;
        // Each entry is checked as it is read: the first problem in file order is the one reported.
        if let Some(first) = seen_ids.insert(repo.id.clone(), name.to_string()) {
            return Err(ConfigError::DuplicateRepo {
                id: repo.id,
                first,
                second: name.to_string(),
            });
        }
        repos.push(repo);
    }
    Ok((provider, repos))
}

/// `username`, one of `token` / `token_file` / `token_env`, and the ssh key files.
fn credentials(
    name: &str,
    raw: &RawProvider,
    file: &Path,
    base: &Path,
    warnings: &mut Vec<String>,
) -> Result<Credentials, ConfigError> {
    let mut sources = Vec::new();
    if let Some(t) = &raw.token {
        sources.push(TokenSource::Literal(Secret::new(t.clone())));
        warnings.push(format!(
            "{}: [providers.{name}] has a literal `token`; move it to token_file (or a systemd credential) so it is not in the configuration",
            file.display()
        ));
    }
    if let Some(f) = &raw.token_file {
        sources.push(TokenSource::File(SecretFile::new(f, base)));
    }
    if let Some(e) = &raw.token_env {
        sources.push(TokenSource::Env(e.clone()));
    }
    if sources.len() > 1 {
        return Err(invalid(
            file,
            format!("[providers.{name}]: set only one of token, token_file and token_env"),
        ));
    }
    if let Some(u) = &raw.username
        && (u.chars().any(char::is_control) || u.contains(':'))
    {
        return Err(invalid(
            file,
            format!("[providers.{name}] username may not hold `:` or control characters"),
        ));
    }
    let path = |p: &Option<String>, key: &str| {
        p.as_deref()
            .map(|p| resolve_path(p, base, file, key))
            .transpose()
    };
    Ok(Credentials {
        username: raw.username.clone().filter(|u| !u.is_empty()),
        token: sources.pop(),
        ssh_key_file: path(&raw.ssh_key_file, "ssh_key_file")?,
        known_hosts_file: path(&raw.known_hosts_file, "known_hosts_file")?,
    })
}

/// The discovery scopes (under the key this kind uses), the include/exclude filter, and the schedule.
fn discovery(
    name: &str,
    raw: &RawProvider,
    kind: ProviderKind,
    forge: &dyn Forge,
    file: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, RepoFilter, Schedule), ConfigError> {
    let mut discover = Vec::new();
    for (key, value) in [
        ("groups", &raw.groups),
        ("workspaces", &raw.workspaces),
        ("projects", &raw.projects),
        ("orgs", &raw.orgs),
    ] {
        let Some(value) = value else { continue };
        if forge.scopes_key() != Some(key) {
            let hint = match forge.scopes_key() {
                Some(k) => format!("kind {} discovers with `{k}`", kind.as_str()),
                None => format!("kind {} has no discovery; list `repos`", kind.as_str()),
            };
            return Err(invalid(
                file,
                format!("[providers.{name}] `{key}` does not apply: {hint}"),
            ));
        }
        if let Some(scope) = value
            .iter()
            .find(|s| s.trim().is_empty() || s.contains(".."))
        {
            return Err(invalid(
                file,
                format!("[providers.{name}] {key} entry {scope:?} is not a valid name"),
            ));
        }
        discover = value.clone();
    }
    if (!raw.include.is_empty() || !raw.exclude.is_empty()) && discover.is_empty() {
        warnings.push(format!(
            "{}: [providers.{name}] include/exclude filter discovered repositories, but no discovery scope is set",
            file.display()
        ));
    }
    let filter = RepoFilter::new(&raw.include, &raw.exclude)
        .map_err(|m| invalid(file, format!("[providers.{name}] {m}")))?;
    let schedule = parse_schedule(
        raw.discover_schedule
            .as_deref()
            .unwrap_or(DEFAULT_DISCOVER_SCHEDULE),
        file,
        &format!("[providers.{name}] discover_schedule"),
    )?;
    Ok((discover, filter, schedule))
}

/// `webhook_secret_file` / `webhook_secret_env` (several may be valid at once) and
/// `allow_unsigned_webhooks`.
fn webhook_secrets(
    name: &str,
    raw: &RawProvider,
    forge: &dyn Forge,
    file: &Path,
    base: &Path,
    defaults: &Defaults,
) -> Result<(Vec<TokenSource>, bool), ConfigError> {
    let listed = |v: &Option<OneOrMany>| v.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
    let mut secrets: Vec<TokenSource> = listed(&raw.webhook_secret_file)
        .iter()
        .map(|f| TokenSource::File(SecretFile::new(f, base)))
        .collect();
    secrets.extend(
        listed(&raw.webhook_secret_env)
            .into_iter()
            .map(TokenSource::Env),
    );
    let allow_unsigned = raw.allow_unsigned_webhooks.unwrap_or(false);
    if allow_unsigned && !secrets.is_empty() {
        return Err(invalid(
            file,
            format!(
                "[providers.{name}] sets both a webhook secret and allow_unsigned_webhooks: a provider with a secret always verifies; remove allow_unsigned_webhooks"
            ),
        ));
    }
    if defaults.webhooks && forge.event_header().is_some() && secrets.is_empty() && !allow_unsigned
    {
        return Err(invalid(
            file,
            format!(
                "[providers.{name}] has no webhook_secret_file or webhook_secret_env while [webhook] is on: set the secret configured on the host, or allow_unsigned_webhooks = true"
            ),
        ));
    }
    Ok((secrets, allow_unsigned))
}

/// One `repos` entry of `provider`: a path below its URL, or (for kinds that take them) a clone URL.
fn repo_entry(provider: &ProviderConfig, entry: &str) -> Result<RepoConfig, ConfigError> {
    let (name, file) = (&provider.name, &provider.file);
    let is_ssh = entry.starts_with("ssh://")
        || (!entry.contains("://") && entry.contains('@') && entry.contains(':'));
    let creds = &provider.credentials;
    if is_ssh && (creds.ssh_key_file.is_none() || creds.known_hosts_file.is_none()) {
        return Err(invalid(
            file,
            format!(
                "[providers.{name}] repos entry {:?} is an ssh URL: set ssh_key_file and known_hosts_file",
                redact_url(entry)
            ),
        ));
    }
    let resolved = forge::resolve_repo(provider.kind, &provider.base_url, entry).map_err(|e| {
        invalid(
            file,
            format!(
                "[providers.{name}] repos entry {:?}: {e}",
                redact_url(entry)
            ),
        )
    })?;
    Ok(provider.repo(&resolved.path, &resolved.url))
}

fn parse_schedule(text: &str, file: &Path, key: &str) -> Result<Schedule, ConfigError> {
    Schedule::parse(text).map_err(|e| invalid(file, format!("{key} = {text:?}: {e}")))
}

/// A path from the configuration: `${VAR}` expanded, relative to the configuration file's folder.
pub(super) fn resolve_path(
    raw: &str,
    base: &Path,
    file: &Path,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    let out = expand_vars(raw).map_err(|e| invalid(file, format!("{key} = {raw:?}: {e}")))?;
    let p = PathBuf::from(out);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}

/// This host's name (`instance_name`'s default): the kernel's, else `modelmirror`.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = match rc {
        0 => {
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).into_owned()
        }
        _ => String::new(),
    };
    // A longer name is cut to 64 characters (two hosts must not both fall back to one name).
    let name: String = name.trim().chars().take(64).collect();
    match name.as_str() {
        n if !n.is_empty() && !n.chars().any(|c| c.is_control() || c.is_whitespace()) => name,
        _ => "modelmirror".to_string(),
    }
}

/// `database`: a PostgreSQL URL (its password from `database_password_file` or `database_password_env`, read
/// now: every command needs the catalog) or a SQLite file's path.
pub(super) fn database(
    raw: &str,
    password: (Set<String>, Set<String>),
    base: &Path,
    file: &Path,
) -> Result<Database, ConfigError> {
    if !crate::store::is_database_url(raw) {
        // Another kind of URL (a JDBC or SQLAlchemy one, a typo in the scheme): not a file's path. Not
        // shown: it may hold a password.
        let lower = raw.trim().to_ascii_lowercase();
        if lower.contains("://") || lower.starts_with("jdbc:") {
            return Err(invalid(
                file,
                "database is a URL but not a database modelmirror can use (not shown: it may hold a password): give postgresql://USER@HOST:PORT/DB, with the password in database_password_file or database_password_env, or a SQLite file's path".into(),
            ));
        }
        if let (Some((_, f)), _) | (None, Some((_, f))) = password {
            return Err(invalid(
                &f,
                "database_password_file / database_password_env are for a PostgreSQL `database` (postgresql://…); this one is a SQLite file".into(),
            ));
        }
        return Ok(Database::Sqlite(resolve_path(raw, base, file, "database")?));
    }
    let secret = match password {
        (Some(_), Some((_, f))) => {
            return Err(invalid(
                &f,
                "set only one of database_password_file and database_password_env".into(),
            ));
        }
        (Some((raw_file, f)), None) => {
            let path = resolve_path(&raw_file, base, &f, "database_password_file")?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    &f,
                    format!("cannot read database_password_file {}: {e}", path.display()),
                )
            })?;
            Some(password_value(
                text,
                &format!("database_password_file {}", path.display()),
                &f,
            )?)
        }
        (None, Some((name, f))) => {
            let value = std::env::var(&name).map_err(|_| {
                invalid(
                    &f,
                    format!("environment variable {name} (database_password_env) is not set"),
                )
            })?;
            Some(password_value(
                value,
                &format!("environment variable {name} (database_password_env)"),
                &f,
            )?)
        }
        (None, None) => None,
    };
    crate::store::PgTarget::parse(raw, secret)
        .map(|t| Database::Postgres(Box::new(t)))
        .map_err(|e| invalid(file, e.to_string()))
}

/// A database password as read: trimmed, not empty, one line.
fn password_value(value: String, from: &str, file: &Path) -> Result<Secret, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(file, format!("{from} is empty")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            file,
            format!(
                "{from} holds a line break or other control character; it must hold the password alone"
            ),
        ));
    }
    Ok(Secret::new(value.to_string()))
}

fn invalid(file: &Path, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: file.to_path_buf(),
        message,
    }
}
