//! Everything that touches Git, through libgit2: the bare mirror on disk, listing the remote's refs and
//! fetching its default branch in one connection, walking first-parent history, diffing trees and reading
//! blobs. The one thing read without libgit2 is where objects sit in the pack files (Git's documented `.idx`
//! format), so that many blobs can be read in the order they are stored.
//!
//! All of it is blocking; callers run it on `spawn_blocking`. Credentials are handed to libgit2 as an
//! `Authorization` header for the connection (never in a URL, so nothing with a secret is written to the
//! mirror's config), and the credential callback gives up after the first rejection instead of letting libgit2
//! ask again and again.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Delta, DiffFile, DiffFindOptions,
    DiffOptions, FetchOptions, Oid, ProxyOptions, RemoteCallbacks, RemoteRedirect, Repository,
    Sort,
};

use crate::model::FileFilter;
use crate::provider::GitAuth;

/// What went wrong talking to a remote or reading the mirror. Messages name the URL (which never holds
/// credentials) and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(
        "authentication failed for {url} ({auth} was rejected): check the token (token_file / token_env), its scopes, and that it may read this repository"
    )]
    Auth { url: String, auth: String },
    #[error(
        "authentication failed for {url}: the server refused the ssh key {key}; add its public key to the account (authorized keys or deploy keys), or fix ssh_key_file"
    )]
    SshAuth { url: String, key: PathBuf },
    #[error(
        "repository not found at {url}: check the path in `repos`, and that the token may see the repository"
    )]
    NotFound { url: String },
    #[error("cannot fetch from {url}: {message}")]
    Remote { url: String, message: String },
    /// No connection could be made at all (refused, timed out, name not resolved): the server is down or
    /// cut off. The daemon backs off, and polls again as soon as the server accepts connections.
    #[error(
        "cannot reach {url}: {message} (the server is down, or a firewall or DNS is in the way; the service backs off and polls again as soon as the server accepts connections)"
    )]
    Unreachable { url: String, message: String },
    #[error("ssh host key of {host} is not accepted: {message}")]
    HostKey { host: String, message: String },
    #[error("the transfer from {url} was cancelled")]
    Cancelled { url: String },
    #[error(
        "local mirror {path}: {message} (delete that folder and the next poll clones the repository again)"
    )]
    Mirror { path: PathBuf, message: String },
    #[error(
        "local mirror {path} is being updated by another modelmirror process; the next poll retries"
    )]
    MirrorBusy { path: PathBuf },
    #[error(
        "cannot lock the local mirror {path}: {message} (the service's user must own that folder and be able to write to it)"
    )]
    MirrorLock { path: PathBuf, message: String },
    #[error(
        "local mirror {path}: {message} (a lock file left by an interrupted update that modelmirror could not remove: delete that file)"
    )]
    StaleLock { path: PathBuf, message: String },
    #[error(
        "reading {what} from the local mirror {path}: {message} (if this repeats, the mirror is damaged: delete that folder and the next poll clones the repository again)"
    )]
    Read {
        path: PathBuf,
        what: String,
        message: String,
    },
    #[error("ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
}

fn read_err(repo: &Repository, what: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let what = what.into();
    let path = repo.path().to_path_buf();
    move |e| GitError::Read {
        path,
        what,
        message: e.message().to_string(),
    }
}

/// How to reach one remote.
pub struct RemoteSpec<'a> {
    pub url: &'a str,
    pub auth: &'a GitAuth,
    pub ssh_key_file: Option<&'a Path>,
    pub known_hosts_file: Option<&'a Path>,
    /// The provider's proxy (`http://[user:pass@]host:port`); `None`: libgit2's detection (git config
    /// `http.proxy`, then `HTTPS_PROXY` / `NO_PROXY`).
    pub proxy: Option<&'a str>,
    /// Set from outside to abort a transfer (shutdown).
    pub cancel: Arc<AtomicBool>,
    /// Called whenever data arrives (pack bytes, the server's progress messages): the caller's sign that the
    /// transfer is alive.
    pub alive: Option<&'a (dyn Fn() + Sync)>,
}

/// Trust the extra CA bundles of the providers for git over HTTPS, on top of the system's. libgit2 keeps one
/// trust store per process, so a provider's private CA is trusted for every provider's git traffic (REST
/// clients trust it for their own provider only). Call once, before any transfer.
pub fn trust_ca_files(files: &[&Path]) -> Result<(), GitError> {
    for f in files {
        // SAFETY: called at start-up, before any libgit2 operation runs on another thread.
        unsafe { git2::opts::set_ssl_cert_file(f) }.map_err(|e| GitError::CaFile {
            path: f.to_path_buf(),
            message: e.message().to_string(),
        })?;
    }
    Ok(())
}

/// Set libgit2's connect and read timeouts for git transfers (process-wide). Call once, at start-up.
///
/// Also turns off libgit2's re-hashing of every object it reads: each object was hashed when its pack was
/// indexed at fetch time (that is how its id is known), and zlib's checksum still catches damage on disk.
/// Hashing again (with SHA-1 collision detection) cost about a tenth of a first import.
pub fn set_timeouts(connect: std::time::Duration, read: std::time::Duration) {
    git2::opts::strict_hash_verification(false);
    let ms = |d: std::time::Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: called at start-up, before any libgit2 operation runs on another thread.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect));
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms(read));
    }
}

/// What the remote's default branch is, after fetching it if needed.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteHead {
    /// The remote has no commits (or no HEAD).
    Empty,
    Branch {
        /// Short name, e.g. `main`.
        name: String,
        commit: Oid,
        /// Bytes received (0 when nothing had to be fetched).
        bytes: usize,
    },
}

