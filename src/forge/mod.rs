//! What differs per Git host, behind one trait ([`Forge`]) with one file per kind: default and clone URLs
//! ([`urls`]), how git over HTTPS presents each kind of token, the REST API (discovery and token checks,
//! [`api`]), and webhooks (which headers carry the event and the signature, how a signature is verified, how
//! a payload maps onto a [`webhook::Delivery`]). Nothing host-specific lives outside this module.

pub(crate) mod api;
mod bitbucket_cloud;
mod bitbucket_datacenter;
mod github;
mod gitlab;
pub(crate) mod graphql;
mod plain;
pub(crate) mod status;
mod urls;
pub mod webhook;

use crate::git::GitAuth;
use crate::secret::Secret;
use api::{ApiClient, ApiError, BoxFuture, RestAuth};
use reqwest::header::HeaderMap;
use status::{CommitStatus, Posted, ScopeCheck, StatusRequest};
pub(crate) use urls::{UrlError, base_url, resolve_repo};
use webhook::{Delivery, HookError};

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
    /// Every kind, in the order messages list them.
    pub(crate) const ALL: [ProviderKind; 5] = [
        ProviderKind::Gitlab,
        ProviderKind::BitbucketCloud,
        ProviderKind::BitbucketDatacenter,
        ProviderKind::Github,
        ProviderKind::Git,
    ];

    pub(crate) fn parse(s: &str) -> Option<ProviderKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Gitlab => "gitlab",
            ProviderKind::BitbucketCloud => "bitbucket-cloud",
            ProviderKind::BitbucketDatacenter => "bitbucket-datacenter",
            ProviderKind::Github => "github",
            ProviderKind::Git => "git",
        }
    }

    /// Map a delivery from this kind of host (its headers and body) onto what the mirror needs, without
    /// verifying it: the listener verifies first. For the fuzz target.
    pub fn parse_webhook(self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, HookError> {
        self.forge().webhook_parse(headers, body)
    }

    /// The implementation of this kind.
    pub(crate) fn forge(self) -> &'static dyn Forge {
        match self {
            ProviderKind::Gitlab => &gitlab::Gitlab,
            ProviderKind::BitbucketCloud => &bitbucket_cloud::BitbucketCloud,
            ProviderKind::BitbucketDatacenter => &bitbucket_datacenter::BitbucketDatacenter,
            ProviderKind::Github => &github::Github,
            ProviderKind::Git => &plain::PlainGit,
        }
    }
}

/// The per-host behaviour. Kept small on purpose: each method is one fact about the host, and most have the
/// answer most hosts give as a default.
pub(crate) trait Forge: Sync {
    // --- URLs and git ---

    /// The public cloud's base URL, or `None` when `url` must be configured.
    fn default_url(&self) -> Option<&'static str>;
    /// The clone URL of the repository written as `path` (as in `repos`, maybe ending in `.git`) below `base`.
    fn clone_url(&self, base: &str, path: &str) -> String {
        format!("{base}/{}.git", path.trim_end_matches(".git"))
    }
    /// How git over HTTPS presents a token on this host (`../shared/docs/providers.md` part C).
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth;
    /// Whether a `repos` entry may be a full clone URL rather than a path; then `url` is optional, and may
    /// be a local folder.
    fn accepts_urls(&self) -> bool {
        false
    }

    /// The repository's page on the host (`None`: this kind has no web pages, or `base` is no web address).
    fn repo_page(&self, base: &str, path: &str) -> Option<String> {
        base.starts_with("http")
            .then(|| format!("{base}/{}", encode_path(path.trim_end_matches(".git"))))
    }
    /// A file's page at a commit, given the repository's page.
    fn file_page(&self, _repo_page: &str, _commit: &str, _path: &str) -> Option<String> {
        None
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
    /// Whether the REST API takes the token as Basic auth when a `username` is configured (otherwise, and
    /// without one, as a Bearer token).
    fn rest_basic_with_username(&self) -> bool {
        true
    }
    /// How a token is presented to the REST API.
    fn rest_auth(&self, username: Option<&str>, token: &Secret) -> RestAuth {
        match username.filter(|_| self.rest_basic_with_username()) {
            Some(u) => RestAuth::basic(u, token),
            None => RestAuth::bearer(token),
        }
    }
    /// What a rejected token needs, for the 401 message.
    fn token_hint(&self) -> &'static str {
        "check the token"
    }
    /// A warning about the kind of credentials configured (a token type the host retired), for `check`.
    fn credentials_warning(&self, _username: Option<&str>) -> Option<&'static str> {
        None
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

