//! Who may read the web catalog: HTTP Basic against `users_file` (Apache htpasswd, bcrypt entries only) for
//! pages and API alike, and `Authorization: Bearer` against `tokens_file` (one token per line) for the API.
//! Both files are read again when they change; a changed file that cannot be used is logged and the last good
//! one stays in force.
//!
//! Wrong credentials get 401, are counted in `modelmirror_web_auth_failures_total`, and count against the
//! client's address: past `MAX_FAILURES` in `FAILURE_WINDOW` the address gets 429 until the window has
//! passed, so guessing costs time and no client can keep the CPU busy with bcrypt. A password is never logged,
//! and verified credentials are remembered (by their SHA-256, not in clear) so a browser's Basic header on
//! every request costs one bcrypt verification, not one per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::HeaderMap;

use crate::config::WebConfig;
use crate::metrics;

/// Wrong credentials an address may send in `FAILURE_WINDOW` before it must wait.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered for the failure count, at most (the oldest are forgotten first).
const MAX_TRACKED: usize = 10_000;
/// Verified credentials remembered, at most.
const MAX_VERIFIED: usize = 1_024;

/// Why a credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthFileError {
    #[error("cannot read {key} {}: {error}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "users_file {}, line {line}: the password of `{user}` is {kind}, not bcrypt; modelmirror accepts bcrypt entries only: create them with `htpasswd -B {} {user}`",
        path.display(),
        path.display()
    )]
    NotBcrypt {
        path: PathBuf,
        line: usize,
        user: String,
        kind: &'static str,
    },
    #[error(
        "users_file {}, line {line}: not a `user:hash` line; create entries with `htpasswd -B`",
        path.display()
    )]
    Malformed { path: PathBuf, line: usize },
}

/// Why a request is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denied {
    /// No credentials, or credentials of a kind this listener does not take here: 401.
    Missing,
    /// Wrong credentials: 401, counted.
    Wrong,
    /// Too many wrong credentials from this address lately: 429.
    TooMany,
}

/// The users of `users_file`: name → bcrypt hash.
#[derive(Default)]
struct Users {
    hashes: HashMap<String, String>,
    /// A hash of no one's password at the file's highest cost, made when first needed: an unknown user is
    /// checked against it, so that refusing one takes as long as a wrong password.
    dummy: std::sync::OnceLock<String>,
}

impl Users {
    fn dummy(&self) -> &str {
        self.dummy.get_or_init(|| {
            let cost = self
                .hashes
                .values()
                .filter_map(|h| h.get(4..6)?.parse::<u32>().ok())
                .max()
                .unwrap_or(bcrypt::DEFAULT_COST)
                .clamp(4, 31);
            bcrypt::hash_with_salt("no one's password", cost, [0x5a; 16])
                .map(|h| h.format_for_version(bcrypt::Version::TwoY))
                .unwrap_or_default()
        })
    }
}

/// The tokens of `tokens_file`.
#[derive(Default)]
struct Tokens(Vec<String>);

/// A file's modification time, size and inode: when any changes, the file is read again (an editor or
/// `htpasswd` that replaces the file gives it a new inode even within the same second).
type Stamp = Option<(SystemTime, u64, u64)>;

/// A file read again when it changes.
struct Watched<T> {
    key: &'static str,
    path: PathBuf,
    parse: fn(&Path, &str) -> Result<T, AuthFileError>,
    /// The file's stamp when read, and what it held.
    current: Mutex<(Stamp, Arc<T>)>,
}

impl<T: Default> Watched<T> {
    fn load(
        key: &'static str,
        path: &Path,
        parse: fn(&Path, &str) -> Result<T, AuthFileError>,
    ) -> Result<Self, AuthFileError> {
        let (stamp, value) = read(key, path, parse)?;
        Ok(Watched {
            key,
            path: path.to_path_buf(),
            parse,
            current: Mutex::new((stamp, Arc::new(value))),
        })
    }