fn mirror_error(path: &Path, e: git2::Error) -> GitError {
    // Polls hold the mirror's own lock, so a libgit2 lock file in the way is one `remove_leftovers` could
    // not remove: report it (it would otherwise stop every poll), never take it for a busy mirror.
    if e.code() == git2::ErrorCode::Locked {
        return GitError::StaleLock {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        };
    }
    GitError::Mirror {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    }
}

/// A bare mirror opened for a poll. This process holds it exclusively while the value lives: an advisory
/// lock (`flock`) on `modelmirror.flock` inside it, which the kernel releases when the process ends, however it
/// ends. Derefs to the libgit2 repository.
pub struct Mirror {
    repo: Repository,
    /// Held, never read: dropping it unlocks the mirror. `None` where the filesystem has no `flock`.
    _lock: Option<std::fs::File>,
}

impl std::ops::Deref for Mirror {
    type Target = Repository;
    fn deref(&self) -> &Repository {
        &self.repo
    }
}

/// The file whose advisory lock says "a modelmirror process is using this mirror".
const MIRROR_LOCK: &str = "modelmirror.flock";

/// Take the mirror at `path` (an existing folder) for this process: `Ok(None)` when the filesystem cannot
/// lock files (some network filesystems), which is logged.
fn lock_mirror(path: &Path) -> Result<Option<std::fs::File>, GitError> {
    let lock_err = |what: &str, e: std::io::Error| GitError::MirrorLock {
        path: path.to_path_buf(),
        message: format!("{what} {MIRROR_LOCK}: {e}"),
    };
    let file = path.join(MIRROR_LOCK);
    // A lock needs no write access: an existing file (perhaps made by another user) is opened to read.
    let lock = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&file)
            .map_err(|e| lock_err("cannot create", e))?,
        Err(e) => return Err(lock_err("cannot open", e)),
    };
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => Err(GitError::MirrorBusy {
            path: path.to_path_buf(),
        }),
        // ENOLCK, EOPNOTSUPP: no locks on this filesystem.
        Err(std::fs::TryLockError::Error(e))
            if e.kind() == std::io::ErrorKind::Unsupported
                || matches!(e.raw_os_error(), Some(37 | 95)) =>
        {
            tracing::warn!(
                "{}: the filesystem cannot lock files ({e}); leftovers of an interrupted update are not cleaned up there",
                path.display()
            );
            Ok(None)
        }
        Err(std::fs::TryLockError::Error(e)) => Err(lock_err("cannot lock", e)),
    }
}

/// Open the bare mirror at `path` for a poll, creating it when missing.
///
/// Another modelmirror process using it (a `modelmirror sync` beside the service) gives
/// [`GitError::MirrorBusy`]. Once the lock is held nobody else can be writing the mirror, so what a process
/// killed mid-update left behind is removed (see [`remove_leftovers`]): libgit2 would otherwise refuse every
/// later update because of a stale `config.lock`, or keep a half-received pack forever.
pub fn open_mirror(path: &Path) -> Result<Mirror, GitError> {
    let mirror_err = |e: git2::Error| mirror_error(path, e);
    std::fs::create_dir_all(path).map_err(|e| GitError::Mirror {
        path: path.to_path_buf(),
        message: format!("cannot create folder: {e}"),
    })?;
    let lock = lock_mirror(path)?;
    if lock.is_some() {
        remove_leftovers(path);
    }
    let repo = if path.join("HEAD").exists() {
        Repository::open_bare(path).map_err(mirror_err)?
    } else {
        Repository::init_bare(path).map_err(mirror_err)?
    };
    Ok(Mirror { repo, _lock: lock })
}

/// Open an existing mirror only to read it (`rebuild`): no lock, nothing changed in it. Objects are only
/// ever added by atomic renames, so reading beside a poll that fetches is safe.
pub fn open_mirror_to_read(path: &Path) -> Result<Repository, GitError> {
    Repository::open_bare(path).map_err(|e| mirror_error(path, e))
}

/// Delete a mirror (`prune_removed`), once no other process is polling it.
pub fn delete_mirror(path: &Path) -> Result<(), GitError> {
    if !path.exists() {
        return Ok(());
    }
    // Wait for a poll of another process (a manual `sync`) to end rather than pull the folder from under it.
    if let Ok(lock) = std::fs::File::open(path.join(MIRROR_LOCK)) {
        let _ = lock.lock();
    }
    std::fs::remove_dir_all(path).map_err(|e| GitError::Mirror {
        path: path.to_path_buf(),
        message: format!("cannot delete it: {e}"),
    })
}

/// Remove what an update interrupted by a crash or `kill -9` leaves in a mirror: lock files (`config.lock`,
/// `HEAD.lock`, `packed-refs.lock`, `refs/**/*.lock`, `objects/pack/*.lock`) and libgit2's temporary packs
/// (`objects/pack/pack_git2_*`). Only called while holding the mirror's lock. Failures are logged, not fatal:
/// libgit2 then reports the lock itself.
fn remove_leftovers(path: &Path) {
    fn is_leftover(name: &str) -> bool {
        name.ends_with(".lock") || name.starts_with("pack_git2_")
    }
    let mut dirs = vec![path.to_path_buf(), path.join("objects/pack")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                // Only the refs hierarchy is walked down; the mirror's top level holds no lock folders.
                if file.starts_with(path.join("refs")) {
                    dirs.push(file);
                }
                continue;
            }
            if !entry.file_name().to_str().is_some_and(is_leftover) {
                continue;
            }
            match std::fs::remove_file(&file) {
                Ok(()) => tracing::warn!(
                    "removed {} left in the local mirror by a modelmirror process that stopped mid-update",
                    file.display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", file.display()),
            }
        }
    }
}

