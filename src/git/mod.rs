//! Everything that touches Git, through libgit2 (the only module that does): the bare mirror on disk
//! ([`mirror`]), listing the remote's refs and fetching its default branch in one connection ([`remote`]),
//! walking first-parent history ([`history`]), diffing trees and reading blobs ([`tree`]). The one thing read
//! without libgit2 is where objects sit in the pack files ([`packs`]: Git's documented `.idx` format), so that
//! many blobs can be read in the order they are stored; and a new mirror of a repository on this machine
//! starts from the source's object files, as `git clone --local` does ([`local`]).
//!
//! All of it is blocking; callers run it on `spawn_blocking`.

mod history;
mod known_hosts;
mod local;
mod mirror;
mod packs;
mod remote;
mod tree;

/// What the git module's unit tests share.
#[cfg(test)]
mod test_support {
    /// Run the git CLI in `dir`; its trimmed output. Panics when git fails.
    pub(super) fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

use std::path::{Path, PathBuf};

pub(crate) use git2::{Oid, Repository};
pub use history::CommitInfo;
pub(crate) use history::{
    commit_info, first_parent, first_parent_path, has_commit, is_ancestor, resolve_commit,
};
pub(crate) use mirror::{delete_mirror, open_mirror, open_mirror_to_read};
pub(crate) use packs::PackIndexes;
pub(crate) use remote::{RemoteHead, RemoteSpec, endpoint, fetch_head, list_remote};
pub(crate) use tree::{
    Change, blob_at, blob_size, diff_commits, hubignore, mirror_head, root_blob, tree_files,
    with_blob,
};

use crate::secret::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Credentials for git over HTTP, sent as an `Authorization` header with the first request (never in a URL).
#[derive(Debug, Clone)]
pub(crate) enum GitAuth {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

impl GitAuth {
    /// The `Authorization: …` header line, if any.
    pub(crate) fn header(&self) -> Option<Secret> {
        match self {
            GitAuth::None => None,
            GitAuth::Basic { username, password } => Some(Secret::new(format!(
                "Authorization: Basic {}",
                BASE64.encode(format!("{username}:{}", password.expose()))
            ))),
            GitAuth::Bearer(token) => Some(Secret::new(format!(
                "Authorization: Bearer {}",
                token.expose()
            ))),
        }
    }

    /// A short description for messages: the scheme and user name, never the secret.
    pub(crate) fn describe(&self) -> String {
        match self {
            GitAuth::None => "no credentials".into(),
            GitAuth::Basic { username, .. } => format!("Basic auth as `{username}`"),
            GitAuth::Bearer(_) => "a Bearer token".into(),
        }
    }
}

/// Add what to do to a certificate failure (of git over HTTPS, or of a REST call).
pub(crate) fn with_tls_hint(message: String) -> String {
    if message.to_ascii_lowercase().contains("certificate") {
        format!("{message} — if the server uses a private CA, set ca_file to its PEM bundle")
    } else {
        message
    }
}

/// What went wrong talking to a remote or reading the mirror. Messages name the URL (which never holds
/// credentials) and say what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GitError {
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
    #[error(
        "the repository at {url} exists, but it lacks an object it refers to (git said: {message}): the upstream is damaged; ask its owner to run `git fsck` there. The catalog keeps what it has"
    )]
    Damaged { url: String, message: String },
    #[error("cannot fetch from {url}: {message}")]
    Remote { url: String, message: String },
    /// A fetch found its commit already in the mirror but not all of that commit's history (objects copied
    /// from a local repository that changed meanwhile). The mirror was emptied; the poll fetches it again.
    #[error(
        "the local mirror at {path} had commit {commit} but not every object of its history (a copy from a repository on this machine that changed meanwhile, or a damaged mirror): the mirror was emptied and is fetched again; the catalog is unchanged"
    )]
    Incomplete { path: PathBuf, commit: String },
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
    #[error("commit {rev:?}: {message} (not in the mirror, or ambiguous)")]
    UnknownCommit { rev: String, message: String },
    #[error("ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
}

pub(crate) fn read_err(
    repo: &Repository,
    what: impl Into<String>,
) -> impl FnOnce(git2::Error) -> GitError {
    let what = what.into();
    let path = repo.path().to_path_buf();
    move |e| GitError::Read {
        path,
        what,
        message: e.message().to_string(),
    }
}

/// Trust the extra CA bundles of the providers for git over HTTPS, on top of the system's. libgit2 keeps one
/// trust store per process, so a provider's private CA is trusted for every provider's git traffic (REST
/// clients trust it for their own provider only). Call once, before any transfer.
pub(crate) fn trust_ca_files(files: &[&Path]) -> Result<(), GitError> {
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
pub(crate) fn set_timeouts(connect: std::time::Duration, read: std::time::Duration) {
    git2::opts::strict_hash_verification(false);
    let ms = |d: std::time::Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: called at start-up, before any libgit2 operation runs on another thread.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms(connect));
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms(read));
    }
}
