//! Everything that touches Git, through libgit2 only: the bare mirror on disk, listing the remote's refs and
//! fetching its default branch in one connection, walking first-parent history, and diffing trees.
//!
//! All of it is blocking; callers run it on `spawn_blocking`. Credentials are handed to libgit2 as an
//! `Authorization` header for the connection (never in a URL, so nothing with a secret is written to the
//! mirror's config), and the credential callback gives up after the first rejection instead of letting libgit2
//! ask again and again.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Delta, DiffFindOptions,
    DiffOptions, FetchOptions, ObjectType, Oid, ProxyOptions, RemoteCallbacks, Repository, Sort,
    TreeWalkMode, TreeWalkResult,
};

use crate::config::FileFilter;
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
    #[error("ssh host key of {host} is not accepted: {message}")]
    HostKey { host: String, message: String },
    #[error("the transfer from {url} was cancelled")]
    Cancelled { url: String },
    #[error(
        "local mirror {path}: {message} (delete that folder and the next poll clones the repository again)"
    )]
    Mirror { path: PathBuf, message: String },
    #[error("reading {what} from the mirror: {message}")]
    Read { what: String, message: String },
}

fn read_err(what: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let what = what.into();
    move |e| GitError::Read {
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
}

/// Trust the extra CA bundles of the providers for git over HTTPS, on top of the system's. libgit2 keeps one
/// trust store per process, so a provider's private CA is trusted for every provider's git traffic (REST
/// clients trust it for their own provider only). Call once, before any transfer.
pub fn trust_ca_files(files: &[&Path]) -> Result<(), GitError> {
    for f in files {
        // SAFETY: called at start-up, before any libgit2 operation runs on another thread.
        unsafe { git2::opts::set_ssl_cert_file(f) }.map_err(|e| GitError::Read {
            what: format!("ca_file {}", f.display()),
            message: e.message().to_string(),
        })?;
    }
    Ok(())
}

/// Set libgit2's connect and read timeouts for git transfers (process-wide). Call once, at start-up.
pub fn set_timeouts(connect: std::time::Duration, read: std::time::Duration) {
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
    },
}

/// Open the bare mirror at `path`, creating it when missing.
pub fn open_mirror(path: &Path) -> Result<Repository, GitError> {
    let mirror_err = |e: git2::Error| GitError::Mirror {
        path: path.to_path_buf(),
        message: e.message().to_string(),
    };
    if path.join("HEAD").exists() {
        return Repository::open_bare(path).map_err(mirror_err);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| GitError::Mirror {
            path: path.to_path_buf(),
            message: format!("cannot create folder: {e}"),
        })?;
    }
    Repository::init_bare(path).map_err(mirror_err)
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
    let mirror_err = |e: git2::Error| GitError::Mirror {
        path: path.clone(),
        message: e.message().to_string(),
    };
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
    Ok(RemoteHead::Branch { name, commit })
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
    callbacks.credentials(|_url, username_from_url, allowed| {
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
        if spec.cancel.load(Ordering::Relaxed) {
            cancelled.set(true);
            return false;
        }
        true
    });
    let cancel2 = spec.cancel.clone();
    callbacks.sideband_progress(move |_| !cancel2.load(Ordering::Relaxed));

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
        return Err(classify(&url, &e));
    }
    let heads = remote.list().map_err(|e| classify(&url, &e))?;
    let head = heads
        .iter()
        .find(|h| h.name() == "HEAD")
        .map(|h| h.oid())
        .filter(|oid| !oid.is_zero());
    let Some(commit) = head else {
        let _ = remote.disconnect();
        return Ok(Listing { head: None });
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
    })
}

