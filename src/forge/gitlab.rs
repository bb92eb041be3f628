//! GitLab (gitlab.com and self-managed): `group/sub/project` paths; git over HTTPS with username `oauth2`,
//! which works for personal, group, project and OAuth tokens alike. REST at `<url>/api/v4` with a Bearer
//! token; discovery lists a group's projects including all subgroups.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::api::{self, ApiClient, ApiError, BoxFuture};
use super::status::{self, CommitStatus, Posted, ScopeCheck, StatusRequest, StatusState};
use super::webhook::{self, Delivery, EventKind, HookError, RefUpdate, RepoKey, header};
use super::{DiscoveredRepo, Forge, json_body, json_id, s};
use crate::git::GitAuth;
use crate::secret::Secret;
use reqwest::header::HeaderMap;

pub(crate) struct Gitlab;

impl Forge for Gitlab {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://gitlab.com")
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        GitAuth::Basic {
            username: username.unwrap_or("oauth2").to_string(),
            password: token,
        }
    }
    fn file_page(&self, repo_page: &str, commit: &str, path: &str) -> Option<String> {
        Some(format!(
            "{repo_page}/-/blob/{commit}/{}",
            super::encode_path(path)
        ))
    }
    fn scopes_key(&self) -> Option<&'static str> {
        Some("groups")
    }
    fn api_url(&self, base: &str) -> Option<String> {
        Some(format!("{base}/api/v4"))
    }
    fn default_requests_per_hour(&self) -> u32 {
        // gitlab.com: 2,000 authenticated API requests a minute.
        120_000
    }
    fn rest_basic_with_username(&self) -> bool {
        false
    }
    fn token_hint(&self) -> &'static str {
        "it needs the read_api and read_repository scopes (group and project tokens: at least the Reporter role)"
    }
    fn whoami<'a>(
        &'a self,
        api: &'a ApiClient,
        _probe: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async move {
            let (user, _) = api.get_json(&api.url("/user"), "the token's user").await?;
            let name = user["username"].as_str().unwrap_or("?");
            let bot = if user["bot"].as_bool() == Some(true) {
                " (a bot: group or project token)"
            } else {
                ""
            };
            let mut line = format!("token of user {name}{bot}");
            // Scopes: only personal, group and project access tokens can say.
            if let Ok((tok, _)) = api
                .get_json(&api.url("/personal_access_tokens/self"), "the token")
                .await
            {
                let scopes: Vec<&str> = tok["scopes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str())
                    .collect();
                line.push_str(&format!("; scopes: {}", scopes.join(", ")));
                if let Some(exp) = tok["expires_at"].as_str() {
                    line.push_str(&format!("; expires {exp}"));
                }
                // `api` covers reading the API and the repositories.
                let api_ok = scopes.iter().any(|s| *s == "read_api" || *s == "api");
                let repo_ok = scopes
                    .iter()
                    .any(|s| matches!(*s, "read_repository" | "write_repository" | "api"));
                if !api_ok || !repo_ok {
                    line.push_str(" — missing read_api or read_repository");
                }
            }
            Ok(line)
        })
    }
    fn discover<'a>(
        &'a self,
        api: &'a ApiClient,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredRepo>, ApiError>> {
        Box::pin(async move {
            let first = api.url(&format!(
                "/groups/{}/projects?include_subgroups=true&with_shared=false&per_page=100&order_by=id&sort=asc",
                api::encode(scope)
            ));
            let mut out = Vec::new();
            api::paginate(api, first, &format!("group {scope}"), |v, r| {
                let projects = v
                    .as_array()
                    .ok_or_else(|| api.malformed(&r.url, "expected a JSON array of projects"))?;
                for p in projects {
                    let (Some(path), Some(id)) =
                        (p["path_with_namespace"].as_str(), json_id(&p["id"]))
                    else {
                        return Err(
                            api.malformed(&r.url, "a project without path_with_namespace or id")
                        );
                    };
                    out.push(DiscoveredRepo {
                        path: path.to_string(),
                        provider_id: id,
                        web_url: p["web_url"].as_str().map(str::to_string),
                        archived: p["archived"].as_bool() == Some(true),
                        empty: p["empty_repo"].as_bool(),
                    });
                }
                Ok(next_page(r))
            })
            .await?;
            Ok(out)
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
        Box::pin(super::graphql::gitlab_heads(api, paths))
    }
    fn has_statuses(&self) -> bool {
        true
    }
    /// `POST /projects/:id/statuses/:sha` (`:id` the URL-encoded path); 201.
    fn status_request(
        &self,
        api: &ApiClient,
        st: &CommitStatus,
    ) -> Result<StatusRequest, ApiError> {
        let mut body = serde_json::json!({
            "state": match st.state {
                StatusState::Success => "success",
                StatusState::Failure => "failed",
            },
            "name": st.context,
            "ref": st.branch,
            "description": st.description(255),
        });
        // Only http(s) links are accepted, of 255 characters at most.
        if let Some(u) = st.target_url.as_deref().filter(|u| u.len() <= 255) {
            body["target_url"] = u.into();
        }
        Ok(StatusRequest {
            url: api.url(&format!(
                "/projects/{}/statuses/{}",
                api::encode(st.repo_path.trim_end_matches(".git")),
                api::encode(&st.sha)
            )),
            body,
            need: "the token needs the api scope, and its user the Developer role (Maintainer on a protected branch)",
        })
    }
    /// A status still pending or running in the state posted is refused with 400 "Cannot transition status":
    /// that is done, not failed.
    fn status_answer(
        &self,
        api: &ApiClient,
        r: &api::Response,
        st: &CommitStatus,
        need: &str,
    ) -> Result<Posted, ApiError> {
        if r.status == 400 && api::body_message(&r.body).contains("Cannot transition status") {
            return Ok(Posted::Unchanged);
        }
        status::answer(api, r, st, need)
    }
    /// `GET /personal_access_tokens/self` lists a token's scopes (personal, group and project tokens).
    fn status_scope<'a>(
        &'a self,
        api: &'a ApiClient,
    ) -> BoxFuture<'a, Result<ScopeCheck, ApiError>> {
        Box::pin(async move {
            let r = api.get(&api.url("/personal_access_tokens/self")).await?;
            match r.status {
                200..=299 => {}
                // A token with neither api nor read_api may not ask: it lacks api.
                403 if api::body_message(&r.body).contains("insufficient_scope")
                    || String::from_utf8_lossy(&r.body).contains("insufficient_scope") =>
                {
                    return Ok(ScopeCheck::Missing(
                        "commit_status = true needs the api scope, and GitLab says this token's scopes are insufficient: create a token with api (or set commit_status = false)".into(),
                    ));
                }
                // GitLab before 15.5, or a token that is no access token (OAuth).
                404 => {
                    return Ok(ScopeCheck::Unknown(
                        "GitLab does not list this token's scopes (GitLab before 15.5, or an OAuth token): posting commit statuses needs the api scope".into(),
                    ));
                }
                _ => api.check(&r, "the token")?,
            }
            let tok: serde_json::Value = serde_json::from_slice(&r.body)
                .map_err(|e| api.malformed(&r.url, format!("not JSON: {e}")))?;
            let scopes: Vec<&str> = tok["scopes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect();
            Ok(if scopes.contains(&"api") {
                ScopeCheck::Allowed("the token has the api scope".into())
            } else {
                ScopeCheck::Missing(format!(
                    "commit_status = true needs the api scope, and the token has {}: create a token with api (or set commit_status = false)",
                    if scopes.is_empty() {
                        "none".to_string()
                    } else {
                        scopes.join(", ")
                    }
                ))
            })
        })
    }
    fn event_header(&self) -> Option<&'static str> {
        Some("X-Gitlab-Event")
    }
    fn signature_headers(&self) -> &'static [&'static str] {
        &["X-Gitlab-Token", "webhook-signature"]
    }

    /// The Standard Webhooks `webhook-signature` when present (never falling back to the token then), else
    /// `X-Gitlab-Token` compared in constant time.
    fn webhook_verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &[Secret],
    ) -> Result<(), HookError> {
        if let Some(signature) = header(headers, "webhook-signature") {
            let (Some(id), Some(ts)) = (
                header(headers, "webhook-id"),
                header(headers, "webhook-timestamp"),
            ) else {
                return Err(HookError::BadSignature(
                    "webhook-signature without webhook-id and webhook-timestamp",
                ));
            };
            let ts_num: i64 = ts
                .parse()
                .map_err(|_| HookError::BadSignature("webhook-timestamp is not a number"))?;
            if chrono::Utc::now().timestamp().abs_diff(ts_num) > SIGNATURE_TOLERANCE_SECS as u64 {
                return Err(HookError::BadSignature(
                    "webhook-timestamp is more than 5 minutes away from now (replayed or clock skew)",
                ));
            }
            let mut signed = format!("{id}.{ts}.").into_bytes();
            signed.extend_from_slice(body);
            for secret in secrets {
                let key = match secret.expose().strip_prefix("whsec_") {
                    Some(b64) => match webhook::base64_lenient(b64).filter(|k| !k.is_empty()) {
                        Some(k) => k,
                        None => {
                            tracing::error!(
                                "a GitLab webhook secret starts with whsec_ but is not base64: fix it"
                            );
                            continue;
                        }
                    },
                    None => secret.expose().as_bytes().to_vec(),
                };
                let Some(mac) = webhook::hmac_sha256(&key, &signed) else {
                    continue;
                };
                let expected = BASE64.encode(&mac);
                if signature
                    .split_whitespace()
                    .filter_map(|part| part.strip_prefix("v1,"))
                    .any(|given| webhook::ct_eq(given.as_bytes(), expected.as_bytes()))
                {
                    return Ok(());
                }
            }
            return Err(HookError::Mismatch("webhook-signature"));
        }
        let Some(token) = header(headers, "x-gitlab-token") else {
            return Err(HookError::MissingSignature(
                "X-Gitlab-Token",
                "set the webhook's secret token on GitLab",
            ));
        };
        if secrets
            .iter()
            .any(|s| webhook::ct_eq(token.as_bytes(), s.expose().trim().as_bytes()))
        {
            Ok(())
        } else {
            Err(HookError::Mismatch("X-Gitlab-Token"))
        }
    }

    fn webhook_parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, HookError> {
        let event = header(headers, "x-gitlab-event").unwrap_or("").to_string();
        // With a Standard Webhooks signature, the signed `webhook-id` is the delivery id (the other headers
        // are not signed, so a replay could change them).
        let delivery_id = if headers.contains_key("webhook-signature") {
            header(headers, "webhook-id")
        } else {
            header(headers, "idempotency-key").or_else(|| header(headers, "x-gitlab-event-uuid"))
        }
        .map(str::to_string);
        let v = json_body(body)?;
        // Route on the header first, then on object_kind || event_name || event_type (system hooks).
        let kind = s(&v, "/object_kind")
            .or_else(|| s(&v, "/event_name"))
            .or_else(|| s(&v, "/event_type"));
        let repo = RepoKey {
            provider_id: v
                .pointer("/project/id")
                .or(v.get("project_id"))
                .and_then(json_id),
            path: s(&v, "/project/path_with_namespace"),
            clone_urls: [
                "/project/git_http_url",
                "/project/git_ssh_url",
                "/project/http_url",
                "/project/web_url",
            ]
            .iter()
            .filter_map(|p| s(&v, p))
            .collect(),
            default_branch: s(&v, "/project/default_branch"),
        };
        let kind = match kind.as_deref() {
            Some("push" | "tag_push") => {
                let ref_name = s(&v, "/ref").ok_or(HookError::PushWithoutRef)?;
                let deleted = s(&v, "/after").as_deref() == Some(webhook::ZERO_SHA);
                EventKind::Push {
                    repo,
                    updates: vec![RefUpdate { ref_name, deleted }],
                }
            }
            Some("repository_update") => {
                let updates = v["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some(RefUpdate {
                            ref_name: s(c, "/ref")?,
                            deleted: s(c, "/after").as_deref() == Some(webhook::ZERO_SHA),
                        })
                    })
                    .collect();
                EventKind::Push { repo, updates }
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

/// How old a Standard Webhooks timestamp may be (the spec recommends about five minutes).
const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// GitLab's next page: `Link: rel="next"`, else the `x-next-page` number put into the current URL.
fn next_page(r: &api::Response) -> Option<String> {
    if let Some(next) = api::link_next(r) {
        return Some(next);
    }
    let page = r
        .header("x-next-page")
        .map(str::trim)
        .filter(|p| !p.is_empty())?;
    let mut url = url::Url::parse(&r.url).ok()?;
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("page", page);
    Some(url.to_string())
}
