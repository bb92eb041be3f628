//! Bitbucket Cloud: `workspace/repo` paths; access tokens authenticate git as `x-token-auth` and REST as
//! Bearer; API tokens (user = Atlassian e-mail) and app passwords use Basic with the configured `username`.
//! REST at `api.bitbucket.org/2.0`; discovery lists a workspace's repositories, or one project's.

use super::api::{self, ApiClient, ApiError, BoxFuture};
use super::status::{CommitStatus, ScopeCheck, StatusRequest, StatusState};
use super::webhook::{Delivery, EventKind, HookError, RefUpdate, RepoKey, header};
use super::{DiscoveredRepo, Forge, json_body, s};
use crate::git::GitAuth;
use crate::secret::Secret;
use reqwest::header::HeaderMap;

pub(crate) struct BitbucketCloud;

/// A status's state as both Bitbucket APIs write it.
pub(super) fn bitbucket_state(state: StatusState) -> &'static str {
    match state {
        StatusState::Success => "SUCCESSFUL",
        StatusState::Failure => "FAILED",
    }
}

impl Forge for BitbucketCloud {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://bitbucket.org")
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        // Access tokens: `x-token-auth`. API tokens are configured with the Atlassian e-mail (which REST
        // needs), but git wants the Bitbucket user name or the static `x-bitbucket-api-token-auth`.
        // App passwords: the Bitbucket user name.
        let username = match username {
            None => "x-token-auth",
            Some(u) if u.contains('@') => "x-bitbucket-api-token-auth",
            Some(u) => u,
        };
        GitAuth::Basic {
            username: username.to_string(),
            password: token,
        }
    }
    fn file_page(&self, repo_page: &str, commit: &str, path: &str) -> Option<String> {
        Some(format!(
            "{repo_page}/src/{commit}/{}",
            super::encode_path(path)
        ))
    }
    fn scopes_key(&self) -> Option<&'static str> {
        Some("workspaces")
    }
    fn api_url(&self, base: &str) -> Option<String> {
        Some(if base == "https://bitbucket.org" {
            "https://api.bitbucket.org/2.0".to_string()
        } else {
            format!("{base}/2.0")
        })
    }
    fn default_requests_per_hour(&self) -> u32 {
        // 1,000 requests an hour for /2.0/repositories/* (rolling window).
        1_000
    }
    fn token_hint(&self) -> &'static str {
        "an access token needs the repository:read scope (project or workspace tokens for discovery); an API token needs read:repository:bitbucket and username = your Atlassian e-mail; app passwords were retired on 2026-07-28"
    }
    fn credentials_warning(&self, username: Option<&str>) -> Option<&'static str> {
        // A user name that is not an e-mail goes with an app password.
        username.filter(|u| !u.contains('@')).map(|_| {
            "username without `@` means an app password, and Atlassian retired app passwords on 2026-07-28; create an API token (username = your Atlassian e-mail) or a repository/project/workspace access token (no username)"
        })
    }
    fn whoami<'a>(
        &'a self,
        api: &'a ApiClient,
        probe: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async move {
            let r = api.get(&api.url("/user")).await?;
            if (200..300).contains(&r.status)
                && let Ok(user) = serde_json::from_slice::<serde_json::Value>(&r.body)
            {
                let name = user["username"]
                    .as_str()
                    .or(user["display_name"].as_str())
                    .unwrap_or("?");
                return Ok(format!("user {name} (API token or app password)"));
            }
            if r.status == 401 {
                api.check(&r, "the token's user")?;
            }
            // Access tokens cannot call /user: test them against what they are for.
            let Some(probe) = probe else {
                return Ok("an access token (it cannot say who it is; give a workspace or repository to test it)".into());
            };
            let workspace = probe.split('/').next().unwrap_or(probe);
            let (ws, _) = api
                .get_json(
                    &api.url(&format!("/workspaces/{}", api::encode(workspace))),
                    &format!("workspace {workspace}"),
                )
                .await?;
            Ok(format!(
                "an access token that can read workspace {}",
                ws["slug"].as_str().unwrap_or(workspace)
            ))
        })
    }
    fn discover<'a>(
        &'a self,
        api: &'a ApiClient,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredRepo>, ApiError>> {
        Box::pin(async move {
            let (workspace, project) = match scope.split_once('/') {
                Some((w, p)) => (w, Some(p)),
                None => (scope, None),
            };
            let mut first = api.url(&format!(
                "/repositories/{}?pagelen=100&sort=uuid",
                api::encode(workspace)
            ));
            if let Some(key) = project {
                first.push_str(&format!(
                    "&q={}",
                    api::encode(&format!("project.key=\"{key}\""))
                ));
            }
            let mut out = Vec::new();
            api::paginate(api, first, &format!("workspace {scope}"), |v, r| {
                let values = v["values"]
                    .as_array()
                    .ok_or_else(|| api.malformed(&r.url, "expected a page with values"))?;
                for p in values {
                    let (Some(path), Some(uuid)) = (p["full_name"].as_str(), p["uuid"].as_str())
                    else {
                        return Err(api.malformed(&r.url, "a repository without full_name or uuid"));
                    };
                    out.push(DiscoveredRepo {
                        path: path.to_string(),
                        provider_id: uuid.to_string(),
                        web_url: p
                            .pointer("/links/html/href")
                            .and_then(|h| h.as_str())
                            .map(str::to_string),
                        archived: false,
                        empty: Some(p["mainbranch"].is_null()),
                    });
                }
                Ok(v["next"].as_str().map(str::to_string))
            })
            .await?;
            Ok(out)
        })
    }
    fn has_statuses(&self) -> bool {
        true
    }
    /// `POST /repositories/{workspace}/{repo}/commit/{sha}/statuses/build`; 201. The same `key` replaces the
    /// earlier status (only its creator may: post with one identity). `url` must be a valid URL.
    fn status_request(
        &self,
        api: &ApiClient,
        st: &CommitStatus,
    ) -> Result<StatusRequest, ApiError> {
        Ok(StatusRequest {
            url: api.url(&format!(
                "/repositories/{}/commit/{}/statuses/build",
                super::encode_path(st.repo_path.trim_end_matches(".git")),
                api::encode(&st.sha)
            )),
            body: serde_json::json!({
                "key": st.context,
                "state": bitbucket_state(st.state),
                "name": st.context,
                "description": st.description(255),
                "url": st.some_url(),
                "refname": st.branch,
            }),
            need: "the token needs the repository (read) scope, and only the status's creator or an admin may replace it",
        })
    }
    fn status_scope<'a>(
        &'a self,
        _api: &'a ApiClient,
    ) -> BoxFuture<'a, Result<ScopeCheck, ApiError>> {
        Box::pin(async move {
            Ok(ScopeCheck::Unknown("Bitbucket Cloud cannot be asked in advance; posting a commit status needs only the repository (read) scope, which mirroring needs too".into()))
        })
    }
    fn event_header(&self) -> Option<&'static str> {
        Some("X-Event-Key")
    }
    /// `X-Hub-Signature: sha256=<hex>` (the header name GitHub uses for SHA-1; here it is SHA-256).
    fn signature_headers(&self) -> &'static [&'static str] {
        &["X-Hub-Signature"]
    }

    fn webhook_detect(&self, headers: &HeaderMap) -> bool {
        headers.contains_key("x-event-key")
            && (headers.contains_key("x-hook-uuid")
                || header(headers, "user-agent")
                    .is_some_and(|ua| ua.starts_with("Bitbucket-Webhooks")))
    }

    fn webhook_parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, HookError> {
        let event = header(headers, "x-event-key").unwrap_or("").to_string();
        let delivery_id = header(headers, "x-request-uuid").map(str::to_string);
        let kind = if event == "repo:push" {
            let v = json_body(body)?;
            let repo = RepoKey {
                provider_id: s(&v, "/repository/uuid"),
                path: s(&v, "/repository/full_name"),
                // No clone links in push payloads: the web link normalises to the clone URL.
                clone_urls: s(&v, "/repository/links/html/href").into_iter().collect(),
                default_branch: None,
            };
            let updates = v
                .pointer("/push/changes")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    let side = if c["new"].is_null() {
                        &c["old"]
                    } else {
                        &c["new"]
                    };
                    let name = s(side, "/name")?;
                    let prefix = if s(side, "/type").as_deref() == Some("tag") {
                        "refs/tags/"
                    } else {
                        "refs/heads/"
                    };
                    Some(RefUpdate {
                        ref_name: format!("{prefix}{name}"),
                        deleted: c["new"].is_null(),
                    })
                })
                .collect();
            EventKind::Push { repo, updates }
        } else {
            EventKind::Other
        };
        Ok(Delivery {
            event,
            delivery_id,
            kind,
        })
    }
}