fn classify(url: &str, e: &git2::Error) -> GitError {
    let message = crate::provider::redact_text(e.message());
    let lower = message.to_ascii_lowercase();
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
        message,
    }
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
    let wanted = crate::provider::base64(key);
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
    let mut walk = repo.revwalk().map_err(read_err("history"))?;
    walk.simplify_first_parent().map_err(read_err("history"))?;
    walk.set_sorting(Sort::NONE).map_err(read_err("history"))?;
    walk.push(to).map_err(read_err(format!("commit {to}")))?;
    let mut chain = Vec::new();
    for oid in walk {
        let oid = oid.map_err(read_err(format!("history of {to}")))?;
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
        .map_err(read_err(format!("commit {oid}")))?;
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
        .map_err(read_err(format!("commit {oid}")))?;
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

fn is_file_mode(mode: git2::FileMode) -> bool {
    matches!(mode, git2::FileMode::Blob | git2::FileMode::BlobExecutable)
}

/// The changes from `old`'s tree (or the empty tree) to `new`'s tree, with renames detected. libgit2 skips
/// subtrees whose ids are equal, so the cost follows the size of the change, not of the repository.
pub fn diff_commits(
    repo: &Repository,
    old: Option<Oid>,
    new: Oid,
    filter: &FileFilter,
) -> Result<Vec<Change>, GitError> {
    let tree_of = |oid: Oid| {
        repo.find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(read_err(format!("tree of commit {oid}")))
    };
    let new_tree = tree_of(new)?;
    let old_tree = old.map(tree_of).transpose()?;
    let mut opts = DiffOptions::new();
    opts.skip_binary_check(true).ignore_submodules(true);
    let mut diff = repo
        .diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), Some(&mut opts))
        .map_err(read_err(format!("diff to commit {new}")))?;
    let mut find = DiffFindOptions::new();
    find.renames(true)
        .exact_match_only(false)
        .rename_limit(1000);
    diff.find_similar(Some(&mut find))
        .map_err(read_err(format!("renames in commit {new}")))?;
    let mut changes = Vec::new();
    for delta in diff.deltas() {
        let old_file = delta.old_file();
        let new_file = delta.new_file();
        let old_path = old_file.path().map(path_string);
        let new_path = new_file.path().map(path_string);
        let old_ok =
            old_path.as_deref().is_some_and(|p| filter.matches(p)) && is_file_mode(old_file.mode());
        let new_ok =
            new_path.as_deref().is_some_and(|p| filter.matches(p)) && is_file_mode(new_file.mode());
        match delta.status() {
            Delta::Added | Delta::Copied => {
                if let (true, Some(p)) = (new_ok, new_path) {
                    changes.push(Change::Added {
                        path: p,
                        blob: new_file.id(),
                    });
                }
            }
            Delta::Deleted => {
                if let (true, Some(p)) = (old_ok, old_path) {
                    changes.push(Change::Deleted { path: p });
                }
            }
            Delta::Modified | Delta::Typechange => match (old_ok, new_ok, new_path) {
                (_, true, Some(p)) => changes.push(Change::Modified {
                    path: p,
                    blob: new_file.id(),
                }),
                (true, false, _) => {
                    if let Some(p) = old_path {
                        changes.push(Change::Deleted { path: p });
                    }
                }
                _ => {}
            },
            Delta::Renamed => match (old_ok, new_ok, old_path, new_path) {
                (true, true, Some(from), Some(to)) => changes.push(Change::Renamed {
                    from,
                    to,
                    blob: new_file.id(),
                }),
                (true, false, Some(from), _) => changes.push(Change::Deleted { path: from }),
                (false, true, _, Some(to)) => changes.push(Change::Added {
                    path: to,
                    blob: new_file.id(),
                }),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(changes)
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// Every file the filter considers in a commit's tree: path → blob id.
pub fn tree_files(
    repo: &Repository,
    commit: Oid,
    filter: &FileFilter,
) -> Result<Vec<(String, Oid)>, GitError> {
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(read_err(format!("tree of commit {commit}")))?;
    let mut files = Vec::new();
    tree.walk(TreeWalkMode::PreOrder, |root, entry| {
        // Regular and executable files only: no symlinks, no submodules.
        if entry.kind() == Some(ObjectType::Blob) && matches!(entry.filemode(), 0o100644 | 0o100755)
        {
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path = format!("{root}{name}");
            if filter.matches(&path) {
                files.push((path, entry.id()));
            }
        }
        TreeWalkResult::Ok
    })
    .map_err(read_err(format!("tree of commit {commit}")))?;
    Ok(files)
}

/// A blob's size, read from the object header without loading the object.
pub fn blob_size(repo: &Repository, blob: Oid) -> Result<u64, GitError> {
    let odb = repo.odb().map_err(read_err("object database"))?;
    let (size, _) = odb
        .read_header(blob)
        .map_err(read_err(format!("blob {blob}")))?;
    Ok(size as u64)
}

/// A blob's content.
pub fn read_blob(repo: &Repository, blob: Oid) -> Result<Vec<u8>, GitError> {
    let b = repo
        .find_blob(blob)
        .map_err(read_err(format!("blob {blob}")))?;
    Ok(b.content().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_entries_match_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let key = b"\x00\x00\x00\x0bssh-ed25519key-bytes";
        let b64 = crate::provider::base64(key);
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
