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

fn parse_schedule(text: &str, file: &Path, key: &str) -> Result<Schedule, ConfigError> {
    Schedule::parse(text)
        .map_err(|e: ScheduleError| invalid(file, format!("{key} = {text:?}: {e}")))
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