    // --- Batched default-branch heads (GraphQL); the defaults are for hosts without them. ---

    /// Whether this kind reports many repositories' default-branch heads per request.
    fn has_graphql_heads(&self) -> bool {
        false
    }
    /// The default-branch heads of `paths`, in order; `None` where the host gave none.
    fn graphql_heads<'a>(
        &'a self,
        api: &'a ApiClient,
        _paths: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<graphql::Head>>, ApiError>> {
        Box::pin(async move {
            Err(ApiError::Setup {
                provider: api.provider.clone(),
                message: "this kind has no GraphQL head check".into(),
            })
        })
    }

    // --- Commit statuses; the defaults are for hosts without them. ---

    /// Whether this kind takes commit statuses (`commit_status = true` is refused otherwise).
    fn has_statuses(&self) -> bool {
        false
    }
    /// The request that posts `status` on its commit: where, what, and what the token needs for it. The
    /// posting itself is [`status::post`].
    fn status_request(
        &self,
        api: &ApiClient,
        _status: &CommitStatus,
    ) -> Result<StatusRequest, ApiError> {
        Err(ApiError::Setup {
            provider: api.provider.clone(),
            message: "this kind has no commit statuses".into(),
        })
    }
    /// What an answer to a status post means (most hosts: [`status::answer`]).
    fn status_answer(
        &self,
        api: &ApiClient,
        r: &api::Response,
        status: &CommitStatus,
        need: &str,
    ) -> Result<Posted, ApiError> {
        status::answer(api, r, status, need)
    }
    /// Whether the token may write commit statuses, as far as the host tells (for `check`).
    fn status_scope<'a>(
        &'a self,
        _api: &'a ApiClient,
    ) -> BoxFuture<'a, Result<ScopeCheck, ApiError>> {
        Box::pin(async move {
            Ok(ScopeCheck::Unknown(
                "the host cannot tell in advance whether the token may post commit statuses".into(),
            ))
        })
    }

    // --- Webhooks; the defaults are for hosts that send none, or sign like GitHub. ---

    /// The header that names a delivery's event (`None`: this kind sends no webhooks).
    fn event_header(&self) -> Option<&'static str> {
        None
    }
    /// The headers a signed delivery carries, any one of them (checked before the body is read). The first
    /// is the `sha256=<hex HMAC>` signature the default [`Forge::webhook_verify`] checks.
    fn signature_headers(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether a delivery's headers come from this kind of host (for `POST /hooks`).
    fn webhook_detect(&self, headers: &HeaderMap) -> bool {
        self.event_header().is_some_and(|h| headers.contains_key(h))
    }
    /// Check a delivery's signature against the configured secrets. Runs before anything reads the body.
    fn webhook_verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &[Secret],
    ) -> Result<(), HookError> {
        match self.signature_headers().first() {
            Some(name) => webhook::verify_hub_signature(headers, name, body, secrets),
            None => Err(HookError::Unsupported),
        }
    }
    /// Map a verified delivery onto what the mirror needs.
    fn webhook_parse(&self, _headers: &HeaderMap, _body: &[u8]) -> Result<Delivery, HookError> {
        Err(HookError::Unsupported)
    }
}

/// A repository found by discovery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DiscoveredRepo {
    /// Path on the host, as a `repos` entry would say it.
    pub(crate) path: String,
    /// The host's own id (GitLab project id, Bitbucket Cloud uuid, Bitbucket DC repository id, GitHub id):
    /// webhooks are matched by it.
    pub(crate) provider_id: String,
    pub(crate) web_url: Option<String>,
    pub(crate) archived: bool,
    /// `Some(true)` when the host says the repository has no commits yet.
    pub(crate) empty: Option<bool>,
}

/// Parse a JSON body for a payload mapper.
fn json_body(body: &[u8]) -> Result<serde_json::Value, HookError> {
    serde_json::from_slice(body).map_err(|e| HookError::NotJson(e.to_string()))
}

/// A JSON string field, if present and non-empty.
fn s(v: &serde_json::Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(|x| x.as_str())
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

/// A repository or file path for a URL: each segment percent-encoded, the `/` between them kept.
pub(crate) fn encode_path(path: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    path.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// A JSON value as a string id (numbers and strings alike).
fn json_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
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
