//! The catalog in SQLite and in PostgreSQL, and several instances on one PostgreSQL database, in one run:
//! 500 one-model repositories served by the local git smart-HTTP server the tests use; `sync`'s initial
//! import and no-change cycle into each engine beside `git clone --bare` and `git ls-remote` of every
//! repository at the same concurrency; the real books history replayed into each engine (the catalog's
//! import rate); and `modelmirror run` as one instance and as three sharing the database: the initial import
//! of the 500 repositories, then (started again) the no-change cycle of their startup polls. The PostgreSQL
//! server is a throwaway one started by `scripts/pg.sh`.
//! Run with `cargo bench --bench instances` (`REPOS=N` for another size).

#[path = "../tests/common/git_http.rs"]
mod git_http;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use git_http::{Auth, GitHttpServer};
use support::{env_or, git, small_repos, start_daemon, timed_modelmirror};

const CONCURRENCY: usize = 4;

/// A PostgreSQL server of the benchmark's own, stopped when dropped.
struct Server {
    dir: PathBuf,
    url: String,
    password: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
        let out = Command::new(&script)
            .args(["start", &dir.to_string_lossy()])
            .output()
            .expect("scripts/pg.sh");
        assert!(
            out.status.success(),
            "scripts/pg.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server {
            dir: dir.to_path_buf(),
            url: vars["MODELMIRROR_TEST_PG_URL"].clone(),
            password: vars["MODELMIRROR_TEST_PG_PASSWORD"].clone(),
        }
    }

    fn client(&self, url: &str) -> postgres::Client {
        let mut c: postgres::Config = url.parse().expect("URL");
        c.password(&self.password);
        c.connect(postgres::NoTls).expect("connect")
    }

    /// A new empty database: its URL.
    fn database(&self, name: &str) -> String {
        self.client(&self.url)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("createdb");
        self.url.replace("/postgres", &format!("/{name}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
        let _ = Command::new(script)
            .args(["stop", &self.dir.to_string_lossy()])
            .output();
    }
}

/// `modelmirror run` processes, killed when dropped (a failed assertion does not leave them running).
struct Daemons(Vec<std::process::Child>);

impl Daemons {
    fn start(configs: &[PathBuf]) -> Daemons {
        Daemons(configs.iter().map(|c| start_daemon(c)).collect())
    }

    /// Stop them as systemd does (SIGTERM), so each retires its heartbeat.
    fn stop(mut self) {
        for d in &self.0 {
            // SAFETY: kill(2) with a pid this process started and SIGTERM has no memory effects.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        }
        for d in &mut self.0 {
            let _ = d.wait();
        }
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.0 {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// The lines every configuration of the run shares.
fn config(dir: &Path, name: &str, database: Option<&str>, top: &str, provider: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let database = database.map_or(String::new(), |url| {
        format!("database = {url:?}\ndatabase_password_env = \"BENCH_PG_PASSWORD\"\n")
    });
    std::fs::write(
        &path,
        format!(
            "state_dir = {:?}\n{database}concurrency = {CONCURRENCY}\nlog_level = \"warn\"\n{top}\n{provider}",
            dir.join(format!("state-{name}"))
        ),
    )
    .expect("config");
    path
}

/// `git ARGS` for every repository, `CONCURRENCY` at a time: how long.
fn git_all(repos: usize, args: impl Fn(usize) -> Vec<String> + Sync) -> Duration {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..CONCURRENCY {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= repos {
                        return;
                    }
                    let ok = Command::new("git")
                        .args(args(i))
                        .output()
                        .expect("git")
                        .status
                        .success();
                    assert!(ok, "git {:?}", args(i));
                }
            });
        }
    });
    started.elapsed()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let repos = env_or("REPOS", 500);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let srv = root.join("srv");
    small_repos(root, &srv, repos);
    let server = GitHttpServer::start(&srv, Auth::basic("git", "bench-token"));
    let pg = Server::start(&root.join("pg"));
    // SAFETY: set before any thread of this process reads the environment.
    unsafe { std::env::set_var("BENCH_PG_PASSWORD", &pg.password) };
    let list: Vec<String> = (0..repos).map(|i| format!("\"r{i}.git\"")).collect();
    let provider = format!(
        "[providers.b]\nkind = \"git\"\nurl = {:?}\ntoken = \"bench-token\"\nrepos = [{}]\n",
        server.url(),
        list.join(", ")
    );
    let base = format!(
        "{}/",
        server
            .url()
            .replace("http://", "http://git:bench-token@")
            .trim_end_matches('/')
    );
    let url_of = |i: usize| format!("{base}r{i}.git");

    // Baselines.
    let clones = root.join("clones");
    std::fs::create_dir_all(&clones).expect("mkdir");
    let clone = git_all(repos, |i| {
        vec![
            "clone".into(),
            "-q".into(),
            "--bare".into(),
            url_of(i),
            clones
                .join(format!("r{i}.git"))
                .to_string_lossy()
                .into_owned(),
        ]
    });
    let ls_remote = git_all(repos, |i| vec!["ls-remote".into(), url_of(i)]);

    // `sync` into each engine: the initial import, then a cycle with nothing new.
    let lite = config(root, "sqlite", None, "", &provider);
    let lite_import = timed_modelmirror(&lite, &["sync"]);
    let lite_cycle = timed_modelmirror(&lite, &["sync"]);
    let pg_url = pg.database("bench_sync");
    let post = config(root, "postgres", Some(&pg_url), "", &provider);
    let pg_import = timed_modelmirror(&post, &["sync"]);
    let pg_cycle = timed_modelmirror(&post, &["sync"]);

    // The books history replayed into each engine.
    let books_srv = root.join("books-srv");
    std::fs::create_dir_all(&books_srv).expect("mkdir");
    git(
        &books_srv,
        &[
            "clone",
            "-q",
            "--mirror",
            &support::fixtures()
                .join("repos/books.bundle")
                .to_string_lossy(),
            "books.git",
        ],
    );
    git(
        &books_srv.join("books.git"),
        &["symbolic-ref", "HEAD", "refs/heads/main"],
    );
    let books_provider = format!(
        "[providers.f]\nkind = \"git\"\nurl = \"file://{}\"\nrepos = [\"books.git\"]\n",
        books_srv.display()
    );
    let books_lite = config(root, "books-sqlite", None, "", &books_provider);
    let books_lite_time = timed_modelmirror(&books_lite, &["sync"]);
    let books_pg_url = pg.database("bench_books");
    let books_pg = config(
        root,
        "books-postgres",
        Some(&books_pg_url),
        "",
        &books_provider,
    );
    let books_pg_time = timed_modelmirror(&books_pg, &["sync"]);
    // Rows written: each model version, and the entity and attribute rows it stored (those of a version
    // replaced later included).
    let versions: i64 = pg
        .client(&books_pg_url)
        .query_one(
            "SELECT (COUNT(*) + SUM(COALESCE(entity_count, 0) + COALESCE(attribute_count, 0)))::BIGINT
             FROM model_versions",
            &[],
        )
        .expect("count")
        .get(0);

    // `run`: the 500 repositories imported by one instance, then by three sharing the database (each at
    // concurrency 4, as each would run on a host of its own; here they share the same cores); then the same
    // instances started again, their startup polls a cycle with nothing new.
    let yearly = "schedule = \"0 0 1 1 *\"\n";
    let imported = |url: &str| -> i64 {
        pg.client(url)
            .query_one(
                "SELECT COUNT(*) FROM repos WHERE commit_id IS NOT NULL",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(0)
    };
    let mut run_rows = Vec::new();
    for n in [1usize, 3] {
        let url = pg.database(&format!("bench_run_{n}"));
        let configs: Vec<PathBuf> = (0..n)
            .map(|i| {
                config(
                    root,
                    &format!("run-{n}-{i}"),
                    Some(&url),
                    &format!("{yearly}instance_name = \"i{i}\"\n"),
                    &provider,
                )
            })
            .collect();
        let started = Instant::now();
        let daemons = Daemons::start(&configs);
        while imported(&url) < repos as i64 {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "run did not import"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = started.elapsed();
        daemons.stop();
        let shares: Vec<String> = pg
            .client(&url)
            .query(
                "SELECT instance, COUNT(*) FROM polls WHERE result = 'updated' GROUP BY 1 ORDER BY 1",
                &[],
            )
            .expect("polls")
            .iter()
            .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        // Started again: each repository's startup poll finds nothing new.
        let before: i64 = pg
            .client(&url)
            .query_one("SELECT COALESCE(MAX(id), 0) FROM polls", &[])
            .expect("polls")
            .get(0);
        let cycled = |url: &str| -> (i64, i64) {
            pg.client(url)
                .query_one(
                    "SELECT COUNT(DISTINCT repo_id), COALESCE(SUM(duration_ms), 0)::BIGINT FROM polls
                     WHERE id > $1 AND result = 'unchanged'",
                    &[&before],
                )
                .map(|r| (r.get(0), r.get(1)))
                .unwrap_or((0, 0))
        };
        let started = Instant::now();
        let daemons = Daemons::start(&configs);
        while cycled(&url).0 < repos as i64 {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "run did not poll every repository"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let cycle = started.elapsed();
        daemons.stop();
        let busy = Duration::from_millis(cycled(&url).1 as u64);
        run_rows.push((n, took, shares.join(", "), cycle, busy));
    }

    println!(
        "| {repos} repositories, concurrency {CONCURRENCY} | SQLite | PostgreSQL | baseline |"
    );
    println!("|---|---|---|---|");
    println!(
        "| `sync`, initial import | {} | {} | `git clone --bare` each: {} |",
        secs(lite_import),
        secs(pg_import),
        secs(clone)
    );
    println!(
        "| `sync`, no-change cycle | {} | {} | `git ls-remote` each: {} |",
        secs(lite_cycle),
        secs(pg_cycle),
        secs(ls_remote)
    );
    println!(
        "| books history replayed (42 commits, {versions} version, entity and attribute rows) | {} ({:.0} rows/s) | {} ({:.0} rows/s) | |",
        secs(books_lite_time),
        versions as f64 / books_lite_time.as_secs_f64(),
        secs(books_pg_time),
        versions as f64 / books_pg_time.as_secs_f64()
    );
    for (n, took, shares, _, _) in &run_rows {
        println!(
            "| `run`, {n} instance(s) on one database: all imported | | {} (polls per instance: {shares}) | |",
            secs(*took)
        );
    }
    for (n, _, _, cycle, busy) in &run_rows {
        println!(
            "| `run`, {n} instance(s) started again: every repository's startup poll done, nothing new (startups spread over 5 s) | | {} (polls' own time together: {}) | |",
            secs(*cycle),
            secs(*busy)
        );
    }
}
