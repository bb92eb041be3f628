//! Commit statuses (`commit_status = true`): after a poll, one status on the new head of each host's fake
//! REST API (shaped as `shared/docs/providers-status-graphql.md` part D documents), with git over the real
//! smart-HTTP server. Success and failure texts, a 429 then success, a server error retried, a token that
//! may not write statuses, GitLab's refusal of a repeated state, `check`, and the service's own polls.

use std::path::PathBuf;

use serde_json::Value;

use crate::forges::{FakeRepo, Forge, Kind};
use crate::git_http::Auth;
use crate::support::*;

const TOKEN: &str = "status-tok-5b1e9c0d7a";
const PUBLIC_URL: &str = "https://models.example.com";

/// One host: its fake API and git, a repository with one model, and a configuration posting statuses.
struct Host {
    env: Env,
    forge: Forge,
    /// The path of the repository on the host.
    path: &'static str,
    /// A working clone to push commits from.
    work: PathBuf,
    /// The web catalog's port.
    port: u16,
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Gitlab => "gitlab",
        Kind::Github => "github",
        Kind::BitbucketCloud => "bitbucket-cloud",
        Kind::BitbucketDatacenter => "bitbucket-datacenter",
    }
}

const KINDS: [Kind; 4] = [
    Kind::Gitlab,
    Kind::Github,
    Kind::BitbucketCloud,
    Kind::BitbucketDatacenter,
];

impl Host {
    fn new(kind: Kind) -> Host {
        Host::listening(kind, 0)
    }

    /// A host whose configuration has the web catalog listen on `port` (0: any).
    fn listening(kind: Kind, port: u16) -> Host {
        let env = Env::new(Auth::None);
        let root = env.path().join("forge");
        std::fs::create_dir_all(&root).unwrap();
        let path = match kind {
            Kind::Gitlab => "team/sub/models",
            Kind::Github => "acme/models",
            Kind::BitbucketCloud => "acme/models",
            Kind::BitbucketDatacenter => "PRJ/models",
        };
        let forge = Forge::start(
            kind,
            &root,
            Auth::None,
            TOKEN,
            vec![FakeRepo::new(path, 4242)],
        );
        let bare = forge.git_dir(path);
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work = env.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()]);
        std::fs::copy(small_model(), work.join("m.hck.json")).unwrap();
        commit_all(&work, "a model");
        std::fs::write(env.path().join("token"), TOKEN).unwrap();
        let host = Host {
            env,
            forge,
            path,
            work,
            port,
        };
        host.configure("");
        host
    }

    /// The configuration, with `top` lines at its top level.
    fn configure(&self, top: &str) {
        self.env.write_config(&format!(
            "schedule = \"* * * * * *\"\n{top}\n[web]\nlisten = \"127.0.0.1:{}\"\npublic_url = \"{PUBLIC_URL}\"\n\
             [providers.p]\nkind = {:?}\nurl = {:?}\ntoken_file = {:?}\nrepos = [{:?}]\ncommit_status = true\n",
            self.port,
            kind_name(self.forge.kind()),
            self.forge.url(),
            self.env.path().join("token").to_string_lossy(),
            self.path,
        ));
    }

    fn repo_id(&self) -> String {
        format!("p/{}", self.path)
    }

    fn sync(&self) -> Run {
        self.env.run(&["sync"])
    }

    /// The status events, oldest first.
    fn status_events(&self) -> Vec<Value> {
        let mut rows: Vec<Value> = self
            .env
            .run(&["events", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "status")
            .cloned()
            .collect();
        rows.reverse();
        rows
    }

    fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// The status POSTs the API received.
    fn status_posts(&self) -> usize {
        self.forge
            .api_requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }
}

/// The state a host's status body says, in modelmirror's words.
fn posted_state(kind: Kind, body: &Value) -> &'static str {
    let s = body["state"].as_str().unwrap_or("");
    match (kind, s) {
        (Kind::Gitlab, "success") | (Kind::Github, "success") => "success",
        (Kind::Gitlab, "failed") | (Kind::Github, "failure") => "failure",
        (Kind::BitbucketCloud | Kind::BitbucketDatacenter, "SUCCESSFUL") => "success",
        (Kind::BitbucketCloud | Kind::BitbucketDatacenter, "FAILED") => "failure",
        other => panic!("unexpected state {other:?}"),
    }
}

