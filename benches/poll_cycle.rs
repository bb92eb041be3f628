//! The no-change poll cycle, side by side with its baseline: 500 repositories served by the same local git
//! smart-HTTP server the tests use (`git http-backend` behind a small HTTP server), nothing changed since the
//! last sync; one full cycle of `modelmirror sync` against `git ls-remote` of every repository at the same
//! concurrency. Also counts the server's requests: modelmirror must make exactly one ref listing per
//! repository and no fetch. Run with `cargo bench --bench poll_cycle` (set `REPOS=N` for another size).
//! With `SCALE=1000,5000,10000` it then shows how the no-change cycle grows with the number of repositories:
//! the same cycle at each size, in one run, per repository.

#[path = "../tests/common/git_http.rs"]
mod git_http;
mod support;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use git_http::{Auth, GitHttpServer};
use support::{env_or, median, small_repos, timed_modelmirror, verdict};

const CONCURRENCY: usize = 4;

fn main() {
    comparison();
    if let Ok(sizes) = std::env::var("SCALE") {
        let sizes: Vec<usize> = sizes
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        scale(&sizes);
    }
}

/// The no-change cycle at each of `sizes` repositories (one server, the first N of the largest set).
fn scale(sizes: &[usize]) {
    let Some(&largest) = sizes.iter().max() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = dir.path().join("srv");
    small_repos(dir.path(), &srv, largest);
    let server = GitHttpServer::start(&srv, Auth::basic("git", "bench-token"));
    println!();
    println!(
        "| no-change cycle | time (median of 3) | per repository | per repository / at {} |",
        sizes[0]
    );
    println!("|---|---|---|---|");
    let mut first = None;
    let mut worst: f64 = 1.0;
    for &n in sizes {
        let list: Vec<String> = (0..n).map(|i| format!("\"r{i}.git\"")).collect();
        let config = dir.path().join(format!("scale-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\nconcurrency = {CONCURRENCY}\nlog_level = \"warn\"\n[providers.b]\nkind = \"git\"\nurl = {:?}\ntoken = \"bench-token\"\nrepos = [{}]\n",
                dir.path().join(format!("state-{n}")),
                server.url(),
                list.join(", ")
            ),
        )
        .expect("config");
        timed_modelmirror(&config, &["sync"]);
        let cycle = median(
            (0..3)
                .map(|_| timed_modelmirror(&config, &["sync"]))
                .collect(),
        );
        let per = cycle.as_secs_f64() * 1000.0 / n as f64;
        let base = *first.get_or_insert(per);
        worst = worst.max(per / base);
        println!(
            "| {n} repositories | {:.2} s | {per:.2} ms | {:.2} |",
            cycle.as_secs_f64(),
            per / base
        );
    }
    println!(
        "linear: the cost per repository at the largest size is within 1.5x of the smallest's: {}",
        verdict(worst <= 1.5)
    );
}

/// The no-change cycle against `git ls-remote` of every repository.
fn comparison() {
    let repos = env_or("REPOS", 500);
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = dir.path().join("srv");
    // One small repository with a real model, copied `repos` times.
    small_repos(dir.path(), &srv, repos);
    let server = GitHttpServer::start(&srv, Auth::basic("git", "bench-token"));
    let list: Vec<String> = (0..repos).map(|i| format!("\"r{i}.git\"")).collect();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nconcurrency = {CONCURRENCY}\nlog_level = \"warn\"\n[providers.b]\nkind = \"git\"\nurl = {:?}\ntoken = \"bench-token\"\nrepos = [{}]\n",
            dir.path().join("state"),
            server.url(),
            list.join(", ")
        ),
    )
    .expect("config");
    let sync = || timed_modelmirror(&config, &["sync"]);
    let import = sync();
    let ls_remote = || {
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..CONCURRENCY {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= repos {
                            break;
                        }
                        let out = Command::new("git")
                            .args([
                                "ls-remote",
                                &server.repo_url_with_credentials(
                                    &format!("r{i}.git"),
                                    "git",
                                    "bench-token",
                                ),
                                "HEAD",
                            ])
                            .output()
                            .expect("git ls-remote");
                        assert!(out.status.success(), "{out:?}");
                    }
                });
            }
        });
        started.elapsed()
    };
    // Alternate the two, three rounds each; report medians.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut ours_requests = (0, 0, 0);
    let mut git_requests = 0;
    for _ in 0..3 {
        server.clear_log();
        ours.push(sync());
        let log = server.requests();
        ours_requests = (
            log.len(),
            log.iter().filter(|r| r.is_ref_listing()).count(),
            log.iter().filter(|r| r.is_fetch()).count(),
        );
        server.clear_log();
        theirs.push(ls_remote());
        git_requests = server.requests().len();
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "no-change poll cycle: {repos} repositories, concurrency {CONCURRENCY}, local git smart-HTTP server"
    );
    println!("| run | time | requests | per repository |");
    println!("|---|---|---|---|");
    println!(
        "| first `modelmirror sync` (import) | {:.2} s | | |",
        import.as_secs_f64()
    );
    println!(
        "| `modelmirror sync`, nothing changed | {:.2} s | {} ({} ref listings, {} fetches) | {:.2} ms |",
        ours.as_secs_f64(),
        ours_requests.0,
        ours_requests.1,
        ours_requests.2,
        ours.as_secs_f64() * 1000.0 / repos as f64
    );
    println!(
        "| `git ls-remote` each | {:.2} s | {git_requests} | {:.2} ms |",
        theirs.as_secs_f64(),
        theirs.as_secs_f64() * 1000.0 / repos as f64
    );
    println!(
        "ratio: modelmirror is {:.1}x faster than git ls-remote (target: at least 3x: {}); exactly one ref listing per repository: {}",
        theirs.as_secs_f64() / ours.as_secs_f64(),
        verdict(theirs.as_secs_f64() >= 3.0 * ours.as_secs_f64()),
        verdict(ours_requests.0 == repos && ours_requests.1 == repos && ours_requests.2 == 0)
    );
}