/// List the remote's refs and, in the same connection, fetch its HEAD commit only if the mirror lacks it.
///
/// libgit2 fetches the remote's `HEAD` when given no refspec, and skips the pack request entirely when the
/// wanted commit is already present — so a poll where nothing changed costs exactly one ref listing request.
/// The branch HEAD points to (the symref) is recorded as `refs/heads/<name>` in the mirror, so fetched objects
/// stay reachable.
pub fn fetch_head(repo: &Repository, spec: &RemoteSpec<'_>) -> Result<RemoteHead, GitError> {
    let listing = connect(repo, spec, &[])?;
    let Some((name, commit)) = listing.head else {
        return Ok(RemoteHead::Empty);
    };
    let url = spec.url;
    if repo.find_commit(commit).is_err() {
        return Err(GitError::Remote {
            url: url.to_string(),
            message: format!("the remote advertised {commit} for HEAD but it was not received"),
        });
    }
    let mirror_ref = format!("refs/heads/{name}");
    let path = repo.path().to_path_buf();
    let mirror_err = |e: git2::Error| mirror_error(&path, e);
    if git2::Reference::is_valid_name(&mirror_ref) {
        repo.reference(&mirror_ref, commit, true, "modelmirror fetch")
            .map_err(mirror_err)?;
        repo.set_head(&mirror_ref).map_err(mirror_err)?;
        // A renamed default branch leaves its old name behind: drop it, so the mirror holds one branch.
        let stale: Vec<String> = repo
            .references_glob("refs/heads/*")
            .map_err(mirror_err)?
            .flatten()
            .filter_map(|r| r.name().ok().map(str::to_string))
            .filter(|n| *n != mirror_ref)
            .collect();
        for name in stale {
            if let Ok(mut r) = repo.find_reference(&name) {
                r.delete().map_err(mirror_err)?;
            }
        }
    }
    Ok(RemoteHead::Branch {
        name,
        commit,
        bytes: listing.bytes,
    })
}

/// List the remote's refs without fetching anything, and report its default branch and commit
/// (`None` for an empty repository). Used by `check`.
pub fn list_remote(spec: &RemoteSpec<'_>) -> Result<Option<(String, Oid)>, GitError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "modelmirror-ls-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = Repository::init_bare(&dir)
        .map_err(|e| GitError::Mirror {
            path: dir.clone(),
            message: e.message().to_string(),
        })
        .and_then(|repo| connect(&repo, spec, &["refs/modelmirror/list-only/no-such-ref"]));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result?.head)
}

/// What a connection learnt: the default branch (short name) and its commit, if the remote has any.
struct Listing {
    head: Option<(String, Oid)>,
    bytes: usize,
}