    /// What the file holds now: read again if it changed; the last good content if it changed into something
    /// that cannot be used; nothing (nobody is let in) while it is gone, so deleting the file revokes.
    fn get(&self) -> Arc<T> {
        let stamp = stamp(&self.path);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamp == current.0 {
            return current.1.clone();
        }
        match stamp {
            None => {
                tracing::error!(
                    "{} {} is gone: the web catalog lets nobody in with it until it is back",
                    self.key,
                    self.path.display()
                );
                *current = (None, Arc::new(T::default()));
            }
            Some(_) => match read(self.key, &self.path, self.parse) {
                Ok((stamp, value)) => *current = (stamp, Arc::new(value)),
                Err(e) => {
                    tracing::error!("{e}; the web catalog keeps the {} it read before", self.key);
                    current.0 = stamp;
                }
            },
        }
        current.1.clone()
    }
}

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

fn read<T>(
    key: &'static str,
    path: &Path,
    parse: fn(&Path, &str) -> Result<T, AuthFileError>,
) -> Result<(Stamp, T), AuthFileError> {
    let stamp = stamp(path);
    let text = std::fs::read_to_string(path).map_err(|error| AuthFileError::Read {
        key,
        path: path.to_path_buf(),
        error,
    })?;
    Ok((stamp, parse(path, &text)?))
}

/// Parse an htpasswd file, refusing every entry that is not bcrypt.
fn parse_users(path: &Path, text: &str) -> Result<Users, AuthFileError> {
    let mut users = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(AuthFileError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
            });
        };
        let kind =
            if ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60 {
                None
            } else if hash.starts_with("$apr1$") {
                Some("MD5 (apr1)")
            } else if hash.starts_with("{SHA}") {
                Some("SHA-1")
            } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
                Some("SHA-crypt")
            } else if hash.starts_with("$2") {
                Some("a malformed bcrypt hash")
            } else {
                Some("crypt(3) or plain text")
            };
        if let Some(kind) = kind {
            return Err(AuthFileError::NotBcrypt {
                path: path.to_path_buf(),
                line: i + 1,
                user: user.chars().filter(|c| !c.is_control()).collect(),
                kind,
            });
        }
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(Users {
        hashes: users,
        dummy: std::sync::OnceLock::new(),
    })
}

/// One token per line; blank lines and `#` comments skipped.
fn parse_tokens(_path: &Path, text: &str) -> Result<Tokens, AuthFileError> {
    Ok(Tokens(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect(),
    ))
}

/// Check that `[web]`'s credential files can be used (for `check` and at start).
pub(crate) fn check_files(web: &WebConfig) -> Result<(), AuthFileError> {
    Auth::new(web).map(|_| ())
}

/// The web catalog's access control.
pub(super) struct Auth {
    users: Option<Watched<Users>>,
    tokens: Option<Watched<Tokens>>,
    /// Per client: wrong credentials in the current window, and the distinct passwords being verified now.
    attempts: Arc<Mutex<HashMap<IpAddr, Attempts>>>,
    /// SHA-256 of `user:password` of credentials verified against the users' current hashes.
    verified: Mutex<HashMap<[u8; 32], Arc<Users>>>,
}

/// One client's attempts.
struct Attempts {
    /// When the window started, and how many wrong credentials came in it.
    since: Instant,
    wrong: u32,
    /// The credentials (by SHA-256) being verified now: each counts as an attempt until it is known to be
    /// right, so that many guesses sent at once cannot pass the limit together, while the same right
    /// password sent by many requests at once counts once.
    checking: HashMap<[u8; 32], usize>,
}

impl Attempts {
    fn new() -> Attempts {
        Attempts {
            since: Instant::now(),
            wrong: 0,
            checking: HashMap::new(),
        }
    }

