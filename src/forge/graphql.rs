//! Default-branch heads of many repositories per request, over the host's GraphQL API
//! (`../shared/docs/providers-status-graphql.md` part E): GitHub takes up to 100 aliased `repository` fields
//! a request, GitLab as many aliased `project` fields as its query complexity limit allows, measured with
//! `queryComplexity`. Repository paths go in as variables, never into the query's text.

use serde_json::{Map, Value, json};

use super::api::{ApiClient, ApiError};

/// A repository's default branch and the commit at its tip, as the host reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) branch: String,
    pub(crate) commit: String,
}

/// GitHub repositories per request (the documentation recommends 50–100 aliases).
const GITHUB_BATCH: usize = 100;
/// GitLab projects in the first request, before `queryComplexity` has told what one costs.
const GITLAB_FIRST_BATCH: usize = 10;
/// The most GitLab projects a request holds however cheap they turn out.
const GITLAB_MAX_BATCH: usize = 100;
/// GitLab's complexity limit for authenticated requests, until the server says its own.
const GITLAB_COMPLEXITY_LIMIT: f64 = 250.0;
/// How often a GitLab batch too complex for the server is halved and sent again.
const MAX_SHRINKS: usize = 6;

/// The GraphQL endpoint of a GitHub REST base: `https://api.github.com/graphql`, or `<host>/api/graphql` for
/// Enterprise Server (whose REST base is `<host>/api/v3`).
pub(crate) fn github_endpoint(rest_base: &str) -> String {
    match rest_base.strip_suffix("/api/v3") {
        Some(host) => format!("{host}/api/graphql"),
        None => format!("{}/graphql", rest_base.trim_end_matches('/')),
    }
}

/// The GraphQL endpoint of a GitLab REST base (`<host>/api/v4` → `<host>/api/graphql`).
pub(crate) fn gitlab_endpoint(rest_base: &str) -> String {
    match rest_base.strip_suffix("/v4") {
        Some(api) => format!("{api}/graphql"),
        None => format!("{}/graphql", rest_base.trim_end_matches('/')),
    }
}

/// POST a query with its variables; the answer's JSON, whatever its `errors` say (partial results are
/// normal: a repository missing from a batch must not hide the others).
async fn run(
    api: &ApiClient,
    url: &str,
    query: String,
    variables: Map<String, Value>,
) -> Result<Value, ApiError> {
    let r = api
        .post_json(url, &json!({ "query": query, "variables": variables }))
        .await?;
    api.check(&r, "the GraphQL API")?;
    serde_json::from_slice(&r.body).map_err(|e| api.malformed(url, format!("not JSON: {e}")))
}

/// GitHub: the heads of `paths` (`owner/name`), `None` where the answer has none (a repository missing or
/// not visible: `null` with a `NOT_FOUND` error at its alias; an empty one: no default branch).
pub(crate) async fn github_heads(
    api: &ApiClient,
    paths: &[String],
) -> Result<Vec<Option<Head>>, ApiError> {
    let url = github_endpoint(&api.base);
    let mut out = Vec::with_capacity(paths.len());
    let mut first_error = None;
    let mut batch = GITHUB_BATCH;
    let mut rest = paths;
    while !rest.is_empty() {
        let chunk = &rest[..batch.min(rest.len())];
        let mut declared = Vec::new();
        let mut fields = String::new();
        let mut variables = Map::new();
        for (i, path) in chunk.iter().enumerate() {
            let (owner, name) = path
                .trim_end_matches(".git")
                .split_once('/')
                .unwrap_or((path, ""));
            declared.push(format!("$o{i}: String!, $n{i}: String!"));
            fields.push_str(&format!(
                " r{i}: repository(owner: $o{i}, name: $n{i}) {{ defaultBranchRef {{ name target {{ oid }} }} }}"
            ));
            variables.insert(format!("o{i}"), owner.into());
            variables.insert(format!("n{i}"), name.into());
        }
        let query = format!(
            "query Heads({}) {{ rateLimit {{ cost remaining }}{fields} }}",
            declared.join(", ")
        );
        let answer = match run(api, &url, query, variables).await {
            Ok(answer) => answer,
            // Requests over 10 s are killed (502/504): try a smaller batch.
            Err(ApiError::Status {
                status: 502 | 504, ..
            }) if chunk.len() > 10 => {
                batch = chunk.len() / 2;
                continue;
            }
            // Anything else (or a small batch still too slow) is the host's, not this batch's: what was
            // asked so far stands, the rest poll over git.
            Err(e) => {
                out.extend(rest.iter().map(|_| None));
                first_error = Some(e);
                break;
            }
        };
        // A smaller batch went through: grow back towards the full size.
        batch = (batch * 2).min(GITHUB_BATCH);
        warn_unanswered(api, &answer);
        out.extend((0..chunk.len()).map(|i| {
            let r = &answer["data"][format!("r{i}")]["defaultBranchRef"];
            Some(Head {
                branch: r["name"].as_str()?.to_string(),
                commit: r["target"]["oid"].as_str()?.to_string(),
            })
        }));
        rest = &rest[chunk.len()..];
    }
    match first_error {
        Some(e) if out.iter().all(Option::is_none) => Err(e),
        Some(e) => {
            tracing::warn!(provider = %api.provider, "part of the GraphQL head check failed (those repositories poll over git): {e}");
            Ok(out)
        }
        None => Ok(out),
    }
}

