//! Commit statuses: what modelmirror tells the Git host about a commit it read (outbound only). The per-kind
//! files say which endpoint takes them and what their answers mean (`../shared/docs/providers-status-graphql.md`
//! part D); this file holds what they share.

use super::api::{ApiClient, ApiError, Response, body_message};

/// Whether every model of the commit was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusState {
    Success,
    Failure,
}

impl StatusState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StatusState::Success => "success",
            StatusState::Failure => "failure",
        }
    }
}

/// One status to post on one commit.
#[derive(Debug, Clone)]
pub(crate) struct CommitStatus {
    /// The repository's path on the host, as in `repos`.
    pub(crate) repo_path: String,
    pub(crate) sha: String,
    /// The branch the commit is the head of (GitLab's `ref`, Bitbucket's `refname` / `ref`).
    pub(crate) branch: String,
    pub(crate) state: StatusState,
    /// The status's name and key on the host (`status_context`): a later post under it replaces it.
    pub(crate) context: String,
    /// What the status says; each host's length limit is applied by its file.
    pub(crate) description: String,
    /// The commit in the web catalog (`[web] public_url`), if known.
    pub(crate) target_url: Option<String>,
    /// The repository's page on the host: Bitbucket needs some URL on every status.
    pub(crate) repo_page: Option<String>,
}

impl CommitStatus {
    /// The description cut to `max` characters (with `…` when cut).
    pub(crate) fn description(&self, max: usize) -> String {
        shorten(&self.description, max)
    }

    /// The URL a host that requires one gets: the catalog's page, else the repository's on the host.
    pub(crate) fn some_url(&self) -> String {
        self.target_url
            .clone()
            .or_else(|| self.repo_page.clone())
            .unwrap_or_default()
    }
}

/// What a post achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Posted {
    /// The host took the status.
    Created,
    /// The host already shows this state for the commit (GitLab refuses to repeat one): nothing to do.
    Unchanged,
}

impl Posted {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Posted::Created => "posted",
            Posted::Unchanged => "unchanged",
        }
    }
}

/// A status post as one host takes it.
pub(crate) struct StatusRequest {
    pub(crate) url: String,
    pub(crate) body: serde_json::Value,
    /// What the token needs for it, for the message of a 403.
    pub(crate) need: &'static str,
}

/// Post `status` on its commit to the host of `forge`.
pub(crate) async fn post(
    forge: &dyn super::Forge,
    api: &ApiClient,
    status: &CommitStatus,
) -> Result<Posted, ApiError> {
    let request = forge.status_request(api, status)?;
    let r = api.post_json(&request.url, &request.body).await?;
    forge.status_answer(api, &r, status, request.need)
}

/// Whether a token may write commit statuses, as far as the host tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScopeCheck {
    Allowed(String),
    Missing(String),
    /// The host cannot tell before a post is tried.
    Unknown(String),
}

/// `s` cut to `max` characters, ending with `…` when cut.
pub(crate) fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Turn a status post's answer into its outcome: 2xx is created; 401 a rejected token; 403 a token that may
/// not write statuses (`need` says what it needs); 404 an unknown repository or commit; anything else the
/// host's own message.
pub(crate) fn answer(
    api: &ApiClient,
    r: &Response,
    status: &CommitStatus,
    need: &str,
) -> Result<Posted, ApiError> {
    match r.status {
        200..=299 => Ok(Posted::Created),
        403 => Err(ApiError::Forbidden {
            provider: api.provider.clone(),
            message: body_message(&r.body),
            need: need.to_string(),
        }),
        404 => Err(ApiError::NotFound {
            provider: api.provider.clone(),
            what: format!(
                "commit {} of repository {}",
                status.sha.get(..12).unwrap_or(&status.sha),
                status.repo_path
            ),
        }),
        _ => api.check(r, "the commit status").map(|()| Posted::Created),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_cut_with_an_ellipsis() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "ab…");
        assert_eq!(shorten("ééééé", 4).chars().count(), 4);
    }
}
