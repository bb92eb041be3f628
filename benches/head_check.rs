//! The no-change cycle of the service with `head_check = "git"` against `"graphql"`: 1,000 repositories (set
//! `REPOS=N`) on the GitHub fake of the tests (its GraphQL answers as documented, git over the same local
//! smart-HTTP server), one poll a repository every `PERIOD` seconds. After the startup imports, for
//! `CYCLES` cycles: the requests the host receives (REST/GraphQL and git) and the daemon's CPU time
//! (`/proc/PID/stat` utime + stime), per cycle. `head_check_full_every` is raised out of the way, so the
//! graphql column shows the cycles between two full sweeps. Run with `cargo bench --bench head_check`.

#[path = "../tests/common/forges.rs"]
mod forges;
#[path = "../tests/common/git_http.rs"]
mod git_http;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use forges::{FakeRepo, Forge, Kind};
use git_http::Auth;
use support::{env_or, small_repos, start_daemon, verdict};

const TOKEN: &str = "bench-token";

/// The daemon's CPU seconds so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Requests and CPU seconds per no-change cycle with `head_check`.
fn cycle(
    dir: &Path,
    forge: &Forge,
    repos: usize,
    head_check: &str,
    period: u64,
    cycles: u64,
) -> (f64, f64, f64) {
    let state = dir.join(format!("state-{head_check}"));
    let list: Vec<String> = (0..repos).map(|i| format!("\"acme/r{i}\"")).collect();
    let config = dir.join(format!("{head_check}.toml"));
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\nschedule = \"*/{period} * * * * *\"\nconcurrency = 4\nlog_level = \"warn\"\n\
             [providers.gh]\nkind = \"github\"\nurl = {:?}\ntoken = {TOKEN:?}\nrepos = [{}]\n\
             head_check = {head_check:?}\nhead_check_full_every = 1000\n",
            forge.url(),
            list.join(", ")
        ),
    )
    .expect("config");
    let mut child = start_daemon(&config);
    // Wait for every startup import.
    let db = state.join("modelmirror.db");
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let done: i64 = rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM repos WHERE commit_id IS NOT NULL",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0);
        if done as usize >= repos {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "startup imports take too long"
        );
    }
    // Let the startup wave pass, then measure whole cycles.
    std::thread::sleep(Duration::from_secs(2 * period));
    let (api0, git0) = (
        forge.api_requests().len(),
        forge.server.git_requests().len(),
    );
    let cpu0 = cpu_seconds(child.id());
    std::thread::sleep(Duration::from_secs(cycles * period));
    let api = (forge.api_requests().len() - api0) as f64 / cycles as f64;
    let git = (forge.server.git_requests().len() - git0) as f64 / cycles as f64;
    let cpu = (cpu_seconds(child.id()) - cpu0) / cycles as f64;
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    (api, git, cpu)
}

fn main() {
    let repos = env_or("REPOS", 1000);
    let period = env_or("PERIOD", 20) as u64;
    let cycles = env_or("CYCLES", 3) as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("forge");
    small_repos(dir.path(), &root.join("acme"), repos);
    let fake: Vec<FakeRepo> = (0..repos)
        .map(|i| FakeRepo::new(&format!("acme/r{i}"), i as u64 + 1))
        .collect();
    let forge = Forge::start(Kind::Github, &root, Auth::None, TOKEN, fake);
    forge.set_page_size(100);
    let git = cycle(dir.path(), &forge, repos, "git", period, cycles);
    let graphql = cycle(dir.path(), &forge, repos, "graphql", period, cycles);
    println!(
        "| no-change cycle, {repos} repositories | requests to the host (API + git) | daemon CPU |"
    );
    println!("|---|---|---|");
    println!(
        "| `head_check = \"git\"` | {:.0} (API {:.0} + git {:.0}) | {:.3} s |",
        git.0 + git.1,
        git.0,
        git.1,
        git.2
    );
    println!(
        "| `head_check = \"graphql\"` | {:.0} (API {:.0} + git {:.0}) | {:.3} s |",
        graphql.0 + graphql.1,
        graphql.0,
        graphql.1,
        graphql.2
    );
    let batches = repos.div_ceil(100) as f64;
    println!(
        "target: one GraphQL request per 100 repositories and no git request a cycle — {}",
        verdict(graphql.1 < 1.0 && graphql.0 <= batches + 0.5)
    );
}
