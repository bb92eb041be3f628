//! GitHub (github.com, and Enterprise Server through `url`): `owner/repo` paths; git over HTTPS takes Basic
//! auth only, with `x-access-token` as the user for every token type. REST at `api.github.com` (Enterprise:
//! `<url>/api/v3`) with a Bearer token; discovery lists an organisation's or a user's repositories.

use super::api::{self, ApiClient, ApiError, BoxFuture};
use super::status::{CommitStatus, ScopeCheck, StatusRequest};
use super::webhook::{self, Delivery, EventKind, HookError, RefUpdate, RepoKey, header};
use super::{DiscoveredRepo, Forge, json_body, json_id, s};
use crate::git::GitAuth;
use crate::secret::Secret;
use reqwest::header::HeaderMap;

pub(crate) struct Github;

impl Forge for Github {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://github.com")
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        GitAuth::Basic {
            username: username.unwrap_or("x-access-token").to_string(),
            password: token,
        }
    }
    fn file_page(&self, repo_page: &str, commit: &str, path: &str) -> Option<String> {
        Some(format!(
            "{repo_page}/blob/{commit}/{}",
            super::encode_path(path)
        ))
    }
    fn scopes_key(&self) -> Option<&'static str> {
        Some("orgs")
    }
    fn api_url(&self, base: &str) -> Option<String> {
        Some(if base == "https://github.com" {
            "https://api.github.com".to_string()
        } else {
            format!("{base}/api/v3")
        })
    }
    fn default_requests_per_hour(&self) -> u32 {
        // 5,000 requests an hour per user token.
        5_000
    }
    fn rest_basic_with_username(&self) -> bool {
        false
    }
    fn token_hint(&self) -> &'static str {
        "a classic token needs the repo scope (and read:org for private organisation repositories); a fine-grained token needs Contents: read and Metadata: read on the repositories"
    }
    fn whoami<'a>(
        &'a self,
        api: &'a ApiClient,
        _probe: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async move {
            let (user, r) = api.get_json(&api.url("/user"), "the token's user").await?;
            let login = user["login"].as_str().unwrap_or("?");
            let kind = match (
                r.header("x-oauth-scopes"),
                r.header("github-authentication-token-expiration"),
            ) {
                (Some(scopes), _) => format!("classic token; scopes: {scopes}"),
                (None, Some(exp)) => format!("fine-grained token; expires {exp}"),
                (None, None) => "fine-grained token".to_string(),
            };
            Ok(format!("token of user {login} ({kind})"))
        })
    }
    fn discover<'a>(
        &'a self,
        api: &'a ApiClient,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredRepo>, ApiError>> {
        Box::pin(async move {
            let owner = api::encode(scope);
            let org = api.url(&format!("/orgs/{owner}/repos?type=all&per_page=100"));
            match list(api, org, scope).await {
                // Not an organisation: a user. The token's own user lists private repositories too
                // (`/user/repos`); another user's public ones only.
                Err(ApiError::NotFound { .. }) => {
                    let me = api
                        .get_json(&api.url("/user"), "the token's user")
                        .await
                        .ok()
                        .and_then(|(u, _)| u["login"].as_str().map(str::to_string));
                    let url = if me.is_some_and(|m| m.eq_ignore_ascii_case(scope)) {
                        api.url("/user/repos?affiliation=owner&visibility=all&per_page=100")
                    } else {
                        api.url(&format!("/users/{owner}/repos?type=owner&per_page=100"))
                    };
                    list(api, url, scope).await
                }
                other => other,
            }
        })
    }
    fn has_graphql_heads(&self) -> bool {
        true
    }
    fn graphql_heads<'a>(
        &'a self,
        api: &'a ApiClient,
        paths: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<super::graphql::Head>>, ApiError>> {
        Box::pin(super::graphql::github_heads(api, paths))
    }
    fn has_statuses(&self) -> bool {
        true
    }
    /// `POST /repos/{owner}/{repo}/statuses/{sha}`; 201. Descriptions longer than 140 characters are refused.
    fn status_request(
        &self,
        api: &ApiClient,
        st: &CommitStatus,
    ) -> Result<StatusRequest, ApiError> {
        Ok(StatusRequest {
            url: api.url(&format!(
                "/repos/{}/statuses/{}",
                super::encode_path(st.repo_path.trim_end_matches(".git")),
                api::encode(&st.sha)
            )),
            body: serde_json::json!({
                "state": st.state.as_str(),
                "context": st.context,
                "description": st.description(140),
                "target_url": st.target_url,
            }),
            need: "a classic token needs the repo or repo:status scope; a fine-grained token needs Commit statuses: write",
        })
    }
    /// Classic tokens list their scopes in `X-OAuth-Scopes`; fine-grained ones cannot be asked.
    fn status_scope<'a>(
        &'a self,
        api: &'a ApiClient,
    ) -> BoxFuture<'a, Result<ScopeCheck, ApiError>> {
        Box::pin(async move {
            let r = api.get(&api.url("/user")).await?;
            if r.status == 403 {
                return Ok(ScopeCheck::Unknown(
                    "this token (a GitHub App's?) cannot be asked for its permissions: give it Commit statuses: write".into(),
                ));
            }
            api.check(&r, "the token's user")?;
            let Some(header) = r.header("x-oauth-scopes") else {
                return Ok(ScopeCheck::Unknown(
                    "a fine-grained token or an app cannot be asked for its permissions: give it Commit statuses: write".into(),
                ));
            };
            let scopes: Vec<&str> = header
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            Ok(
                if scopes.iter().any(|s| *s == "repo" || *s == "repo:status") {
                    ScopeCheck::Allowed("the token has the repo or repo:status scope".into())
                } else if scopes.contains(&"public_repo") {
                    ScopeCheck::Unknown(
                    "the token has public_repo: commit statuses work on public repositories only (give it repo:status for private ones)".into(),
                )
                } else {
                    ScopeCheck::Missing(format!(
                        "commit_status = true needs the repo:status (or repo) scope, and the token has {}: add it (or set commit_status = false)",
                        if scopes.is_empty() {
                            "none".to_string()
                        } else {
                            scopes.join(", ")
                        }
                    ))
                },
            )
        })
    }
    fn event_header(&self) -> Option<&'static str> {
        Some("X-GitHub-Event")
    }
    /// `X-Hub-Signature-256: sha256=<hex>` (never the SHA-1 `X-Hub-Signature`).
    fn signature_headers(&self) -> &'static [&'static str] {
        &["X-Hub-Signature-256"]
    }

    fn webhook_parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, HookError> {
        let event = header(headers, "x-github-event").unwrap_or("").to_string();
        let delivery_id = header(headers, "x-github-delivery").map(str::to_string);
        let kind = match event.as_str() {
            "ping" => EventKind::Ping,
            "push" => {
                let v = json_body(body)?;
                let repo = RepoKey {
                    provider_id: v.pointer("/repository/id").and_then(json_id),
                    path: s(&v, "/repository/full_name"),
                    clone_urls: [
                        "/repository/clone_url",
                        "/repository/ssh_url",
                        "/repository/html_url",
                    ]
                    .iter()
                    .filter_map(|p| s(&v, p))
                    .collect(),
                    default_branch: s(&v, "/repository/default_branch")
                        .or_else(|| s(&v, "/repository/master_branch")),
                };
                let ref_name = s(&v, "/ref").ok_or(HookError::PushWithoutRef)?;
                let deleted = v["deleted"].as_bool() == Some(true)
                    || s(&v, "/after").as_deref() == Some(webhook::ZERO_SHA);
                EventKind::Push {
                    repo,
                    updates: vec![RefUpdate { ref_name, deleted }],
                }
            }
            _ => EventKind::Other,
        };
        Ok(Delivery {
            event,
            delivery_id,
            kind,
        })
    }
}

async fn list(
    api: &ApiClient,
    first: String,
    scope: &str,
) -> Result<Vec<DiscoveredRepo>, ApiError> {
    let mut out = Vec::new();
    api::paginate(
        api,
        first,
        &format!("organisation or user {scope}"),
        |v, r| {
            let repos = v
                .as_array()
                .ok_or_else(|| api.malformed(&r.url, "expected a JSON array of repositories"))?;
            for p in repos {
                let (Some(path), Some(id)) = (p["full_name"].as_str(), json_id(&p["id"])) else {
                    return Err(api.malformed(&r.url, "a repository without full_name or id"));
                };
                out.push(DiscoveredRepo {
                    path: path.to_string(),
                    provider_id: id,
                    web_url: p["html_url"].as_str().map(str::to_string),
                    archived: p["archived"].as_bool() == Some(true)
                        || p["disabled"].as_bool() == Some(true),
                    empty: None,
                });
            }
            Ok(api::link_next(r))
        },
    )
    .await?;
    Ok(out)
}
