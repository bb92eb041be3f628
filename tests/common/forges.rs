//! Fakes of the four hosting providers' REST APIs (GitLab v4, GitHub Enterprise v3,
//! Bitbucket Cloud 2.0, Bitbucket Data Center 1.0) for integration tests.
//!
//! Each [`Forge`] is one [`GitHttpServer`] on `127.0.0.1:0`: requests under the
//! kind's API prefix are answered by the fake ([`GitHttpServer::start_with_api`]),
//! everything else falls through to `git http-backend`, so a test can discover
//! repositories over the API and clone the URLs it was given from the same port.
//! The state (token, repositories, page size, injected rate limits, ...) is shared
//! and mutable, so a test can change it between two polls.
//!
//! Shapes follow `shared/docs/providers.md` parts B and C: endpoints, field names,
//! pagination (GitLab `Link` + `x-*` headers, GitHub `Link`, Bitbucket Cloud body
//! `next`, Bitbucket DC `isLastPage`/`nextPageStart`), rate-limit headers and
//! auth schemes. Choices where the real services are not documented:
//! - A request without credentials gets 401 on every endpoint except Bitbucket DC
//!   `GET /application-properties` (real services may answer anonymous requests
//!   with public data instead).
//! - Bitbucket DC pages skip offsets: `nextPageStart` is never `start + size`, as
//!   on a real server that filters out repositories the caller cannot see.
//! - Bitbucket DC clone links use the lower-case project key
//!   (`/scm/prj/slug.git`); repositories live on disk at `scm/<KEY>/<slug>.git`
//!   (see [`Kind::git_dir`]), and the fake adds a lower-case symlink
//!   `scm/<key> -> <KEY>` under the root when a git request needs it.
//! - GitHub secondary limits (`rate_limit_next` with `Some(retry_after)`) keep
//!   `x-ratelimit-remaining` above 0 and send `retry-after`; primary limits (`None`)
//!   send `x-ratelimit-remaining: 0` and no `retry-after`.
//! - Without `retry_after`, reset times are one second ahead.
//! - Bitbucket Cloud `/user` with a Bearer (access) token: 403.
//! - Bitbucket DC `/branches/default` of an empty repository: 404.
//! - Commit statuses (`shared/docs/providers-status-graphql.md` part D): a token without write access
//!   ([`Forge::set_status_write`]) gets GitLab's `insufficient_scope` 403, GitHub's "Resource not
//!   accessible" 403, Bitbucket Cloud's missing-scope 403 and Bitbucket DC's 401; an unknown commit 404;
//!   GitLab answers a repeated `pending`/`running` state with 400 "Cannot transition status" (a finished
//!   one is a new job); GitHub refuses a description over
//!   140 characters (422), GitLab over 255 (400), Bitbucket DC a `url` over 450 (400), Bitbucket Cloud a
//!   `url` that is not one (400). [`Forge::fail_statuses_next`] makes the next posts answer a server error.
//!
//! Repository paths ([`FakeRepo::path`]): GitLab `group/sub/project`, GitHub
//! `owner/name` (owners starting with `user-`, [`GITHUB_LOGIN`] and those given to
//! [`Forge::set_user_owners`] are users, the others organisations), Bitbucket
//! Cloud `workspace/slug`, Bitbucket DC `KEY/slug`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::git_http::{
    ApiRequest, ApiResponse, Auth, GitHttpServer, LoggedRequest, base64_decode, percent_decode,
    percent_encode,
};

/// `GET /user` username of the GitLab fake (the token's user).
pub const GITLAB_USERNAME: &str = "alice";
/// `GET /user` login of the GitHub fake.
pub const GITHUB_LOGIN: &str = "octocat";
/// Bitbucket Cloud username (Basic `bbuser:token` is an app password).
pub const BB_CLOUD_USERNAME: &str = "bbuser";
/// Bitbucket Cloud Atlassian account email (Basic `email:token` is an API token).
pub const BB_CLOUD_EMAIL: &str = "bbuser@example.com";
/// Bitbucket DC user (Basic `dcuser:token`; `X-AUSERNAME`).
pub const BB_DC_USERNAME: &str = "dcuser";
/// Bitbucket DC user id (`X-AUSERID`).
pub const BB_DC_USER_ID: u64 = 3;
/// Server-side page size cap unless [`Forge::set_page_size`] says otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 3;

/// A repository the fake API lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRepo {
    /// GitLab `group/sub/project`, GitHub `owner/name`, Bitbucket Cloud
    /// `workspace/slug`, Bitbucket DC `KEY/slug`.
    pub path: String,
    /// The provider's numeric id (GitLab project id, GitHub id, DC id; Bitbucket
    /// Cloud derives its `{uuid}` from it).
    pub id: u64,
    pub archived: bool,
    /// Reported as empty (GitLab `empty_repo`, GitHub 409 on `/commits`,
    /// Bitbucket Cloud `mainbranch: null`, DC 404 on `/branches/default`).
    pub empty: bool,
    pub default_branch: String,
}

impl FakeRepo {
    /// Not archived, not empty, default branch `main`.
    pub fn new(path: &str, id: u64) -> FakeRepo {
        FakeRepo {
            path: path.to_string(),
            id,
            archived: false,
            empty: false,
            default_branch: "main".to_string(),
        }
    }

    pub fn with_archived(mut self, archived: bool) -> FakeRepo {
        self.archived = archived;
        self
    }

    pub fn with_empty(mut self, empty: bool) -> FakeRepo {
        self.empty = empty;
        self
    }

    pub fn with_default_branch(mut self, branch: &str) -> FakeRepo {
        self.default_branch = branch.to_string();
        self
    }

    /// Everything before the last `/` (group, owner, workspace, project key).
    fn namespace(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(ns, _)| ns)
    }

    /// The last path segment (project path, repo name, slug).
    fn last(&self) -> &str {
        self.path
            .rsplit_once('/')
            .map_or(self.path.as_str(), |(_, l)| l)
    }
}

/// Which provider a [`Forge`] fakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gitlab,
    Github,
    BitbucketCloud,
    BitbucketDatacenter,
}

