//! Memory: peak RSS of `modelmirror run` with 1,000 configured repositories (after their startup polls, at
//! rest), and of `modelmirror sync` importing one 50 MB Hackolade model (built from a fixture model by
//! repeating its entities under new GUIDs). Measured by the kernel (`wait4` rusage `ru_maxrss`, and
//! `/proc/PID/status` `VmRSS` for the daemon at rest). Run with `cargo bench --bench memory`.

#[path = "../tests/common/git_http.rs"]
mod git_http;
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git_http::{Auth, GitHttpServer};
use support::{env_or, fixtures, git, small_repos, start_daemon, verdict};

/// Wait for a child and return its peak RSS in MiB (from the kernel's accounting of that process alone).
/// Wait for `child`; whether it succeeded, and its peak RSS in MiB: the high-water mark of its own address
/// space (`VmHWM`), sampled until it exits. Not `wait4`'s `ru_maxrss`: Linux carries the pre-`exec` high-water
/// mark over, so that would count this benchmark's own memory (the 50 MB model it built) as the child's.
fn wait_peak_mib(mut child: Child) -> (bool, f64) {
    let mut peak: f64 = 0.0;
    loop {
        peak = peak.max(status_kib(child.id(), "VmHWM:"));
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.success(), peak / 1024.0);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    let repos = env_or("REPOS", 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = dir.path().join("srv");
    small_repos(dir.path(), &srv, repos);
    let model = fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json");
    // The 50 MB model: the fixture's collections repeated under new GUIDs.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&model).expect("read")).expect("json");
    let base = doc["collections"].as_array().cloned().unwrap_or_default();
    let one = serde_json::to_vec(&base).expect("json").len().max(1);
    let copies = 50 * 1024 * 1024 / one + 1;
    let mut all = Vec::new();
    for c in 0..copies {
        for (k, col) in base.iter().enumerate() {
            let mut col = col.clone();
            col["GUID"] = serde_json::Value::String(format!("bench-{c}-{k}"));
            if let Some(name) = col["collectionName"].as_str() {
                col["collectionName"] = serde_json::Value::String(format!("{name} {c}"));
            }
            all.push(col);
        }
    }
    doc["collections"] = serde_json::Value::Array(all);
    let big = serde_json::to_vec(&doc).expect("json");
    let big_mib = big.len() as f64 / (1024.0 * 1024.0);
    let work = dir.path().join("bigwork");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("big.hck.json"), &big).expect("write");
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "big"]);
    git(
        &srv,
        &["clone", "-q", "--bare", &work.to_string_lossy(), "big.git"],
    );

    let server = GitHttpServer::start(&srv, Auth::None);
    let list: Vec<String> = (0..repos).map(|i| format!("\"r{i}.git\"")).collect();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nlog_level = \"warn\"\nschedule = \"*/5 * * * *\"\n[providers.b]\nkind = \"git\"\nurl = {:?}\nrepos = [{}]\n[providers.big]\nkind = \"git\"\nurl = {:?}\nrepos = [\"big.git\"]\nschedule = \"0 0 1 1 *\"\n",
            dir.path().join("state"),
            server.url(),
            list.join(", "),
            server.url()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_modelmirror");

    // 1. The big model alone, imported by `sync`.
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .args(["sync", "big/big"])
        .stdout(Stdio::null())
        .spawn()
        .expect("modelmirror");
    let (ok, peak) = wait_peak_mib(child);
    assert!(ok, "sync of the big model failed");

    // 2. The daemon with `repos` repositories: wait for every startup poll, then measure at rest.
    let mut daemon = start_daemon(&config);
    let db = dir.path().join("state/modelmirror.db");
    let deadline = Instant::now() + Duration::from_secs(600);
    let polled = || -> usize {
        let out = Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT COUNT(DISTINCT repo_id) FROM polls WHERE repo_id LIKE 'b/%'")
            .output();
        out.ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    };
    let count_with_cli = || -> usize {
        let out = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["status", "--json"])
            .output()
            .expect("status");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array()
            .map(|a| a.iter().filter(|r| r["last_check_at"].is_string()).count())
            .unwrap_or(0)
    };
    while Instant::now() < deadline {
        let n = if Command::new("sqlite3").arg("-version").output().is_ok() {
            polled()
        } else {
            count_with_cli()
        };
        if n >= repos {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = daemon.id();
    let rest = status_kib(pid, "VmRSS:") / 1024.0;
    let (anon, file) = (
        status_kib(pid, "RssAnon:") / 1024.0,
        status_kib(pid, "RssFile:") / 1024.0,
    );
    let daemon_peak = status_kib(pid, "VmHWM:") / 1024.0;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let _ = daemon.wait();

    let most_open = server.most_busy();
    println!("| benchmark | measured | target |");
    println!("|---|---|---|");
    println!(
        "| `modelmirror run`, {repos} repositories, at rest after their startup polls | {rest:.1} MiB RSS ({anon:.1} anonymous, {file:.1} files; peak during the startup polls {daemon_peak:.1} MiB) | under {} MB: {} |",
        if repos > 1000 { 150 } else { 100 },
        verdict(rest * 1024.0 * 1024.0 < if repos > 1000 { 150e6 } else { 100e6 })
    );
    println!(
        "| the startup wave of {repos} repositories (`concurrency` 4) | at most {most_open} requests processed at once by the git server | no more than `concurrency`: {} |",
        verdict(most_open <= 4)
    );
    println!(
        "| `modelmirror sync` importing one {big_mib:.1} MiB model | peak {peak:.1} MiB RSS ({:.1}x the file) | under 5x the file: {} |",
        peak / big_mib,
        verdict(peak < 5.0 * big_mib)
    );
}
