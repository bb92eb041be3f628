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
    let (bare, work) = env.new_repo("small/r0.git");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("m.hck.json"),
    )
    .unwrap();
    commit_all(&work, "model");
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
    let status = env.run(&["status", "--json"]).ok().json();
    let row = status
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repo"] == "g/missing/repo")
        .unwrap()
        .clone();
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