impl Kind {
    /// The path prefix of the REST API below the base URL.
    pub fn api_prefix(self) -> &'static str {
        match self {
            Kind::Gitlab => "/api/v4",
            Kind::Github => "/api/v3",
            Kind::BitbucketCloud => "/2.0",
            Kind::BitbucketDatacenter => "/rest/api/1.0",
        }
    }

    /// Where the bare repository for `path` must live below the served root:
    /// `<path>.git`, or `scm/<KEY>/<slug>.git` for Bitbucket DC.
    pub fn git_dir(self, path: &str) -> String {
        match self {
            Kind::BitbucketDatacenter => format!("scm/{path}.git"),
            _ => format!("{path}.git"),
        }
    }

    /// The path of the clone URL the API reports for `path` (no leading `/`):
    /// `<path>.git`, or `scm/<key>/<slug>.git` (lower-case key) for Bitbucket DC.
    pub fn clone_path(self, path: &str) -> String {
        match self {
            Kind::BitbucketDatacenter => match path.split_once('/') {
                Some((key, slug)) => format!("scm/{}/{slug}.git", key.to_lowercase()),
                None => format!("scm/{path}.git"),
            },
            _ => format!("{path}.git"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct RateLimit {
    remaining: usize,
    status: u16,
    retry_after: Option<u64>,
}

#[derive(Clone, Debug)]
struct State {
    token: String,
    repos: Vec<FakeRepo>,
    page_size: usize,
    rate_limit: Option<RateLimit>,
    /// API requests so far (drives the rate-limit counters).
    api_calls: u64,
    namespaces: Vec<String>,
    gitlab_scopes: Vec<String>,
    gitlab_bot: bool,
    gitlab_expires_at: Option<String>,
    gitlab_shared: Vec<(String, String)>,
    github_user_owners: Vec<String>,
    github_scopes: Option<String>,
    bb_project_keys: HashMap<String, String>,
    external_url: Option<String>,
    server_url: String,
    /// Whether the token may write commit statuses.
    status_write: bool,
    /// Answers (HTTP code, message) the next status posts get instead.
    status_failures: Vec<(u16, String)>,
    statuses: Vec<PostedStatus>,
}

/// A commit status the fake accepted.
#[derive(Clone, Debug)]
pub struct PostedStatus {
    /// The repository path as the host names it (`group/sub/project`, `owner/repo`, `ws/slug`, `KEY/slug`).
    pub path: String,
    pub sha: String,
    /// The request body as sent.
    pub body: Value,
}

struct Inner {
    kind: Kind,
    root: PathBuf,
    state: Mutex<State>,
}

/// A fake provider: REST API plus git on one port. Stops when dropped.
pub struct Forge {
    pub server: GitHttpServer,
    kind: Kind,
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Forge {
    /// `root` holds the bare git repos served at the clone paths each kind uses
    /// ([`Kind::git_dir`]); `git_auth` guards git; `api_token` guards the API.
    pub fn start(
        kind: Kind,
        root: &Path,
        git_auth: Auth,
        api_token: &str,
        repos: Vec<FakeRepo>,
    ) -> Forge {
        let inner = Arc::new(Inner {
            kind,
            root: root
                .canonicalize()
                .unwrap_or_else(|e| panic!("forges: cannot canonicalize {}: {e}", root.display())),
            state: Mutex::new(State {
                token: api_token.to_string(),
                repos,
                page_size: DEFAULT_PAGE_SIZE,
                rate_limit: None,
                api_calls: 0,
                namespaces: Vec::new(),
                gitlab_scopes: vec!["read_api".to_string(), "read_repository".to_string()],
                gitlab_bot: false,
                gitlab_expires_at: Some("2099-12-31".to_string()),
                gitlab_shared: Vec::new(),
                github_user_owners: Vec::new(),
                github_scopes: Some("repo, read:org".to_string()),
                bb_project_keys: HashMap::new(),
                external_url: None,
                server_url: String::new(),
                status_write: true,
                status_failures: Vec::new(),
                statuses: Vec::new(),
            }),
        });
        let hook_inner = Arc::clone(&inner);
        let server = GitHttpServer::start_with_api(
            root,
            git_auth,
            Arc::new(move |req: &ApiRequest| hook_inner.handle(req)),
        );
        lock(&inner.state).server_url = server.url();
        Forge {
            server,
            kind,
            inner,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The provider's base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// GitLab `url/api/v4`, GitHub `url/api/v3`, Bitbucket Cloud `url/2.0`,
    /// Bitbucket DC `url/rest/api/1.0`.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.url(), self.kind.api_prefix())
    }

    /// The clone URL the API reports for `path` (without user info).
    pub fn clone_url(&self, path: &str) -> String {
        format!("{}/{}", self.url(), self.kind.clone_path(path))
    }

    /// Where the bare repository for `path` must live below the root (see [`Kind::git_dir`]).
    pub fn git_dir(&self, path: &str) -> PathBuf {
        self.inner.root.join(self.kind.git_dir(path))
    }

    /// Token rotation: only `token` is accepted by the API from now on.
    pub fn set_token(&self, token: &str) {
        lock(&self.inner.state).token = token.to_string();
    }

    pub fn token(&self) -> String {
        lock(&self.inner.state).token.clone()
    }

    pub fn set_repos(&self, repos: Vec<FakeRepo>) {
        lock(&self.inner.state).repos = repos;
    }

    pub fn repos(&self) -> Vec<FakeRepo> {
        lock(&self.inner.state).repos.clone()
    }

    /// Server-side page size cap (default [`DEFAULT_PAGE_SIZE`]); the providers'
    /// own maximum (100, or 1000 for Bitbucket DC) applies too. At least 1.
    pub fn set_page_size(&self, n: usize) {
        lock(&self.inner.state).page_size = n.max(1);
    }

    /// The next `n` API requests (any endpoint, before auth) get `status` with the
    /// rate-limit headers the kind documents. `retry_after_secs` adds
    /// `Retry-After` (GitHub: makes it a secondary limit, see the module docs).
    pub fn rate_limit_next(&self, n: usize, status: u16, retry_after_secs: Option<u64>) {
        lock(&self.inner.state).rate_limit = (n > 0).then_some(RateLimit {
            remaining: n,
            status,
            retry_after: retry_after_secs,
        });
    }

    /// The API requests so far (git requests are in `server.git_requests()`).
    pub fn api_requests(&self) -> Vec<LoggedRequest> {
        self.server.api_requests()
    }

    pub fn api_request_count(&self) -> usize {
        self.server.api_requests().len()
    }

    /// A GitLab group, GitHub organisation, Bitbucket Cloud workspace or Bitbucket
    /// DC project key that exists even without repositories.
    pub fn add_namespace(&self, namespace: &str) {
        lock(&self.inner.state)
            .namespaces
            .push(namespace.to_string());
    }

    /// GitLab: `GET /personal_access_tokens/self` scopes.
    pub fn set_gitlab_scopes(&self, scopes: Vec<String>) {
        lock(&self.inner.state).gitlab_scopes = scopes;
    }

    /// GitLab: `expires_at` of the token (`YYYY-MM-DD`), `None` for no expiry.
    pub fn set_gitlab_expires_at(&self, date: Option<&str>) {
        lock(&self.inner.state).gitlab_expires_at = date.map(str::to_string);
    }

    /// GitLab: `GET /user` answers as a project/group access token's bot user.
    pub fn set_gitlab_bot(&self, bot: bool) {
        lock(&self.inner.state).gitlab_bot = bot;
    }

    /// GitLab: `project_path` is shared into `group` (listed for the group unless
    /// `with_shared=false`).
    pub fn share_with_group(&self, group: &str, project_path: &str) {
        lock(&self.inner.state)
            .gitlab_shared
            .push((group.to_string(), project_path.to_string()));
    }

    /// GitHub: owners that are users (in addition to `user-*` and [`GITHUB_LOGIN`]).
    pub fn set_user_owners(&self, owners: Vec<String>) {
        lock(&self.inner.state).github_user_owners = owners;
    }

    /// GitHub: the `X-OAuth-Scopes` of `GET /user` (classic PAT). `None` acts as a
    /// fine-grained PAT: no `X-OAuth-Scopes`, but `github-authentication-token-expiration`.
    pub fn set_github_scopes(&self, scopes: Option<&str>) {
        lock(&self.inner.state).github_scopes = scopes.map(str::to_string);
    }

    /// Bitbucket Cloud: the `project.key` of the repository at `path` (default:
    /// the upper-cased workspace).
    pub fn set_project_key(&self, path: &str, key: &str) {
        lock(&self.inner.state)
            .bb_project_keys
            .insert(path.to_string(), key.to_string());
    }

    /// Whether the token may write commit statuses (default true).
    pub fn set_status_write(&self, allowed: bool) {
        lock(&self.inner.state).status_write = allowed;
    }

    /// The next status posts answer with these HTTP statuses and messages (in the kind's error body), one
    /// each.
    pub fn fail_statuses_next(&self, answers: &[(u16, &str)]) {
        lock(&self.inner.state).status_failures =
            answers.iter().map(|(c, m)| (*c, m.to_string())).collect();
    }

    /// The commit statuses accepted so far, oldest first.
    pub fn statuses(&self) -> Vec<PostedStatus> {
        lock(&self.inner.state).statuses.clone()
    }

    /// The base URL used in links and clone URLs the API returns (default:
    /// `http://` + the request's `Host`). Set it to `TlsTerminator::https_url()`
    /// when the API is reached through TLS.
    pub fn set_external_url(&self, url: Option<&str>) {
        lock(&self.inner.state).external_url = url.map(|u| u.trim_end_matches('/').to_string());
    }
}

// ---------------------------------------------------------------------------
// Request handling

struct Ctx<'a> {
    kind: Kind,
    req: &'a ApiRequest,
    st: &'a State,
    root: &'a Path,
    /// `http://127.0.0.1:PORT` or the external URL.
    base: String,
    /// Decoded path segments after the API prefix.
    segs: Vec<String>,
    now: u64,
}

impl Inner {
    fn handle(&self, req: &ApiRequest) -> Option<ApiResponse> {
        let prefix = self.kind.api_prefix();
        let graphql =
            matches!(self.kind, Kind::Gitlab | Kind::Github) && req.path == "/api/graphql";
        let rest = match strip_prefix_segment(&req.path, prefix) {
            _ if graphql => "/graphql",
            Some(rest) => rest,
            None if self.kind == Kind::BitbucketDatacenter => {
                match strip_prefix_segment(&req.path, "/rest/api/latest") {
                    Some(rest) => rest,
                    None => {
                        self.dc_lowercase_alias(&req.path);
                        return None;
                    }
                }
            }
            None => return None,
        };
        let (snapshot, limited) = {
            let mut st = lock(&self.state);
            st.api_calls += 1;
            let limited = match st.rate_limit {
                Some(mut rl) if rl.remaining > 0 => {
                    rl.remaining -= 1;
                    st.rate_limit = (rl.remaining > 0).then_some(rl);
                    Some(rl)
                }
                _ => None,
            };
            (st.clone(), limited)
        };
        let base = match &snapshot.external_url {
            Some(url) => url.clone(),
            None => match req.header("host") {
                Some(host) if !host.trim().is_empty() => format!("http://{}", host.trim()),
                _ => snapshot.server_url.clone(),
            },
        };
        let segs = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let ctx = Ctx {
            kind: self.kind,
            req,
            st: &snapshot,
            root: &self.root,
            base,
            segs,
            now: now_secs(),
        };
        if let Some(rl) = limited {
            return Some(ctx.rate_limited(rl));
        }
        let resp = if graphql {
            if req.method == "POST" {
                ctx.graphql()
            } else {
                ctx.error(405, "Method Not Allowed")
            }
        } else if req.method == "POST" {
            let failure = {
                let mut st = lock(&self.state);
                (!st.status_failures.is_empty()).then(|| st.status_failures.remove(0))
            };
            match ctx.post_status(failure) {
                Some((resp, posted)) => {
                    if let Some(posted) = posted {
                        lock(&self.state).statuses.push(posted);
                    }
                    resp
                }
                None => ctx.error(405, "Method Not Allowed"),
            }
        } else if req.method != "GET" && req.method != "HEAD" {
            ctx.error(405, "Method Not Allowed")
        } else {
            match self.kind {
                Kind::Gitlab => ctx.gitlab(),
                Kind::Github => ctx.github(),
                Kind::BitbucketCloud => ctx.bb_cloud(),
                Kind::BitbucketDatacenter => ctx.bb_dc(),
            }
        };
        Some(ctx.decorate(resp))
    }

    /// Git requests to `/scm/<key>/...` where only `scm/<KEY>` exists on disk get a
    /// lower-case symlink, as Bitbucket DC clone URLs use the lower-case key.
    fn dc_lowercase_alias(&self, path: &str) {
        let Some(rest) = path.strip_prefix("/scm/") else {
            return;
        };
        let Some(key) = rest.split('/').next().map(percent_decode) else {
            return;
        };
        if key.is_empty() || key.contains("..") || key.contains('\\') {
            return;
        }
        let scm = self.root.join("scm");
        if scm.join(&key).exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&scm) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.eq_ignore_ascii_case(&key) {
                // Racing requests may both try; the loser's error is harmless.
                let _ = std::os::unix::fs::symlink(&name, scm.join(&key));
                return;
            }
        }
    }
}

/// `path` below `prefix` (`""` or starting with `/`), or `None`.
fn strip_prefix_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

impl Ctx<'_> {
    fn segs(&self) -> Vec<&str> {
        self.segs.iter().map(String::as_str).collect()
    }

    /// `scheme://host:port` of the base with `user@` inserted.
    fn base_with_user(&self, user: &str) -> String {
        match self.base.split_once("://") {
            Some((scheme, rest)) => format!("{scheme}://{user}@{rest}"),
            None => format!("{user}@{}", self.base),
        }
    }

    /// The host of the base URL without port (for ssh URLs).
    fn host(&self) -> String {
        let rest = self
            .base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, r)| r);
        let host_port = rest.split('/').next().unwrap_or(rest);
        if let Some(v6) = host_port.strip_prefix('[') {
            return format!("[{}]", v6.split(']').next().unwrap_or(v6));
        }
        host_port.split(':').next().unwrap_or(host_port).to_string()
    }

    fn api_base(&self) -> String {
        format!("{}{}", self.base, self.kind.api_prefix())
    }

    /// This request's URL (as sent) with the query replaced by `query` pairs:
    /// the original ones minus the keys in `set`, then `set`.
    fn url_with(&self, set: &[(&str, String)]) -> String {
        let mut parts: Vec<String> = self
            .req
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = p.split_once('=').map_or(*p, |(k, _)| k);
                !set.iter().any(|(s, _)| *s == key)
            })
            .map(str::to_string)
            .collect();
        for (k, v) in set {
            parts.push(format!("{k}={}", percent_encode(v)));
        }
        format!("{}{}?{}", self.base, self.req.path, parts.join("&"))
    }

    fn param(&self, name: &str) -> Option<String> {
        self.req.query_param(name)
    }

    /// A positive integer parameter, `default` if absent or invalid.
    fn num_param(&self, name: &str, default: usize) -> usize {
        self.param(name)
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    }

    fn clone_path(&self, repo: &FakeRepo) -> String {
        self.kind.clone_path(&repo.path)
    }

    /// The sha of the repository's default branch from the bare repo on disk, or a
    /// made-up one when there is none.
    fn head_sha(&self, repo: &FakeRepo) -> String {
        let dir = self.root.join(self.kind.git_dir(&repo.path));
        let out = Command::new("git")
            .arg("-c")
            .arg("safe.directory=*")
            .arg("--git-dir")
            .arg(&dir)
            .args(["rev-parse", "--verify", "-q"])
            .arg(format!("refs/heads/{}^{{commit}}", repo.default_branch))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output();
        match out {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            _ => fake_sha(&repo.path),
        }
    }

    /// The kind's error body.
    fn error(&self, status: u16, message: &str) -> ApiResponse {
        match self.kind {
            Kind::Gitlab => ApiResponse::json(status, &json!({ "message": message })),
            Kind::Github => ApiResponse::json(
                status,
                &json!({
                    "message": message,
                    "documentation_url": "https://docs.github.com/enterprise-server@3.14/rest",
                    "status": status.to_string(),
                }),
            ),
            Kind::BitbucketCloud => ApiResponse::json(
                status,
                &json!({ "type": "error", "error": { "message": message } }),
            ),
            Kind::BitbucketDatacenter => dc_error(status, message, None),
        }
    }

    /// Per-kind headers on every (not rate-limited) API response.
    fn decorate(&self, resp: ApiResponse) -> ApiResponse {
        let calls = self.st.api_calls;
        match self.kind {
            Kind::Gitlab => {
                let observed = calls.min(1999);
                let reset = self.now - self.now % 60 + 60;
                resp.with_header("RateLimit-Name", "throttle_authenticated_api")
                    .with_header("RateLimit-Limit", "2000")
                    .with_header("RateLimit-Observed", &observed.to_string())
                    .with_header("RateLimit-Remaining", &(2000 - observed).to_string())
                    .with_header("RateLimit-Reset", &reset.to_string())
            }
            Kind::Github => {
                let used = calls.min(4999);
                let reset = self.now - self.now % 3600 + 3600;
                resp.with_header("x-ratelimit-limit", "5000")
                    .with_header("x-ratelimit-remaining", &(5000 - used).to_string())
                    .with_header("x-ratelimit-used", &used.to_string())
                    .with_header("x-ratelimit-reset", &reset.to_string())
                    .with_header("x-ratelimit-resource", "core")
                    .with_header("X-GitHub-Media-Type", "github.v3; format=json")
                    .with_header("X-GitHub-Enterprise-Version", "3.14.0")
            }
            Kind::BitbucketCloud => {
                if self.bearer().is_some() {
                    resp.with_header("X-RateLimit-Limit", "1000")
                        .with_header("X-RateLimit-Resource", "api-repositories")
                        .with_header("X-RateLimit-NearLimit", "false")
                } else {
                    resp
                }
            }
            Kind::BitbucketDatacenter => {
                resp.with_header("X-AREQUESTID", &format!("@FAKE{calls}x1x0"))
            }
        }
    }

    fn rate_limited(&self, rl: RateLimit) -> ApiResponse {
        let wait = rl.retry_after.unwrap_or(1);
        let reset = self.now + wait;
        let mut resp = match self.kind {
            Kind::Gitlab => ApiResponse::text(rl.status, "Retry later\n")
                .with_header("RateLimit-Name", "throttle_authenticated_api")
                .with_header("RateLimit-Limit", "2000")
                .with_header("RateLimit-Observed", "2001")
                .with_header("RateLimit-Remaining", "0")
                .with_header("RateLimit-Reset", &reset.to_string())
                .with_header("RateLimit-ResetTime", &http_date(reset)),
            Kind::Github => {
                let secondary = rl.retry_after.is_some();
                let message = if secondary {
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
                } else {
                    "API rate limit exceeded for user ID 1."
                };
                let used = if secondary {
                    self.st.api_calls.min(4999)
                } else {
                    5000
                };
                self.error(rl.status, message)
                    .with_header("x-ratelimit-limit", "5000")
                    .with_header("x-ratelimit-remaining", &(5000 - used).to_string())
                    .with_header("x-ratelimit-used", &used.to_string())
                    .with_header("x-ratelimit-reset", &reset.to_string())
                    .with_header("x-ratelimit-resource", "core")
            }
            Kind::BitbucketCloud => {
                let resp = self.error(rl.status, "Rate limit for this resource has been exceeded");
                if self.bearer().is_some() {
                    resp.with_header("X-RateLimit-Limit", "1000")
                        .with_header("X-RateLimit-Resource", "api-repositories")
                        .with_header("X-RateLimit-NearLimit", "true")
                } else {
                    resp
                }
            }
            Kind::BitbucketDatacenter => dc_error(
                rl.status,
                "You have been rate limited. Wait a moment and try again.",
                Some("com.atlassian.bitbucket.throttle.RateLimitedException"),
            ),
        };
        if let Some(secs) = rl.retry_after {
            let name = if self.kind == Kind::Github {
                "retry-after"
            } else {
                "Retry-After"
            };
            resp = resp.with_header(name, &secs.to_string());
        }
        resp
    }

    /// The token of an `Authorization: Bearer` header, if any.
    fn bearer(&self) -> Option<&str> {
        let (scheme, value) = self.req.header("authorization")?.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(value.trim())
    }

    /// `(user, password)` of an `Authorization: Basic` header, if any and valid.
    fn basic(&self) -> Option<(String, String)> {
        let (scheme, value) = self.req.header("authorization")?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(base64_decode(value)?).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        Some((user.to_string(), pass.to_string()))
    }

    fn has_authorization(&self) -> bool {
        self.req.header("authorization").is_some()
    }

    fn page_cap(&self, provider_max: usize) -> usize {
        self.st.page_size.clamp(1, provider_max)
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.st
            .namespaces
            .iter()
            .any(|n| n.eq_ignore_ascii_case(ns))
    }

    // -----------------------------------------------------------------------
    // GitLab

    fn gitlab(&self) -> ApiResponse {
        let token = self.st.token.as_str();
        let ok = self.req.header("private-token").map(str::trim) == Some(token)
            || self.bearer() == Some(token);
        if !ok {
            return self.error(401, "401 Unauthorized");
        }
        match self.segs().as_slice() {
            ["user"] => ApiResponse::json(200, &self.gitlab_user()),
            ["personal_access_tokens", "self"] => ApiResponse::json(
                200,
                &json!({
                    "id": 4711,
                    "name": "modelmirror",
                    "description": null,
                    "revoked": false,
                    "created_at": iso_ms(self.now - 86_400 * 30),
                    "scopes": self.st.gitlab_scopes,
                    "user_id": 1,
                    "last_used_at": iso_ms(self.now),
                    "active": true,
                    "expires_at": self.st.gitlab_expires_at,
                }),
            ),
            ["version"] => ApiResponse::json(
                200,
                &json!({ "version": "17.11.1-ee", "revision": "0123abcd", "enterprise": true }),
            ),
            ["groups", id] => match self.gitlab_group(id) {
                Some(group) => ApiResponse::json(200, &self.gitlab_group_json(&group)),
                None => self.error(404, "404 Group Not Found"),
            },
            ["groups", id, "projects"] => match self.gitlab_group(id) {
                Some(group) => self.gitlab_group_projects(&group),
                None => self.error(404, "404 Group Not Found"),
            },
            ["projects", id] => {
                let found = self
                    .st
                    .repos
                    .iter()
                    .find(|r| r.id.to_string() == *id || r.path.eq_ignore_ascii_case(id));
                match found {
                    Some(repo) => ApiResponse::json(200, &self.gitlab_project(repo, false)),
                    None => self.error(404, "404 Project Not Found"),
                }
            }
            _ => ApiResponse::json(404, &json!({ "error": "404 Not Found" })),
        }
    }

    fn gitlab_user(&self) -> Value {
        let (username, name) = if self.st.gitlab_bot {
            ("project_1_bot_0123456789abcdef", "modelmirror bot")
        } else {
            (GITLAB_USERNAME, "Alice Example")
        };
        json!({
            "id": 1,
            "username": username,
            "name": name,
            "state": "active",
            "locked": false,
            "avatar_url": null,
            "web_url": format!("{}/{username}", self.base),
            "created_at": iso_ms(1_600_000_000),
            "bot": self.st.gitlab_bot,
            "email": format!("{username}@example.com"),
            "is_admin": false,
        })
    }

    /// All groups: every namespace of a project path, plus added namespaces and
    /// groups projects are shared into.
    fn gitlab_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        let mut add = |g: &str| {
            let mut prefix = String::new();
            for part in g.split('/').filter(|p| !p.is_empty()) {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                if !groups.iter().any(|x| x.eq_ignore_ascii_case(&prefix)) {
                    groups.push(prefix.clone());
                }
            }
        };
        for repo in &self.st.repos {
            add(repo.namespace());
        }
        for ns in &self.st.namespaces {
            add(ns);
        }
        for (group, _) in &self.st.gitlab_shared {
            add(group);
        }
        groups
    }

    /// The group's canonical full path, by (URL-decoded) full path or numeric id.
    fn gitlab_group(&self, id: &str) -> Option<String> {
        self.gitlab_groups()
            .into_iter()
            .find(|g| g.eq_ignore_ascii_case(id) || stable_id(&g.to_lowercase()).to_string() == id)
    }

    fn gitlab_group_json(&self, group: &str) -> Value {
        let (parent, path) = group
            .rsplit_once('/')
            .map_or((None, group), |(p, l)| (Some(p), l));
        json!({
            "id": stable_id(&group.to_lowercase()),
            "web_url": format!("{}/groups/{group}", self.base),
            "name": path,
            "path": path,
            "description": "",
            "visibility": "private",
            "full_name": group.replace('/', " / "),
            "full_path": group,
            "parent_id": parent.map(|p| stable_id(&p.to_lowercase())),
        })
    }

    fn gitlab_project(&self, repo: &FakeRepo, simple: bool) -> Value {
        let ns = repo.namespace();
        let ns_name = ns.rsplit('/').next().unwrap_or(ns);
        let parent = ns
            .rsplit_once('/')
            .map(|(p, _)| stable_id(&p.to_lowercase()));
        let created = 1_700_000_000 + repo.id * 3600;
        let mut v = json!({
            "id": repo.id,
            "description": null,
            "name": repo.last(),
            "name_with_namespace": repo.path.replace('/', " / "),
            "path": repo.last(),
            "path_with_namespace": repo.path,
            "created_at": iso_ms(created),
            "default_branch": repo.default_branch,
            "tag_list": [],
            "topics": [],
            "ssh_url_to_repo": format!("git@{}:{}.git", self.host(), repo.path),
            "http_url_to_repo": format!("{}/{}", self.base, self.clone_path(repo)),
            "web_url": format!("{}/{}", self.base, repo.path),
            "readme_url": null,
            "forks_count": 0,
            "avatar_url": null,
            "star_count": 0,
            "last_activity_at": iso_ms(created + 60),
            "namespace": {
                "id": stable_id(&ns.to_lowercase()),
                "name": ns_name,
                "path": ns_name,
                "kind": "group",
                "full_path": ns,
                "parent_id": parent,
                "avatar_url": null,
                "web_url": format!("{}/groups/{ns}", self.base),
            },
        });
        if !simple && let Some(obj) = v.as_object_mut() {
            obj.insert("visibility".into(), json!("private"));
            obj.insert("archived".into(), json!(repo.archived));
            obj.insert("empty_repo".into(), json!(repo.empty));
            obj.insert("repository_access_level".into(), json!("enabled"));
            obj.insert("shared_with_groups".into(), json!([]));
            obj.insert("open_issues_count".into(), json!(0));
            obj.insert(
                "_links".into(),
                json!({ "self": format!("{}/projects/{}", self.api_base(), repo.id) }),
            );
        }
        v
    }

    fn gitlab_group_projects(&self, group: &str) -> ApiResponse {
        let subgroups = self.param("include_subgroups").as_deref() == Some("true");
        let with_shared = self.param("with_shared").as_deref() != Some("false");
        let archived = self.param("archived");
        let active = self.param("active");
        let simple = self.param("simple").as_deref() == Some("true");
        let prefix = format!("{}/", group.to_lowercase());
        let mut list: Vec<&FakeRepo> = self
            .st
            .repos
            .iter()
            .filter(|r| {
                let ns = r.namespace().to_lowercase();
                ns == group.to_lowercase() || (subgroups && ns.starts_with(&prefix))
            })
            .collect();
        if with_shared {
            for (g, path) in &self.st.gitlab_shared {
                if !g.eq_ignore_ascii_case(group) {
                    continue;
                }
                if let Some(repo) = self
                    .st
                    .repos
                    .iter()
                    .find(|r| r.path.eq_ignore_ascii_case(path))
                    && !list.iter().any(|r| r.path == repo.path)
                {
                    list.push(repo);
                }
            }
        }
        match archived.as_deref() {
            Some("true") => list.retain(|r| r.archived),
            Some("false") => list.retain(|r| !r.archived),
            _ => {}
        }
        match active.as_deref() {
            Some("true") => list.retain(|r| !r.archived),
            Some("false") => list.retain(|r| r.archived),
            _ => {}
        }
        let order_by = self.param("order_by").unwrap_or_default();
        match order_by.as_str() {
            "name" | "path" => list.sort_by_key(|r| r.last().to_lowercase()),
            _ => list.sort_by_key(|r| r.id),
        }
        let ascending = match self.param("sort").as_deref() {
            Some("asc") => true,
            Some("desc") => false,
            _ => matches!(order_by.as_str(), "name" | "path"),
        };
        if !ascending {
            list.reverse();
        }

        let per_page = self.num_param("per_page", 20).min(self.page_cap(100));
        let page = self.num_param("page", 1);
        let total = list.len();
        let total_pages = total.div_ceil(per_page).max(1);
        let values: Vec<Value> = list
            .iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .map(|r| self.gitlab_project(r, simple))
            .collect();

        let link = |p: usize| {
            self.url_with(&[("page", p.to_string()), ("per_page", per_page.to_string())])
        };
        let mut links = Vec::new();
        if page > 1 && page <= total_pages + 1 {
            links.push(format!("<{}>; rel=\"prev\"", link(page - 1)));
        }
        if page < total_pages {
            links.push(format!("<{}>; rel=\"next\"", link(page + 1)));
        }
        links.push(format!("<{}>; rel=\"first\"", link(1)));
        links.push(format!("<{}>; rel=\"last\"", link(total_pages)));
        let next = if page < total_pages {
            (page + 1).to_string()
        } else {
            String::new()
        };
        let prev = if page > 1 {
            (page - 1).to_string()
        } else {
            String::new()
        };
        ApiResponse::json(200, &Value::Array(values))
            .with_header("Link", &links.join(", "))
            .with_header("x-next-page", &next)
            .with_header("x-page", &page.to_string())
            .with_header("x-per-page", &per_page.to_string())
            .with_header("x-prev-page", &prev)
            .with_header("x-total", &total.to_string())
            .with_header("x-total-pages", &total_pages.to_string())
    }

    // -----------------------------------------------------------------------
    // GitHub

    fn github(&self) -> ApiResponse {
        let token = self.st.token.as_str();
        let ok = match self.req.header("authorization").map(str::trim) {
            Some(h) => h.split_once(' ').is_some_and(|(scheme, value)| {
                (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
                    && value.trim() == token
            }),
            None => return self.error(401, "Requires authentication"),
        };
        if !ok {
            return self.error(401, "Bad credentials");
        }
        match self.segs().as_slice() {
            ["user"] => {
                let resp = ApiResponse::json(200, &self.github_owner_json(GITHUB_LOGIN));
                match &self.st.github_scopes {
                    Some(scopes) => resp
                        .with_header("X-OAuth-Scopes", scopes)
                        .with_header("X-Accepted-OAuth-Scopes", ""),
                    None => resp.with_header(
                        "github-authentication-token-expiration",
                        "2099-12-31 00:00:00 UTC",
                    ),
                }
            }
            ["rate_limit"] => {
                let used = self.st.api_calls.min(4999);
                let core = json!({
                    "limit": 5000,
                    "used": used,
                    "remaining": 5000 - used,
                    "reset": self.now - self.now % 3600 + 3600,
                });
                ApiResponse::json(200, &json!({ "resources": { "core": core }, "rate": core }))
            }
            ["user", "repos"] => {
                let list: Vec<&FakeRepo> = self.st.repos.iter().collect();
                self.github_list(list, "full_name")
            }
            ["orgs", org] => match self.github_org(org) {
                Some(org) => ApiResponse::json(200, &self.github_owner_json(&org)),
                None => self.error(404, "Not Found"),
            },
            ["orgs", org, "repos"] => match self.github_org(org) {
                Some(org) => self.github_owner_repos(&org, true),
                None => self.error(404, "Not Found"),
            },
            ["organizations", id, "repos"] => {
                match self.github_owners().into_iter().find(|o| {
                    !self.github_is_user(o) && stable_id(&o.to_lowercase()).to_string() == *id
                }) {
                    Some(org) => self.github_owner_repos(&org, true),
                    None => self.error(404, "Not Found"),
                }
            }
            ["users", user] => match self.github_any_owner(user) {
                Some(owner) => ApiResponse::json(200, &self.github_owner_json(&owner)),
                None => self.error(404, "Not Found"),
            },
            ["users", user, "repos"] => match self.github_any_owner(user) {
                Some(owner) => self.github_owner_repos(&owner, false),
                None => self.error(404, "Not Found"),
            },
            ["user", id, "repos"] => {
                match self
                    .github_owners()
                    .into_iter()
                    .find(|o| stable_id(&o.to_lowercase()).to_string() == *id)
                {
                    Some(owner) => self.github_owner_repos(&owner, false),
                    None => self.error(404, "Not Found"),
                }
            }
            ["repos", owner, name] => match self.github_repo(owner, name) {
                Some(repo) => ApiResponse::json(200, &self.github_repo_json(repo)),
                None => self.error(404, "Not Found"),
            },
            ["repos", owner, name, "commits"] => match self.github_repo(owner, name) {
                Some(repo) if repo.empty => self.error(409, "Git Repository is empty."),
                Some(repo) => {
                    let sha = self.head_sha(repo);
                    let url = format!("{}/{}/commit/{sha}", self.base, repo.path);
                    ApiResponse::json(
                        200,
                        &json!([{
                            "sha": sha,
                            "commit": {
                                "message": "Latest commit",
                                "author": { "name": "A U Thor", "email": "author@example.com", "date": iso(self.now) },
                            },
                            "html_url": url,
                        }]),
                    )
                }
                None => self.error(404, "Not Found"),
            },
            _ => self.error(404, "Not Found"),
        }
    }

    fn github_owners(&self) -> Vec<String> {
        let mut owners: Vec<String> = Vec::new();
        let candidates = self
            .st
            .repos
            .iter()
            .map(FakeRepo::namespace)
            .chain(self.st.namespaces.iter().map(String::as_str))
            .chain(std::iter::once(GITHUB_LOGIN));
        for owner in candidates {
            if !owner.is_empty() && !owners.iter().any(|o| o.eq_ignore_ascii_case(owner)) {
                owners.push(owner.to_string());
            }
        }
        owners
    }

    fn github_is_user(&self, owner: &str) -> bool {
        owner.starts_with("user-")
            || owner.eq_ignore_ascii_case(GITHUB_LOGIN)
            || self
                .st
                .github_user_owners
                .iter()
                .any(|u| u.eq_ignore_ascii_case(owner))
    }

    /// The canonical name of the organisation `name` (404 for users and unknowns).
    fn github_org(&self, name: &str) -> Option<String> {
        self.github_owners()
            .into_iter()
            .find(|o| o.eq_ignore_ascii_case(name) && !self.github_is_user(o))
    }

    /// `/users/{name}` also answers for organisations, as on GitHub.
    fn github_any_owner(&self, name: &str) -> Option<String> {
        self.github_owners()
            .into_iter()
            .find(|o| o.eq_ignore_ascii_case(name))
    }

    fn github_repo(&self, owner: &str, name: &str) -> Option<&FakeRepo> {
        let full = format!("{owner}/{name}");
        self.st
            .repos
            .iter()
            .find(|r| r.path.eq_ignore_ascii_case(&full))
    }

    fn github_owner_json(&self, owner: &str) -> Value {
        let user = self.github_is_user(owner);
        json!({
            "login": owner,
            "id": if owner == GITHUB_LOGIN { 1 } else { stable_id(&owner.to_lowercase()) },
            "node_id": format!("MDQ6VXNlcj{}", stable_id(owner)),
            "type": if user { "User" } else { "Organization" },
            "site_admin": false,
            "html_url": format!("{}/{owner}", self.base),
            "url": format!("{}/{}/{owner}", self.api_base(), if user { "users" } else { "orgs" }),
        })
    }

    fn github_repo_json(&self, repo: &FakeRepo) -> Value {
        let created = 1_700_000_000 + repo.id * 3600;
        json!({
            "id": repo.id,
            "node_id": format!("R_kgDO{}", repo.id),
            "name": repo.last(),
            "full_name": repo.path,
            "private": true,
            "owner": self.github_owner_json(repo.namespace()),
            "html_url": format!("{}/{}", self.base, repo.path),
            "description": null,
            "fork": false,
            "url": format!("{}/repos/{}", self.api_base(), repo.path),
            "clone_url": format!("{}/{}", self.base, self.clone_path(repo)),
            "ssh_url": format!("git@{}:{}.git", self.host(), repo.path),
            "created_at": iso(created),
            "updated_at": iso(created + 60),
            "pushed_at": iso(created + 60),
            "default_branch": repo.default_branch,
            "archived": repo.archived,
            "disabled": false,
            "size": if repo.empty { 0 } else { 24 },
            "visibility": "private",
            "permissions": { "admin": false, "maintain": false, "push": false, "triage": false, "pull": true },
        })
    }

    fn github_owner_repos(&self, owner: &str, org: bool) -> ApiResponse {
        let mut list: Vec<&FakeRepo> = self
            .st
            .repos
            .iter()
            .filter(|r| r.namespace().eq_ignore_ascii_case(owner))
            .collect();
        let ty = self.param("type").unwrap_or_default();
        let keep = match (org, ty.as_str()) {
            // All fake repositories are private, owned sources.
            (true, "public" | "forks") => false,
            (false, "member") => false,
            _ => true,
        };
        if !keep {
            list.clear();
        }
        // GitHub's defaults: organisations sort by `created`, users by `full_name`.
        self.github_list(list, if org { "created" } else { "full_name" })
    }

    /// `sort` (`created`/`updated`/`pushed` by id, or `full_name`) and `direction`
    /// (default `asc` for `full_name`, else `desc`), then `per_page`/`page` with `Link`.
    fn github_list(&self, mut list: Vec<&FakeRepo>, default_sort: &str) -> ApiResponse {
        let sort = self
            .param("sort")
            .unwrap_or_else(|| default_sort.to_string());
        if sort == "full_name" {
            list.sort_by_key(|r| r.path.to_lowercase());
        } else {
            list.sort_by_key(|r| r.id);
        }
        let ascending = match self.param("direction").as_deref() {
            Some("asc") => true,
            Some("desc") => false,
            _ => sort == "full_name",
        };
        if !ascending {
            list.reverse();
        }
        let per_page = self.num_param("per_page", 30).min(self.page_cap(100));
        let page = self.num_param("page", 1);
        let total_pages = list.len().div_ceil(per_page).max(1);
        let values: Vec<Value> = list
            .iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .map(|r| self.github_repo_json(r))
            .collect();
        let link = |p: usize| {
            self.url_with(&[("per_page", per_page.to_string()), ("page", p.to_string())])
        };
        let mut links = Vec::new();
        if page > 1 {
            links.push(format!("<{}>; rel=\"prev\"", link(page - 1)));
        }
        if page < total_pages {
            links.push(format!("<{}>; rel=\"next\"", link(page + 1)));
            links.push(format!("<{}>; rel=\"last\"", link(total_pages)));
        }
        if page > 1 {
            links.push(format!("<{}>; rel=\"first\"", link(1)));
        }
        let resp = ApiResponse::json(200, &Value::Array(values));
        if links.is_empty() {
            resp
        } else {
            resp.with_header("Link", &links.join(", "))
        }
    }

    // -----------------------------------------------------------------------
    // Bitbucket Cloud

    fn bb_cloud(&self) -> ApiResponse {
        let token = self.st.token.as_str();
        let bearer = self.bearer();
        let user_auth = self.basic().is_some_and(|(user, pass)| {
            pass == token
                && (user == BB_CLOUD_USERNAME || user.eq_ignore_ascii_case(BB_CLOUD_EMAIL))
        });
        if bearer.is_some() && bearer != Some(token) {
            return self.error(
                401,
                "Token is invalid, expired, or not supported for this endpoint.",
            );
        }
        if bearer.is_none() && !user_auth {
            return self
                .error(401, "Unauthorized")
                .with_header("WWW-Authenticate", "Basic realm=\"Bitbucket.org HTTP\"");
        }
        let clone_user = if user_auth {
            BB_CLOUD_USERNAME
        } else {
            "x-token-auth"
        };
        match self.segs().as_slice() {
            ["user"] if !user_auth => self.error(
                403,
                "This API is not accessible by this authentication mechanism.",
            ),
            ["user"] => ApiResponse::json(
                200,
                &json!({
                    "type": "user",
                    "uuid": bb_uuid(1),
                    "username": BB_CLOUD_USERNAME,
                    "display_name": "BB User",
                    "account_id": "557058:00000000-0000-4000-8000-000000000001",
                    "nickname": BB_CLOUD_USERNAME,
                    "account_status": "active",
                    "links": { "html": { "href": format!("{}/{BB_CLOUD_USERNAME}/", self.base) } },
                }),
            ),
            ["workspaces", ws] => match self.bb_workspace(ws) {
                Some(ws) => ApiResponse::json(200, &self.bb_workspace_json(&ws)),
                None => self.error(404, &format!("No workspace with identifier '{ws}'.")),
            },
            ["repositories", ws] => match self.bb_workspace(ws) {
                Some(ws) => self.bb_cloud_list(&ws, clone_user),
                None => self.error(404, &format!("No workspace with identifier '{ws}'.")),
            },
            ["repositories", ws, slug] => {
                let full = format!("{ws}/{slug}");
                match self
                    .st
                    .repos
                    .iter()
                    .find(|r| r.path.eq_ignore_ascii_case(&full))
                {
                    Some(repo) => ApiResponse::json(200, &self.bb_cloud_repo(repo, clone_user)),
                    None => self.error(404, &format!("Repository {full} not found")),
                }
            }
            _ => ApiResponse::json(
                404,
                &json!({
                    "type": "error",
                    "error": {
                        "message": "Resource not found",
                        "detail": "There is no API hosted at this URL.",
                    },
                }),
            ),
        }
    }

    fn bb_workspace(&self, ws: &str) -> Option<String> {
        self.st
            .repos
            .iter()
            .map(FakeRepo::namespace)
            .chain(self.st.namespaces.iter().map(String::as_str))
            .find(|w| w.eq_ignore_ascii_case(ws))
            .map(str::to_string)
    }

    fn bb_workspace_json(&self, ws: &str) -> Value {
        json!({
            "type": "workspace",
            "uuid": bb_uuid(stable_id(&ws.to_lowercase())),
            "name": capitalize(ws),
            "slug": ws,
            "is_private": true,
            "links": {
                "html": { "href": format!("{}/{ws}/", self.base) },
                "self": { "href": format!("{}/workspaces/{ws}", self.api_base()) },
            },
        })
    }

    fn bb_project_key(&self, repo: &FakeRepo) -> String {
        match self.st.bb_project_keys.get(&repo.path) {
            Some(key) => key.clone(),
            None => repo.namespace().to_uppercase(),
        }
    }

    fn bb_cloud_repo(&self, repo: &FakeRepo, clone_user: &str) -> Value {
        let ws = repo.namespace();
        let key = self.bb_project_key(repo);
        let created = 1_700_000_000 + repo.id * 3600;
        let mainbranch = if repo.empty {
            Value::Null
        } else {
            json!({ "name": repo.default_branch, "type": "branch" })
        };
        json!({
            "type": "repository",
            "uuid": bb_uuid(repo.id),
            "full_name": repo.path,
            "slug": repo.last(),
            "name": capitalize(repo.last()),
            "description": "",
            "scm": "git",
            "is_private": true,
            "fork_policy": "no_public_forks",
            "mainbranch": mainbranch,
            "size": if repo.empty { 0 } else { 123_456 },
            "language": "",
            "has_issues": false,
            "has_wiki": false,
            "created_on": iso_us(created),
            "updated_on": iso_us(created + 60),
            "project": {
                "type": "project",
                "key": key,
                "uuid": bb_uuid(stable_id(&key)),
                "name": capitalize(&key.to_lowercase()),
            },
            "workspace": {
                "type": "workspace",
                "slug": ws,
                "uuid": bb_uuid(stable_id(&ws.to_lowercase())),
                "name": capitalize(ws),
            },
            "links": {
                "self": { "href": format!("{}/repositories/{}", self.api_base(), repo.path) },
                "html": { "href": format!("{}/{}", self.base, repo.path) },
                "clone": [
                    { "name": "https", "href": format!("{}/{}", self.base_with_user(clone_user), self.clone_path(repo)) },
                    { "name": "ssh", "href": format!("git@{}:{}.git", self.host(), repo.path) },
                ],
            },
        })
    }

    fn bb_cloud_list(&self, ws: &str, clone_user: &str) -> ApiResponse {
        let mut list: Vec<&FakeRepo> = self
            .st
            .repos
            .iter()
            .filter(|r| r.namespace().eq_ignore_ascii_case(ws))
            .collect();
        if let Some(q) = self.param("q") {
            match parse_bbql_project_key(&q) {
                Some(key) => list.retain(|r| self.bb_project_key(r) == key),
                None => {
                    return ApiResponse::json(
                        400,
                        &json!({
                            "type": "error",
                            "error": {
                                "message": "Invalid query",
                                "detail": format!("The fake only supports q=project.key=\"KEY\", not {q:?}"),
                            },
                        }),
                    );
                }
            }
        }
        let sort = self.param("sort").unwrap_or_default();
        let (desc, field) = match sort.strip_prefix('-') {
            Some(f) => (true, f.to_string()),
            None => (false, sort.clone()),
        };
        match field.as_str() {
            "uuid" => list.sort_by_key(|r| bb_uuid(r.id)),
            "name" | "slug" | "full_name" => list.sort_by_key(|r| r.path.to_lowercase()),
            _ => list.sort_by_key(|r| r.id),
        }
        if desc {
            list.reverse();
        }
        let pagelen = self.num_param("pagelen", 10).min(self.page_cap(100));
        let page = self.num_param("page", 1);
        let size = list.len();
        let values: Vec<Value> = list
            .iter()
            .skip((page - 1).saturating_mul(pagelen))
            .take(pagelen)
            .map(|r| self.bb_cloud_repo(r, clone_user))
            .collect();
        let mut body = json!({
            "pagelen": pagelen,
            "size": size,
            "page": page,
            "values": values,
        });
        if let Some(obj) = body.as_object_mut() {
            if page.saturating_mul(pagelen) < size {
                let next = self.url_with(&[("page", (page + 1).to_string())]);
                obj.insert("next".into(), json!(next));
            }
            if page > 1 {
                let prev = self.url_with(&[("page", (page - 1).to_string())]);
                obj.insert("previous".into(), json!(prev));
            }
        }
        ApiResponse::json(200, &body)
    }

    // -----------------------------------------------------------------------
    // Bitbucket Data Center

    fn bb_dc(&self) -> ApiResponse {
        let token = self.st.token.as_str();
        let authed = self.bearer() == Some(token)
            || self
                .basic()
                .is_some_and(|(user, pass)| user == BB_DC_USERNAME && pass == token);
        let segs = self.segs();
        if self.has_authorization() && !authed {
            return dc_error(
                401,
                "Authentication failed. Please check your credentials and try again.",
                Some("com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"),
            );
        }
        let resp = match segs.as_slice() {
            ["application-properties"] => ApiResponse::json(
                200,
                &json!({
                    "version": "8.19.0",
                    "buildNumber": "8019000",
                    "buildDate": "1713916800000",
                    "displayName": "Bitbucket",
                }),
            ),
            _ if !authed => dc_error(
                401,
                "You are not permitted to access this resource",
                Some("com.atlassian.bitbucket.AuthorisationException"),
            ),
            ["projects", key] => match self.dc_project(key) {
                Some(key) => ApiResponse::json(200, &self.dc_project_json(&key)),
                None => self.dc_no_project(key),
            },
            ["projects", key, "repos"] => match self.dc_project(key) {
                Some(key) => {
                    let list: Vec<&FakeRepo> = self
                        .st
                        .repos
                        .iter()
                        .filter(|r| r.namespace().eq_ignore_ascii_case(&key))
                        .collect();
                    self.dc_list(list)
                }
                None => self.dc_no_project(key),
            },
            ["repos"] => self.dc_list(self.st.repos.iter().collect()),
            ["projects", key, "repos", slug] => match self.dc_repo(key, slug) {
                Ok(repo) => ApiResponse::json(200, &self.dc_repo_json(repo)),
                Err(resp) => resp,
            },
            ["projects", key, "repos", slug, "branches", "default"] => {
                match self.dc_repo(key, slug) {
                    Ok(repo) if repo.empty => dc_error(
                        404,
                        &format!(
                            "Repository {}/{} does not have a default branch.",
                            repo.namespace(),
                            repo.last()
                        ),
                        Some("com.atlassian.bitbucket.repository.NoDefaultBranchException"),
                    ),
                    Ok(repo) => {
                        let sha = self.head_sha(repo);
                        ApiResponse::json(
                            200,
                            &json!({
                                "id": format!("refs/heads/{}", repo.default_branch),
                                "displayId": repo.default_branch,
                                "type": "BRANCH",
                                "latestCommit": sha,
                                "latestChangeset": sha,
                                "isDefault": true,
                            }),
                        )
                    }
                    Err(resp) => resp,
                }
            }
            _ => dc_error(
                404,
                &format!("No resource at {}", self.req.path),
                Some("com.sun.jersey.api.NotFoundException"),
            ),
        };
        if authed {
            resp.with_header("X-AUSERNAME", BB_DC_USERNAME)
                .with_header("X-AUSERID", &BB_DC_USER_ID.to_string())
        } else {
            resp
        }
    }

    fn dc_no_project(&self, key: &str) -> ApiResponse {
        dc_error(
            404,
            &format!("Project {key} does not exist."),
            Some("com.atlassian.bitbucket.project.NoSuchProjectException"),
        )
    }

    fn dc_project(&self, key: &str) -> Option<String> {
        self.st
            .repos
            .iter()
            .map(FakeRepo::namespace)
            .chain(self.st.namespaces.iter().map(String::as_str))
            .find(|k| k.eq_ignore_ascii_case(key))
            .map(str::to_string)
    }

    fn dc_repo(&self, key: &str, slug: &str) -> Result<&FakeRepo, ApiResponse> {
        let Some(key) = self.dc_project(key) else {
            return Err(self.dc_no_project(key));
        };
        let full = format!("{key}/{slug}");
        self.st
            .repos
            .iter()
            .find(|r| r.path.eq_ignore_ascii_case(&full))
            .ok_or_else(|| {
                dc_error(
                    404,
                    &format!("Repository {key}/{slug} does not exist."),
                    Some("com.atlassian.bitbucket.repository.NoSuchRepositoryException"),
                )
            })
    }

    fn dc_project_json(&self, key: &str) -> Value {
        json!({
            "key": key,
            "id": stable_id(&key.to_uppercase()) % 10_000,
            "name": capitalize(&key.to_lowercase()),
            "public": false,
            "type": if key.starts_with('~') { "PERSONAL" } else { "NORMAL" },
            "links": { "self": [{ "href": format!("{}/projects/{key}", self.base) }] },
        })
    }

    fn dc_repo_json(&self, repo: &FakeRepo) -> Value {
        let key = repo.namespace();
        let slug = repo.last();
        json!({
            "slug": slug,
            "id": repo.id,
            "name": capitalize(slug),
            "hierarchyId": format!("{:020x}", stable_id(&repo.path)),
            "scmId": "git",
            "state": "AVAILABLE",
            "statusMessage": "Available",
            "forkable": true,
            "project": self.dc_project_json(key),
            "public": false,
            "archived": repo.archived,
            "links": {
                "clone": [
                    { "href": format!("{}/{}", self.base_with_user(BB_DC_USERNAME), self.clone_path(repo)), "name": "http" },
                    { "href": format!("ssh://git@{}:7999/{}/{slug}.git", self.host(), key.to_lowercase()), "name": "ssh" },
                ],
                "self": [{ "href": format!("{}/projects/{key}/repos/{slug}/browse", self.base) }],
            },
        })
    }

    /// DC paging over a virtual list where repository `i` sits at offset `2i + 1`
    /// (the even offsets are repositories the caller cannot see), so
    /// `nextPageStart` is never `start + size`.
    fn dc_list(&self, mut list: Vec<&FakeRepo>) -> ApiResponse {
        list.sort_by_key(|r| (r.namespace().to_lowercase(), r.last().to_lowercase()));
        let limit = self.num_param("limit", 25).min(self.page_cap(1000));
        let start = self
            .param("start")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        // Offsets 2i+1 >= start  <=>  i >= start / 2.
        let first = start / 2;
        let values: Vec<Value> = list
            .iter()
            .skip(first)
            .take(limit)
            .map(|r| self.dc_repo_json(r))
            .collect();
        let last_index = first + values.len();
        let is_last = last_index >= list.len();
        let mut body = json!({
            "size": values.len(),
            "limit": limit,
            "isLastPage": is_last,
            "values": values,
            "start": start,
        });
        if !is_last && let Some(obj) = body.as_object_mut() {
            // One past the offset of the last repository on this page.
            obj.insert("nextPageStart".into(), json!(2 * last_index));
        }
        ApiResponse::json(200, &body)
    }
}

