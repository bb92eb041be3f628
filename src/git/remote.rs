//! Talking to a remote: list its refs and fetch its default branch in one connection, or only list them.
//! Credentials go in an `Authorization` header for the connection (never in a URL, so nothing with a secret is
//! written to the mirror's config), and the credential callback gives up after the first rejection instead of
//! letting libgit2 ask again and again.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, Oid, ProxyOptions,
    RemoteCallbacks, RemoteRedirect, Repository,
};

use super::known_hosts::check_known_host;
use super::mirror::mirror_error;
use super::{GitAuth, GitError, with_tls_hint};

/// How to reach one remote.
pub(crate) struct RemoteSpec<'a> {
    pub(crate) url: &'a str,
    pub(crate) auth: &'a GitAuth,
    pub(crate) ssh_key_file: Option<&'a Path>,
    pub(crate) known_hosts_file: Option<&'a Path>,
    /// The provider's proxy (`http://[user:pass@]host:port`); `None`: libgit2's detection (git config
    /// `http.proxy`, then `HTTPS_PROXY` / `NO_PROXY`).
    pub(crate) proxy: Option<&'a str>,
    /// Set from outside to abort a transfer (shutdown).
    pub(crate) cancel: Arc<AtomicBool>,
    /// Called whenever data arrives (pack bytes, the server's progress messages): the caller's sign that the
    /// transfer is alive.
    pub(crate) alive: Option<&'a (dyn Fn() + Sync)>,
}

/// What the remote's default branch is, after fetching it if needed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RemoteHead {
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

