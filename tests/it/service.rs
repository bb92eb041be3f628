//! `modelmirror run` as a real process: schedules keep firing while the process is busy, polls of one
//! repository never overlap and at most `concurrency` run at once, a failing repository backs off without
//! stopping the others, and SIGTERM / SIGINT stop it cleanly.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::DateTime;

use crate::git_http::Auth;
use crate::support::*;

fn start(env: &Env) -> Running {
    bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "run",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Running)
        .expect("modelmirror run")
}

/// (repo, start ms, end ms) of every recorded poll.
fn polls(env: &Env) -> Vec<(String, i64, i64, String)> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT repo_id, started_at, duration_ms, result FROM polls ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        let start: String = r.get(1)?;
        let ms = DateTime::parse_from_rfc3339(&start)
            .expect("rfc3339")
            .timestamp_millis();
        Ok((r.get(0)?, ms, ms + r.get::<_, i64>(2)?, r.get(3)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn small_repos(env: &Env, n: usize) -> Vec<String> {
    let (bare, _) = env.one_model_repo("small/r0.git");
    let mut names = vec!["small/r0.git".to_string()];
    for i in 1..n {
        let name = format!("small/r{i}.git");
        git(
            env.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &bare.to_string_lossy(),
                &env.srv(&name).to_string_lossy(),
            ],
        );
        names.push(name);
    }
    names
}

#[test]
fn schedules_keep_firing_while_the_process_is_busy() {
    let env = Env::new(Auth::None);
    // One long import keeps a poll slot and the database busy for the whole run.
    synthetic_history(&env.srv("busy/history.git"), 400, 24, 6);
    let mut repos = small_repos(&env, 12);
    repos.push("busy/history.git".into());
    let list: Vec<String> = repos.iter().map(|r| format!("{r:?}")).collect();
    env.write_config(&format!(
        "schedule = \"* * * * * *\"\nconcurrency = 2\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [{}]\n",
        env.server.url(),
        list.join(", ")
    ));
    let mut child = start(&env);
    let run_for = Duration::from_secs(14);
    std::thread::sleep(run_for);
    let stopped_at = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = wait_with_deadline(&mut child, 10);
    assert!(status.success(), "exit status {status:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(10));

    let all = polls(&env);
    let end = all.iter().map(|p| p.2).max().unwrap();
    let begin = all.iter().map(|p| p.1).min().unwrap();
    for i in 0..12 {
        let id = format!("g/small/r{i}");
        let mine: Vec<_> = all.iter().filter(|p| p.0 == id).collect();
        assert!(
            mine.len() >= 8,
            "{id} polled only {} times in {run_for:?}",
            mine.len()
        );
        let starts: Vec<i64> = mine.iter().map(|p| p.1).collect();
        let max_gap = starts.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(
            max_gap < 4_000,
            "{id}: a gap of {max_gap} ms between polls of a 1 s schedule"
        );
        assert!(
            end - starts.last().unwrap() < 4_000,
            "{id} stopped being polled before the end"
        );
        assert!(starts[0] - begin < 6_000, "{id}: first poll too late");
        for w in mine.windows(2) {
            assert!(w[0].2 <= w[1].1, "{id}: polls overlap: {:?}", w);
        }
    }
    // At most `concurrency` polls at any moment.
    let mut events: Vec<(i64, i32)> = all.iter().flat_map(|p| [(p.1, 1), (p.2, -1)]).collect();
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut peak) = (0, 0);
    for (_, d) in events {
        now += d;
        peak = peak.max(now);
    }
    assert!(peak <= 2, "{peak} polls ran at once with concurrency = 2");
    let db = env.db();
    assert_integrity(&db);
    if let Some(commit) = processed_commit(&db, "g/busy/history") {
        assert_catalog_is(
            &env.srv("busy/history.git"),
            &db,
            "g/busy/history",
            &commit,
            u64::MAX,
        );
    }
}

#[test]
fn a_failing_repository_backs_off_and_the_others_keep_syncing() {
    let env = Env::new(Auth::None);
    small_repos(&env, 1);
    env.write_config(&format!(
        "schedule = \"* * * * * *\"\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"small/r0.git\", \"missing/repo.git\"]\n",
        env.server.url()
    ));
    let mut child = start(&env);
    std::thread::sleep(Duration::from_secs(12));
    signal(&child, libc::SIGINT);
    assert!(wait_with_deadline(&mut child, 10).success());
    let all = polls(&env);
    let good = all.iter().filter(|p| p.0 == "g/small/r0").count();
    let bad: Vec<_> = all.iter().filter(|p| p.0 == "g/missing/repo").collect();
    assert!(good >= 9, "the healthy repository was polled {good} times");
    assert!(bad.iter().all(|p| p.3 == "error"));
    // 1 s schedule: attempts at ~0, 1, 3, 7 s (gaps 1, 2, 4, then 8): at most 5 in 12 s.
    assert!(
        (2..=5).contains(&bad.len()),
        "the failing repository was polled {} times",
        bad.len()
    );
    let gaps: Vec<i64> = bad.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "back-off grows: {gaps:?}"
    );
    let row = status_of(&env, "g/missing/repo");
    assert!(
        row["last_error"].as_str().unwrap().contains("not found"),
        "{row}"
    );
}

