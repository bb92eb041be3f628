//! What differs per Git host: default base URLs, clone URLs built from a `repos` entry, and how git over
//! HTTPS authenticates with each kind of token. One file per provider kind implements [`Forge`]; nothing
//! provider-specific lives anywhere else.

pub mod api;
mod bitbucket_cloud;
mod bitbucket_datacenter;
mod github;
mod gitlab;
pub mod hooks;
mod plain;

use std::path::Path;

use crate::git::GitAuth;
use crate::secret::Secret;
use api::{ApiClient, ApiError, BoxFuture, RestAuth};
use reqwest::header::HeaderMap;

/// The kinds of Git host modelmirror knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Gitlab,
    BitbucketCloud,
    BitbucketDatacenter,
    Github,
    Git,
}

impl ProviderKind {
    pub fn parse(s: &str) -> Option<ProviderKind> {
        Some(match s {
            "gitlab" => ProviderKind::Gitlab,
            "bitbucket-cloud" => ProviderKind::BitbucketCloud,
            "bitbucket-datacenter" => ProviderKind::BitbucketDatacenter,
            "github" => ProviderKind::Github,
            "git" => ProviderKind::Git,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Gitlab => "gitlab",
            ProviderKind::BitbucketCloud => "bitbucket-cloud",
            ProviderKind::BitbucketDatacenter => "bitbucket-datacenter",
            ProviderKind::Github => "github",
            ProviderKind::Git => "git",
        }
    }

    /// The implementation of this kind.
    pub fn forge(self) -> &'static dyn Forge {
        match self {
            ProviderKind::Gitlab => &gitlab::Gitlab,
            ProviderKind::BitbucketCloud => &bitbucket_cloud::BitbucketCloud,
            ProviderKind::BitbucketDatacenter => &bitbucket_datacenter::BitbucketDatacenter,
            ProviderKind::Github => &github::Github,
            ProviderKind::Git => &plain::PlainGit,
        }
    }
}

/// The per-host behaviour. Kept small on purpose: each method is one fact about the host.
pub trait Forge: Sync {
    /// The public cloud's base URL, or `None` when `url` must be configured.
    fn default_url(&self) -> Option<&'static str>;
    /// The clone URL of the repository written as `path` (as in `repos`, maybe ending in `.git`) below `base`.
    fn clone_url(&self, base: &str, path: &str) -> String;
    /// How git over HTTPS presents a token on this host (`../shared/docs/providers.md` part C).
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth;
    /// Whether a `repos` entry may be a full clone URL rather than a path.
    fn accepts_urls(&self) -> bool {
        false
    }

    // --- REST (discovery and token checks); the defaults are for hosts without an API. ---

    /// The configuration key that lists discovery scopes (`groups`, `workspaces`, `projects`, `orgs`).
    fn scopes_key(&self) -> Option<&'static str> {
        None
    }
    /// The REST API base for a base URL.
    fn api_url(&self, _base: &str) -> Option<String> {
        None
    }
    /// Default `max_requests_per_hour`, from the host's documented limits.
    fn default_requests_per_hour(&self) -> u32 {
        3600
    }
    /// How a token is presented to the REST API.
    fn rest_auth(&self, username: Option<&str>, token: &Secret) -> RestAuth {
        match username {
            Some(u) => RestAuth::basic(u, token),
            None => RestAuth::bearer(token),
        }
    }
    /// What a rejected token needs, for the 401 message.
    fn token_hint(&self) -> &'static str {
        "check the token"
    }
    /// Who the token is and what it may do, in one line. `probe` is a scope or repository path to test
    /// against when the host has no "who am I" for this token type.
    fn whoami<'a>(
        &'a self,
        api: &'a ApiClient,
        _probe: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async move {
            Err(ApiError::Setup {
                provider: api.provider.clone(),
                message: "this kind has no REST API".into(),
            })
        })
    }
    /// Every repository in one discovery scope, following the API's pagination to the end.
    fn discover<'a>(
        &'a self,
        api: &'a ApiClient,
        _scope: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredRepo>, ApiError>> {
        Box::pin(async move {
            Err(ApiError::Setup {
                provider: api.provider.clone(),
                message: "this kind has no discovery".into(),
            })
        })
    }
}

/// The webhook side of a host; the defaults are for hosts that send none.
pub trait Hooks: Sync {
    /// Whether a delivery's headers come from this kind of host (for `POST /hooks`).
    fn webhook_detect(&self, _headers: &HeaderMap) -> bool {
        false
    }
    /// Check a delivery's signature against the configured secrets. Runs before anything reads the body.
    fn webhook_verify(
        &self,
        _headers: &HeaderMap,
        _body: &[u8],
        _secrets: &[Secret],
    ) -> Result<(), String> {
        Err("this kind of provider sends no webhooks".into())
    }
    /// Map a verified delivery onto what the mirror needs.
    fn webhook_parse(&self, _headers: &HeaderMap, _body: &[u8]) -> Result<hooks::Delivery, String> {
        Err("this kind of provider sends no webhooks".into())
    }
}