fn dc_error(status: u16, message: &str, exception: Option<&str>) -> ApiResponse {
    ApiResponse::json(
        status,
        &json!({ "errors": [{ "context": null, "message": message, "exceptionName": exception }] }),
    )
}

/// `project.key="KEY"` (spaces allowed around `=`), else `None`.
fn parse_bbql_project_key(q: &str) -> Option<String> {
    let rest = q.trim().strip_prefix("project.key")?.trim_start();
    let rest = rest.strip_prefix('=')?.trim();
    let key = rest.strip_prefix('"')?.strip_suffix('"')?;
    (!key.contains('"')).then(|| key.to_string())
}

// ---------------------------------------------------------------------------
// GraphQL: default-branch heads (`shared/docs/providers-status-graphql.md` part E)

/// Each `ALIAS: FIELD(arg: $var, ...)` of `query`, with its arguments' variable names.
fn aliased_calls<'q>(query: &'q str, field: &str) -> Vec<(&'q str, Vec<(&'q str, &'q str)>)> {
    let marker = format!(": {field}(");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = query[at..].find(&marker) {
        let start = at + i;
        let alias = query[..start]
            .rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        let args_start = start + marker.len();
        let args_end = query[args_start..]
            .find(')')
            .map_or(query.len(), |e| args_start + e);
        let args = query[args_start..args_end]
            .split(',')
            .filter_map(|a| {
                let (name, var) = a.split_once(':')?;
                Some((name.trim(), var.trim().trim_start_matches('$')))
            })
            .collect();
        out.push((alias, args));
        at = args_end;
    }
    out
}