/// Connect, list refs, and download what `refspecs` want that the repository lacks (no refspec: the remote's
/// HEAD). Ends with the connection closed.
fn connect(
    repo: &Repository,
    spec: &RemoteSpec<'_>,
    refspecs: &[&str],
) -> Result<Listing, GitError> {
    let url = spec.url.to_string();
    let auth_rejected = Cell::new(false);
    let ssh_attempts = Cell::new(0u32);
    let host_key_problem: std::cell::RefCell<Option<(String, String)>> = Default::default();
    let cancelled = Cell::new(false);

    let mut callbacks = RemoteCallbacks::new();
    let proxy_rejected = Cell::new(false);
    callbacks.credentials(|asking_url, username_from_url, allowed| {
        if let Some(proxy) = spec.proxy
            && same_host(asking_url, proxy)
        {
            // libgit2 asks for the proxy's credentials the same way as for the server's.
            proxy_rejected.set(true);
            return Err(git2::Error::from_str("proxy credentials rejected"));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = spec.ssh_key_file
        {
            let n = ssh_attempts.get() + 1;
            ssh_attempts.set(n);
            if n > 1 {
                auth_rejected.set(true);
                return Err(git2::Error::from_str("ssh key rejected"));
            }
            return Cred::ssh_key(username_from_url.unwrap_or("git"), None, key, None);
        }
        // HTTP: the Authorization header went with the request and was refused (or none was configured).
        auth_rejected.set(true);
        Err(git2::Error::from_str("credentials rejected"))
    });
    callbacks.certificate_check(|cert, host| {
        let Some(hostkey) = cert.as_hostkey() else {
            // TLS certificates: let libgit2 verify them against the system's trust store.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let Some(key) = hostkey.hostkey() else {
            *host_key_problem.borrow_mut() =
                Some((host.into(), "the server sent no raw host key".into()));
            return Err(git2::Error::from_str("no host key"));
        };
        match check_known_host(spec.known_hosts_file, host, ssh_port(spec.url), key) {
            Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
            Err(message) => {
                *host_key_problem.borrow_mut() = Some((host.into(), message));
                Err(git2::Error::from_str("host key not accepted"))
            }
        }
    });
    callbacks.transfer_progress(|_| {
        if let Some(alive) = spec.alive {
            alive();
        }
        if spec.cancel.load(Ordering::Relaxed) {
            cancelled.set(true);
            return false;
        }
        true
    });
    callbacks.sideband_progress(|_| {
        if let Some(alive) = spec.alive {
            alive();
        }
        !spec.cancel.load(Ordering::Relaxed)
    });

    let header = spec.auth.header();
    let headers: Vec<&str> = header.iter().map(|h| h.expose()).collect();
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    let mut proxy = ProxyOptions::new();
    match spec.proxy {
        Some(url) => proxy.url(url),
        None => proxy.auto(),
    };
    opts.proxy_options(proxy);
    opts.download_tags(AutotagOption::None);
    opts.update_fetchhead(false);
    opts.custom_headers(&headers);
    // Credentials go with the headers: never replay them to another host on a redirect.
    opts.follow_redirects(RemoteRedirect::None);

    let mut remote = repo
        .remote_anonymous(spec.url)
        .map_err(|e| GitError::Remote {
            url: url.clone(),
            message: e.message().to_string(),
        })?;
    let result = remote.download(refspecs, Some(&mut opts));
    drop(opts);
    if let Err(e) = result {
        if let Some((host, message)) = host_key_problem.take() {
            return Err(GitError::HostKey { host, message });
        }
        if proxy_rejected.get() {
            return Err(GitError::Remote {
                url,
                message: "the proxy refused the credentials in `proxy` (HTTP 407); check the proxy's user and password"
                    .into(),
            });
        }
        if auth_rejected.get() {
            if ssh_attempts.get() > 0
                && let Some(key) = spec.ssh_key_file
            {
                return Err(GitError::SshAuth {
                    url,
                    key: key.to_path_buf(),
                });
            }
            return Err(GitError::Auth {
                url,
                auth: spec.auth.describe(),
            });
        }
        if cancelled.get() || spec.cancel.load(Ordering::Relaxed) {
            return Err(GitError::Cancelled { url });
        }
        let mut err = classify(&url, &e);
        if let (Some(h), GitError::Remote { message, .. } | GitError::Unreachable { message, .. }) =
            (&header, &mut err)
        {
            // Belt and braces: libgit2 quotes a header it refuses; never let it show.
            *message = message.replace(h.expose(), "<credentials>");
        }
        return Err(err);
    }
    let bytes = remote.stats().received_bytes();
    let heads = remote.list().map_err(|e| classify(&url, &e))?;
    let head = heads
        .iter()
        .find(|h| h.name() == "HEAD")
        .map(|h| h.oid())
        .filter(|oid| !oid.is_zero());
    let Some(commit) = head else {
        let _ = remote.disconnect();
        return Ok(Listing { head: None, bytes });
    };
    // The symref HEAD → refs/heads/<name>; older servers do not advertise it: then take a branch that
    // points at the same commit (preferring main and master).
    let symref = remote
        .default_branch()
        .ok()
        .and_then(|b| b.as_str().ok().map(str::to_string));
    let branch_ref = symref.or_else(|| {
        let mut candidates: Vec<&str> = heads
            .iter()
            .filter(|h| h.oid() == commit && h.name().starts_with("refs/heads/"))
            .map(|h| h.name())
            .collect();
        candidates.sort_by_key(|n| {
            (
                *n != "refs/heads/main",
                *n != "refs/heads/master",
                n.to_string(),
            )
        });
        candidates.first().map(|s| s.to_string())
    });
    let _ = remote.disconnect();
    let branch_ref = branch_ref.unwrap_or_else(|| "refs/heads/HEAD".to_string());
    let name = branch_ref
        .strip_prefix("refs/heads/")
        .unwrap_or(&branch_ref)
        .to_string();
    Ok(Listing {
        head: Some((name, commit)),
        bytes,
    })
}

/// Whether two URLs name the same host and port.
fn same_host(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => {
            a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

fn classify(url: &str, e: &git2::Error) -> GitError {
    let message = crate::redact::redact_text(e.message());
    let lower = message.to_ascii_lowercase();
    // libgit2's socket stream: "failed to connect to HOST: …" (refused, timed out), "failed to resolve
    // address for HOST: …". Only when HOST is the server's own: through a proxy it is the proxy's, and says
    // nothing about the server. First, as a host name may hold "404" or "not found".
    if let Some((host, _)) = endpoint(url) {
        let host = host.to_ascii_lowercase();
        if lower.starts_with(&format!("failed to connect to {host}:"))
            || lower.starts_with(&format!("failed to resolve address for {host}:"))
        {
            return GitError::Unreachable {
                url: url.into(),
                message,
            };
        }
    }
    if lower.contains("404")
        || lower.contains("not found")
        || lower.contains("does not appear to be a git repository")
    {
        return GitError::NotFound { url: url.into() };
    }
    if lower.contains("401") || lower.contains("403") || e.code() == git2::ErrorCode::Auth {
        return GitError::Auth {
            url: url.into(),
            auth: "the configured credentials".into(),
        };
    }
    GitError::Remote {
        url: url.into(),
        message: crate::provider::api::with_tls_hint(message),
    }
}

/// The host and port a git URL connects to (`https://`, `http://`, `ssh://`, and scp-like `user@host:path`),
/// or `None` for anything else (a local path, `file://`).
pub fn endpoint(url: &str) -> Option<(String, u16)> {
    if let Ok(parsed) = url::Url::parse(url) {
        let port = match parsed.scheme() {
            "http" | "https" => parsed.port_or_known_default()?,
            "ssh" => parsed.port().unwrap_or(22),
            _ => return None,
        };
        let host = parsed.host_str()?.trim_matches(['[', ']']).to_string();
        return Some((host, port));
    }
    // scp-like: [user@]host:path
    let (authority, _) = url.split_once(':')?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty() && !host.contains('/')).then(|| (host.to_string(), ssh_port(url)))
}

/// The port of an ssh URL (`ssh://host:port/…`; 22 for `user@host:path` and when none is given).
fn ssh_port(url: &str) -> u16 {
    url.strip_prefix("ssh://")
        .and_then(|rest| rest.split('/').next())
        .map(|authority| authority.rsplit('@').next().unwrap_or(authority))
        .and_then(|host_port| host_port.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(22)
}

/// Check an ssh host key against `known_hosts_file`, as OpenSSH does for plain (non-hashed) entries:
/// `host[,host…] type base64`, where a non-default port is written `[host]:port`.
fn check_known_host(
    known_hosts: Option<&Path>,
    host: &str,
    port: u16,
    key: &[u8],
) -> Result<(), String> {
    let Some(path) = known_hosts else {
        return Err(
            "no known_hosts_file is configured for this provider; add one with the server's key"
                .into(),
        );
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let wanted = BASE64.encode(key);
    let names = if port == 22 {
        vec![host.to_string(), format!("[{host}]:22")]
    } else {
        vec![format!("[{host}]:{port}")]
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hosts.split(',').any(|h| names.iter().any(|n| n == h)) && b64 == wanted {
            return Ok(());
        }
    }
    Err(format!(
        "{} is not listed with this key in {} (hashed entries are not supported; add a plain line from `ssh-keyscan -p {port} {host}`)",
        names[0],
        path.display()
    ))
}

/// Commits from just after `from` up to and including `to`, oldest first, along the first-parent chain of
/// `to`. `None` when `from` is not on that chain (history rewritten, or merged in from a side branch).
/// With `from = None`, the whole first-parent history from the root commit.
pub fn first_parent_path(
    repo: &Repository,
    from: Option<Oid>,
    to: Oid,
) -> Result<Option<Vec<Oid>>, GitError> {
    let mut walk = repo.revwalk().map_err(read_err(repo, "history"))?;
    walk.simplify_first_parent()
        .map_err(read_err(repo, "history"))?;
    walk.set_sorting(Sort::NONE)
        .map_err(read_err(repo, "history"))?;
    walk.push(to)
        .map_err(read_err(repo, format!("commit {to}")))?;
    let mut chain = Vec::new();
    for oid in walk {
        let oid = oid.map_err(read_err(repo, format!("history of {to}")))?;
        if Some(oid) == from {
            chain.reverse();
            return Ok(Some(chain));
        }
        chain.push(oid);
    }
    if from.is_some() {
        return Ok(None);
    }
    chain.reverse();
    Ok(Some(chain))
}

/// Whether `ancestor` is an ancestor of `commit` (both present in the mirror).
pub fn is_ancestor(repo: &Repository, ancestor: Oid, commit: Oid) -> bool {
    repo.graph_descendant_of(commit, ancestor).unwrap_or(false)
}

/// Whether the mirror holds this commit.
pub fn has_commit(repo: &Repository, oid: Oid) -> bool {
    repo.find_commit(oid).is_ok()
}

/// The first parent of a commit, if any.
pub fn first_parent(repo: &Repository, oid: Oid) -> Result<Option<Oid>, GitError> {
    let commit = repo
        .find_commit(oid)
        .map_err(read_err(repo, format!("commit {oid}")))?;
    Ok(commit.parent_ids().next())
}

/// Who made a commit, when, and why.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub id: String,
    pub author_name: String,
    pub author_email: String,
    /// RFC 3339, UTC.
    pub authored_at: String,
    pub committed_at: String,
    pub message: String,
}

pub fn commit_info(repo: &Repository, oid: Oid) -> Result<CommitInfo, GitError> {
    let c = repo
        .find_commit(oid)
        .map_err(read_err(repo, format!("commit {oid}")))?;
    let author = c.author();
    let rfc3339 = |t: git2::Time| {
        DateTime::<Utc>::from_timestamp(t.seconds(), 0)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    };
    Ok(CommitInfo {
        id: oid.to_string(),
        author_name: String::from_utf8_lossy(author.name_bytes()).into_owned(),
        author_email: String::from_utf8_lossy(author.email_bytes()).into_owned(),
        authored_at: rfc3339(author.when()),
        committed_at: rfc3339(c.committer().when()),
        message: String::from_utf8_lossy(c.message_bytes()).into_owned(),
    })
}

/// One file change between two trees, limited to the files the filter considers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added { path: String, blob: Oid },
    Modified { path: String, blob: Oid },
    Deleted { path: String },
    Renamed { from: String, to: String, blob: Oid },
}

/// Regular files only (modes 100644, 100755, and the old 100664): no symlinks, no submodules.
fn is_regular_file(file: &DiffFile<'_>) -> bool {
    u32::from(file.mode()) & 0o170000 == 0o100000
}

/// A path as git stores it (`/`-separated bytes), as text. Names that are not UTF-8 are skipped — in diffs
/// and tree listings alike, so both always agree — with a warning.
fn utf8_path(file: &DiffFile<'_>) -> Option<String> {
    let bytes = file.path_bytes()?;
    match std::str::from_utf8(bytes) {
        Ok(p) => Some(p.to_string()),
        Err(_) => {
            tracing::warn!(
                "skipping a file whose name is not UTF-8: {:?}",
                String::from_utf8_lossy(bytes)
            );
            None
        }
    }
}

/// The path of a side of a delta if the filter considers that file.
fn considered(file: &DiffFile<'_>, filter: &FileFilter) -> Option<String> {
    if !is_regular_file(file) {
        return None;
    }
    utf8_path(file).filter(|p| filter.matches(p))
}

fn tree_of(repo: &Repository, commit: Oid) -> Result<git2::Tree<'_>, GitError> {
    repo.find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(read_err(repo, format!("tree of commit {commit}")))
}

fn plain_diff<'r>(
    repo: &'r Repository,
    old: Option<&git2::Tree<'_>>,
    new: &git2::Tree<'_>,
    paths: &[&str],
) -> Result<git2::Diff<'r>, git2::Error> {
    let mut opts = DiffOptions::new();
    opts.skip_binary_check(true).ignore_submodules(true);
    if !paths.is_empty() {
        opts.disable_pathspec_match(true);
        for p in paths {
            opts.pathspec(*p);
        }
    }
    repo.diff_tree_to_tree(old, Some(new), Some(&mut opts))
}

