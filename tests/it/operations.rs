//! Operations: `modelmirror run` as a real process with real signals, its systemd notifications captured on a
//! real unix datagram socket passed as `NOTIFY_SOCKET`, configuration reloads (SIGHUP, and files replaced the
//! way editors do), SIGTERM in the middle of a slow fetch, metrics scraped over HTTP, logs, and the unit's
//! security score.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::git_http::Auth;
use crate::support::*;

fn config(env: &Env, repos: &[&str], extra: &str) {
    let list: Vec<String> = repos.iter().map(|r| format!("{r:?}")).collect();
    env.write_config(&format!(
        "schedule = \"* * * * * *\"\n{extra}\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [{}]\n",
        env.server.url(),
        list.join(", ")
    ));
}

fn start(env: &Env, extra_env: &[(&str, &str)]) -> Running {
    let mut cmd = bin();
    cmd.args([
        "--config",
        &env.path().join("config.toml").to_string_lossy(),
        "run",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Running(cmd.spawn().unwrap())
}

fn models(env: &Env, repo: &str) -> i64 {
    if !env.db_path().exists() {
        return -1;
    }
    env.db()
        .query_row(
            "SELECT COUNT(*) FROM models WHERE repo_id = ?1",
            [repo],
            |r| r.get(0),
        )
        .unwrap_or(-1)
}

fn polls(env: &Env, repo: &str) -> i64 {
    env.db()
        .query_row(
            "SELECT COUNT(*) FROM polls WHERE repo_id = ?1",
            [repo],
            |r| r.get(0),
        )
        .unwrap_or(-1)
}

/// Every datagram received so far.
fn drain(sock: &UnixDatagram, into: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

#[test]
fn systemd_notifications_reload_and_stop() {
    let env = Env::new(Auth::None);
    env.one_model_repo("t/a.git");
    env.one_model_repo("t/b.git");
    config(&env, &["t/a.git"], "");
    let sock_path = env.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut child = start(
        &env,
        &[
            ("NOTIFY_SOCKET", &sock_path.to_string_lossy()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut msgs = Vec::new();
    wait_for("READY=1", 15, || {
        drain(&sock, &mut msgs);
        msgs.iter().any(|m| m.starts_with("READY=1"))
    });
    wait_for("watchdog pings", 10, || {
        drain(&sock, &mut msgs);
        msgs.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
    });
    wait_for("the first repository", 10, || models(&env, "g/t/a") == 1);
    wait_for("a STATUS line with the repository", 10, || {
        drain(&sock, &mut msgs);
        msgs.iter().any(|m| m.contains("STATUS=1 repos, 0 failing"))
    });

    // SIGHUP with a valid configuration that adds a repository: RELOADING, then READY; b is polled.
    config(&env, &["t/a.git", "t/b.git"], "");
    msgs.clear();
    signal(&child, libc::SIGHUP);
    wait_for("the added repository", 15, || models(&env, "g/t/b") == 1);
    drain(&sock, &mut msgs);
    let reloading = msgs
        .iter()
        .position(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC="));
    let ready = msgs.iter().rposition(|m| m.starts_with("READY=1"));
    assert!(
        matches!((reloading, ready), (Some(r), Some(d)) if r < d),
        "{msgs:?}"
    );

    // SIGHUP with a broken configuration: rejected, the running one stays, status says so.
    std::fs::write(
        env.path().join("config.toml"),
        "schedule = \"not a schedule\"\n",
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    wait_for("the rejected reload in status", 10, || {
        env.run(&[
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "events",
        ])
        .code
            >= 0
            && env
                .db()
                .query_row(
                    "SELECT value FROM service WHERE key = 'last_reload_error'",
                    [],
                    |r| r.get::<_, Option<String>>(0),
                )
                .ok()
                .flatten()
                .is_some()
    });
    let before = polls(&env, "g/t/a");
    wait_for("polls go on with the old configuration", 10, || {
        polls(&env, "g/t/a") >= before + 2
    });
    config(&env, &["t/a.git", "t/b.git"], "");
    let status = env.run(&["status"]).ok().stdout;
    assert!(
        status.contains("REJECTED (the previous configuration still runs)")
            && status.contains("schedule"),
        "{status}"
    );

    // SIGTERM: STOPPING, exit 0. (What queued up so far is read first, as systemd would have: the daemon
    // drops notifications rather than block on a full socket queue.)
    drain(&sock, &mut msgs);
    msgs.clear();
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
    drain(&sock, &mut msgs);
    assert!(msgs.iter().any(|m| m == "STOPPING=1"), "{msgs:?}");
}

/// Editors write a new file and rename it over the old one: the watcher sees it and reloads, without any
/// signal. A repository dropped from the configuration stops being polled and keeps its data.
#[test]
fn configuration_files_replaced_like_editors_do_are_reloaded() {
    let env = Env::new(Auth::None);
    env.one_model_repo("t/a.git");
    env.one_model_repo("t/c.git");
    config(&env, &["t/a.git"], "");
    std::fs::create_dir_all(env.path().join("conf.d")).unwrap();
    let mut child = start(&env, &[]);
    wait_for("the first repository", 15, || models(&env, "g/t/a") == 1);
    // A provider file appears in conf.d, written to a temporary name and renamed.
    let tmp = env.path().join("conf.d/.extra.toml.swp");
    std::fs::write(
        &tmp,
        format!(
            "[providers.h]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/c.git\"]\n",
            env.server.url()
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, env.path().join("conf.d/extra.toml")).unwrap();
    wait_for("the repository of the new file", 15, || {
        models(&env, "h/t/c") == 1
    });
    // The main file replaced without g's repository.
    let tmp = env.path().join("config.toml.new");
    std::fs::write(&tmp, "schedule = \"* * * * * *\"\n").unwrap();
    std::fs::rename(&tmp, env.path().join("config.toml")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let n = polls(&env, "g/t/a");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        polls(&env, "g/t/a") <= n + 1,
        "a removed repository is no longer polled"
    );
    assert_eq!(models(&env, "g/t/a"), 1, "its data is kept");
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
}

/// SIGTERM while a large fetch crawls from a slow server: the transfer is cancelled, the process exits 0
/// within 10 seconds, and the database is consistent.
#[test]
fn sigterm_during_a_slow_fetch() {
    let env = Env::new(Auth::None);
    synthetic_history(&env.srv("big/history.git"), 60, 24, 24);
    env.server.set_throttle(Some(64 * 1024));
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"big/history.git\"]\n",
        env.server.url()
    ));
    let mut child = start(&env, &[]);
    wait_for("the fetch to start", 15, || {
        env.server.requests().iter().any(|r| r.method == "POST")
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = wait_with_deadline(&mut child, 12);
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
    let db = env.db();
    assert_integrity(&db);
    let models: i64 = db
        .query_row("SELECT COUNT(*) FROM models", [], |r| r.get(0))
        .unwrap();
    assert_eq!(models, 0, "nothing half-imported");
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// Parse Prometheus text into (name with labels) → value.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad metrics line {l:?}"));
            (
                k.to_string(),
                v.parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

#[test]
fn metrics_health_and_readiness() {
    let env = Env::new(Auth::None);
    env.one_model_repo("t/a.git");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config(
        &env,
        &["t/a.git", "missing/repo.git"],
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    );
    let mut child = start(&env, &[]);
    wait_for("polls", 15, || {
        models(&env, "g/t/a") == 1 && polls(&env, "g/missing/repo") >= 1
    });
    wait_for("the listener", 10, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    let m = parse_metrics(&body);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing in:\n{body}"))
    };
    assert!(get("modelmirror_polls_total{trigger=\"startup\",result=\"updated\"}") >= 1.0);
    assert!(get("modelmirror_polls_total{trigger=\"startup\",result=\"error\"}") >= 1.0);
    assert_eq!(get("modelmirror_models{repo=\"g/t/a\"}"), 1.0);
    assert_eq!(
        get("modelmirror_repository_failing{repo=\"g/missing/repo\"}"),
        1.0
    );
    assert!(get("modelmirror_seconds_since_last_check{repo=\"g/t/a\"}") < 60.0);
    assert!(get("modelmirror_seconds_since_last_success{repo=\"g/t/a\"}") < 60.0);
    // A repository that never succeeded has been checked, but has no success to count from.
    assert!(get("modelmirror_seconds_since_last_check{repo=\"g/missing/repo\"}") < 60.0);
    assert!(!body.contains("modelmirror_seconds_since_last_success{repo=\"g/missing/repo\"}"));
    assert!(get("modelmirror_poll_duration_seconds_count") >= 2.0);
    assert!(get("modelmirror_fetched_bytes_total") > 0.0);
    assert_eq!(get("modelmirror_up"), 1.0);
    assert!(body.contains("# TYPE modelmirror_poll_duration_seconds histogram"));
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(http_get(port, "/readyz"), (200, "ready\n".into()));
    assert_eq!(http_get(port, "/nope").0, 404);
    // The failing repository leaves the configuration: its data stays, but it no longer counts as failing
    // (nothing polls it, so nothing could ever clear the alert).
    config(
        &env,
        &["t/a.git"],
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    );
    signal(&child, libc::SIGHUP);
    wait_for("the gauges of the dropped repository to go", 10, || {
        !http_get(port, "/metrics")
            .1
            .contains("repo=\"g/missing/repo\"")
    });
    let (_, body) = http_get(port, "/metrics");
    assert!(
        body.contains("modelmirror_models{repo=\"g/t/a\"} 1"),
        "{body}"
    );
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
}

#[test]
fn log_formats() {
    let env = Env::new(Auth::None);
    env.one_model_repo("t/a.git");
    config(
        &env,
        &["t/a.git"],
        "log_format = \"json\"\nlog_level = \"info\"",
    );
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "log_level = info logs the update");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    // Under journald: a priority prefix, no timestamps, no colours.
    config(&env, &["t/a.git"], "log_level = \"info\"");
    let _ = std::fs::remove_dir_all(env.path().join("state"));
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env("JOURNAL_STREAM", "8:12345")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().next().is_some_and(|l| l.starts_with("<6>")),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "no colours: {stderr}");
    // RUST_LOG wins over log_level.
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `systemd-analyze security --offline=true` scores the unit 2.0 or lower.
#[test]
fn the_unit_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/modelmirror.service");
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", &unit.to_string_lossy()])
        .output()
    else {
        panic!(
            "systemd-analyze is missing: install the systemd package (scripts/test.sh does) to check the unit's hardening"
        );
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for modelmirror.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}

/// The man page and completions come from the CLI definition.
#[test]
fn man_page_and_completions() {
    let man = bin().arg("man").output().unwrap();
    assert!(man.status.success());
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(
        text.contains(".TH modelmirror 1") && text.contains("rebuild"),
        "{text}"
    );
    // One page per command, so the SEE ALSO references of the main page resolve.
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("man")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "modelmirror.1",
        "modelmirror-check.1",
        "modelmirror-changes.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    let check = std::fs::read_to_string(dir.path().join("modelmirror-check.1")).unwrap();
    assert!(
        check.contains("json"),
        "check --json is documented: {check}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("search"),
            "{shell}"
        );
    }
}

fn provider_file(env: &Env, name: &str, token: &str, repo: &str) {
    let tmp = env.path().join(format!("conf.d/.{name}.tmp"));
    std::fs::write(
        &tmp,
        format!(
            "[providers.{name}]\nkind = \"git\"\nurl = {:?}\ntoken = {token:?}\nrepos = [{repo:?}]\n",
            env.server.url()
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, env.path().join(format!("conf.d/{name}.toml"))).unwrap();
}

/// The credentials each repository was fetched with, from the server's request log.
fn tokens_seen(
    env: &Env,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut seen = std::collections::BTreeMap::new();
    for r in env.server.requests() {
        let Some(repo) = ["a", "b", "c"]
            .into_iter()
            .find(|n| r.path.contains(&format!("t/{n}.git")))
        else {
            continue;
        };
        let auth = r.authorization.clone().unwrap_or_default();
        let decoded = auth
            .strip_prefix("Basic ")
            .and_then(crate::git_http::base64_decode)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or(auth);
        seen.entry(repo.to_string())
            .or_insert_with(std::collections::BTreeSet::new)
            .insert(decoded);
    }
    seen
}

/// Providers added and removed by a reload (files in conf.d, read in name order) leave every other
/// repository polling with its own provider's credentials: none is sent another host's token, none breaks.
#[test]
fn reloads_that_add_and_remove_providers_keep_each_repository_on_its_own_credentials() {
    let env = Env::new(Auth::None);
    for r in ["t/a.git", "t/b.git", "t/c.git"] {
        env.one_model_repo(r);
    }
    std::fs::create_dir_all(env.path().join("conf.d")).unwrap();
    env.write_config("schedule = \"* * * * * *\"\n");
    provider_file(&env, "b", "token-b", "t/b.git");
    provider_file(&env, "c", "token-c", "t/c.git");
    let mut child = start(&env, &[]);
    wait_for("b and c", 20, || {
        models(&env, "b/t/b") == 1 && models(&env, "c/t/c") == 1
    });
    // A provider that sorts first.
    provider_file(&env, "a", "token-a", "t/a.git");
    wait_for("a", 20, || models(&env, "a/t/a") == 1);
    env.server.clear_log();
    wait_for("polls after the reload", 20, || {
        let seen = tokens_seen(&env);
        ["a", "b", "c"].iter().all(|r| seen.contains_key(*r))
    });
    let seen = tokens_seen(&env);
    for r in ["a", "b", "c"] {
        assert!(
            seen[r].iter().all(|t| t.ends_with(&format!("token-{r}"))),
            "repository {r} was fetched with another provider's token: {seen:?}"
        );
    }
    // The provider in the middle goes away: the last one keeps working.
    std::fs::remove_file(env.path().join("conf.d/b.toml")).unwrap();
    let before = polls(&env, "c/t/c");
    wait_for("c polled again", 20, || polls(&env, "c/t/c") >= before + 3);
    let err: Option<String> = env
        .db()
        .query_row("SELECT last_error FROM repos WHERE id = 'c/t/c'", [], |r| {
            r.get(0)
        })
        .unwrap();
    signal(&child, libc::SIGTERM);
    let _ = wait_with_deadline(&mut child, 12);
    assert_eq!(err, None, "c fails after b was removed");
}

/// With a broken file still on disk after a rejected reload, `status` shows the service's state and the
/// rejection (exit status 2, the file's error on stderr) instead of only the error.
#[test]
fn status_shows_a_rejected_reload_while_the_broken_file_is_on_disk() {
    let env = Env::new(Auth::None);
    env.one_model_repo("t/a.git");
    env.write_config(&format!(
        "schedule = \"* * * * * *\"\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/a.git\"]\n",
        env.server.url()
    ));
    let mut child = start(&env, &[]);
    wait_for("a", 20, || models(&env, "g/t/a") == 1);
    std::fs::write(
        env.path().join("config.toml"),
        format!(
            "state_dir = {:?}\nschedule = \"not a schedule\"\n",
            env.path().join("state")
        ),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    wait_for("rejection recorded", 10, || {
        env.db()
            .query_row(
                "SELECT value FROM service WHERE key = 'last_reload_error'",
                [],
                |r| r.get::<_, Option<String>>(0),
            )
            .ok()
            .flatten()
            .is_some()
    });
    let out = env.run(&["status"]);
    signal(&child, libc::SIGTERM);
    let _ = wait_with_deadline(&mut child, 12);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout.contains("REJECTED") && out.stdout.contains("g/t/a"),
        "{out:?}"
    );
    assert!(out.stderr.contains("schedule"), "{out:?}");
    // The configuration error once, and what is shown instead: the database named.
    assert_eq!(out.stderr.matches("error:").count(), 1, "{out:?}");
    assert!(
        out.stderr.contains("showing the state recorded in"),
        "{out:?}"
    );
}

/// SIGTERM while one large commit (1,500 models) is being written: the step stops between two files and rolls
/// back, the process exits within the shutdown budget, the database is intact and holds no half commit, and
/// the next run imports the commit whole.
#[test]
fn sigterm_during_a_large_commit_rolls_it_back() {
    let env = Env::new(Auth::None);
    let bare = env.srv("big.git");
    many_models(&bare, 1500);
    config(&env, &["big.git"], "");
    let mut daemon = start(&env, &[]);
    // Once the pack is in the mirror, the commit is being parsed and written.
    let pack_dir = env.path().join("state/mirrors/g/big.git/objects/pack");
    wait_for("the fetch", 30, || {
        std::fs::read_dir(&pack_dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "pack"))
        })
    });
    // … and once it has written a few megabytes since, the commit's rows are on their way to the database.
    let fetched = bytes_written(daemon.id());
    wait_for("the import's writes", 30, || {
        bytes_written(daemon.id()) > fetched + (4 << 20)
    });
    assert_eq!(
        models(&env, "g/big"),
        0,
        "still importing when the signal arrives"
    );
    let sent = Instant::now();
    signal(&daemon, libc::SIGTERM);
    let status = wait_with_deadline(&mut daemon, 10);
    assert!(status.success(), "{status:?}");
    // Well before the 8 s grace after which polls in progress are abandoned: the step itself stopped.
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let db = env.db();
    assert_integrity(&db);
    assert_eq!(models(&env, "g/big"), 0, "no half commit");
    assert_eq!(processed_commit(&db, "g/big"), None);
    let out = env.run(&["sync"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(models(&env, "g/big"), 1500);
}
