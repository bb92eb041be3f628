//! Webhook nudges against a running `modelmirror run`: real fixture payloads from each provider (their
//! repository fields rewritten to point at test repositories), signed the way each provider signs, sent over
//! real HTTP; the database must change within seconds of the push.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::git_http::Auth;
use crate::support::*;

const YEARLY: &str = "0 0 1 1 *";

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let key = openssl::pkey::PKey::hmac(secret.as_bytes()).unwrap();
    let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    s.update(body).unwrap();
    s.sign_to_vec()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fixture(path: &str) -> Value {
    let p = fixtures().join("webhooks").join(path);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn set(v: &mut Value, pointer: &str, value: Value) {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the fixture")) = value;
}

/// One HTTP/1.1 request; returns the status and body.
fn post(port: u16, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the webhook listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Like [`post`], from the loopback address `from` (the listener counts connections per client address),
/// with a read timeout of `secs`.
fn post_from(
    from: &str,
    port: u16,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    secs: u64,
) -> (u16, String) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let Ok(mut s) = crate::http_client::connect_from(from.parse().unwrap(), addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() || s.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// A running daemon with four providers (one per kind), each with one repository holding one model.
struct Hub {
    env: Env,
    port: u16,
    child: Child,
    work: std::collections::HashMap<&'static str, PathBuf>,
}

const REPOS: [(&str, &str); 4] = [
    ("gl", "team/gl.git"),
    ("gh", "acme/gh.git"),
    ("bbc", "ws/bbc.git"),
    ("dc", "scm/PRJ/dc.git"),
];

impl Hub {
    fn start(schedule: &str, extra_top: &str) -> Hub {
        let env = Env::new(Auth::None);
        let mut work = std::collections::HashMap::new();
        for (name, rel) in REPOS {
            let (_, w) = env.new_repo(rel);
            std::fs::copy(
                fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
                w.join("first.hck.json"),
            )
            .unwrap();
            commit_all(&w, "first");
            work.insert(name, w);
        }
        let dir = env.path();
        for (f, v) in [
            ("gl", "gl-secret"),
            ("gh", "gh-secret"),
            ("bbc", "bbc-secret"),
            ("dc-old", "dc-old"),
            ("dc-new", "dc-new"),
        ] {
            std::fs::write(dir.join(format!("{f}.secret")), v).unwrap();
        }
        let port = free_port();
        let secret = |n: &str| {
            dir.join(format!("{n}.secret"))
                .to_string_lossy()
                .into_owned()
        };
        env.write_config(&format!(
            "schedule = {schedule:?}\n{extra_top}\n[webhook]\nlisten = \"127.0.0.1:{port}\"\nmax_body_bytes = 200000\n\
             [providers.gl]\nkind = \"gitlab\"\nurl = {url:?}\nwebhook_secret_file = {:?}\nrepos = [\"team/gl\"]\n\
             [providers.gh]\nkind = \"github\"\nurl = {url:?}\nwebhook_secret_file = {:?}\nrepos = [\"acme/gh\"]\n\
             [providers.bbc]\nkind = \"bitbucket-cloud\"\nurl = {url:?}\nwebhook_secret_file = {:?}\nrepos = [\"ws/bbc\"]\n\
             [providers.dc]\nkind = \"bitbucket-datacenter\"\nurl = {url:?}\nwebhook_secret_file = [{:?}, {:?}]\nrepos = [\"PRJ/dc\"]\n",
            secret("gl"),
            secret("gh"),
            secret("bbc"),
            secret("dc-old"),
            secret("dc-new"),
            url = env.server.url(),
        ));
        let child = bin()
            .args([
                "--config",
                &dir.join("config.toml").to_string_lossy(),
                "run",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let hub = Hub {
            env,
            port,
            child,
            work,
        };
        // Ready: the listener answers and every repository has had its startup poll.
        hub.wait(60, "startup", |h| {
            TcpStream::connect(("127.0.0.1", h.port)).is_ok()
                && h.count("SELECT COUNT(*) FROM models") == 4
        });
        hub
    }

    fn count(&self, sql: &str) -> i64 {
        if !self.env.db_path().exists() {
            return -1;
        }
        self.env.db().query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
    }

    fn models(&self, repo: &str) -> i64 {
        self.count(&format!(
            "SELECT COUNT(*) FROM models WHERE repo_id = '{repo}'"
        ))
    }

    fn polls(&self, repo: &str, trigger: &str) -> i64 {
        self.count(&format!(
            "SELECT COUNT(*) FROM polls WHERE repo_id = '{repo}' AND trigger = '{trigger}'"
        ))
    }

    fn wait(&self, secs: u64, what: &str, cond: impl Fn(&Hub) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not within {secs} s");
    }

    /// Add a second model to a repository and push it.
    fn push_model(&self, name: &str, file: &str) {
        let w = &self.work[name];
        std::fs::copy(
            fixtures().join("models/books/MongoDB__Figure 005 - Single schema.hck.json"),
            w.join(file),
        )
        .unwrap();
        commit_all(w, "another model");
    }

    fn deliveries(&self) -> Vec<Value> {
        self.env
            .run(&["events", "--json", "--limit", "1000"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "delivery")
            .cloned()
            .collect()
    }

    fn stop(self) {
        self.stop_keeping(|_| {});
    }

    /// Stop the daemon, then look at what it left in `env` (before the environment is removed).
    fn stop_keeping(self, then: impl FnOnce(&Env)) {
        let mut me = self;
        signal(&me.child, libc::SIGTERM);
        assert!(wait_with_deadline(&mut me.child, 15).success());
        then(&me.env);
    }
}

impl Drop for Hub {
    /// A failing test must not leave a daemon running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn gitlab_push(reference: &str, path: &str, id: u64) -> Value {
    let mut v = fixture("gitlab/go-scm_push.json");
    set(&mut v, "/ref", json!(reference));
    set(&mut v, "/project/path_with_namespace", json!(path));
    set(&mut v, "/project/id", json!(id));
    set(&mut v, "/project/default_branch", json!("main"));
    v
}

fn github_push(reference: &str, full_name: &str, id: u64) -> Value {
    let mut v = fixture("github/go-scm_push.json");
    set(&mut v, "/ref", json!(reference));
    set(&mut v, "/repository/full_name", json!(full_name));
    set(&mut v, "/repository/id", json!(id));
    v
}

fn bitbucket_cloud_push(branch: &str, full_name: &str) -> Value {
    let mut v = fixture("bitbucket-cloud/go-scm_push.json");
    set(&mut v, "/repository/full_name", json!(full_name));
    set(&mut v, "/push/changes/0/new/name", json!(branch));
    v
}

fn bitbucket_dc_push(reference: &str, key: &str, slug: &str) -> Value {
    let mut v = fixture("bitbucket-dc/go-scm_push.json");
    set(&mut v, "/repository/slug", json!(slug));
    set(&mut v, "/repository/project/key", json!(key));
    set(&mut v, "/changes/0/ref/id", json!(reference));
    set(&mut v, "/changes/0/refId", json!(reference));
    v
}

/// Headers as each provider sends them, signed with `secret`.
fn signed(kind: &str, secret: &str, body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    match kind {
        "gl" => vec![
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", secret.into()),
            ("X-Gitlab-Event-UUID", delivery.into()),
        ],
        "gh" => vec![
            ("X-GitHub-Event", "push".into()),
            ("X-GitHub-Delivery", delivery.into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(secret, body)),
            ),
        ],
        "bbc" => vec![
            ("X-Event-Key", "repo:push".into()),
            ("X-Request-UUID", delivery.into()),
            ("X-Hook-UUID", "hook-1".into()),
            ("User-Agent", "Bitbucket-Webhooks/2.0".into()),
            (
                "X-Hub-Signature",
                format!("sha256={}", hmac_hex(secret, body)),
            ),
        ],
        "dc" => vec![
            ("X-Event-Key", "repo:refs_changed".into()),
            ("X-Request-Id", delivery.into()),
            (
                "X-Hub-Signature",
                format!("sha256={}", hmac_hex(secret, body)),
            ),
        ],
        _ => unreachable!(),
    }
}

fn body_for(kind: &str, reference: &str) -> Vec<u8> {
    let branch = reference
        .trim_start_matches("refs/heads/")
        .trim_start_matches("refs/tags/");
    let v = match kind {
        "gl" => gitlab_push(reference, "team/gl", 4861503),
        "gh" => github_push(reference, "acme/gh", 77),
        "bbc" => bitbucket_cloud_push(branch, "ws/bbc"),
        "dc" => bitbucket_dc_push(reference, "PRJ", "dc"),
        _ => unreachable!(),
    };
    serde_json::to_vec(&v).unwrap()
}

const SECRETS: [(&str, &str); 4] = [
    ("gl", "gl-secret"),
    ("gh", "gh-secret"),
    ("bbc", "bbc-secret"),
    ("dc", "dc-new"),
];

#[test]
fn a_signed_push_from_each_provider_reaches_the_database() {
    let hub = Hub::start(YEARLY, "");
    for (i, (kind, secret)) in SECRETS.iter().enumerate() {
        let repo = match *kind {
            "gl" => "gl/team/gl",
            "gh" => "gh/acme/gh",
            "bbc" => "bbc/ws/bbc",
            _ => "dc/PRJ/dc",
        };
        assert_eq!(hub.models(repo), 1);
        hub.push_model(kind, "second.hck.json");
        let body = body_for(kind, "refs/heads/main");
        let sent = Instant::now();
        let (status, answer) = post(
            hub.port,
            &format!("/hooks/{kind}"),
            &signed(kind, secret, &body, &format!("d-{i}")),
            &body,
        );
        assert_eq!(status, 202, "{kind}: {answer}");
        assert!(
            sent.elapsed() < Duration::from_millis(500),
            "{kind}: the answer took {:?}",
            sent.elapsed()
        );
        hub.wait(10, &format!("{kind}: the pushed model"), |h| {
            h.models(repo) == 2
        });
        assert_eq!(hub.polls(repo, "webhook"), 1, "{kind}");
    }
    // Every delivery is recorded as polled, linked to the poll it caused.
    let deliveries = hub.deliveries();
    assert_eq!(deliveries.len(), 4, "{deliveries:#?}");
    for d in &deliveries {
        assert_eq!(d["outcome"], "polled", "{d}");
        assert_eq!(d["ref"], "refs/heads/main", "{d}");
        assert!(d["poll_id"].is_i64(), "{d}");
    }
    let human = hub.env.run(&["events", "--repo", "gh/acme/gh"]).ok().stdout;
    assert!(
        human.contains("gh push refs/heads/main → polled (poll "),
        "{human}"
    );
    assert!(human.contains("(webhook): updated"), "{human}");
    hub.stop();
}

#[test]
fn bad_or_missing_signatures_are_rejected_and_nothing_is_polled() {
    let hub = Hub::start(YEARLY, "");
    for (kind, _) in SECRETS {
        let body = body_for(kind, "refs/heads/main");
        let (status, answer) = post(
            hub.port,
            &format!("/hooks/{kind}"),
            &signed(kind, "wrong-secret", &body, "x"),
            &body,
        );
        assert_eq!(status, 401, "{kind}: {answer}");
        let unsigned: Vec<(&str, String)> = signed(kind, "unused", &body, "y")
            .into_iter()
            .filter(|(k, _)| !k.contains("Signature") && *k != "X-Gitlab-Token")
            .collect();
        let (status, answer) = post(hub.port, &format!("/hooks/{kind}"), &unsigned, &body);
        assert_eq!(status, 401, "{kind}: {answer}");
        assert!(answer.contains("missing"), "{kind}: {answer}");
    }
    // A body changed after signing.
    let body = body_for("gh", "refs/heads/main");
    let mut headers = signed("gh", "gh-secret", &body, "z");
    headers.retain(|(k, _)| *k != "Content-Length");
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(post(hub.port, "/hooks/gh", &headers, &tampered).0, 401);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM polls WHERE trigger = 'webhook'"),
        0
    );
    hub.wait(5, "rejections recorded", |h| {
        h.count("SELECT COUNT(*) FROM deliveries WHERE outcome = 'rejected'") == 9
    });
    hub.stop();
}

#[test]
fn tags_other_branches_and_pings_are_recorded_but_not_polled() {
    let hub = Hub::start(YEARLY, "");
    let body = body_for("gh", "refs/tags/v1.0");
    assert_eq!(
        post(
            hub.port,
            "/hooks/gh",
            &signed("gh", "gh-secret", &body, "t1"),
            &body
        )
        .0,
        202
    );
    let body = body_for("dc", "refs/heads/feature/x");
    assert_eq!(
        post(
            hub.port,
            "/hooks/dc",
            &signed("dc", "dc-old", &body, "t2"),
            &body
        )
        .0,
        202,
        "the older of two secrets is still valid"
    );
    // A real tag fixture, as GitHub sends it.
    let mut tag = fixture("github/go-scm_push_tag.json");
    set(&mut tag, "/repository/full_name", json!("acme/gh"));
    let body = serde_json::to_vec(&tag).unwrap();
    assert_eq!(
        post(
            hub.port,
            "/hooks/gh",
            &signed("gh", "gh-secret", &body, "t3"),
            &body
        )
        .0,
        202
    );
    // Pings: GitHub's and Bitbucket Data Center's test connection.
    let ping = serde_json::to_vec(&fixture("github/argo-cd_github-ping-event.json")).unwrap();
    let mut headers = signed("gh", "gh-secret", &ping, "p1");
    headers[0] = ("X-GitHub-Event", "ping".into());
    assert_eq!(post(hub.port, "/hooks/gh", &headers, &ping).0, 200);
    let test = br#"{"test": true}"#;
    let mut headers = signed("dc", "dc-new", test, "p2");
    headers[0] = ("X-Event-Key", "diagnostics:ping".into());
    assert_eq!(post(hub.port, "/hooks/dc", &headers, test).0, 200);
    // A push for a repository nobody mirrors.
    let body = serde_json::to_vec(&github_push("refs/heads/main", "someone/else", 999)).unwrap();
    assert_eq!(
        post(
            hub.port,
            "/hooks/gh",
            &signed("gh", "gh-secret", &body, "n1"),
            &body
        )
        .0,
        202
    );
    hub.wait(5, "all recorded", |h| {
        h.count("SELECT COUNT(*) FROM deliveries") == 6
    });
    let d = hub.deliveries();
    let reason = |id: &str| {
        d.iter()
            .find(|x| x["delivery_id"] == id)
            .map(|x| {
                (
                    x["outcome"].as_str().unwrap().to_string(),
                    x["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap()
    };
    assert_eq!(reason("t1").0, "ignored");
    assert!(
        reason("t1")
            .1
            .contains("refs/tags/v1.0, not the default branch main"),
        "{:?}",
        reason("t1")
    );
    assert!(
        reason("t2")
            .1
            .contains("refs/heads/feature/x, not the default branch main"),
        "{:?}",
        reason("t2")
    );
    assert_eq!(reason("t3").0, "ignored");
    assert_eq!(
        reason("p1"),
        (
            "ignored".into(),
            "ping: the webhook reaches modelmirror".into()
        )
    );
    assert_eq!(reason("p2").0, "ignored");
    assert!(
        reason("n1")
            .1
            .contains("no mirrored repository of provider gh matches someone/else"),
        "{:?}",
        reason("n1")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        hub.count("SELECT COUNT(*) FROM polls WHERE trigger = 'webhook'"),
        0
    );
    hub.stop();
}

#[test]
fn replays_floods_oversized_bodies_and_autodetection() {
    let hub = Hub::start(YEARLY, "");
    // A redelivery (same delivery id) is not processed twice.
    hub.push_model("gh", "second.hck.json");
    let body = body_for("gh", "refs/heads/main");
    let headers = signed("gh", "gh-secret", &body, "same-id");
    assert_eq!(post(hub.port, "/hooks/gh", &headers, &body).0, 202);
    let (status, answer) = post(hub.port, "/hooks/gh", &headers, &body);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("duplicate"), "{answer}");
    hub.wait(10, "the push", |h| h.models("gh/acme/gh") == 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hub.polls("gh/acme/gh", "webhook"), 1);

    // 1000 nudges for one repository within about a second (8 senders at once): at most two polls.
    hub.push_model("gl", "second.hck.json");
    let body = body_for("gl", "refs/heads/main");
    let started = Instant::now();
    let accepted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (body, port) = (&body, hub.port);
                s.spawn(move || {
                    let mut ok = 0;
                    for i in 0..125 {
                        let (status, _) = post(
                            port,
                            "/hooks/gl",
                            &signed("gl", "gl-secret", body, &format!("flood-{t}-{i}")),
                            body,
                        );
                        assert!(status == 202 || status == 503, "{status}");
                        ok += usize::from(status == 202);
                    }
                    ok
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let took = started.elapsed();
    assert!(accepted > 0);
    hub.wait(10, "the flood's push", |h| h.models("gl/team/gl") == 2);
    std::thread::sleep(Duration::from_secs(3));
    let polls = hub.polls("gl/team/gl", "webhook");
    assert!(
        (1..=2).contains(&polls),
        "{polls} polls for 1000 nudges sent in {took:?}"
    );

    // Oversized bodies get 413, by Content-Length and by the bytes actually sent.
    let big = vec![b' '; 300_000];
    assert_eq!(
        post(
            hub.port,
            "/hooks/gh",
            &signed("gh", "gh-secret", &big, "big"),
            &big
        )
        .0,
        413
    );

    // POST /hooks finds the provider from the headers.
    hub.push_model("bbc", "second.hck.json");
    let body = body_for("bbc", "refs/heads/main");
    assert_eq!(
        post(
            hub.port,
            "/hooks",
            &signed("bbc", "bbc-secret", &body, "auto-1"),
            &body
        )
        .0,
        202
    );
    hub.wait(10, "the autodetected push", |h| h.models("bbc/ws/bbc") == 2);
    // Health.
    let mut s = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    hub.stop();
}

/// GitLab's Standard Webhooks signature: verified when present, and then never falls back to the token.
#[test]
fn gitlab_standard_webhooks_signature() {
    let hub = Hub::start(YEARLY, "");
    let body = body_for("gl", "refs/heads/main");
    let ts = chrono::Utc::now().timestamp().to_string();
    let sign = |secret: &str| {
        let key = openssl::pkey::PKey::hmac(secret.as_bytes()).unwrap();
        let mut s =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        s.update(format!("msg-1.{ts}.").as_bytes()).unwrap();
        s.update(&body).unwrap();
        format!(
            "v1,{}",
            crate::git_http::base64_encode(&s.sign_to_vec().unwrap())
        )
    };
    let headers = |sig: String, token: &str| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", token.to_string()),
            ("webhook-id", "msg-1".to_string()),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", sig),
        ]
    };
    // A wrong signature is rejected even though X-Gitlab-Token is right.
    assert_eq!(
        post(
            hub.port,
            "/hooks/gl",
            &headers(sign("other"), "gl-secret"),
            &body
        )
        .0,
        401
    );
    assert_eq!(
        post(
            hub.port,
            "/hooks/gl",
            &headers(sign("gl-secret"), "wrong"),
            &body
        )
        .0,
        202
    );
    hub.stop();
}

/// The schedule keeps firing while webhooks flow.
#[test]
fn the_schedule_keeps_polling_while_webhooks_flow() {
    let hub = Hub::start("* * * * * *", "");
    let before = hub.polls("gh/acme/gh", "schedule");
    let body = body_for("gl", "refs/heads/main");
    let until = Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while Instant::now() < until {
        post(
            hub.port,
            "/hooks/gl",
            &signed("gl", "gl-secret", &body, &format!("s-{i}")),
            &body,
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = hub.polls("gh/acme/gh", "schedule");
    assert!(
        after - before >= 3,
        "scheduled polls went on: {before} → {after}"
    );
    assert!(hub.polls("gl/team/gl", "webhook") >= 1);
    hub.stop();
}

#[test]
fn a_provider_without_a_webhook_secret_is_refused_at_start() {
    let env = Env::new(Auth::None);
    env.write_config(&format!(
        "[webhook]\nlisten = \"127.0.0.1:{}\"\n[providers.gh]\nkind = \"github\"\nurl = {:?}\nrepos = [\"a/b\"]\n",
        free_port(),
        env.server.url()
    ));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr
            .contains("no webhook_secret_file or webhook_secret_env")
            && run.stderr.contains("allow_unsigned_webhooks"),
        "{}",
        run.stderr
    );
    let _ = Path::new("");
}

/// A push naming another provider's repository (by clone URL) does not poll it; a provider with a secret
/// and `allow_unsigned_webhooks` is a configuration error.
#[test]
fn matching_stays_within_the_provider_and_unsigned_needs_no_secret() {
    let hub = Hub::start(YEARLY, "");
    // A GitHub push (signed with gh's secret) whose clone URL is the GitLab repository's.
    let mut v = github_push("refs/heads/main", "someone/else", 12345);
    set(
        &mut v,
        "/repository/clone_url",
        json!(format!("{}/team/gl.git", hub.env.server.url())),
    );
    let body = serde_json::to_vec(&v).unwrap();
    assert_eq!(
        post(
            hub.port,
            "/hooks/gh",
            &signed("gh", "gh-secret", &body, "x1"),
            &body
        )
        .0,
        202
    );
    hub.wait(5, "recorded", |h| {
        h.count("SELECT COUNT(*) FROM deliveries WHERE delivery_id = 'x1'") == 1
    });
    let outcome: String = hub
        .env
        .db()
        .query_row(
            "SELECT outcome FROM deliveries WHERE delivery_id = 'x1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outcome, "ignored");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hub.polls("gl/team/gl", "webhook"), 0);
    // Slow bodies are cut off; an unsigned request is refused before its body is read.
    let (status, _) = post(
        hub.port,
        "/hooks/gh",
        &[("X-GitHub-Event", "push".into())],
        b"{}",
    );
    assert_eq!(status, 401);
    hub.stop();
    let env = Env::new(Auth::None);
    std::fs::write(env.path().join("s"), "x").unwrap();
    env.write_config(&format!(
        "[webhook]\nlisten = \"127.0.0.1:{}\"\n[providers.gh]\nkind = \"github\"\nwebhook_secret_file = {:?}\nallow_unsigned_webhooks = true\nrepos = [\"a/b\"]\n",
        free_port(),
        env.path().join("s").to_string_lossy()
    ));
    let run = env.run(&["status"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("sets both a webhook secret and allow_unsigned_webhooks"),
        "{}",
        run.stderr
    );
}

/// Idle connections from `from` while `until` is not set: as many as the listener lets it keep (each one
/// reopened when the listener closes it). Returns how many times the listener closed one.
fn hold_idle_connections(
    from: &str,
    port: u16,
    count: usize,
    until: &std::sync::atomic::AtomicBool,
) -> usize {
    use std::sync::atomic::Ordering;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut open: Vec<TcpStream> = Vec::new();
    let mut closed = 0;
    while !until.load(Ordering::Relaxed) {
        // Drop the connections the listener closed.
        open.retain(|c| {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            match (&*c).read(&mut b) {
                Ok(0) => {
                    closed += 1;
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                _ => {
                    closed += 1;
                    false
                }
            }
        });
        while open.len() < count {
            match crate::http_client::connect_from(from.parse().unwrap(), addr) {
                Ok(c) => open.push(c),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    closed
}

#[test]
fn a_flood_of_idle_connections_starves_no_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let hub = Hub::start(YEARLY, "");
    let body = body_for("gh", "refs/heads/other");
    let stop = AtomicBool::new(false);
    let (answered, sent, closed_one, closed_many) = std::thread::scope(|s| {
        // One address opens 128 connections and sends nothing, again and again.
        let one = s.spawn(|| hold_idle_connections("127.0.0.1", hub.port, 128, &stop));
        std::thread::sleep(Duration::from_secs(1));
        // Signed deliveries from another address meanwhile.
        let mut answered = 0;
        let sent = 30;
        for i in 0..sent {
            let headers = signed("gh", "gh-secret", &body, &format!("flood-ok-{i}"));
            let (status, _) = post_from("127.0.0.2", hub.port, "/hooks/gh", &headers, &body, 5);
            answered += usize::from(status == 202);
            std::thread::sleep(Duration::from_millis(100));
        }
        // Twelve more addresses make the listener busy (over half its slots held): idle connections are
        // closed after a second, and deliveries still get through.
        let many: Vec<_> = (3..15)
            .map(|n| {
                let stop = &stop;
                let port = hub.port;
                s.spawn(move || hold_idle_connections(&format!("127.0.0.{n}"), port, 16, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        for i in 0..sent {
            let headers = signed("gh", "gh-secret", &body, &format!("flood-busy-{i}"));
            let (status, _) = post_from("127.0.0.2", hub.port, "/hooks/gh", &headers, &body, 5);
            answered += usize::from(status == 202);
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        let closed_many: usize = many.into_iter().map(|h| h.join().unwrap()).sum();
        (answered, 2 * sent, one.join().unwrap(), closed_many)
    });
    assert!(
        answered * 100 >= sent * 95,
        "{answered} of {sent} deliveries answered during the flood"
    );
    assert!(
        closed_one > 100,
        "the listener refused the flood's connections beyond its share: {closed_one}"
    );
    assert!(
        closed_many > 0,
        "idle connections were closed while the listener was busy"
    );
    hub.stop();
}

#[test]
fn rejected_deliveries_beyond_the_budget_are_summed_up_not_lost() {
    let hub = Hub::start(YEARLY, "");
    let body = body_for("gh", "refs/heads/main");
    for i in 0..45 {
        let headers = signed("gh", "wrong-secret", &body, &format!("bad-{i}"));
        assert_eq!(post(hub.port, "/hooks/gh", &headers, &body).0, 401);
    }
    hub.wait(10, "30 rejected rows", |h| {
        h.count("SELECT COUNT(*) FROM deliveries WHERE outcome = 'rejected'") == 30
    });
    let env_db = hub.env.db_path();
    // The summary is written when its minute has passed, or when the service stops.
    hub.stop_keeping(|env| {
        let db = env.db_at(&env_db);
        let (n, reason): (i64, String) = db
            .query_row(
                "SELECT COUNT(*), MAX(reason) FROM deliveries WHERE outcome = 'rejected' AND reason LIKE '% more rejected%'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(n, 1, "one summary row");
        assert!(
            reason.starts_with("15 more rejected deliveries from 127.0.0.1 between "),
            "{reason}"
        );
        assert!(reason.ends_with(": X-Hub-Signature-256 does not match any configured webhook secret"), "{reason}");
    });
}

#[test]
fn a_second_signature_header_is_refused_and_hex_case_does_not_matter() {
    let hub = Hub::start(YEARLY, "");
    let body = body_for("gh", "refs/heads/other");
    let good = format!("sha256={}", hmac_hex("gh-secret", &body));
    let mut headers = signed("gh", "gh-secret", &body, "twice-1");
    headers.push(("X-Hub-Signature-256", "sha256=00".into()));
    let (status, answer) = post(hub.port, "/hooks/gh", &headers, &body);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("given more than once"), "{answer}");
    // The same signature twice is refused too: one header, one signature.
    let mut headers = signed("gh", "gh-secret", &body, "twice-2");
    headers.push(("X-Hub-Signature-256", good.clone()));
    assert_eq!(post(hub.port, "/hooks/gh", &headers, &body).0, 400);
    // Hex digits are case-insensitive: an upper-case signature is the same signature.
    let mut headers = signed("gh", "gh-secret", &body, "upper");
    headers.retain(|(k, _)| *k != "X-Hub-Signature-256");
    headers.push((
        "X-Hub-Signature-256",
        format!("sha256={}", hmac_hex("gh-secret", &body).to_uppercase()),
    ));
    assert_eq!(post(hub.port, "/hooks/gh", &headers, &body).0, 202);
    hub.stop();
}

/// The instance a repository is polled by among `live`: rendezvous hashing as the service does it (FNV-1a
/// of repository and instance, each followed by a zero byte, then MurmurHash3's finaliser).
fn prefers<'a>(repo: &str, live: &[&'a str]) -> &'a str {
    let hash = |name: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in repo.bytes().chain([0]).chain(name.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    };
    live.iter().copied().max_by_key(|n| hash(n)).unwrap()
}

/// Two instances on one PostgreSQL database, each with its own webhook listener: a push delivered to A for a
/// repository B polls is passed on (`LISTEN/NOTIFY`) and polled by B; the same delivery sent to B as well is
/// recorded as a replay, not polled again.
#[test]
fn a_webhook_to_one_instance_is_polled_by_the_instance_that_holds_the_repository() {
    let env = Env::on(Engine::Postgres, Auth::None);
    let pg = env.pg.as_ref().unwrap();
    let works: Vec<PathBuf> = (0..6)
        .map(|i| {
            let (_, w) = env.new_repo(&format!("acme/r{i}.git"));
            std::fs::copy(
                fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
                w.join("first.hck.json"),
            )
            .unwrap();
            commit_all(&w, "first");
            w
        })
        .collect();
    std::fs::write(env.path().join("gh.secret"), "gh-secret").unwrap();
    let ports = [free_port(), free_port()];
    let repos = (0..6)
        .map(|i| format!("\"acme/r{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut children = Vec::new();
    for (name, port) in ["a", "b"].into_iter().zip(ports) {
        let config = env.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\ndatabase = {:?}\ndatabase_password_env = \"MODELMIRROR_TEST_PG_PASSWORD\"\n\
                 instance_name = {name:?}\nschedule = {YEARLY:?}\n[webhook]\nlisten = \"127.0.0.1:{port}\"\n\
                 [providers.gh]\nkind = \"github\"\nurl = {:?}\nwebhook_secret_file = {:?}\nrepos = [{repos}]\n",
                env.path().join(format!("state-{name}")),
                pg.url,
                env.server.url(),
                env.path().join("gh.secret"),
            ),
        )
        .unwrap();
        children.push(Running(
            bin()
                .args(["--config", &config.to_string_lossy(), "run"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    let count = |sql: &str| {
        pg.client()
            .query_one(sql, &[])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("SELECT COUNT(*) FROM models") != 6 || count("SELECT COUNT(*) FROM instances") != 2
    {
        assert!(Instant::now() < deadline, "the two instances did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each sees the other after its next heartbeat (every 10 s).
    std::thread::sleep(Duration::from_secs(11));
    let target = (0..6)
        .find(|i| prefers(&format!("gh/acme/r{i}"), &["a", "b"]) == "b")
        .expect("b prefers one of six repositories");
    let repo = format!("gh/acme/r{target}");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 005 - Single schema.hck.json"),
        works[target].join("second.hck.json"),
    )
    .unwrap();
    commit_all(&works[target], "another model");
    let body = serde_json::to_vec(&github_push(
        "refs/heads/main",
        &format!("acme/r{target}"),
        9000 + target as u64,
    ))
    .unwrap();
    let headers = signed("gh", "gh-secret", &body, "cross-1");
    let (status, answer) = post(ports[0], "/hooks/gh", &headers, &body);
    assert_eq!(status, 202, "{answer}");
    let models = format!("SELECT COUNT(*) FROM models WHERE repo_id = '{repo}'");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&models) != 2 {
        assert!(Instant::now() < deadline, "the pushed model did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Who ran the repository's last updating poll, and why.
    let last_poll = || -> (String, String) {
        let r = pg
            .client()
            .query_one(
                "SELECT instance, trigger FROM polls WHERE repo_id = $1 AND result = 'updated' ORDER BY id DESC LIMIT 1",
                &[&repo],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        last_poll(),
        ("b".to_string(), "webhook".to_string()),
        "the delivery to a was polled by the instance holding {repo}"
    );
    // The same delivery to b: a replay another instance received.
    let (status, answer) = post(ports[1], "/hooks/gh", &headers, &body);
    assert_eq!(status, 202, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count("SELECT COUNT(*) FROM deliveries WHERE delivery_id = 'cross-1'") != 2 {
        assert!(
            Instant::now() < deadline,
            "the second delivery was not recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcomes: Vec<(String, String)> = pg
        .client()
        .query(
            "SELECT outcome, reason FROM deliveries WHERE delivery_id = 'cross-1' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(outcomes[0].0, "polled", "{outcomes:?}");
    assert!(
        outcomes[0].1.contains("passed on to instance b"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1].0, "ignored", "{outcomes:?}");
    assert!(outcomes[1].1.contains("another instance"), "{outcomes:?}");
    assert_eq!(count(&models), 2);

    // A nudge passed on while b's listener is away (its connection cut, no new connection allowed) is heard
    // by nobody; once b listens again, it polls every repository it prefers, that one among them.
    let mut inside = pg.client();
    let db: String = inside
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    let (server, password) = crate::pg::server();
    let mut admin = crate::pg::client(&server, &password);
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .unwrap();
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND query LIKE 'LISTEN%'",
            &[&db],
        )
        .unwrap()
        .len();
    assert_eq!(cut, 2, "the two instances' listeners");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 020 - Alternate key on Pet Name.hck.json"),
        works[target].join("third.hck.json"),
    )
    .unwrap();
    commit_all(&works[target], "a third model");
    let headers = signed("gh", "gh-secret", &body, "cross-2");
    let (status, answer) = post(ports[0], "/hooks/gh", &headers, &body);
    assert_eq!(status, 202, "{answer}");
    let mut one = |sql: &str| -> i64 { inside.query_one(sql, &[]).unwrap().get(0) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while one(
        "SELECT COUNT(*) FROM deliveries WHERE delivery_id = 'cross-2' AND reason LIKE '%passed on to instance b%'",
    ) != 1
    {
        assert!(
            Instant::now() < deadline,
            "the third delivery was not passed on: {:?}",
            inside
                .query("SELECT delivery_id, outcome, reason FROM deliveries", &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect::<Vec<(Option<String>, String, Option<String>)>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(one(&models), 2, "b heard a nudge while not listening");
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&models) != 3 {
        assert!(
            Instant::now() < deadline,
            "b did not poll its repositories once it listened again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last_poll(), ("b".to_string(), "takeover".to_string()));
    drop(children);
}