/// The changes from `old`'s tree (or the empty tree) to `new`'s tree, limited to the files the filter
/// considers, with renames detected. libgit2 skips subtrees whose ids are equal, so the cost follows the size
/// of the change, not of the repository. Renames are paired by equal blob ids first; only the files left over
/// that the filter considers and that are within `max_model_bytes` are compared for similarity, so no other
/// file is ever loaded.
pub fn diff_commits(
    repo: &Repository,
    old: Option<Oid>,
    new: Oid,
    filter: &FileFilter,
) -> Result<Vec<Change>, GitError> {
    let new_tree = tree_of(repo, new)?;
    let old_tree = old.map(|o| tree_of(repo, o)).transpose()?;
    let diff = plain_diff(repo, old_tree.as_ref(), &new_tree, &[])
        .map_err(read_err(repo, format!("diff to commit {new}")))?;
    let mut changes = Vec::new();
    let mut added: Vec<(String, Oid)> = Vec::new();
    let mut deleted: Vec<(String, Oid)> = Vec::new();
    for delta in diff.deltas() {
        let (old_file, new_file) = (delta.old_file(), delta.new_file());
        match delta.status() {
            Delta::Added | Delta::Copied => {
                if let Some(p) = considered(&new_file, filter) {
                    added.push((p, new_file.id()));
                }
            }
            Delta::Deleted => {
                if let Some(p) = considered(&old_file, filter) {
                    deleted.push((p, old_file.id()));
                }
            }
            Delta::Modified | Delta::Typechange => {
                match (considered(&old_file, filter), considered(&new_file, filter)) {
                    (_, Some(p)) => changes.push(Change::Modified {
                        path: p,
                        blob: new_file.id(),
                    }),
                    (Some(p), None) => changes.push(Change::Deleted { path: p }),
                    (None, None) => {}
                }
            }
            _ => {}
        }
    }
    // Exact renames: the same blob under a new path.
    let mut renamed = Vec::new();
    added.retain(
        |(to, blob)| match deleted.iter().position(|(_, b)| b == blob) {
            Some(i) => {
                let (from, _) = deleted.remove(i);
                renamed.push(Change::Renamed {
                    from,
                    to: to.clone(),
                    blob: *blob,
                });
                false
            }
            None => true,
        },
    );
    // Renames with edits: compare only the remaining candidates, within the size limit.
    if !added.is_empty() && !deleted.is_empty() {
        let paths: Vec<&str> = added
            .iter()
            .chain(deleted.iter())
            .filter(|(_, b)| blob_size(repo, *b).is_ok_and(|s| s <= filter.max_model_bytes))
            .map(|(p, _)| p.as_str())
            .collect();
        let mut similar = plain_diff(repo, old_tree.as_ref(), &new_tree, &paths)
            .map_err(read_err(repo, format!("diff to commit {new}")))?;
        let mut find = DiffFindOptions::new();
        find.renames(true).rename_limit(1000);
        similar
            .find_similar(Some(&mut find))
            .map_err(read_err(repo, format!("renames in commit {new}")))?;
        for delta in similar.deltas().filter(|d| d.status() == Delta::Renamed) {
            let (Some(from), Some(to)) =
                (utf8_path(&delta.old_file()), utf8_path(&delta.new_file()))
            else {
                continue;
            };
            let (Some(di), Some(ai)) = (
                deleted.iter().position(|(p, _)| *p == from),
                added.iter().position(|(p, _)| *p == to),
            ) else {
                continue;
            };
            deleted.remove(di);
            let (to, blob) = added.remove(ai);
            renamed.push(Change::Renamed { from, to, blob });
        }
    }
    changes.extend(
        deleted
            .into_iter()
            .map(|(path, _)| Change::Deleted { path }),
    );
    changes.extend(renamed);
    changes.extend(
        added
            .into_iter()
            .map(|(path, blob)| Change::Added { path, blob }),
    );
    Ok(changes)
}