/// An answer without data (a rate limit, a timeout, a query refused) says so in the log: its repositories
/// poll over git.
fn warn_unanswered(api: &ApiClient, answer: &Value) {
    if answer["data"].is_null() {
        let why = answer["errors"][0]["message"]
            .as_str()
            .unwrap_or("no data and no error");
        tracing::warn!(provider = %api.provider, "the GraphQL head check got no data (those repositories poll over git): {why}");
    }
}

/// GitLab: the heads of `paths` (full paths), `None` where the answer has none (`null` means missing or
/// not visible, which GitLab does not tell apart; an empty repository has no tree). Batches are sized from
/// the `queryComplexity` the server reports, and halved when it still finds one too complex.
pub(crate) async fn gitlab_heads(
    api: &ApiClient,
    paths: &[String],
) -> Result<Vec<Option<Head>>, ApiError> {
    let url = gitlab_endpoint(&api.base);
    let mut out = Vec::with_capacity(paths.len());
    let mut batch = GITLAB_FIRST_BATCH;
    let mut rest = paths;
    let mut shrinks = 0;
    while !rest.is_empty() {
        let chunk = &rest[..batch.min(rest.len())];
        let mut declared = Vec::new();
        let mut fields = String::new();
        let mut variables = Map::new();
        for (i, path) in chunk.iter().enumerate() {
            declared.push(format!("$p{i}: ID!"));
            fields.push_str(&format!(
                " p{i}: project(fullPath: $p{i}) {{ repository {{ rootRef tree(path: \"/\") {{ lastCommit {{ sha }} }} }} }}"
            ));
            variables.insert(format!("p{i}"), path.trim_end_matches(".git").into());
        }
        let query = format!(
            "query Heads({}) {{ queryComplexity {{ score limit }}{fields} }}",
            declared.join(", ")
        );
        let answer = match run(api, &url, query, variables).await {
            Ok(answer) => answer,
            Err(e) if out.is_empty() => return Err(e),
            // What was asked so far stands; the rest poll over git.
            Err(e) => {
                tracing::warn!(provider = %api.provider, "part of the GraphQL head check failed (those repositories poll over git): {e}");
                out.extend(rest.iter().map(|_| None));
                return Ok(out);
            }
        };
        let too_complex = answer["data"].is_null()
            && answer["errors"].as_array().is_some_and(|errors| {
                errors.iter().any(|e| {
                    e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("complexity"))
                })
            });
        if too_complex && chunk.len() > 1 && shrinks < MAX_SHRINKS {
            shrinks += 1;
            batch = (chunk.len() / 2).max(1);
            continue;
        }
        warn_unanswered(api, &answer);
        out.extend((0..chunk.len()).map(|i| {
            let repo = &answer["data"][format!("p{i}")]["repository"];
            Some(Head {
                branch: repo["rootRef"].as_str()?.to_string(),
                commit: repo["tree"]["lastCommit"]["sha"].as_str()?.to_string(),
            })
        }));
        // What one project cost, and so how many fit under the limit next time.
        let complexity = &answer["data"]["queryComplexity"];
        if let Some(score) = complexity["score"].as_f64().filter(|s| *s > 0.0) {
            let limit = complexity["limit"]
                .as_f64()
                .unwrap_or(GITLAB_COMPLEXITY_LIMIT);
            let each = score / chunk.len() as f64;
            batch = (((limit - 1.0) / each).floor() as usize).clamp(1, GITLAB_MAX_BATCH);
        }
        shrinks = 0;
        rest = &rest[chunk.len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host whose every answer is `status`, on 127.0.0.1; counts the requests it answered.
    fn answering(status: u16) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v3", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut seen = Vec::new();
                let mut buf = [0u8; 65536];
                // Read the head, then as much body as it announces.
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = "{\"message\":\"Server Error\"}";
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, count)
    }

    #[tokio::test]
    async fn a_failing_host_costs_a_few_requests_not_one_per_batch() {
        let (url, count) = answering(502);
        let settings = crate::forge::api::ApiSettings {
            provider: "gh",
            kind: crate::forge::ProviderKind::Github,
            api_url: Some(&url),
            username: None,
            connect_timeout: std::time::Duration::from_secs(5),
            read_timeout: std::time::Duration::from_secs(5),
            ca_file: None,
            proxy: None,
        };
        let api = ApiClient::new(&settings, None, crate::forge::api::Limits::new(10_000)).unwrap();
        let paths: Vec<String> = (0..1000).map(|i| format!("acme/r{i}")).collect();
        let result = github_heads(&api, &paths).await;
        assert!(result.is_err(), "nothing answered: an error");
        // 100, 50, 25 and 12 repositories each timed out (502): halved; then 6 failed too, and the rest
        // were not asked.
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 5);
        // Any other failure stops at once.
        let (url, count) = answering(500);
        let settings = crate::forge::api::ApiSettings {
            api_url: Some(&url),
            ..settings
        };
        let api = ApiClient::new(&settings, None, crate::forge::api::Limits::new(10_000)).unwrap();
        assert!(github_heads(&api, &paths).await.is_err());
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn endpoints_follow_the_rest_base() {
        assert_eq!(
            github_endpoint("https://api.github.com"),
            "https://api.github.com/graphql"
        );
        assert_eq!(
            github_endpoint("https://ghe.example.com/api/v3"),
            "https://ghe.example.com/api/graphql"
        );
        assert_eq!(
            gitlab_endpoint("https://gitlab.example.com/api/v4"),
            "https://gitlab.example.com/api/graphql"
        );
    }
}