/// The link a host's status body carries, and its name.
fn link_and_name(kind: Kind, body: &Value) -> (String, String) {
    let (link, name) = match kind {
        Kind::Gitlab => ("target_url", "name"),
        Kind::Github => ("target_url", "context"),
        Kind::BitbucketCloud | Kind::BitbucketDatacenter => ("url", "key"),
    };
    (
        body[link].as_str().unwrap_or("").to_string(),
        body[name].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn each_host_gets_success_then_failure_with_the_parse_error() {
    for kind in KINDS {
        let h = Host::new(kind);
        h.sync().ok();
        let first = h.head();
        let models = h
            .env
            .run(&["models", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(models.len(), 1, "{kind:?}");
        let entities = models[0]["entities"].as_i64().unwrap();
        let posted = h.forge.statuses();
        assert_eq!(posted.len(), 1, "{kind:?}: one status after the first poll");
        assert_eq!(posted[0].sha, first, "{kind:?}");
        assert_eq!(posted_state(kind, &posted[0].body), "success", "{kind:?}");
        assert_eq!(
            posted[0].body["description"],
            format!("1 model, {entities} entities"),
            "{kind:?}"
        );
        let (link, name) = link_and_name(kind, &posted[0].body);
        assert_eq!(name, "modelmirror", "{kind:?}");
        let repo_q = h.repo_id().replace('/', "%2F");
        assert_eq!(
            link,
            format!("{PUBLIC_URL}/models?repo={repo_q}&commit={first}"),
            "{kind:?}"
        );
        match kind {
            Kind::Gitlab => assert_eq!(posted[0].body["ref"], "main"),
            Kind::BitbucketCloud => assert_eq!(posted[0].body["refname"], "main"),
            Kind::BitbucketDatacenter => assert_eq!(posted[0].body["ref"], "refs/heads/main"),
            Kind::Github => {}
        }

        // Two commits at once, the second one breaking a model: one status, on the new head only.
        std::fs::write(h.work.join("other.txt"), "not a model").unwrap();
        commit_all(&h.work, "no model change");
        std::fs::write(
            h.work.join("broken.hck.json"),
            "{\n  \"modelName\": \"Broken\",\n  \"collections\": [\n    {\"GUID\": 1,,}\n  ]\n}\n",
        )
        .unwrap();
        commit_all(&h.work, "a broken model");
        h.sync().ok();
        let posted = h.forge.statuses();
        assert_eq!(
            posted.len(),
            2,
            "{kind:?}: backfilled commits get no status"
        );
        assert_eq!(posted[1].sha, h.head(), "{kind:?}");
        assert_eq!(posted_state(kind, &posted[1].body), "failure", "{kind:?}");
        let text = posted[1].body["description"].as_str().unwrap();
        assert!(
            text.starts_with("1 of 2 models failed to parse: broken.hck.json line 4, column "),
            "{kind:?}: {text}"
        );
        if kind == Kind::Github {
            assert!(text.chars().count() <= 140, "{text}");
        }

        let events = h.status_events();
        assert_eq!(events.len(), 2, "{kind:?}: {events:?}");
        assert_eq!(events[0]["outcome"], "posted");
        assert_eq!(events[0]["state"], "success");
        assert_eq!(events[0]["commit"], first.as_str());
        assert_eq!(events[1]["state"], "failure");
        assert_eq!(events[1]["attempts"], 1);
        assert!(events[1]["error"].is_null());
        let text = h.env.run(&["events"]).ok().stdout;
        assert!(text.contains("status failure on"), "{text}");
        // The API's events are these rows: the OpenAPI document describes them.
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("src/service/web/openapi.json"),
            )
            .unwrap(),
        )
        .unwrap();
        for e in &events {
            crate::web::validate(&doc, &doc["components"]["schemas"]["EventRow"], e, "$")
                .unwrap_or_else(|err| panic!("a status event does not match openapi.json: {err}"));
        }

        // The token is in no answer, no file and no body sent.
        let bodies: Vec<String> = posted.iter().map(|p| p.body.to_string()).collect();
        let events_json = h.env.run(&["events", "--json"]).ok().stdout;
        let mut texts: Vec<&str> = bodies.iter().map(String::as_str).collect();
        texts.push(&events_json);
        let hits = find_secret(&h.env.path().join("state"), TOKEN, &texts);
        assert!(hits.is_empty(), "{kind:?}: the token leaked into {hits:?}");
    }
}

#[test]
fn a_429_is_waited_out_and_a_server_error_is_tried_again() {
    for kind in KINDS {
        let h = Host::new(kind);
        h.forge.rate_limit_next(1, 429, Some(1));
        h.sync().ok();
        assert_eq!(
            h.forge.statuses().len(),
            1,
            "{kind:?}: posted after the 429"
        );
        assert_eq!(h.status_posts(), 2, "{kind:?}: the 429 and the post");
        let events = h.status_events();
        assert_eq!(events[0]["outcome"], "posted", "{kind:?}");
    }
    // A server error is not the end: the post is sent again after a short back-off.
    let h = Host::new(Kind::Github);
    h.forge.fail_statuses_next(&[(502, "Bad Gateway")]);
    h.sync().ok();
    assert_eq!(h.forge.statuses().len(), 1);
    let events = h.status_events();
    assert_eq!(events[0]["outcome"], "posted");
    assert_eq!(events[0]["attempts"], 2);
}

#[test]
fn a_token_that_may_not_write_statuses_says_what_to_fix_and_the_poll_goes_on() {
    for (kind, fix) in [
        (Kind::Gitlab, "the api scope"),
        (Kind::Github, "repo:status"),
        (Kind::BitbucketCloud, "repository (read) scope"),
        (Kind::BitbucketDatacenter, "Repository read"),
    ] {
        let h = Host::new(kind);
        h.forge.set_status_write(false);
        let run = h.sync().ok();
        assert!(run.stdout.contains("updated"), "{kind:?}: {}", run.stdout);
        assert_eq!(h.forge.statuses().len(), 0);
        let events = h.status_events();
        assert_eq!(events.len(), 1, "{kind:?}");
        assert_eq!(events[0]["outcome"], "failed", "{kind:?}");
        assert_eq!(events[0]["attempts"], 1, "{kind:?}: not retried");
        let error = events[0]["error"].as_str().unwrap();
        assert!(error.contains(fix), "{kind:?}: {error}");
        assert!(error.contains("provider p"), "{kind:?}: {error}");
        // The catalog is complete all the same.
        let status = h.env.run(&["status", "--json"]).ok().json();
        assert_eq!(status[0]["models"], 1, "{kind:?}");
        assert!(status[0]["last_error"].is_null(), "{kind:?}: {status}");
    }
}

#[test]
fn a_reread_head_is_posted_again_and_gitlab_refusing_a_repeat_is_done_not_failed() {
    let h = Host::new(Kind::Gitlab);
    h.sync().ok();
    // Changed settings make the next poll read the same head again, and post its status again: a
    // finished status of the same name is replaced (a new job on GitLab).
    h.configure("max_model_bytes = 10000000");
    h.sync().ok();
    assert_eq!(h.forge.statuses().len(), 2);
    // GitLab refuses to move a status to the state it has while it is pending or running: that is done.
    h.forge
        .fail_statuses_next(&[(400, "Cannot transition status via :run from :running")]);
    h.configure("max_model_bytes = 20000000");
    h.sync().ok();
    let events = h.status_events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["outcome"], "posted");
    assert_eq!(events[2]["outcome"], "unchanged");
    assert_eq!(events[2]["attempts"], 1);
    assert!(events[2]["error"].is_null());
    // Any other 400 is a failure, not retried, with the host's words.
    h.forge.fail_statuses_next(&[(400, "ref is missing")]);
    h.configure("max_model_bytes = 30000000");
    h.sync().ok();
    let events = h.status_events();
    assert_eq!(events[3]["outcome"], "failed");
    assert!(
        events[3]["error"]
            .as_str()
            .unwrap()
            .contains("ref is missing"),
        "{}",
        events[3]
    );
}

#[test]
fn check_says_whether_the_token_may_post_statuses() {
    let statuses_row = |h: &Host| -> (i32, Value) {
        let run = h.env.run(&["check", "--json"]);
        let code = run.code;
        let rows = run.json();
        let row = rows["results"]
            .as_array()
            .or(rows.as_array())
            .unwrap()
            .iter()
            .find(|r| r["check"] == "statuses" || r["category"] == "statuses")
            .cloned()
            .unwrap_or_else(|| panic!("no statuses row: {rows}"));
        (code, row)
    };
    let h = Host::new(Kind::Gitlab);
    let (code, row) = statuses_row(&h);
    assert_ne!(code, 0, "{row}");
    assert_eq!(row["status"], "error", "{row}");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .contains("needs the api scope"),
        "{row}"
    );
    h.forge
        .set_gitlab_scopes(vec!["api".into(), "read_repository".into()]);
    assert_eq!(statuses_row(&h).1["status"], "ok");

    let h = Host::new(Kind::Github);
    assert_eq!(statuses_row(&h).1["status"], "ok", "repo scope");
    h.forge.set_github_scopes(Some("read:org"));
    let (_, row) = statuses_row(&h);
    assert_eq!(row["status"], "error", "{row}");
    assert!(
        row["message"].as_str().unwrap().contains("repo:status"),
        "{row}"
    );
    h.forge.set_github_scopes(None);
    let (_, row) = statuses_row(&h);
    assert_eq!(row["status"], "warning", "{row}");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .contains("Commit statuses: write")
    );

    for kind in [Kind::BitbucketCloud, Kind::BitbucketDatacenter] {
        let h = Host::new(kind);
        assert_eq!(statuses_row(&h).1["status"], "warning", "{kind:?}");
    }
}

