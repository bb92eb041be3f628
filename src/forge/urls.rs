//! Base URLs and clone URLs: a provider's `url` validated, and a `repos` entry turned into the repository's
//! path (its id below the provider) and clone URL, per kind. URLs with credentials in them are refused: a
//! clone URL is written to disk and shown in output.

use std::path::Path;

use super::ProviderKind;

/// Why a `url` or a `repos` entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UrlError {
    #[error("`url` is required for kind {0}")]
    Required(&'static str),
    #[error("a path needs the provider's `url`; or write a full clone URL")]
    NoBase,
    #[error("unsupported URL scheme `{0}` (use https, http, ssh or file)")]
    Scheme(String),
    #[error("the URL holds a password; remove it and put the token in token_file (or token_env)")]
    Password,
    #[error(
        "the URL holds a user name (hosts accept a token there); remove it: set `username`, and put the token in token_file"
    )]
    UserName,
    #[error("the URL holds control characters")]
    Control,
    #[error("the repository path is empty")]
    EmptyPath,
    #[error("`{0}` has an empty, `.` or `..` segment")]
    Segment(String),
    #[error("`{0}` holds a backslash or control character")]
    PathCharacter(String),
}

/// The validated base URL of a provider: the configured one without a trailing slash, or the cloud default.
/// For kinds whose `repos` may be clone URLs (`git`), a filesystem path is accepted and becomes a `file://` URL (relative paths are taken
/// from the configuration file's folder).
pub(crate) fn base_url(
    kind: ProviderKind,
    configured: Option<&str>,
    config_dir: &Path,
) -> Result<String, UrlError> {
    let forge = kind.forge();
    let raw = match configured.map(str::trim).filter(|s| !s.is_empty()) {
        Some(u) => u.to_string(),
        None => match forge.default_url() {
            Some(d) => return Ok(d.to_string()),
            None if forge.accepts_urls() => return Ok(String::new()),
            None => return Err(UrlError::Required(kind.as_str())),
        },
    };
    if forge.accepts_urls() && !raw.contains("://") && !is_scp_like(&raw) {
        let p = Path::new(&raw);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            config_dir.join(p)
        };
        let abs = abs.canonicalize().unwrap_or(abs);
        return Ok(format!("file://{}", abs.display())
            .trim_end_matches('/')
            .to_string());
    }
    check_url(&raw)?;
    Ok(raw.trim_end_matches('/').to_string())
}

/// A repository resolved from a `repos` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResolvedRepo {
    /// Path relative to the provider: the repository id is `<provider>/<path>`.
    pub(crate) path: String,
    pub(crate) url: String,
}

/// Turn a `repos` entry into its id path and clone URL.
pub(crate) fn resolve_repo(
    kind: ProviderKind,
    base: &str,
    entry: &str,
) -> Result<ResolvedRepo, UrlError> {
    let forge = kind.forge();
    let entry = entry.trim();
    if forge.accepts_urls() && (entry.contains("://") || is_scp_like(entry)) {
        check_url(entry)?;
        let path = if let Some((_, rest)) = entry.split_once("://") {
            rest.split_once('/').map(|(_, p)| p).unwrap_or("")
        } else {
            entry.split_once(':').map(|(_, p)| p).unwrap_or("")
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.trim_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        check_path(path)?;
        return Ok(ResolvedRepo {
            path: path.to_string(),
            url: entry.to_string(),
        });
    }
    let written = entry.trim_matches('/');
    let path = written.strip_suffix(".git").unwrap_or(written);
    check_path(path)?;
    if base.is_empty() {
        return Err(UrlError::NoBase);
    }
    Ok(ResolvedRepo {
        path: path.to_string(),
        url: forge.clone_url(base, written),
    })
}

/// `user@host:path` (scp-like ssh syntax).
fn is_scp_like(s: &str) -> bool {
    match s.split_once(':') {
        Some((head, _)) => head.contains('@') && !head.contains('/'),
        None => false,
    }
}

/// Reject URLs with credentials in them: the URL is written to disk and shown in output. For http(s) any
/// user part is refused (hosts accept a token as the user name); ssh URLs may name their user.
fn check_url(u: &str) -> Result<(), UrlError> {
    if let Some((scheme, rest)) = u.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "file" | "git") {
            return Err(UrlError::Scheme(scheme.to_string()));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return Err(UrlError::Password);
            }
            if matches!(scheme, "https" | "http") {
                return Err(UrlError::UserName);
            }
        }
    }
    if u.chars().any(char::is_control) {
        return Err(UrlError::Control);
    }
    Ok(())
}

/// A repository path must be plain segments: it becomes a folder below the mirrors directory.
fn check_path(path: &str) -> Result<(), UrlError> {
    if path.is_empty() {
        return Err(UrlError::EmptyPath);
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(UrlError::Segment(path.to_string()));
        }
        if seg.contains('\\') || seg.chars().any(char::is_control) {
            return Err(UrlError::PathCharacter(path.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_urls_per_kind() {
        let r = |k: ProviderKind, base: &str, e: &str| resolve_repo(k, base, e).unwrap();
        assert_eq!(
            r(ProviderKind::Gitlab, "https://gitlab.com", "g/s/p").url,
            "https://gitlab.com/g/s/p.git"
        );
        assert_eq!(
            r(
                ProviderKind::BitbucketCloud,
                "https://bitbucket.org",
                "ws/repo"
            )
            .url,
            "https://bitbucket.org/ws/repo.git"
        );
        assert_eq!(
            r(
                ProviderKind::BitbucketDatacenter,
                "https://bb.example/ctx",
                "PROJ/repo"
            )
            .url,
            "https://bb.example/ctx/scm/PROJ/repo.git"
        );
        assert_eq!(
            r(ProviderKind::Github, "https://github.com", "o/r.git").path,
            "o/r"
        );
        let g = r(ProviderKind::Git, "", "file:///srv/git/team/models.git");
        assert_eq!(
            (g.path.as_str(), g.url.as_str()),
            ("srv/git/team/models", "file:///srv/git/team/models.git")
        );
        let g = r(ProviderKind::Git, "", "git@host.example:team/models.git");
        assert_eq!(g.path, "team/models");
        let g = r(
            ProviderKind::Git,
            "https://git.example/base",
            "team/models.git",
        );
        assert_eq!(g.url, "https://git.example/base/team/models.git");
        assert!(
            resolve_repo(
                ProviderKind::Gitlab,
                "https://gitlab.com",
                "https://gitlab.com/a/b"
            )
            .is_err()
        );
        assert!(resolve_repo(ProviderKind::Git, "", "a/../b").is_err());
        assert!(resolve_repo(ProviderKind::Git, "", "https://ghp_secret@host/o/r.git").is_err());
        assert!(resolve_repo(ProviderKind::Git, "", "ssh://git@host/o/r.git").is_ok());
    }
}
