//! Webhook to database: 100 pushes, each announced by a signed GitHub `push` webhook (the real fixture payload
//! from `../shared/fixtures/webhooks/github`, pointed at the test repository) sent over HTTP to a running
//! `modelmirror run` whose schedule is yearly; latency from the end of the push to the moment the database has
//! committed the new commit (observed by polling the database every millisecond). Run with
//! `cargo bench --bench webhook_latency`.

#[path = "../tests/common/git_http.rs"]
mod git_http;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use git_http::{Auth, GitHttpServer};
use support::{env_or, fixtures, git, start_daemon, verdict};

const SECRET: &str = "bench-secret";

fn hmac_hex(body: &[u8]) -> String {
    let key = openssl::pkey::PKey::hmac(SECRET.as_bytes()).expect("key");
    let mut s =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).expect("signer");
    s.update(body).expect("update");
    s.sign_to_vec()
        .expect("sign")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn post(port: u16, body: &[u8], delivery: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!(
        "POST /hooks/gh HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         X-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: sha256={}\r\nConnection: close\r\n\r\n",
        body.len(),
        hmac_hex(body)
    );
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let pushes = env_or("PUSHES", 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let bare = root.join("srv/acme/gh.git");
    std::fs::create_dir_all(&bare).expect("mkdir");
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = root.join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["remote", "add", "origin", &bare.to_string_lossy()]);
    let fixtures = fixtures();
    let model = std::fs::read_to_string(
        fixtures.join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
    )
    .expect("fixture model");
    std::fs::write(work.join("m.hck.json"), &model).expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    let server = GitHttpServer::start(&root.join("srv"), Auth::None);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    std::fs::write(root.join("gh.secret"), SECRET).expect("secret");
    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nlog_level = \"warn\"\nschedule = \"0 0 1 1 *\"\n[webhook]\nlisten = \"127.0.0.1:{port}\"\n\
             [providers.gh]\nkind = \"github\"\nurl = {:?}\nwebhook_secret_file = {:?}\nrepos = [\"acme/gh\"]\n",
            root.join("state"),
            server.url(),
            root.join("gh.secret")
        ),
    )
    .expect("config");
    let mut daemon = start_daemon(&config);
    let db_path = root.join("state/modelmirror.db");
    let processed = |db: &rusqlite::Connection| -> Option<String> {
        db.query_row(
            "SELECT commit_id FROM repos WHERE id = 'gh/acme/gh'",
            [],
            |r| r.get(0),
        )
        .ok()
        .flatten()
    };
    let first = git(&work, &["rev-parse", "HEAD"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let db = loop {
        if let Ok(db) = rusqlite::Connection::open(&db_path)
            && processed(&db).as_deref() == Some(first.as_str())
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            break db;
        }
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut payload: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures.join("webhooks/github/go-scm_push.json")).expect("payload"),
    )
    .expect("json");
    payload["ref"] = "refs/heads/main".into();
    payload["repository"]["full_name"] = "acme/gh".into();
    let mut latencies = Vec::new();
    for i in 0..pushes {
        std::fs::write(
            work.join("m.hck.json"),
            model.replacen(
                "\"modelName\": \"",
                &format!("\"modelName\": \"push {i} "),
                1,
            ),
        )
        .expect("write");
        git(&work, &["commit", "-q", "-am", &format!("push {i}")]);
        git(&work, &["push", "-q", "origin", "HEAD:main"]);
        let head = git(&work, &["rev-parse", "HEAD"]);
        let pushed = Instant::now();
        payload["after"] = head.clone().into();
        let body = serde_json::to_vec(&payload).expect("json");
        let status = post(port, &body, &format!("bench-{i}"));
        assert!((200..300).contains(&status), "webhook answered {status}");
        loop {
            if processed(&db).as_deref() == Some(head.as_str()) {
                latencies.push(pushed.elapsed());
                break;
            }
            assert!(
                pushed.elapsed() < Duration::from_secs(30),
                "push {i} never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let _ = daemon.wait();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| benchmark | median | 99th percentile | max | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| push → signed GitHub webhook → committed in the database, {pushes} pushes | {:.1} ms | {:.1} ms | {:.1} ms | median < 250 ms, p99 < 1 s: {} |",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        verdict(
            ms(percentile(&latencies, 0.5)) < 250.0 && ms(percentile(&latencies, 0.99)) < 1000.0
        )
    );
}
