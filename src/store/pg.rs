//! Reaching a PostgreSQL catalog: the `database` URL checked once (no password in it; `sslmode` and
//! `sslrootcert` as libpq reads them), connections with TLS made from it, and what to do about the errors an
//! operator can fix.

use std::path::PathBuf;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;

use super::db::{Conn, DbError, Pg, outside_runtime};
use super::{StoreError, schema};
use crate::secret::Secret;

/// How a connection uses TLS (`sslmode` in the URL; libpq's names and default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    /// `disable`: never.
    Disable,
    /// `allow` / `prefer` (the default): when the server offers it, without verifying the certificate.
    Prefer,
    /// `require`: always, without verifying the certificate (verifying its chain when `sslrootcert` is given,
    /// as libpq does).
    Require,
    /// `verify-ca`: always, the certificate's chain verified.
    VerifyCa,
    /// `verify-full`: always, the chain and the host name verified.
    VerifyFull,
}

/// A PostgreSQL database to hold the catalog.
#[derive(Clone)]
pub struct PgTarget {
    /// The URL as configured (never with a password: one is refused), for messages.
    shown: String,
    /// The URL handed to the client: without the TLS parameters, which are applied here.
    pub(super) url: String,
    /// From `database_password_file` / `database_password_env`.
    pub(super) password: Option<Secret>,
    tls: Tls,
    /// `sslrootcert`: the certificate authorities to verify the server with (default: the system's).
    root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.shown)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl PartialEq for PgTarget {
    fn eq(&self, o: &PgTarget) -> bool {
        self.shown == o.shown
            && self.password.as_ref().map(Secret::expose) == o.password.as_ref().map(Secret::expose)
    }
}

/// Whether `database` names a PostgreSQL database rather than a SQLite file.
pub(crate) fn is_url(database: &str) -> bool {
    let lower = database.to_ascii_lowercase();
    lower.starts_with("postgresql://") || lower.starts_with("postgres://")
}

