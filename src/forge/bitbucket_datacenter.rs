//! Bitbucket Data Center / Server: `PROJECT/repo` paths cloned from `<url>/scm/PROJECT/repo.git`; HTTP access
//! tokens are sent as `Authorization: Bearer` (the only form project and repository tokens accept), or as
//! Basic auth when a `username` is configured. REST at `<url>/rest/api/1.0`; discovery lists a project's
//! repositories.

use super::api::{self, ApiClient, ApiError, BoxFuture};
use super::status::{self, CommitStatus, ScopeCheck, StatusRequest};
use super::webhook::{self, Delivery, EventKind, HookError, RefUpdate, RepoKey, header};
use super::{DiscoveredRepo, Forge, json_body, json_id, s};
use crate::git::GitAuth;
use crate::secret::Secret;
use reqwest::header::HeaderMap;

pub(crate) struct BitbucketDatacenter;

impl Forge for BitbucketDatacenter {
    fn default_url(&self) -> Option<&'static str> {
        None
    }
    fn clone_url(&self, base: &str, path: &str) -> String {
        format!("{base}/scm/{}.git", path.trim_end_matches(".git"))
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        match username {
            Some(u) => GitAuth::Basic {
                username: u.to_string(),
                password: token,
            },
            None => GitAuth::Bearer(token),
        }
    }
    fn repo_page(&self, base: &str, path: &str) -> Option<String> {
        let (project, repo) = path.trim_end_matches(".git").split_once('/')?;
        Some(format!(
            "{base}/projects/{}/repos/{}",
            super::encode_path(project),
            super::encode_path(repo)
        ))
    }
    fn file_page(&self, repo_page: &str, commit: &str, path: &str) -> Option<String> {
        Some(format!(
            "{repo_page}/browse/{}?at={commit}",
            super::encode_path(path)
        ))
    }
    fn scopes_key(&self) -> Option<&'static str> {
        Some("projects")
    }
    fn api_url(&self, base: &str) -> Option<String> {
        Some(format!("{base}/rest/api/1.0"))
    }
    fn default_requests_per_hour(&self) -> u32 {
        // No documented default (administrators configure the token bucket): one a second.
        3_600
    }
    fn token_hint(&self) -> &'static str {
        "an HTTP access token needs Repository read (Project read for discovery); project and repository tokens work as Bearer only, so leave username out for them"
    }
    fn whoami<'a>(
        &'a self,
        api: &'a ApiClient,
        _probe: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, ApiError>> {
        Box::pin(async move {
            let (props, r) = api
                .get_json(
                    &api.url("/application-properties"),
                    "application properties",
                )
                .await?;
            let version = props["version"].as_str().unwrap_or("?");
            Ok(match r.header("x-ausername") {
                Some(user) => format!("token of user {user} (Bitbucket {version})"),
                None => format!("a project or repository token, or no token (Bitbucket {version})"),
            })
        })
    }
    fn discover<'a>(
        &'a self,
        api: &'a ApiClient,
        scope: &'a str,
    ) -> BoxFuture<'a, Result<Vec<DiscoveredRepo>, ApiError>> {
        Box::pin(async move {
            let base = api.url(&format!("/projects/{}/repos", api::encode(scope)));
            let first = format!("{base}?start=0&limit=100");
            let mut out = Vec::new();
            api::paginate(api, first, &format!("project {scope}"), |v, r| {
                let values = v["values"]
                    .as_array()
                    .ok_or_else(|| api.malformed(&r.url, "expected a page with values"))?;
                for p in values {
                    let (Some(slug), Some(key), Some(id)) = (
                        p["slug"].as_str(),
                        p.pointer("/project/key").and_then(|k| k.as_str()),
                        json_id(&p["id"]),
                    ) else {
                        return Err(
                            api.malformed(&r.url, "a repository without slug, project key or id")
                        );
                    };
                    out.push(DiscoveredRepo {
                        path: format!("{key}/{slug}"),
                        provider_id: id,
                        web_url: p
                            .pointer("/links/self/0/href")
                            .and_then(|h| h.as_str())
                            .map(str::to_string),
                        archived: p["archived"].as_bool() == Some(true),
                        empty: None,
                    });
                }
                // Follow nextPageStart as given: repository ids need not be contiguous.
                if v["isLastPage"].as_bool() != Some(false) {
                    return Ok(None);
                }
                let next = v["nextPageStart"].as_u64().ok_or_else(|| {
                    api.malformed(&r.url, "isLastPage is false but nextPageStart is missing")
                })?;
                Ok(Some(format!("{base}?start={next}&limit=100")))
            })
            .await?;
            Ok(out)
        })
    }
    fn has_statuses(&self) -> bool {
        true
    }
    /// `POST /rest/api/latest/projects/{key}/repos/{slug}/commits/{sha}/builds` (Bitbucket 7.4+); 204. `key`,
    /// `state` and `url` (450 characters at most) are required; `ref` shows it on pull requests.
    fn status_request(
        &self,
        api: &ApiClient,
        st: &CommitStatus,
    ) -> Result<StatusRequest, ApiError> {
        let Some((project, slug)) = st.repo_path.trim_end_matches(".git").split_once('/') else {
            return Err(ApiError::Setup {
                provider: api.provider.clone(),
                message: format!("{} is not a PROJECT/repo path", st.repo_path),
            });
        };
        // `latest` is the current version of the REST API (1.0 today).
        let base = api
            .base
            .strip_suffix("/rest/api/1.0")
            .map(|b| format!("{b}/rest/api/latest"))
            .unwrap_or_else(|| api.base.clone());
        let mut link = st.some_url();
        if link.len() > 450 {
            link = st.repo_page.clone().unwrap_or_default();
        }
        Ok(StatusRequest {
            url: format!(
                "{base}/projects/{}/repos/{}/commits/{}/builds",
                api::encode(project),
                api::encode(slug),
                api::encode(&st.sha)
            ),
            body: serde_json::json!({
                "key": status::shorten(&st.context, 255),
                "state": super::bitbucket_cloud::bitbucket_state(st.state),
                "url": link,
                "name": status::shorten(&st.context, 255),
                "description": st.description(255),
                "ref": format!("refs/heads/{}", st.branch),
            }),
            need: "the token needs Repository read (REPO_READ) permission",
        })
    }
    fn status_scope<'a>(
        &'a self,
        _api: &'a ApiClient,
    ) -> BoxFuture<'a, Result<ScopeCheck, ApiError>> {
        Box::pin(async move {
            Ok(ScopeCheck::Unknown("Bitbucket Data Center cannot be asked in advance; posting a build status needs only Repository read (REPO_READ), which mirroring needs too".into()))
        })
    }
    fn event_header(&self) -> Option<&'static str> {
        Some("X-Event-Key")
    }
    /// `X-Hub-Signature: sha256=<hex>`.
    fn signature_headers(&self) -> &'static [&'static str] {
        &["X-Hub-Signature"]
    }

    fn webhook_detect(&self, headers: &HeaderMap) -> bool {
        headers.contains_key("x-event-key") && headers.contains_key("x-request-id")
    }

    fn webhook_parse(&self, headers: &HeaderMap, body: &[u8]) -> Result<Delivery, HookError> {
        let event = header(headers, "x-event-key").unwrap_or("").to_string();
        let delivery_id = header(headers, "x-request-id").map(str::to_string);
        let kind = match event.as_str() {
            "diagnostics:ping" => EventKind::Ping,
            "repo:refs_changed" => {
                let v = json_body(body)?;
                let path = match (s(&v, "/repository/project/key"), s(&v, "/repository/slug")) {
                    (Some(k), Some(slug)) => Some(format!("{k}/{slug}")),
                    _ => None,
                };
                let repo = RepoKey {
                    provider_id: v.pointer("/repository/id").and_then(json_id),
                    path,
                    clone_urls: v
                        .pointer("/repository/links/clone")
                        .and_then(|c| c.as_array())
                        .into_iter()
                        .flatten()
                        .filter_map(|c| s(c, "/href"))
                        .collect(),
                    default_branch: None,
                };
                let updates = v["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| {
                        Some(RefUpdate {
                            ref_name: s(c, "/ref/id").or_else(|| s(c, "/refId"))?,
                            deleted: s(c, "/type").as_deref() == Some("DELETE")
                                || s(c, "/toHash").as_deref() == Some(webhook::ZERO_SHA),
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