/// List the remote's refs and, in the same connection, fetch its HEAD commit only if the mirror lacks it.
///
/// libgit2 fetches the remote's `HEAD` when given no refspec, and skips the pack request entirely when the
/// wanted commit is already present — so a poll where nothing changed costs exactly one ref listing request.
/// The branch HEAD points to (the symref) is recorded as `refs/heads/<name>` in the mirror, so fetched objects
/// stay reachable.
pub(crate) fn fetch_head(repo: &Repository, spec: &RemoteSpec<'_>) -> Result<RemoteHead, GitError> {
    let tip = repo.head().ok().and_then(|h| h.target());
    let checked = seed_new_mirror(repo, spec);
    if spec.cancel.load(Ordering::Relaxed) {
        return Err(GitError::Cancelled {
            url: spec.url.to_string(),
        });
    }
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
    if listing.bytes == 0 && Some(commit) != tip && Some(commit) != checked {
        check_new_history(repo, spec, commit, tip.or(checked))?;
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

/// libgit2 downloads nothing when the wanted commit is already there, whatever else is missing. A new head
/// found in the mirror (objects a seeding copied beside the history it checked, a push it caught halfway)
/// must have its history since `known` whole, or no later fetch would bring what lacks: when it has not, the
/// mirror is emptied and [`GitError::Incomplete`] says so. (A fetch that downloaded nothing is told by its
/// byte count: `callbacks` sets a transfer-progress callback, so every pack byte over any transport counts.)
fn check_new_history(
    repo: &Repository,
    spec: &RemoteSpec<'_>,
    commit: Oid,
    known: Option<Oid>,
) -> Result<(), GitError> {
    let complete = super::local::complete(repo, commit, known, &watch(spec))
        .map_err(|e| mirror_error(repo.path(), e))?;
    match complete {
        super::local::Complete::Yes => Ok(()),
        super::local::Complete::Stopped => Err(GitError::Cancelled {
            url: spec.url.to_string(),
        }),
        super::local::Complete::No => {
            super::mirror::clear(repo.path());
            Err(GitError::Incomplete {
                path: repo.path().to_path_buf(),
                commit: commit.to_string(),
            })
        }
    }
}

/// What a long local step reports to the poll, and hears from it.
fn watch<'a>(spec: &'a RemoteSpec<'_>) -> super::local::Watch<'a> {
    super::local::Watch {
        alive: spec.alive,
        cancel: &spec.cancel,
    }
}

/// A mirror with no branch yet, of a repository on this machine, starts from the source's object files (see
/// [`super::local`]); the fetch that follows then finds the commit it wants already there and downloads
/// nothing. Anything in the way only means the usual fetch. The commit whose whole history was checked, if
/// any.
fn seed_new_mirror(repo: &Repository, spec: &RemoteSpec<'_>) -> Option<Oid> {
    let source = super::local::source_path(spec.url)?;
    let has_branch = repo
        .references_glob("refs/heads/*")
        .map(|mut refs| refs.next().is_some())
        .unwrap_or(true);
    if has_branch {
        return None;
    }
    match super::local::seed(repo, &source, &watch(spec)) {
        Ok(Some(seeded)) => {
            tracing::debug!(
                "{}: the new mirror took {} object files from {} ({} copied, the rest hard links)",
                repo.path().display(),
                seeded.files,
                source.display(),
                seeded.copied
            );
            Some(seeded.head)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::info!(
                "{}: could not start the new mirror from the files of {} ({e}); fetching it instead",
                repo.path().display(),
                source.display()
            );
            None
        }
    }
}

/// List the remote's refs without fetching anything, and report its default branch and commit
/// (`None` for an empty repository). Used by `check`.
pub(crate) fn list_remote(spec: &RemoteSpec<'_>) -> Result<Option<(String, Oid)>, GitError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "modelmirror-ls-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = super::mirror::init_bare(&dir)
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
    let seen = Observed::default();
    let header = spec.auth.header();
    let headers: Vec<&str> = header.iter().map(|h| h.expose()).collect();
    let mut opts = fetch_options(spec, callbacks(spec, &seen), &headers);
    let mut remote = repo
        .remote_anonymous(spec.url)
        .map_err(|e| GitError::Remote {
            url: url.clone(),
            message: e.message().to_string(),
        })?;
    let result = remote.download(refspecs, Some(&mut opts));
    drop(opts);
    if let Err(e) = result {
        return Err(failure(spec, seen, header.as_ref(), &e));
    }
    let bytes = remote.stats().received_bytes();
    let heads = remote.list().map_err(|e| classify(&url, &e))?;
    let head = heads
        .iter()
        .find(|h| h.name() == "HEAD")
        .map(|h| h.oid())
        .filter(|oid| !oid.is_zero());
    let head = head.map(|commit| {
        // The symref HEAD → refs/heads/<name>; older servers do not advertise it.
        let symref = remote
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().ok().map(str::to_string));
        let names: Vec<(&str, Oid)> = heads.iter().map(|h| (h.name(), h.oid())).collect();
        (default_branch_name(symref, &names, commit), commit)
    });
    let _ = remote.disconnect();
    Ok(Listing { head, bytes })
}

/// What the callbacks of one connection saw, to explain its failure.
#[derive(Default)]
struct Observed {
    /// The server refused the credentials (HTTP) or the second ssh key offer.
    auth_rejected: Cell<bool>,
    ssh_attempts: Cell<u32>,
    /// The ssh host key was not accepted: the host and why.
    host_key_problem: RefCell<Option<(String, String)>>,
    /// The transfer was stopped because `cancel` was set.
    cancelled: Cell<bool>,
    /// The proxy asked for credentials again (407): the ones in `proxy` are wrong.
    proxy_rejected: Cell<bool>,
}

/// The callbacks of one connection: credentials (given up after the first rejection), ssh host keys, and
/// progress (a sign of life, and where a cancel is noticed).
fn callbacks<'a>(spec: &'a RemoteSpec<'_>, seen: &'a Observed) -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(|asking_url, username_from_url, allowed| {
        if let Some(proxy) = spec.proxy
            && same_host(asking_url, proxy)
        {
            // libgit2 asks for the proxy's credentials the same way as for the server's.
            seen.proxy_rejected.set(true);
            return Err(git2::Error::from_str("proxy credentials rejected"));
        }
        if allowed.contains(CredentialType::SSH_KEY)
            && let Some(key) = spec.ssh_key_file
        {
            let n = seen.ssh_attempts.get() + 1;
            seen.ssh_attempts.set(n);
            if n > 1 {
                seen.auth_rejected.set(true);
                return Err(git2::Error::from_str("ssh key rejected"));
            }
            return Cred::ssh_key(username_from_url.unwrap_or("git"), None, key, None);
        }
        // HTTP: the Authorization header went with the request and was refused (or none was configured).
        seen.auth_rejected.set(true);
        Err(git2::Error::from_str("credentials rejected"))
    });
    callbacks.certificate_check(|cert, host| {
        let Some(hostkey) = cert.as_hostkey() else {
            // TLS certificates: let libgit2 verify them against the system's trust store.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let problem = match hostkey.hostkey() {
            None => "the server sent no raw host key".to_string(),
            Some(key) => {
                match check_known_host(spec.known_hosts_file, host, ssh_port(spec.url), key) {
                    Ok(()) => return Ok(CertificateCheckStatus::CertificateOk),
                    Err(message) => message,
                }
            }
        };
        *seen.host_key_problem.borrow_mut() = Some((host.into(), problem));
        Err(git2::Error::from_str("host key not accepted"))
    });
    callbacks.transfer_progress(|_| {
        if let Some(alive) = spec.alive {
            alive();
        }
        if spec.cancel.load(Ordering::Relaxed) {
            seen.cancelled.set(true);
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
    callbacks
}

/// Fetch the named refs only (no tags, no FETCH_HEAD), through the provider's proxy or the environment's,
/// with the credentials as headers that never follow a redirect.
fn fetch_options<'a>(
    spec: &RemoteSpec<'_>,
    callbacks: RemoteCallbacks<'a>,
    headers: &[&str],
) -> FetchOptions<'a> {
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
    opts.custom_headers(headers);
    // Credentials go with the headers: never replay them to another host on a redirect.
    opts.follow_redirects(RemoteRedirect::None);
    opts
}