/// Every file the filter considers in a commit's tree: path → blob id. Listed through the same diff
/// machinery as [`diff_commits`] (against the empty tree), so both see exactly the same files.
pub fn tree_files(
    repo: &Repository,
    commit: Oid,
    filter: &FileFilter,
) -> Result<Vec<(String, Oid)>, GitError> {
    let tree = tree_of(repo, commit)?;
    let diff = plain_diff(repo, None, &tree, &[])
        .map_err(read_err(repo, format!("tree of commit {commit}")))?;
    Ok(diff
        .deltas()
        .filter_map(|d| {
            let f = d.new_file();
            considered(&f, filter).map(|p| (p, f.id()))
        })
        .collect())
}

/// The blob of a file at the root of a commit's tree (e.g. `.hubignore`), if it is there.
pub fn root_blob(repo: &Repository, commit: Oid, name: &str) -> Result<Option<Oid>, GitError> {
    let tree = tree_of(repo, commit)?;
    Ok(tree
        .get_name(name)
        .filter(|e| e.kind() == Some(git2::ObjectType::Blob))
        .map(|e| e.id()))
}

/// The mirror's default branch (short name) and its commit, if it has one.
pub fn mirror_head(repo: &Repository) -> Option<(String, Oid)> {
    let head = repo.find_reference("HEAD").ok()?;
    let target = head.symbolic_target().ok().flatten()?.to_string();
    let commit = repo.refname_to_id(&target).ok()?;
    Some((
        target
            .strip_prefix("refs/heads/")
            .unwrap_or(&target)
            .to_string(),
        commit,
    ))
}

/// The blob at `path` in `commit` (a full id or an unambiguous prefix): the resolved commit and the blob.
pub fn blob_at(
    repo: &Repository,
    commit: &str,
    path: &str,
) -> Result<Option<(Oid, Oid)>, GitError> {
    let object = repo.revparse_single(commit).map_err(read_err(
        repo,
        format!("commit {commit} (not in the mirror?)"),
    ))?;
    let commit = object
        .peel_to_commit()
        .map_err(read_err(repo, format!("commit {commit}")))?;
    let tree = commit
        .tree()
        .map_err(read_err(repo, format!("tree of commit {}", commit.id())))?;
    match tree.get_path(Path::new(path)) {
        Ok(entry) if entry.kind() == Some(git2::ObjectType::Blob) => {
            Ok(Some((commit.id(), entry.id())))
        }
        _ => Ok(None),
    }
}