    /// Start a new window when the last one is over.
    fn roll(&mut self) {
        if self.since.elapsed() >= FAILURE_WINDOW {
            self.since = Instant::now();
            self.wrong = 0;
        }
    }

    fn spent(&self) -> bool {
        self.wrong as usize + self.checking.len() >= MAX_FAILURES as usize
    }
}

/// What [`Auth::start`] found.
pub(super) enum Check {
    Allowed,
    Denied(Denied),
    /// A password to verify with bcrypt (slow: on a blocking thread, a few at a time) by [`Auth::verify`].
    Verify(Pending),
}

/// A password waiting for bcrypt. It counts against its client until verified; dropped unverified (the
/// client went away), it counts no more.
pub(super) struct Pending {
    client: IpAddr,
    password: String,
    /// The user's hash; `None` for an unknown user (checked against the dummy hash).
    hash: Option<String>,
    digest: [u8; 32],
    users: Arc<Users>,
    attempts: Arc<Mutex<HashMap<IpAddr, Attempts>>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = attempts.get_mut(&self.client)
            && let Some(n) = a.checking.get_mut(&self.digest)
        {
            *n -= 1;
            if *n == 0 {
                a.checking.remove(&self.digest);
            }
        }
    }
}

impl Auth {
    /// Read the credential files of `web` (none: anyone may read).
    pub(super) fn new(web: &WebConfig) -> Result<Auth, AuthFileError> {
        Ok(Auth {
            users: web
                .users_file
                .as_deref()
                .map(|p| Watched::load("users_file", p, parse_users))
                .transpose()?,
            tokens: web
                .tokens_file
                .as_deref()
                .map(|p| Watched::load("tokens_file", p, parse_tokens))
                .transpose()?,
            attempts: Arc::new(Mutex::new(HashMap::new())),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether requests need credentials at all.
    pub(super) fn required(&self) -> bool {
        self.users.is_some() || self.tokens.is_some()
    }

    /// Whether pages (not only the API) can be signed in to: there are users.
    pub(super) fn has_users(&self) -> bool {
        self.users.is_some()
    }

    /// Whether a request from `client` with `headers` may read, as far as that can be told at once;
    /// `api`: the request is for `/api/`, where a Bearer token is accepted too.
    pub(super) fn start(&self, headers: &HeaderMap, client: IpAddr, api: bool) -> Check {
        if !self.required() {
            return Check::Allowed;
        }
        let Some(value) = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Check::Denied(Denied::Missing);
        };
        let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") && api && self.tokens.is_some() {
            if self.over_limit(client) {
                return Check::Denied(self.too_many());
            }
            return match self.bearer(credentials) {
                true => Check::Allowed,
                false => Check::Denied(self.wrong(client)),
            };
        }
        let Some(users) = self
            .users
            .as_ref()
            .map(Watched::get)
            .filter(|_| scheme.eq_ignore_ascii_case("basic"))
        else {
            return Check::Denied(Denied::Missing);
        };
        if self.over_limit(client) {
            // Right credentials too wait while the client is over its limit.
            return Check::Denied(self.too_many());
        }
        let Some((user, password)) = BASE64
            .decode(credentials)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|d| {
                d.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
        else {
            return Check::Denied(self.wrong(client));
        };
        let digest = sha256(format!("{user}:{password}").as_bytes());
        let remembered = {
            let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            // Remembered only against the same users file: a changed file verifies again.
            verified
                .get(&digest)
                .is_some_and(|u| Arc::ptr_eq(u, &users))
        };
        if remembered {
            return Check::Allowed;
        }
        {
            let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            forget_old(&mut attempts, client);
            let a = attempts.entry(client).or_insert_with(Attempts::new);
            a.roll();
            if !a.checking.contains_key(&digest) && a.spent() {
                drop(attempts);
                return Check::Denied(self.too_many());
            }
            *a.checking.entry(digest).or_insert(0) += 1;
        }
        Check::Verify(Pending {
            client,
            password,
            hash: users.hashes.get(&user).cloned(),
            digest,
            users,
            attempts: self.attempts.clone(),
        })
    }

    /// Verify a password with bcrypt (slow: call it on a blocking thread).
    pub(super) fn verify(&self, p: Pending) -> Result<(), Denied> {
        let right = match &p.hash {
            Some(hash) => bcrypt::verify(&p.password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(&p.password, p.users.dummy());
                false
            }
        };
        let client = p.client;
        let digest = p.digest;
        let users = p.users.clone();
        if !right {
            // Counted wrong before it stops counting as being checked: in between, another guess sent at
            // the same moment would find a free place and pass the limit.
            let denied = self.wrong(client);
            drop(p);
            return Err(denied);
        }
        drop(p);
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= MAX_VERIFIED {
            verified.clear();
        }
        verified.insert(digest, users);
        Ok(())
    }

    /// [`Auth::start`] and, when needed, [`Auth::verify`], on this thread.
    #[cfg(test)]
    fn check(&self, headers: &HeaderMap, client: IpAddr, api: bool) -> Result<(), Denied> {
        match self.start(headers, client, api) {
            Check::Allowed => Ok(()),
            Check::Denied(d) => Err(d),
            Check::Verify(p) => self.verify(p),
        }
    }

    /// Count wrong credentials from `client`.
    fn wrong(&self, client: IpAddr) -> Denied {
        {
            let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            forget_old(&mut attempts, client);
            let a = attempts.entry(client).or_insert_with(Attempts::new);
            a.roll();
            a.wrong += 1;
        }
        metrics::global().inc(
            "modelmirror_web_auth_failures_total",
            &[("reason", "wrong")],
            1.0,
        );
        Denied::Wrong
    }

    fn too_many(&self) -> Denied {
        metrics::global().inc(
            "modelmirror_web_auth_failures_total",
            &[("reason", "rate_limited")],
            1.0,
        );
        Denied::TooMany
    }

    /// Whether `client` has spent its attempts of the window on wrong credentials.
    fn over_limit(&self, client: IpAddr) -> bool {
        let attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        attempts
            .get(&client)
            .is_some_and(|a| a.wrong >= MAX_FAILURES && a.since.elapsed() < FAILURE_WINDOW)
    }

    /// A token against the tokens file, in constant time per token.
    fn bearer(&self, token: &str) -> bool {
        let Some(tokens) = self.tokens.as_ref().map(Watched::get) else {
            return false;
        };
        !token.is_empty()
            && tokens.0.iter().any(|t| {
                t.len() == token.len() && openssl::memcmp::eq(t.as_bytes(), token.as_bytes())
            })
    }
}

/// Keep the table of clients bounded: past `MAX_TRACKED`, forget the clients whose window is over and who
/// have nothing in flight, then the oldest.
fn forget_old(attempts: &mut HashMap<IpAddr, Attempts>, client: IpAddr) {
    if attempts.len() < MAX_TRACKED || attempts.contains_key(&client) {
        return;
    }
    attempts.retain(|_, a| a.since.elapsed() < FAILURE_WINDOW || !a.checking.is_empty());
    if attempts.len() >= MAX_TRACKED
        && let Some(oldest) = attempts
            .iter()
            .filter(|(_, a)| a.checking.is_empty())
            .min_by_key(|(_, a)| a.since)
            .map(|(ip, _)| *ip)
    {
        attempts.remove(&oldest);
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let digest = openssl::sha::sha256(data);
    out.copy_from_slice(&digest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(users: Option<&Path>, tokens: Option<&Path>) -> WebConfig {
        WebConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            users_file: users.map(Path::to_path_buf),
            tokens_file: tokens.map(Path::to_path_buf),
            allow_anonymous: false,
            public_url: None,
            trusted_proxies: Vec::new(),
        }
    }

    fn basic(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", BASE64.encode(format!("{user}:{pass}")));
        h.insert(hyper::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn bcrypt_users_tokens_and_the_failure_limit() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        let hash = bcrypt::hash_with_salt("s3cret pass", 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        std::fs::write(&users, format!("# comment\nann:{hash}\n")).unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "tok-123\n\n").unwrap();
        let auth = Auth::new(&web(Some(&users), Some(&tokens))).unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(
            auth.check(&HeaderMap::new(), ip, false),
            Err(Denied::Missing)
        );
        assert_eq!(auth.check(&basic("ann", "s3cret pass"), ip, false), Ok(()));
        assert_eq!(
            auth.check(&basic("ann", "s3cret pass"), ip, false),
            Ok(()),
            "remembered"
        );
        assert_eq!(
            auth.check(&basic("ann", "wrong"), ip, false),
            Err(Denied::Wrong)
        );
        assert_eq!(
            auth.check(&basic("bob", "s3cret pass"), ip, false),
            Err(Denied::Wrong)
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(
            hyper::header::AUTHORIZATION,
            "Bearer tok-123".parse().unwrap(),
        );
        assert_eq!(auth.check(&bearer, ip, true), Ok(()));
        assert_eq!(
            auth.check(&bearer, ip, false),
            Err(Denied::Missing),
            "tokens are for the API"
        );
        // A rotated tokens file applies at once.
        std::fs::write(&tokens, "tok-456-longer\n").unwrap();
        assert_eq!(auth.check(&bearer, ip, true), Err(Denied::Wrong));
        // Past the limit the address waits, even with the right password; another address does not.
        for _ in 0..MAX_FAILURES {
            let _ = auth.check(&basic("ann", "guess"), ip, false);
        }
        assert_eq!(
            auth.check(&basic("ann", "s3cret pass"), ip, false),
            Err(Denied::TooMany)
        );
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert_eq!(
            auth.check(&basic("ann", "s3cret pass"), other, false),
            Ok(())
        );
        // Right credentials do not use up attempts: 9 wrong, any number right, then the 10th wrong.
        let third: IpAddr = "127.0.0.11".parse().unwrap();
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(
                auth.check(&basic("ann", "guess"), third, false),
                Err(Denied::Wrong)
            );
        }
        std::fs::write(&tokens, "tok-789\n").unwrap();
        let mut good_token = HeaderMap::new();
        good_token.insert(
            hyper::header::AUTHORIZATION,
            "Bearer tok-789".parse().unwrap(),
        );
        for _ in 0..5 {
            assert_eq!(auth.check(&good_token, third, true), Ok(()));
        }
        assert_eq!(
            auth.check(&basic("ann", "guess"), third, false),
            Err(Denied::Wrong)
        );
        assert_eq!(auth.check(&good_token, third, true), Err(Denied::TooMany));
        // A deleted users file lets nobody in.
        std::fs::remove_file(&users).unwrap();
        assert_eq!(
            auth.check(&basic("ann", "s3cret pass"), other, false),
            Err(Denied::Wrong)
        );
    }

    #[test]
    fn other_hash_kinds_are_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        for (line, kind) in [
            ("ann:$apr1$abc$def", "MD5"),
            ("ann:{SHA}abc=", "SHA-1"),
            ("ann:$6$salt$hash", "SHA-crypt"),
            ("ann:plain", "plain text"),
        ] {
            std::fs::write(&users, format!("{line}\n")).unwrap();
            let e = check_files(&web(Some(&users), None))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(kind) && e.contains("htpasswd -B") && e.contains("line 1"),
                "{e}"
            );
        }
        std::fs::write(&users, "no colon here\n").unwrap();
        assert!(matches!(
            check_files(&web(Some(&users), None)),
            Err(AuthFileError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            check_files(&web(Some(&dir.path().join("missing")), None)),
            Err(AuthFileError::Read { .. })
        ));
    }
}