/// Why a transfer failed, from what the callbacks saw first (they know more than libgit2's message), then
/// from the message.
fn failure(
    spec: &RemoteSpec<'_>,
    seen: Observed,
    header: Option<&crate::secret::Secret>,
    e: &git2::Error,
) -> GitError {
    let url = spec.url.to_string();
    if let Some((host, message)) = seen.host_key_problem.take() {
        return GitError::HostKey { host, message };
    }
    if seen.proxy_rejected.get() {
        return GitError::Remote {
            url,
            message: "the proxy refused the credentials in `proxy` (HTTP 407); check the proxy's user and password"
                .into(),
        };
    }
    if seen.auth_rejected.get() {
        return match spec.ssh_key_file {
            Some(key) if seen.ssh_attempts.get() > 0 => GitError::SshAuth {
                url,
                key: key.to_path_buf(),
            },
            _ => GitError::Auth {
                url,
                auth: spec.auth.describe(),
            },
        };
    }
    if seen.cancelled.get() || spec.cancel.load(Ordering::Relaxed) {
        return GitError::Cancelled { url };
    }
    let mut err = classify(&url, e);
    if let (Some(h), GitError::Remote { message, .. } | GitError::Unreachable { message, .. }) =
        (header, &mut err)
    {
        // Belt and braces: libgit2 quotes a header it refuses; never let it show.
        *message = message.replace(h.expose(), "<credentials>");
    }
    err
}

/// The short name of the default branch: the HEAD symref's target, or on servers that do not advertise it a
/// branch at HEAD's commit (main, then master, then the first by name).
fn default_branch_name(symref: Option<String>, heads: &[(&str, Oid)], commit: Oid) -> String {
    let branch_ref = symref.or_else(|| {
        let mut candidates: Vec<&str> = heads
            .iter()
            .filter(|(name, oid)| *oid == commit && name.starts_with("refs/heads/"))
            .map(|(name, _)| *name)
            .collect();
        candidates.sort_by_key(|n| (*n != "refs/heads/main", *n != "refs/heads/master", *n));
        candidates.first().map(|s| s.to_string())
    });
    let branch_ref = branch_ref.unwrap_or_else(|| "refs/heads/HEAD".to_string());
    branch_ref
        .strip_prefix("refs/heads/")
        .unwrap_or(&branch_ref)
        .to_string()
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
    // An object the repository refers to is missing: the repository was found, and it is damaged.
    if lower.contains("object not found")
        || lower.contains("no match for id")
        || lower.contains("missing object")
    {
        return GitError::Damaged {
            url: url.into(),
            message,
        };
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
        message: with_tls_hint(message),
    }
}

/// The host and port a git URL connects to (`https://`, `http://`, `ssh://`, and scp-like `user@host:path`),
/// or `None` for anything else (a local path, `file://`).
pub(crate) fn endpoint(url: &str) -> Option<(String, u16)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(ssh_port("ssh://git@host:2222/a/b.git"), 2222);
        assert_eq!(ssh_port("ssh://host/a.git"), 22);
        assert_eq!(ssh_port("git@host:a/b.git"), 22);
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
}