/// A blob's size, read from the object header without loading the object.
pub fn blob_size(repo: &Repository, blob: Oid) -> Result<u64, GitError> {
    let odb = repo.odb().map_err(read_err(repo, "object database"))?;
    let (size, _) = odb
        .read_header(blob)
        .map_err(read_err(repo, format!("blob {blob}")))?;
    Ok(size as u64)
}

/// A blob's content.
pub fn read_blob(repo: &Repository, blob: Oid) -> Result<Vec<u8>, GitError> {
    with_blob(repo, blob, <[u8]>::to_vec)
}

/// `f` applied to a blob's content, without copying it (a large model is then held once, not twice).
pub fn with_blob<T>(
    repo: &Repository,
    blob: Oid,
    f: impl FnOnce(&[u8]) -> T,
) -> Result<T, GitError> {
    let b = repo
        .find_blob(blob)
        .map_err(read_err(repo, format!("blob {blob}")))?;
    Ok(f(b.content()))
}

/// The mirror's pack indexes: where each object is stored, to read many blobs in storage order.
///
/// Why: Git stores delta chains base first, and libgit2 keeps the bases it has just unpacked in a small
/// cache, so blobs read in storage order cost about one delta each, while blobs read in path order unpack
/// most of their chain again (2,000 fixture models: 1.25 s in path order, 0.37 s in storage order). The index
/// format is Git's documented `.idx` version 2 (SHA-1); a damaged or other index only loses the ordering,
/// never data.
pub struct PackIndexes {
    /// The bytes of each `objects/pack/*.idx`, in file-name order.
    files: Vec<Vec<u8>>,
}

impl PackIndexes {
    /// Read every pack index of `repo` (none when the folder cannot be listed).
    pub fn read(repo: &Repository) -> PackIndexes {
        let dir = repo.path().join("objects").join("pack");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "idx"))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        let files = paths
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .filter(|bytes| PackIndex::new(bytes).is_some())
            .collect();
        PackIndexes { files }
    }

    /// Where each of `oids` is stored, as `(pack, offset)`; `None` for an object in no pack index read here
    /// (loose objects, or an index in another format).
    pub fn positions(&self, oids: &[Oid]) -> Vec<Option<(usize, u64)>> {
        let mut found = vec![None; oids.len()];
        for (pack, bytes) in self.files.iter().enumerate() {
            let Some(index) = PackIndex::new(bytes) else {
                continue;
            };
            for (slot, oid) in found.iter_mut().zip(oids) {
                if slot.is_none() {
                    *slot = index.offset(oid.as_bytes()).map(|o| (pack, o));
                }
            }
        }
        found
    }
}