impl Ctx<'_> {
    /// `POST /api/graphql`: the head queries modelmirror sends, answered as the hosts do.
    fn graphql(&self) -> ApiResponse {
        let token = self.st.token.as_str();
        let authed = match self.kind {
            Kind::Gitlab => {
                self.req.header("private-token").map(str::trim) == Some(token)
                    || self.bearer() == Some(token)
            }
            _ => self.bearer() == Some(token),
        };
        if !authed {
            return match self.kind {
                Kind::Gitlab => {
                    ApiResponse::json(401, &json!({ "errors": [{ "message": "Invalid token" }] }))
                }
                _ => self.error(401, "Bad credentials"),
            };
        }
        let body: Value = serde_json::from_slice(&self.req.body).unwrap_or(Value::Null);
        let (Some(query), variables) = (body["query"].as_str(), &body["variables"]) else {
            return ApiResponse::json(
                200,
                &json!({ "errors": [{ "message": "No query string was present" }] }),
            );
        };
        let var = |name: &str| variables[name].as_str().unwrap_or("").to_string();
        let mut data = serde_json::Map::new();
        let mut errors = Vec::new();
        match self.kind {
            Kind::Github => {
                for (alias, args) in aliased_calls(query, "repository") {
                    let arg = |n: &str| {
                        args.iter()
                            .find(|(a, _)| *a == n)
                            .map(|(_, v)| var(v))
                            .unwrap_or_default()
                    };
                    let (owner, name) = (arg("owner"), arg("name"));
                    match self.github_repo(&owner, &name) {
                        Some(repo) if repo.empty => {
                            data.insert(alias.into(), json!({ "defaultBranchRef": null }));
                        }
                        Some(repo) => {
                            data.insert(
                                alias.into(),
                                json!({ "defaultBranchRef": { "name": repo.default_branch, "target": { "oid": self.head_sha(repo) } } }),
                            );
                        }
                        None => {
                            data.insert(alias.into(), Value::Null);
                            errors.push(json!({
                                "type": "NOT_FOUND",
                                "path": [alias],
                                "locations": [{ "line": 1, "column": 1 }],
                                "message": format!("Could not resolve to a Repository with the name '{owner}/{name}'."),
                            }));
                        }
                    }
                }
                if query.contains("rateLimit") {
                    let used = self.st.api_calls.min(4999);
                    data.insert(
                        "rateLimit".into(),
                        json!({ "cost": 1, "remaining": 5000 - used }),
                    );
                }
                let mut answer = json!({ "data": data });
                if !errors.is_empty() {
                    answer["errors"] = Value::Array(errors);
                }
                ApiResponse::json(200, &answer).with_header("x-ratelimit-resource", "graphql")
            }
            _ => {
                let calls = aliased_calls(query, "project");
                // `queryComplexity { score limit }` 3, and per project: project, repository, rootRef, tree,
                // sha 1 each, lastCommit 10.
                let score = 3 + 15 * calls.len();
                if score > 250 {
                    return ApiResponse::json(
                        200,
                        &json!({ "errors": [{ "message": format!("Query has complexity of {score}, which exceeds max complexity of 250") }] }),
                    );
                }
                for (alias, args) in calls {
                    let path = args.first().map(|(_, v)| var(v)).unwrap_or_default();
                    let repo = self
                        .st
                        .repos
                        .iter()
                        .find(|r| r.path.eq_ignore_ascii_case(&path));
                    let value = match repo {
                        None => Value::Null,
                        Some(repo) if repo.empty => {
                            json!({ "repository": { "rootRef": null, "tree": null } })
                        }
                        Some(repo) => json!({
                            "repository": {
                                "rootRef": repo.default_branch,
                                "tree": { "lastCommit": { "sha": self.head_sha(repo) } },
                            }
                        }),
                    };
                    data.insert(alias.into(), value);
                }
                if query.contains("queryComplexity") {
                    data.insert(
                        "queryComplexity".into(),
                        json!({ "score": score, "limit": 250 }),
                    );
                }
                ApiResponse::json(200, &json!({ "data": data }))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Commit statuses

impl Ctx<'_> {
    /// A status post to the kind's endpoint: the answer, and the status when it was accepted. `None`: not a
    /// status endpoint. `failure`: answer with this server error instead (after authentication).
    fn post_status(
        &self,
        failure: Option<(u16, String)>,
    ) -> Option<(ApiResponse, Option<PostedStatus>)> {
        let segs = self.segs();
        let (path, sha) = match (self.kind, segs.as_slice()) {
            (Kind::Gitlab, ["projects", id, "statuses", sha]) => {
                let repo = self
                    .st
                    .repos
                    .iter()
                    .find(|r| r.id.to_string() == *id || r.path.eq_ignore_ascii_case(id));
                (repo.map(|r| r.path.clone()), sha.to_string())
            }
            (Kind::Github, ["repos", owner, name, "statuses", sha]) => (
                self.github_repo(owner, name).map(|r| r.path.clone()),
                sha.to_string(),
            ),
            (
                Kind::BitbucketCloud,
                ["repositories", ws, slug, "commit", sha, "statuses", "build"],
            ) => {
                let path = format!("{ws}/{slug}");
                let repo = self
                    .st
                    .repos
                    .iter()
                    .find(|r| r.path.eq_ignore_ascii_case(&path));
                (repo.map(|r| r.path.clone()), sha.to_string())
            }
            (
                Kind::BitbucketDatacenter,
                ["projects", key, "repos", slug, "commits", sha, "builds"],
            ) => {
                let path = format!("{key}/{slug}");
                let repo = self
                    .st
                    .repos
                    .iter()
                    .find(|r| r.path.eq_ignore_ascii_case(&path));
                (repo.map(|r| r.path.clone()), sha.to_string())
            }
            _ => return None,
        };
        Some(self.status_answer(path, sha, failure))
    }

    fn status_answer(
        &self,
        path: Option<String>,
        sha: String,
        failure: Option<(u16, String)>,
    ) -> (ApiResponse, Option<PostedStatus>) {
        if let Some(denied) = self.status_auth() {
            return (denied, None);
        }
        if let Some((code, message)) = failure {
            return (self.error(code, &message), None);
        }
        let not_found = match self.kind {
            Kind::Gitlab => self.error(404, "404 Project Not Found"),
            Kind::Github => self.error(404, "Not Found"),
            Kind::BitbucketCloud => self.error(404, "Repository not found"),
            Kind::BitbucketDatacenter => dc_error(
                404,
                "Repository does not exist.",
                Some("com.atlassian.bitbucket.repository.NoSuchRepositoryException"),
            ),
        };
        let Some(path) = path else {
            return (not_found, None);
        };
        if !self.st.status_write {
            return (self.status_forbidden(), None);
        }
        let dir = self.root.join(self.kind.git_dir(&path));
        let exists = Command::new("git")
            .arg("-c")
            .arg("safe.directory=*")
            .arg("--git-dir")
            .arg(&dir)
            .args(["cat-file", "-e"])
            .arg(format!("{sha}^{{commit}}"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let resp = match self.kind {
                Kind::Gitlab => self.error(404, "404 Commit Not Found"),
                Kind::Github => self.error(422, &format!("No commit found for SHA: {sha}")),
                Kind::BitbucketCloud => self.error(404, &format!("Commit not found: {sha}")),
                Kind::BitbucketDatacenter => dc_error(
                    400,
                    &format!("Commit '{sha}' does not exist in repository"),
                    Some("com.atlassian.bitbucket.commit.NoSuchCommitException"),
                ),
            };
            return (resp, None);
        }
        let body: Value = match serde_json::from_slice(&self.req.body) {
            Ok(v @ Value::Object(_)) => v,
            _ => return (self.error(400, "Problems parsing JSON"), None),
        };
        let text = |k: &str| body[k].as_str().unwrap_or("").to_string();
        let posted = PostedStatus {
            path: path.clone(),
            sha: sha.clone(),
            body: body.clone(),
        };
        let resp = match self.kind {
            Kind::Gitlab => {
                let state = text("state");
                if ![
                    "pending", "running", "success", "failed", "canceled", "skipped",
                ]
                .contains(&state.as_str())
                {
                    return (
                        ApiResponse::json(
                            400,
                            &json!({ "error": "state does not have a valid value" }),
                        ),
                        None,
                    );
                }
                if text("description").chars().count() > 255 {
                    return (
                        ApiResponse::json(
                            400,
                            &json!({ "message": { "description": ["is too long (maximum is 255 characters)"] } }),
                        ),
                        None,
                    );
                }
                let name = body["name"]
                    .as_str()
                    .or(body["context"].as_str())
                    .unwrap_or("default")
                    .to_string();
                let same = self.st.statuses.iter().rev().find(|p| {
                    p.path == path
                        && p.sha == sha
                        && p.body["name"].as_str().unwrap_or("default") == name
                        && p.body["ref"] == body["ref"]
                });
                // A status still pending or running cannot move to the state it has.
                if let Some(prev) = same
                    && prev.body["state"] == body["state"]
                    && matches!(state.as_str(), "pending" | "running")
                {
                    let event = match state.as_str() {
                        "success" => "succeed",
                        "failed" => "drop",
                        "running" => "run",
                        other => other,
                    };
                    return (
                        self.error(
                            400,
                            &format!("Cannot transition status via :{event} from :{state}"),
                        ),
                        None,
                    );
                }
                ApiResponse::json(
                    201,
                    &json!({
                        "id": self.st.statuses.len() + 93,
                        "sha": sha,
                        "ref": body["ref"],
                        "status": state,
                        "name": name,
                        "target_url": body["target_url"],
                        "description": body["description"],
                        "created_at": iso_ms(self.now),
                        "started_at": null,
                        "finished_at": iso_ms(self.now),
                        "allow_failure": false,
                        "coverage": null,
                        "pipeline_id": 101,
                        "author": { "id": 1, "username": GITLAB_USERNAME, "name": "Alice Example", "state": "active" },
                    }),
                )
            }
            Kind::Github => {
                if !["error", "failure", "pending", "success"].contains(&text("state").as_str()) {
                    return (self.github_invalid("state", "invalid"), None);
                }
                if text("description").chars().count() > 140 {
                    return (
                        self.github_invalid(
                            "description",
                            "description is too long (maximum is 140 characters)",
                        ),
                        None,
                    );
                }
                let id = self.st.statuses.len() + 1;
                let url = format!("{}/repos/{path}/statuses/{sha}", self.api_base());
                ApiResponse::json(
                    201,
                    &json!({
                        "url": url,
                        "id": id,
                        "node_id": "SC_kwDOAAAAAA",
                        "state": body["state"],
                        "description": body["description"],
                        "target_url": body["target_url"],
                        "context": body["context"].as_str().unwrap_or("default"),
                        "created_at": iso_ms(self.now),
                        "updated_at": iso_ms(self.now),
                        "creator": { "login": GITHUB_LOGIN, "id": 1, "type": "User" },
                    }),
                )
                .with_header("Location", &url)
            }
            Kind::BitbucketCloud => {
                if !["INPROGRESS", "FAILED", "STOPPED", "SUCCESSFUL"]
                    .contains(&text("state").as_str())
                {
                    return (
                        self.bb_cloud_field_error("state", "Select a valid choice."),
                        None,
                    );
                }
                if !text("url").starts_with("http") {
                    return (self.bb_cloud_field_error("url", "Enter a valid URL."), None);
                }
                ApiResponse::json(
                    201,
                    &json!({
                        "type": "build",
                        "key": body["key"],
                        "refname": body["refname"],
                        "url": body["url"],
                        "state": body["state"],
                        "name": body["name"],
                        "description": body["description"],
                        "created_on": iso_ms(self.now),
                        "updated_on": iso_ms(self.now),
                        "links": { "commit": { "href": format!("{}/repositories/{path}/commit/{sha}", self.api_base()) } },
                    }),
                )
            }
            Kind::BitbucketDatacenter => {
                let bad = |m: &str| {
                    dc_error(
                        400,
                        m,
                        Some("com.atlassian.bitbucket.validation.ArgumentValidationException"),
                    )
                };
                if !["INPROGRESS", "SUCCESSFUL", "FAILED", "CANCELLED", "UNKNOWN"]
                    .contains(&text("state").as_str())
                {
                    return (
                        bad(
                            "state must be one of INPROGRESS, SUCCESSFUL, FAILED, CANCELLED, UNKNOWN",
                        ),
                        None,
                    );
                }
                let key = text("key");
                if key.trim().is_empty() || key.chars().count() > 255 {
                    return (
                        bad("key must not be blank and at most 255 characters"),
                        None,
                    );
                }
                let url = text("url");
                if url.trim().is_empty() || url.chars().count() > 450 {
                    return (
                        bad("url must not be blank and at most 450 characters"),
                        None,
                    );
                }
                if text("description").chars().count() > 255 {
                    return (bad("description must be at most 255 characters"), None);
                }
                ApiResponse {
                    status: 204,
                    headers: Vec::new(),
                    body: Vec::new(),
                }
            }
        };
        (resp, Some(posted))
    }

    /// The kind's answer to missing or wrong credentials on a status post, if they are.
    fn status_auth(&self) -> Option<ApiResponse> {
        let token = self.st.token.as_str();
        let ok = match self.kind {
            Kind::Gitlab => {
                self.req.header("private-token").map(str::trim) == Some(token)
                    || self.bearer() == Some(token)
            }
            Kind::Github => self.req.header("authorization").is_some_and(|h| {
                h.trim().split_once(' ').is_some_and(|(scheme, value)| {
                    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
                        && value.trim() == token
                })
            }),
            Kind::BitbucketCloud => {
                self.bearer() == Some(token)
                    || self.basic().is_some_and(|(user, pass)| {
                        pass == token
                            && (user == BB_CLOUD_USERNAME
                                || user.eq_ignore_ascii_case(BB_CLOUD_EMAIL))
                    })
            }
            Kind::BitbucketDatacenter => {
                self.bearer() == Some(token)
                    || self
                        .basic()
                        .is_some_and(|(user, pass)| user == BB_DC_USERNAME && pass == token)
            }
        };
        (!ok).then(|| match self.kind {
            Kind::Gitlab => self.error(401, "401 Unauthorized"),
            Kind::Github => self.error(401, "Bad credentials"),
            Kind::BitbucketCloud => self.error(
                401,
                "Token is invalid, expired, or not supported for this endpoint.",
            ),
            Kind::BitbucketDatacenter => dc_error(
                401,
                "Authentication failed. Please check your credentials and try again.",
                Some("com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"),
            ),
        })
    }

    /// The kind's answer to a token that may read but not write statuses.
    fn status_forbidden(&self) -> ApiResponse {
        match self.kind {
            Kind::Gitlab => ApiResponse::json(
                403,
                &json!({
                    "error": "insufficient_scope",
                    "error_description": "The request requires higher privileges than provided by the access token.",
                    "scope": "api",
                }),
            ),
            Kind::Github => self.error(403, "Resource not accessible by personal access token"),
            Kind::BitbucketCloud => ApiResponse::json(
                403,
                &json!({
                    "type": "error",
                    "error": {
                        "message": "Your credentials lack one or more required privilege scopes.",
                        "detail": { "granted": [], "required": ["repository"] },
                    },
                }),
            ),
            Kind::BitbucketDatacenter => dc_error(
                401,
                "You are not permitted to access this resource",
                Some("com.atlassian.bitbucket.AuthorisationException"),
            ),
        }
    }

    fn github_invalid(&self, field: &str, message: &str) -> ApiResponse {
        ApiResponse::json(
            422,
            &json!({
                "message": "Validation Failed",
                "errors": [{ "resource": "Status", "code": "custom", "field": field, "message": message }],
                "documentation_url": "https://docs.github.com/rest/commits/statuses#create-a-commit-status",
                "status": "422",
            }),
        )
    }

    fn bb_cloud_field_error(&self, field: &str, message: &str) -> ApiResponse {
        ApiResponse::json(
            400,
            &json!({
                "type": "error",
                "error": { "message": format!("{field}: {message}"), "fields": { field: [message] } },
            }),
        )
    }
}

// ---------------------------------------------------------------------------
// Small helpers

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// FNV-1a, folded into `1_000_000..10_000_000` (stable ids for groups, orgs, ...).
fn stable_id(s: &str) -> u64 {
    fnv(s) % 9_000_000 + 1_000_000
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A 40-hex sha for repositories that have no bare repo on disk.
fn fake_sha(path: &str) -> String {
    format!(
        "{:016x}{:016x}{:08x}",
        fnv(path),
        fnv(&format!("{path}#")),
        fnv(&format!("{path}##")) as u32
    )
}

/// `{xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx}` derived from `n`.
fn bb_uuid(n: u64) -> String {
    let a = fnv(&format!("a{n}"));
    let b = fnv(&format!("b{n}"));
    format!(
        "{{{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}}}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn split_time(epoch: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let (y, m, d) = civil_from_days(days);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

/// `2024-01-02T03:04:05Z` (GitHub).
fn iso(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = split_time(epoch);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `2024-01-02T03:04:05.000Z` (GitLab).
fn iso_ms(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = split_time(epoch);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.000Z")
}

/// `2024-01-02T03:04:05.000000+00:00` (Bitbucket Cloud).
fn iso_us(epoch: u64) -> String {
    let (y, mo, d, h, mi, s) = split_time(epoch);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.000000+00:00")
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate).
pub fn http_date(epoch: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = split_time(epoch);
    let weekday = DAYS[((epoch / 86_400) % 7) as usize];
    let month = MONTHS[(mo as usize).saturating_sub(1) % 12];
    format!("{weekday}, {d:02} {month} {y:04} {h:02}:{mi:02}:{s:02} GMT")
}
