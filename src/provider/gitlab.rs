//! GitLab (gitlab.com and self-managed): `group/sub/project` paths; git over HTTPS with username `oauth2`,
//! which works for personal, group, project and OAuth tokens alike. REST at `<url>/api/v4` with a Bearer
//! token; discovery lists a group's projects including all subgroups.

use super::api::{self, ApiClient, ApiError, BoxFuture};
use super::{DiscoveredRepo, Forge, GitAuth, json_id};
use crate::config::Secret;

pub struct Gitlab;

impl Forge for Gitlab {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://gitlab.com")
    }
    fn clone_url(&self, base: &str, path: &str) -> String {
        format!("{base}/{}.git", path.trim_end_matches(".git"))
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        GitAuth::Basic {
            username: username.unwrap_or("oauth2").to_string(),
            password: token,
        }
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
    fn rest_auth(&self, _username: Option<&str>, token: &Secret) -> api::RestAuth {
        api::RestAuth::bearer(token)
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
                if !scopes.iter().any(|s| *s == "read_api" || *s == "api")
                    || !scopes
                        .iter()
                        .any(|s| *s == "read_repository" || *s == "write_repository")
                {
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
}

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