/// A version-2 pack index (SHA-1): fan-out table, sorted ids, CRCs, 31-bit offsets, then 64-bit offsets.
struct PackIndex<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> PackIndex<'a> {
    const HEADER: usize = 8;
    const FANOUT: usize = 256 * 4;
    const ID: usize = 20;

    fn new(bytes: &'a [u8]) -> Option<Self> {
        if bytes.get(..8)? != b"\xfftOc\x00\x00\x00\x02" {
            return None;
        }
        let count = usize::try_from(be32(bytes, Self::HEADER + 255 * 4)?).ok()?;
        let offsets_end = count
            .checked_mul(Self::ID + 8)?
            .checked_add(Self::HEADER + Self::FANOUT)?;
        (bytes.len() >= offsets_end).then_some(PackIndex { bytes, count })
    }

    fn offset(&self, id: &[u8]) -> Option<u64> {
        let first = usize::from(*id.first()?);
        let fanout =
            |i: usize| be32(self.bytes, Self::HEADER + i * 4).and_then(|v| usize::try_from(v).ok());
        let mut lo = if first == 0 { 0 } else { fanout(first - 1)? };
        let mut hi = fanout(first)?.min(self.count);
        let ids = Self::HEADER + Self::FANOUT;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self
                .bytes
                .get(ids + mid * Self::ID..ids + (mid + 1) * Self::ID)?;
            match at.cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let small = ids + self.count * (Self::ID + 4);
                    let off = be32(self.bytes, small + mid * 4)?;
                    if off & 0x8000_0000 == 0 {
                        return Some(u64::from(off));
                    }
                    let large =
                        small + self.count * 4 + usize::try_from(off & 0x7fff_ffff).ok()? * 8;
                    let hi32 = be32(self.bytes, large)?;
                    let lo32 = be32(self.bytes, large + 4)?;
                    return Some(u64::from(hi32) << 32 | u64::from(lo32));
                }
            }
        }
        None
    }
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn endpoints_of_git_urls() {
        let e = |u: &str| endpoint(u).map(|(h, p)| format!("{h}:{p}"));
        assert_eq!(
            e("https://gitlab.example.com/g/r.git").as_deref(),
            Some("gitlab.example.com:443")
        );
        assert_eq!(
            e("http://127.0.0.1:8080/r.git").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            e("ssh://git@host.example:2222/g/r.git").as_deref(),
            Some("host.example:2222")
        );
        assert_eq!(
            e("ssh://host.example/g/r.git").as_deref(),
            Some("host.example:22")
        );
        assert_eq!(
            e("git@bitbucket.org:team/r.git").as_deref(),
            Some("bitbucket.org:22")
        );
        assert_eq!(e("http://[::1]:9/r.git").as_deref(), Some("::1:9"));
        assert_eq!(e("file:///srv/r.git"), None);
        assert_eq!(e("/srv/r.git"), None);
    }

    #[test]
    fn connection_failures_are_unreachable_only_for_the_server_itself() {
        let url = "https://git.example.com/g/r.git";
        let kind = |message: &str| match classify(url, &git2::Error::from_str(message)) {
            GitError::Unreachable { .. } => "unreachable",
            GitError::NotFound { .. } => "not found",
            GitError::Auth { .. } => "auth",
            _ => "other",
        };
        assert_eq!(
            kind("failed to connect to git.example.com: Connection refused"),
            "unreachable"
        );
        assert_eq!(
            kind("failed to connect to git.example.com: Operation timed out"),
            "unreachable"
        );
        assert_eq!(
            kind("failed to resolve address for git.example.com: Name or service not known"),
            "unreachable"
        );
        // Through a proxy the host is the proxy's: the server's state is unknown.
        assert_eq!(
            kind("failed to connect to proxy.corp: Connection refused"),
            "other"
        );
        assert_eq!(
            kind("failed to connect to git.example.com.evil: Connection refused"),
            "other"
        );
        assert_eq!(kind("unexpected http status code: 404"), "not found");
        // A host name holding "404" is still about the connection.
        let url = "https://git404.corp/r.git";
        assert!(matches!(
            classify(
                url,
                &git2::Error::from_str("failed to resolve address for git404.corp: x")
            ),
            GitError::Unreachable { .. }
        ));
    }

    #[test]
    fn a_lock_file_that_cannot_be_made_is_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.git");
        std::fs::create_dir_all(&path).unwrap();
        // A dangling link into a missing folder: neither opened nor created (even as root).
        std::os::unix::fs::symlink(dir.path().join("missing/x"), path.join(MIRROR_LOCK)).unwrap();
        let err = open_mirror(&path).err().unwrap();
        assert!(matches!(err, GitError::MirrorLock { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(MIRROR_LOCK) && text.contains("must own that folder"),
            "{text}"
        );
        assert!(
            !text.contains("delete that folder"),
            "never advises deleting the data: {text}"
        );
    }

    #[test]
    fn a_mirror_is_held_by_one_user_at_a_time_and_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.git");
        let held = open_mirror(&path).unwrap();
        // A second open, even in this process (flock locks belong to the open file), is refused.
        assert!(matches!(
            open_mirror(&path),
            Err(GitError::MirrorBusy { .. })
        ));
        std::fs::write(path.join("HEAD.lock"), b"").unwrap();
        std::fs::write(path.join("refs/heads/x.lock"), b"").unwrap();
        std::fs::write(path.join("description.keep"), b"").unwrap();
        drop(held);
        let _again = open_mirror(&path).unwrap();
        assert!(!path.join("HEAD.lock").exists());
        assert!(!path.join("refs/heads/x.lock").exists());
        assert!(path.join("description.keep").exists(), "only leftovers go");
        assert!(path.join(MIRROR_LOCK).exists(), "its own lock file stays");
    }

    #[test]
    fn pack_positions_agree_with_git_show_index() {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("r.git");
        let repo = Repository::init_bare(&bare).unwrap();
        let mut oids: Vec<Oid> = (0..300)
            .map(|i| {
                repo.blob(format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "x".repeat(i % 50)).as_bytes())
                    .unwrap()
            })
            .collect();
        let mut tree = repo.treebuilder(None).unwrap();
        for (i, oid) in oids.iter().enumerate() {
            tree.insert(format!("m{i}.json"), *oid, 0o100_644).unwrap();
        }
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(Some("refs/heads/main"), &sig, &sig, "m", &tree, &[])
            .unwrap();
        git(&bare, &["repack", "-a", "-d", "-q"]);
        let idx = std::fs::read_dir(bare.join("objects/pack"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "idx"))
            .unwrap();
        let listing = std::process::Command::new("git")
            .arg("show-index")
            .stdin(std::fs::File::open(&idx).unwrap())
            .output()
            .unwrap();
        let expected: HashMap<Oid, u64> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .map(|l| {
                let mut parts = l.split_whitespace();
                let offset = parts.next().unwrap().parse().unwrap();
                (Oid::from_str(parts.next().unwrap()).unwrap(), offset)
            })
            .collect();
        assert_eq!(expected.len(), 302, "300 blobs, a tree and a commit");
        // A loose object (written after the repack) has no position.
        let loose = repo.blob(b"loose").unwrap();
        oids.push(loose);
        let repo = Repository::open_bare(&bare).unwrap();
        let found = PackIndexes::read(&repo).positions(&oids);
        for (oid, pos) in oids.iter().zip(&found) {
            match expected.get(oid) {
                Some(offset) => assert_eq!(*pos, Some((0, *offset)), "{oid}"),
                None => assert_eq!(*pos, None, "{oid} is loose"),
            }
        }
        // A damaged index loses the ordering only.
        let mut bytes = std::fs::read(&idx).unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::set_permissions(&idx, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&idx, &bytes).unwrap();
        assert!(
            PackIndexes::read(&repo)
                .positions(&oids)
                .iter()
                .all(Option::is_none)
        );
        assert!(PackIndex::new(b"\xfftOc").is_none());
    }

    #[test]
    fn known_hosts_entries_match_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let key = b"\x00\x00\x00\x0bssh-ed25519key-bytes";
        let b64 = BASE64.encode(key);
        std::fs::write(
            &kh,
            format!(
                "# comment\ngit.example.com ssh-ed25519 {b64}\n[10.0.0.1]:2222 ssh-ed25519 {b64}\n"
            ),
        )
        .unwrap();
        let check = |host, port| check_known_host(Some(&kh), host, port, key);
        assert!(check("git.example.com", 22).is_ok());
        assert!(
            check("git.example.com", 2222).is_err(),
            "a plain entry is for port 22 only"
        );
        assert!(check("10.0.0.1", 2222).is_ok());
        assert!(check("10.0.0.1", 22).is_err());
        assert!(check_known_host(Some(&kh), "git.example.com", 22, b"other").is_err());
        assert!(check_known_host(None, "git.example.com", 22, key).is_err());
        assert_eq!(ssh_port("ssh://git@host:2222/a/b.git"), 2222);
        assert_eq!(ssh_port("ssh://host/a.git"), 22);
        assert_eq!(ssh_port("git@host:a/b.git"), 22);
    }
}