impl PgTarget {
    /// Check a `postgresql://USER@HOST:PORT/DB` URL; the password comes apart from it.
    pub(crate) fn parse(raw: &str, password: Option<Secret>) -> Result<PgTarget, StoreError> {
        let problem = |problem: &str| StoreError::Url {
            db: shown_url(raw),
            problem: problem.to_string(),
        };
        let mut url = url::Url::parse(raw).map_err(|e| problem(&format!("not a URL ({e})")))?;
        if url.password().is_some() {
            return Err(StoreError::Url {
                db: shown_url(raw),
                problem: "the URL holds a password: remove it, and put it in a file named by database_password_file (or an environment variable named by database_password_env)".into(),
            });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(problem(
                "the URL names no host: write postgresql://USER@HOST:PORT/DATABASE",
            ));
        }
        if url.username().is_empty() {
            return Err(problem(
                "the URL names no user: write postgresql://USER@HOST:PORT/DATABASE",
            ));
        }
        let mut tls = Tls::Prefer;
        let mut root_cert = None;
        // The other parameters are kept as written (re-encoding them would turn `%20` into `+`, which the
        // client does not read as a space).
        let mut kept: Vec<String> = Vec::new();
        let raw_pairs: Vec<String> = url
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        for (raw_pair, (k, v)) in raw_pairs.iter().zip(url.query_pairs()) {
            match k.as_ref() {
                "sslmode" => {
                    tls = match v.as_ref() {
                        "disable" => Tls::Disable,
                        "allow" | "prefer" => Tls::Prefer,
                        "require" => Tls::Require,
                        "verify-ca" => Tls::VerifyCa,
                        "verify-full" => Tls::VerifyFull,
                        other => {
                            return Err(problem(&format!(
                                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                            )));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(v.as_ref())),
                "password" => {
                    return Err(problem(
                        "the URL holds a password parameter: remove it, and use database_password_file or database_password_env",
                    ));
                }
                _ => kept.push(raw_pair.clone()),
            }
        }
        if let Some(ca) = &root_cert
            && !ca.is_file()
        {
            return Err(problem(&format!(
                "sslrootcert {} is not a readable file",
                ca.display()
            )));
        }
        url.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
        let url = url.to_string();
        url.parse::<postgres::Config>()
            .map_err(|e| problem(&format!("{e}")))?;
        Ok(PgTarget {
            shown: shown_url(raw),
            url,
            password,
            tls,
            root_cert,
        })
    }

    /// The URL as configured, for messages.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    fn connect(&self) -> Result<postgres::Client, DbError> {
        // Parsed when the configuration was read.
        let mut config: postgres::Config = self.url.parse().map_err(DbError::Pg)?;
        if let Some(p) = &self.password {
            config.password(p.expose());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // A server that vanishes without closing the connection (a host lost, a network cut) is noticed.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.tcp_user_timeout(Duration::from_secs(60));
        if config.get_application_name().is_none() {
            config.application_name("modelmirror");
        }
        if self.tls == Tls::Disable {
            config.ssl_mode(postgres::config::SslMode::Disable);
            return outside_runtime(|| config.connect(postgres::NoTls)).map_err(DbError::Pg);
        }
        config.ssl_mode(match self.tls {
            Tls::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        let connector = self.tls_connector().map_err(DbError::Tls)?;
        outside_runtime(|| config.connect(connector)).map_err(DbError::Pg)
    }

    fn tls_connector(&self) -> Result<MakeTlsConnector, openssl::error::ErrorStack> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        let verify = match self.tls {
            Tls::VerifyCa | Tls::VerifyFull => true,
            Tls::Require => self.root_cert.is_some(),
            Tls::Prefer | Tls::Disable => false,
        };
        if let Some(ca) = &self.root_cert {
            builder.set_ca_file(ca)?;
        }
        if !verify {
            builder.set_verify(SslVerifyMode::NONE);
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        if self.tls != Tls::VerifyFull {
            connector.set_callback(|config, _| {
                config.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(connector)
    }
}

/// The URL for messages: as configured, its query (which may name files) kept, userinfo without a password
/// (there is none: it is refused, but a refused URL is shown too).
fn shown_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            // Kept as written (re-encoding would turn `%20` into `+`, which the client does not decode).
            let kept: Vec<String> = u
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|pair| {
                    !pair.is_empty()
                        && url::form_urlencoded::parse(pair.as_bytes())
                            .next()
                            .is_none_or(|(k, _)| k != "password")
                })
                .map(str::to_string)
                .collect();
            u.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
            u.to_string()
        }
        Err(_) => "(the database URL)".to_string(),
    }
}

/// The oldest PostgreSQL the schema is written for (`server_version_num`).
const OLDEST_SERVER: i64 = 130_000;

/// Connect, check the server, and migrate the schema (or, to read only, check it is this version's).
pub(super) fn open(target: &PgTarget, read_only: bool) -> Result<Conn, StoreError> {
    let mut conn = reconnect(target, read_only)?;
    let open_err = |error| StoreError::Open {
        db: target.shown.clone(),
        error,
    };
    let (num, version) = conn
        .query_one(
            "SELECT current_setting('server_version_num'), current_setting('server_version')",
            super::db::params![],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )
        .map_err(open_err)?;
    if num.parse::<i64>().unwrap_or(0) < OLDEST_SERVER {
        return Err(StoreError::ServerTooOld {
            db: target.shown.clone(),
            found: version,
        });
    }
    if read_only {
        let found = schema::pg_version(&mut conn).map_err(open_err)?;
        schema::check_version(&target.shown, found, schema::PG_SCHEMA_VERSION)?;
    } else {
        schema::migrate_pg(&mut conn, &target.shown)?;
    }
    Ok(conn)
}

/// A new connection (after a lost one, or for a read apart from the writer); read-only ones cannot write.
pub(super) fn reconnect(target: &PgTarget, read_only: bool) -> Result<Conn, StoreError> {
    let open_err = |error| StoreError::Open {
        db: target.shown.clone(),
        error,
    };
    let mut conn = Conn::Pg(Box::new(Pg::new(target.connect().map_err(open_err)?)));
    // Statements that wait on a lock for ever would stall the service: a minute is plenty for any of ours.
    let mut setup = format!("SET lock_timeout = '60s'; SET TIME ZONE 'UTC'; {KEEP_WHEN_IDLE}");
    if read_only {
        setup.push_str(" SET default_transaction_read_only = on;");
    }
    conn.batch(&setup).map_err(open_err)?;
    Ok(conn)
}

/// The store keeps its connections, idle between polls and heartbeats: a server's `idle_session_timeout`
/// (PostgreSQL 14 and newer) must not end them (each reconnect would look like an outage).
const KEEP_WHEN_IDLE: &str = "SELECT set_config('idle_session_timeout', '0', false)
     WHERE current_setting('server_version_num')::int >= 140000;";

/// Whether the server accepts writes now (reachable, not a standby, not read-only).
pub(super) fn writable(target: &PgTarget) -> bool {
    let Ok(mut conn) = reconnect(target, false) else {
        return false;
    };
    conn.query_one(
        "SELECT current_setting('transaction_read_only') = 'off' AND NOT pg_is_in_recovery()",
        super::db::params![],
        |r| r.get::<bool>(0),
    )
    .unwrap_or(false)
}

/// What to do about the PostgreSQL errors an operator can fix.
pub(super) fn hint(e: &postgres::Error) -> &'static str {
    let Some(code) = e.code() else {
        return match super::db::pg_lost(e) {
            true => {
                " — the PostgreSQL server could not be reached or closed the connection (is it running, and is `database` right?); nothing of the failed step was kept, and the next poll retries"
            }
            false => "",
        };
    };
    match code.code() {
        "28P01" | "28000" => {
            " — check the user in `database` and the password in database_password_file / database_password_env (and the server's pg_hba.conf)"
        }
        "3D000" => " — create the database first (createdb -O USER DATABASE)",
        "42501" => {
            " — the user in `database` must own the database (or be granted CREATE on it) so the schema can be made"
        }
        "53100" => {
            " — the PostgreSQL server's disk is full: free space there; nothing of the failed step was kept, and the next poll retries"
        }
        "25006" => {
            " — the server accepts no writes (a standby, or default_transaction_read_only): point `database` at the primary"
        }
        "57P01" | "57P02" | "57P03" => {
            " — the PostgreSQL server is shutting down or restarting; the next poll retries"
        }
        "55P03" => " — another session held a lock for more than a minute; the next poll retries",
        _ => "",
    }
}

/// `LISTEN` on `channel` and call `heard` with each notification's payload until `stop` is set, on a
/// connection of its own (made again, after a pause, when lost). Blocking: run it on a thread of its own.
pub(super) fn listen(
    target: &PgTarget,
    channel: &str,
    stop: &std::sync::atomic::AtomicBool,
    mut again: impl FnMut(),
    mut heard: impl FnMut(&str),
) {
    use std::sync::atomic::Ordering;
    let pause = |stop: &std::sync::atomic::AtomicBool| {
        for _ in 0..50 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut listened = false;
    while !stop.load(Ordering::Relaxed) {
        let mut client = match target.connect() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot listen for webhook nudges from other instances: {e}");
                pause(stop);
                continue;
            }
        };
        // Apart, so the connection shows `LISTEN …` as its query (pg_stat_activity).
        let listening = client
            .batch_execute(KEEP_WHEN_IDLE)
            .and_then(|()| client.batch_execute(&format!("LISTEN {channel}")));
        if let Err(e) = listening {
            tracing::warn!(
                "cannot listen for webhook nudges from other instances: {}",
                super::db::pg_message(&e)
            );
            pause(stop);
            continue;
        }
        if std::mem::replace(&mut listened, true) {
            // Notifications sent while no connection listened are lost.
            again();
        }
        while !stop.load(Ordering::Relaxed) {
            use postgres::fallible_iterator::FallibleIterator;
            let next = client
                .notifications()
                .timeout_iter(Duration::from_secs(1))
                .next()
                .map(|n| n.map(|n| n.payload().to_string()));
            match next {
                Ok(Some(payload)) => heard(&payload),
                Err(e) => {
                    tracing::warn!(
                        "lost the connection webhook nudges arrive on (listening again): {}",
                        super::db::pg_message(&e)
                    );
                    break;
                }
                Ok(None) if client.is_closed() => break,
                Ok(None) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS parameters are taken out; the others reach the client as written (`%20` stays a space).
    #[test]
    fn the_url_keeps_its_other_parameters_as_written() {
        let t = PgTarget::parse(
            "postgresql://u@h:5433/db?application_name=a%20b&sslmode=require&options=-c%20x%3Dy",
            None,
        )
        .unwrap();
        assert_eq!(
            t.url,
            "postgresql://u@h:5433/db?application_name=a%20b&options=-c%20x%3Dy"
        );
        assert_eq!(t.tls, Tls::Require);
        let config: postgres::Config = t.url.parse().unwrap();
        assert_eq!(config.get_application_name(), Some("a b"));
        assert_eq!(config.get_options(), Some("-c x=y"));
        // Shown as written too (a URL copied from a message must work), without a password parameter.
        let t = PgTarget::parse(
            "postgresql://u@h/db?options=-c%20statement_timeout%3D0&password=x&sslmode=require",
            None,
        );
        let shown = match t {
            Ok(t) => t.shown,
            Err(e) => e.to_string(),
        };
        assert!(
            shown
                .contains("postgresql://u@h/db?options=-c%20statement_timeout%3D0&sslmode=require"),
            "{shown}"
        );
        assert!(!shown.contains("password=x"), "{shown}");
        let t = PgTarget::parse("postgres://u@h/db?sslmode=disable", None).unwrap();
        assert_eq!((t.url.as_str(), t.tls), ("postgres://u@h/db", Tls::Disable));
    }
}