#[test]
fn sigterm_during_a_long_import_stops_cleanly() {
    let env = Env::new(Auth::None);
    let bare = env.srv("busy/history.git");
    synthetic_history(&bare, 400, 24, 6);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"busy/history.git\"]\n",
        env.server.url()
    ));
    let mut child = start(&env);
    // Wait until the import is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the import did not start");
        if env.db_path().exists()
            && env
                .db()
                .query_row("SELECT COUNT(*) FROM sync_steps", [], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap_or(0)
                > 3
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = wait_with_deadline(&mut child, 10);
    assert!(status.success(), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(10));
    let db = env.db();
    assert_integrity(&db);
    let commit = processed_commit(&db, "g/busy/history").expect("some commits processed");
    assert_ne!(
        commit,
        git(&bare, &["rev-parse", "main"]).trim(),
        "stopped before the end of the import"
    );
    assert_catalog_is(&bare, &db, "g/busy/history", &commit, u64::MAX);
}

/// The repository's row in `status --json`.
fn status_of(env: &Env, repo: &str) -> serde_json::Value {
    let status = env.run(&["status", "--json"]).ok().json();
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repo"] == repo)
        .unwrap_or_else(|| panic!("{repo} in status: {status}"))
        .clone()
}

/// A TCP port on 127.0.0.1 bound but not listening: connecting to it is refused.
struct HeldPort(std::os::fd::OwnedFd);

impl HeldPort {
    fn bind(port: u16) -> HeldPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function creates and then owns; the address is a
        // fully initialised sockaddr_in of the size passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            let rc = libc::bind(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            assert_eq!(
                rc,
                0,
                "bind 127.0.0.1:{port}: {}",
                std::io::Error::last_os_error()
            );
            HeldPort(owned)
        }
    }

    fn listen(self) -> std::net::TcpListener {
        use std::os::fd::AsRawFd;
        // SAFETY: listen(2) on the bound socket this value owns.
        let rc = unsafe { libc::listen(self.0.as_raw_fd(), 128) };
        assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
        std::net::TcpListener::from(self.0)
    }
}