impl ProviderKind {
    /// The webhook implementation of this kind.
    pub fn hooks(self) -> &'static dyn Hooks {
        match self {
            ProviderKind::Gitlab => &gitlab::Gitlab,
            ProviderKind::BitbucketCloud => &bitbucket_cloud::BitbucketCloud,
            ProviderKind::BitbucketDatacenter => &bitbucket_datacenter::BitbucketDatacenter,
            ProviderKind::Github => &github::Github,
            ProviderKind::Git => &plain::PlainGit,
        }
    }
}

/// Parse a JSON body for a payload mapper.
fn json_body(body: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("the payload is not JSON: {e}"))
}

/// A JSON string field, if present and non-empty.
fn s(v: &serde_json::Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(|x| x.as_str())
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

/// A repository found by discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredRepo {
    /// Path on the host, as a `repos` entry would say it.
    pub path: String,
    /// The host's own id (GitLab project id, Bitbucket Cloud uuid, Bitbucket DC repository id, GitHub id):
    /// webhooks are matched by it.
    pub provider_id: String,
    pub web_url: Option<String>,
    pub archived: bool,
    /// `Some(true)` when the host says the repository has no commits yet.
    pub empty: Option<bool>,
}

/// A JSON value as a string id (numbers and strings alike).
fn json_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The validated base URL of a provider: the configured one without a trailing slash, or the cloud default.
/// For the `git` kind a filesystem path is accepted and becomes a `file://` URL (relative paths are taken
/// from the configuration file's folder).
pub fn base_url(
    kind: ProviderKind,
    configured: Option<&str>,
    config_dir: &Path,
) -> Result<String, String> {
    let forge = kind.forge();
    let raw = match configured.map(str::trim).filter(|s| !s.is_empty()) {
        Some(u) => u.to_string(),
        None => match forge.default_url() {
            Some(d) => return Ok(d.to_string()),
            None if kind == ProviderKind::Git => return Ok(String::new()),
            None => return Err(format!("`url` is required for kind {}", kind.as_str())),
        },
    };
    if kind == ProviderKind::Git && !raw.contains("://") && !is_scp_like(&raw) {
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
pub struct ResolvedRepo {
    /// Path relative to the provider: the repository id is `<provider>/<path>`.
    pub path: String,
    pub url: String,
}

/// Turn a `repos` entry into its id path and clone URL.
pub fn resolve_repo(kind: ProviderKind, base: &str, entry: &str) -> Result<ResolvedRepo, String> {
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
        return Err("a path needs the provider's `url`; or write a full clone URL".into());
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
fn check_url(u: &str) -> Result<(), String> {
    if let Some((scheme, rest)) = u.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "file" | "git") {
            return Err(format!(
                "unsupported URL scheme `{scheme}` (use https, http, ssh or file)"
            ));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return Err(
                    "the URL holds a password; remove it and put the token in token_file (or token_env)".into(),
                );
            }
            if matches!(scheme, "https" | "http") {
                return Err(
                    "the URL holds a user name (hosts accept a token there); remove it: set `username`, and put the token in token_file".into(),
                );
            }
        }
    }
    if u.chars().any(char::is_control) {
        return Err("the URL holds control characters".into());
    }
    Ok(())
}

/// A repository path must be plain segments: it becomes a folder below the mirrors directory.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the repository path is empty".into());
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("`{path}` has an empty, `.` or `..` segment"));
        }
        if seg.contains('\\') || seg.chars().any(char::is_control) {
            return Err(format!("`{path}` holds a backslash or control character"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;

    fn s(v: &str) -> Secret {
        Secret::new(v.into())
    }

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

    #[test]
    fn git_auth_per_kind() {
        let basic_user = |a: GitAuth| match a {
            GitAuth::Basic { username, .. } => username,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            basic_user(ProviderKind::Gitlab.forge().git_auth(None, s("t"))),
            "oauth2"
        );
        assert_eq!(
            basic_user(ProviderKind::BitbucketCloud.forge().git_auth(None, s("t"))),
            "x-token-auth"
        );
        assert_eq!(
            basic_user(
                ProviderKind::BitbucketCloud
                    .forge()
                    .git_auth(Some("me"), s("t"))
            ),
            "me"
        );
        assert!(matches!(
            ProviderKind::BitbucketDatacenter
                .forge()
                .git_auth(None, s("t")),
            GitAuth::Bearer(_)
        ));
        assert_eq!(
            basic_user(
                ProviderKind::BitbucketDatacenter
                    .forge()
                    .git_auth(Some("u"), s("t"))
            ),
            "u"
        );
        assert_eq!(
            basic_user(ProviderKind::Github.forge().git_auth(None, s("t"))),
            "x-access-token"
        );
        assert_eq!(
            basic_user(ProviderKind::Git.forge().git_auth(Some("u"), s("t"))),
            "u"
        );
        let h = ProviderKind::Github
            .forge()
            .git_auth(None, s("tok"))
            .header()
            .unwrap();
        assert_eq!(
            h.expose(),
            format!(
                "Authorization: Basic {}",
                BASE64.encode(b"x-access-token:tok")
            )
        );
        assert_eq!(format!("{h:?} {h}"), "<redacted> <redacted>");
    }
}