#[test]
fn the_service_posts_after_each_poll_that_moves_the_head() {
    let port = free_port();
    let h = Host::listening(Kind::Github, port);
    let mut child = bin()
        .args([
            "--config",
            &h.env.path().join("config.toml").to_string_lossy(),
            "run",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = h.head();
    wait_for("the first status", 30, || !h.forge.statuses().is_empty());
    std::fs::write(
        h.work.join("two.hck.json"),
        std::fs::read(small_model()).unwrap(),
    )
    .unwrap();
    let second = commit_all(&h.work, "a second model");
    wait_for("the second status", 30, || h.forge.statuses().len() >= 2);
    // Polls that find nothing new post nothing.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let posted = h.forge.statuses();
    assert_eq!(posted.len(), 2);
    assert_eq!(posted[0].sha, first);
    assert_eq!(posted[1].sha, second);
    assert_eq!(
        posted[1].body["description"]
            .as_str()
            .unwrap()
            .split(',')
            .next(),
        Some("2 models")
    );
    // The statuses' links answer, and say whether their commit is still the newest.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for (p, newest) in [(&posted[0], false), (&posted[1], true)] {
        let link = p.body["target_url"].as_str().unwrap();
        let path = link.strip_prefix(PUBLIC_URL).unwrap();
        let page = crate::http_client::get(addr, path, &[]);
        assert_eq!(page.status, 200, "{link}");
        let html = String::from_utf8_lossy(&page.body).to_string();
        assert!(html.contains(&second[..12]), "{html}");
        assert_eq!(
            html.contains("the newest the catalog has read"),
            newest,
            "{html}"
        );
        assert_eq!(
            html.contains("has read a newer one since"),
            !newest,
            "{html}"
        );
    }
    signal(&child, libc::SIGTERM);
    wait_with_deadline(&mut child, 20);
    assert_eq!(h.status_events().len(), 2);
}

#[test]
fn a_status_still_waiting_when_the_service_stops_is_recorded_as_not_posted() {
    let h = Host::new(Kind::Gitlab);
    // Two server errors: the post waits 2 s, then 10 s, to try again.
    h.forge
        .fail_statuses_next(&[(503, "Service Unavailable"), (503, "Service Unavailable")]);
    let mut child = bin()
        .args([
            "--config",
            &h.env.path().join("config.toml").to_string_lossy(),
            "run",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("two attempts", 30, || h.status_posts() >= 2);
    signal(&child, libc::SIGTERM);
    let exit = wait_with_deadline(&mut child, 20);
    assert!(exit.success(), "{exit:?}");
    let events = h.status_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"], "failed");
    assert_eq!(events[0]["attempts"], 2);
    let error = events[0]["error"].as_str().unwrap();
    assert!(
        error.contains("modelmirror stopped before the host answered"),
        "{error}"
    );
    assert!(error.contains("503"), "{error}");
    assert!(h.forge.statuses().is_empty());
}