/// The git server of one provider goes away (its port refuses connections) for about 9 s while a commit is
/// pushed: the error is recorded and says what happened, polls back off (fewer than the schedule's), the
/// other provider's repositories keep syncing, and once the server is back the repository is current
/// within about one schedule period, not at the end of the back-off (8 periods by then): at each regular
/// firing the daemon checks whether the server accepts connections again.
#[test]
fn the_git_server_goes_away_and_comes_back() {
    let env = Env::new(Auth::None);
    small_repos(&env, 2);
    let (_, work) = env.one_model_repo("away/r.git");
    let srv = env.path().join("srv");
    let away = crate::git_http::GitHttpServer::start(&srv, Auth::None);
    let port = away.port();
    env.write_config(&format!(
        "schedule = \"* * * * * *\"\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"small/r0.git\", \"small/r1.git\"]\n[providers.h]\nkind = \"git\"\nurl = {:?}\nrepos = [\"away/r.git\"]\n",
        env.server.url(),
        away.url()
    ));
    let mut child = start(&env);
    wait_for("the first import", 20, || {
        current_commit(&env, "h/away/r").is_some()
    });

    drop(away);
    // Keep the port: bound, not listening, so connections are refused and nothing else can take it.
    let held = HeldPort::bind(port);
    let down_at = chrono::Utc::now().timestamp_millis();
    std::fs::copy(small_model(), work.join("second.hck.json")).unwrap();
    let second = commit_all(&work, "second, pushed while the server is away");
    std::thread::sleep(Duration::from_secs(9));

    let row = status_of(&env, "h/away/r");
    let error = row["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot reach") && error.contains(&format!("127.0.0.1:{port}")),
        "the error says the server cannot be reached: {row}"
    );
    let during = polls(&env);
    let failed: Vec<_> = during
        .iter()
        .filter(|p| p.0 == "h/away/r" && p.1 >= down_at)
        .collect();
    assert!(failed.iter().all(|p| p.3 == "error"), "{failed:?}");
    // A 1 s schedule fires 9 times; backing off (1, 2, 4, 8 s) polls about 4 times.
    assert!(
        (2..=5).contains(&failed.len()),
        "{} polls of the unreachable repository in 9 s",
        failed.len()
    );
    for r in ["g/small/r0", "g/small/r1"] {
        let n = during
            .iter()
            .filter(|p| p.0 == r && p.1 >= down_at && p.3 != "error")
            .count();
        assert!(
            n >= 5,
            "{r} polled {n} times while the other server was away"
        );
    }

    let _back = crate::git_http::GitHttpServer::start_listening(&srv, Auth::None, held.listen());
    let back_at = Instant::now();
    wait_for("the repository to catch up", 20, || {
        current_commit(&env, "h/away/r").as_deref() == Some(second.as_str())
    });
    let took = back_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "current {took:?} after the server returned (schedule: 1 s; the back-off alone would wait up to 8 s)"
    );
    assert!(status_of(&env, "h/away/r")["last_error"].is_null());
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
    let db = env.db();
    assert_integrity(&db);
    assert_catalog_is(&env.srv("away/r.git"), &db, "h/away/r", &second, u64::MAX);
}

/// A server that stops sending in the middle of a pack: with `read_timeout = 2` the poll ends with an error
/// after about 2 s instead of hanging, its slot (`concurrency = 1`) goes to the other repositories, and once
/// the server answers again the repository is imported.
#[test]
fn a_stalled_transfer_times_out_and_frees_its_slot() {
    let env = Env::new(Auth::None);
    small_repos(&env, 2);
    let bare = env.srv("stall/history.git");
    synthetic_history(&bare, 30, 24, 4);
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();
    env.server.set_stall(Some(("/stall/", 4096)));
    env.write_config(&format!(
        "schedule = \"* * * * * *\"\nconcurrency = 1\n[providers.g]\nkind = \"git\"\nurl = {:?}\nread_timeout = 2\nrepos = [\"stall/history.git\", \"small/r0.git\", \"small/r1.git\"]\n",
        env.server.url()
    ));
    let mut child = start(&env);
    wait_for("the stalled poll to fail", 30, || {
        env.db_path().exists()
            && polls(&env)
                .iter()
                .any(|p| p.0 == "g/stall/history" && p.3 == "error")
    });
    // Let the others run for a while, then look.
    std::thread::sleep(Duration::from_secs(3));
    let all = polls(&env);
    let stalled = all
        .iter()
        .find(|p| p.0 == "g/stall/history" && p.3 == "error")
        .unwrap()
        .clone();
    let took = stalled.2 - stalled.1;
    assert!(
        (1_500..15_000).contains(&took),
        "the stalled poll ended after {took} ms (read_timeout = 2 s)"
    );
    let error = status_of(&env, "g/stall/history")["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("g/stall/history") || error.contains("stall/history.git"),
        "names the repository: {error}"
    );
    assert!(error.contains("timed out"), "says it timed out: {error}");
    for r in ["g/small/r0", "g/small/r1"] {
        let mine: Vec<_> = all.iter().filter(|p| p.0 == r).collect();
        assert!(
            mine.iter().all(|p| p.2 <= stalled.1 || p.1 >= stalled.2),
            "{r} was polled while the stalled poll held the only slot: {mine:?} {stalled:?}"
        );
        assert!(
            mine.iter().any(|p| p.1 >= stalled.2),
            "{r} was not polled after the stalled poll freed the slot: {mine:?}"
        );
    }
    env.server.set_stall(None);
    wait_for("the import once the server answers", 30, || {
        current_commit(&env, "g/stall/history").as_deref() == Some(head.as_str())
    });
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
    let db = env.db();
    assert_integrity(&db);
    assert_catalog_is(&bare, &db, "g/stall/history", &head, u64::MAX);
}
