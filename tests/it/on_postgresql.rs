//! The catalog in PostgreSQL: the same answers as SQLite on the real fixture histories (a differential
//! test), `check` saying what is wrong, the password kept out of everything, and a server restart under a
//! running service. (The catalog suite itself runs on both engines: see `catalog.rs`.)

use std::collections::BTreeSet;
use std::process::Stdio;

use serde_json::Value;

use crate::git_http::Auth;
use crate::pg::PgDb;
use crate::support::*;

/// An environment of `engine` holding the fixture `bundle` as `team/<bundle>.git`, synced.
fn synced(engine: Engine, bundle: &str) -> (Env, String) {
    let env = Env::on(engine, Auth::None);
    env.repo_from_bundle(&format!("team/{bundle}.git"), bundle);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"team/{bundle}.git\"]\n",
        env.server.url()
    ));
    env.run(&["sync"]).ok();
    (env, format!("g/team/{bundle}"))
}

/// What a search finds, as a set (the engines rank differently; they must find the same things).
fn found(env: &Env, query: &str) -> BTreeSet<String> {
    env.run(&["search", query, "--json", "--limit", "5000"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{} {} {} {}",
                h["kind"], h["path"], h["entity"], h["attribute"]
            )
        })
        .collect()
}

/// Both fixture histories replayed into SQLite and into PostgreSQL: `models`, `show`, `history`, `changes`
/// answer the same, and searches find the same hits (the best hit of each engine is among the other's).
#[test]
fn sqlite_and_postgresql_answer_the_same_on_the_fixture_histories() {
    for bundle in ["books", "playground-models"] {
        let (lite, id) = synced(Engine::Sqlite, bundle);
        let (pg, _) = synced(Engine::Postgres, bundle);
        let both = |args: &[&str]| -> (Value, Value) {
            (lite.run(args).ok().json(), pg.run(args).ok().json())
        };
        let (models, pg_models) = both(&["models", "--json"]);
        assert_eq!(models, pg_models, "{bundle}: models");
        let models = models.as_array().unwrap();
        assert!(models.len() > 5, "{bundle}: {} models", models.len());
        let mut compared_changes = 0;
        for (i, m) in models.iter().enumerate() {
            let path = m["path"].as_str().unwrap();
            let (h, pg_h) = both(&["history", &id, path, "--json"]);
            assert_eq!(h, pg_h, "{bundle}: history of {path}");
            if i % 4 == 0 {
                let (s, pg_s) = both(&["show", &id, path, "--json"]);
                assert_eq!(s, pg_s, "{bundle}: show {path}");
            }
            let versions = h.as_array().unwrap();
            if versions.len() >= 2 && compared_changes < 15 {
                let (from, to) = (
                    versions[1]["commit"].as_str().unwrap(),
                    versions[0]["commit"].as_str().unwrap(),
                );
                let args = ["changes", &id, path, "--from", from, "--to", to, "--json"];
                let (c, pg_c) = both(&args);
                assert_eq!(c, pg_c, "{bundle}: changes of {path}");
                compared_changes += 1;
            }
        }
        assert!(compared_changes > 0, "{bundle}: no model with two versions");
        for query in [
            "customer",
            "pet name",
            "order_id",
            "vaccin",
            "id",
            "address street",
        ] {
            let (a, b) = (found(&lite, query), found(&pg, query));
            assert!(
                a == b,
                "{bundle}: search {query:?}: only SQLite finds {:#?}; only PostgreSQL finds {:#?}",
                a.difference(&b).collect::<Vec<_>>(),
                b.difference(&a).collect::<Vec<_>>()
            );
            let top = |env: &Env| {
                env.run(&["search", query, "--json", "--limit", "10"])
                    .ok()
                    .json()
            };
            let (t, pg_t) = (top(&lite), top(&pg));
            assert_eq!(
                t.as_array().unwrap().len(),
                pg_t.as_array().unwrap().len(),
                "{bundle}: {query:?}"
            );
        }
    }
}

/// `check` connects and says what is wrong: a wrong password, a missing database, no server.
#[test]
fn check_says_what_is_wrong_with_a_postgresql_database() {
    let db = PgDb::new();
    let env = Env::new(Auth::None);
    let config = |url: &str, password: &str| {
        std::fs::write(env.path().join("pw"), password).unwrap();
        env.write_config(&format!(
            "database = {url:?}\ndatabase_password_file = \"pw\"\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = []\n",
            env.server.url()
        ));
    };
    let check = || env.run(&["check"]);
    config(&db.url, &db.password);
    let ok = check();
    assert!(
        ok.stdout.contains("opens and is migrated") && ok.code == 0,
        "{ok:?}"
    );
    config(&db.url, "not-the-password");
    let wrong = check();
    assert_ne!(wrong.code, 0);
    assert!(
        wrong.stdout.contains("password authentication failed")
            && wrong.stdout.contains("database_password_file"),
        "{wrong:?}"
    );
    assert!(!wrong.stdout.contains("not-the-password"), "{wrong:?}");
    let missing = db.url.rsplit_once('/').unwrap().0.to_string() + "/no_such_db";
    config(&missing, &db.password);
    let gone = check();
    assert!(
        gone.stdout.contains("does not exist") && gone.stdout.contains("createdb"),
        "{gone:?}"
    );
    let closed_port = free_port();
    config(
        &format!("postgresql://modelmirror@127.0.0.1:{closed_port}/x"),
        &db.password,
    );
    let down = check();
    assert!(down.stdout.contains("could not be reached"), "{down:?}");
}

/// The password reaches no output, no file in the state folder and no row of the catalog.
#[test]
fn the_database_password_never_leaks() {
    let (env, id) = synced(Engine::Postgres, "books");
    let pg = env.pg.as_ref().unwrap();
    let outputs: Vec<Run> = [
        vec!["status", "--json"],
        vec!["status"],
        vec!["check"],
        vec!["models", "--json"],
        vec!["events", "--json"],
        vec![
            "history",
            &id,
            "MongoDB/Figure 006 - Subtyping.hck.json",
            "--json",
        ],
    ]
    .iter()
    .map(|a| match a[0] {
        // `check` may warn (no network checks here); the others must work on PostgreSQL.
        "check" => env.run(a),
        _ => env.run(a).ok(),
    })
    .collect();
    let texts: Vec<&str> = outputs
        .iter()
        .flat_map(|r| [r.stdout.as_str(), r.stderr.as_str()])
        .collect();
    let hits = find_secret(env.path(), &pg.password, &texts);
    assert!(hits.is_empty(), "the password is in {hits:?}");
    let mut client = pg.client();
    for row in client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .unwrap()
    {
        let table: String = row.get(0);
        let n: i64 = client
            .query_one(
                &format!("SELECT COUNT(*) FROM {table} t WHERE t::text LIKE '%' || $1 || '%'"),
                &[&pg.password],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "the password is in table {table}");
    }
}

/// A PostgreSQL restart while the service runs: the failures are logged, the service keeps running, and a
/// commit pushed while the server was down is in the catalog once it is back.
#[test]
fn a_postgresql_restart_under_a_running_service() {
    let server = tempfile::tempdir().unwrap();
    let dir = server.path().join("pg");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg.sh");
    let started = std::process::Command::new(&script)
        .args(["start", &dir.to_string_lossy()])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "scripts/pg.sh start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _stop = Stopper(script.clone(), dir.clone());
    let vars: std::collections::HashMap<String, String> = String::from_utf8_lossy(&started.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (url, password) = (
        vars["MODELMIRROR_TEST_PG_URL"].clone(),
        vars["MODELMIRROR_TEST_PG_PASSWORD"].clone(),
    );
    let env = Env::new(Auth::None);
    std::fs::write(env.path().join("pw"), &password).unwrap();
    let (_, work) = env.one_model_repo("t/r.git");
    env.write_config(&format!(
        "database = {url:?}\ndatabase_password_file = \"pw\"\nschedule = \"* * * * * *\"\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/r.git\"]\n",
        env.server.url()
    ));
    let log = env.path().join("service.log");
    let mut service = Running(
        bin()
            .args([
                "--config",
                &env.path().join("config.toml").to_string_lossy(),
                "run",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let models = || {
        let mut c = crate::pg::client(&url, &password);
        c.query_one("SELECT COUNT(*) FROM models", &[])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    wait_for("the first import", 30, || models() == 1);
    let out = pg_ctl(&dir)
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_ctl stop: {out:?}");
    std::fs::write(
        work.join("second.hck.json"),
        std::fs::read(small_model()).unwrap(),
    )
    .unwrap();
    commit_all(&work, "a second model while the database is down");
    wait_for("a logged database failure", 30, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("PostgreSQL server could not be reached")
    });
    assert!(
        service.try_wait().unwrap().is_none(),
        "the service stopped: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    restart(&dir);
    wait_for("the catalog after the restart", 60, || models() == 2);
    assert!(service.try_wait().unwrap().is_none(), "the service stopped");
}

/// Start the stopped server again with the options it was first started with (port, socket folder).
fn restart(dir: &std::path::Path) {
    let opts = std::fs::read_to_string(dir.join("data/postmaster.opts")).unwrap();
    // postmaster.opts: the server binary, then each option quoted.
    let args: Vec<String> = opts
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    let o = args
        .iter()
        .skip_while(|a| *a != "-p")
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let out = pg_ctl(dir)
        .args(["-w", "-l"])
        .arg(dir.join("server.log"))
        .args(["-o", &o, "start"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_ctl start: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_ctl -D <dir>/data` of the test's own server (as `postgres` when run as root, as the server runs).
fn pg_ctl(dir: &std::path::Path) -> std::process::Command {
    let opts = std::fs::read_to_string(dir.join("data/postmaster.opts")).unwrap();
    let server = opts.split_whitespace().next().unwrap().to_string();
    let pg_ctl = std::path::Path::new(&server).with_file_name("pg_ctl");
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
        c
    } else {
        std::process::Command::new(&pg_ctl)
    };
    cmd.arg("-D").arg(dir.join("data"));
    cmd
}

/// Stops the test's own server.
struct Stopper(std::path::PathBuf, std::path::PathBuf);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0)
            .args(["stop", &self.1.to_string_lossy()])
            .output();
    }
}

/// Three instances on one database, sixty repositories over git smart HTTP: the work is shared, no
/// repository is polled by two instances at once (from the polls table and from the git server's request
/// log, where each instance fetches as its own user), no commit is recorded twice, every repository is
/// current after a push; and with one instance killed (SIGKILL) after a push, the others bring its
/// repositories current once its heartbeat is older than the lease period.
#[test]
fn three_instances_share_sixty_repositories() {
    let env = Env::on(
        Engine::Postgres,
        Auth::AnyUser {
            pass: "git-pass".into(),
        },
    );
    let pg = env.pg.as_ref().unwrap();
    let repos: Vec<String> = (0..60).map(|i| format!("t/r{i:02}.git")).collect();
    let works: Vec<std::path::PathBuf> = repos.iter().map(|r| env.one_model_repo(r).1).collect();
    let list = repos
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let start = |name: &str| {
        let config = env.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\ndatabase = {:?}\ndatabase_password_env = \"MODELMIRROR_TEST_PG_PASSWORD\"\n\
                 instance_name = {name:?}\nlease_seconds = 30\nschedule = \"*/2 * * * * *\"\n\
                 [providers.g]\nkind = \"git\"\nurl = {:?}\nusername = {name:?}\ntoken_env = \"MM_TEST_GIT_PASS\"\n\
                 repos = [{list}]\n",
                env.path().join(format!("state-{name}")),
                pg.url,
                env.server.url()
            ),
        )
        .unwrap();
        Running(
            bin()
                .args(["--config", &config.to_string_lossy(), "run"])
                .env("MM_TEST_GIT_PASS", "git-pass")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(env.path().join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let mut instances: Vec<(String, Running)> = ["a", "b", "c"]
        .iter()
        .map(|n| (n.to_string(), start(n)))
        .collect();
    let current = |heads: &[String]| {
        let mut c = pg.client();
        let Ok(rows) = c.query("SELECT id, commit_id FROM repos", &[]) else {
            return 0;
        };
        let at: std::collections::HashMap<String, Option<String>> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        repos
            .iter()
            .zip(heads)
            .filter(|(r, h)| {
                at.get(&format!("g/{}", r.trim_end_matches(".git")))
                    .is_some_and(|c| c.as_deref() == Some(h.as_str()))
            })
            .count()
    };
    let heads = |works: &[std::path::PathBuf]| -> Vec<String> {
        works
            .iter()
            .map(|w| git(w, &["rev-parse", "HEAD"]).trim().to_string())
            .collect()
    };
    let first = heads(&works);
    wait_for("every repository imported", 120, || current(&first) == 60);
    // Once every instance has seen the others (a heartbeat each, then a supervisor tick), a push to every
    // repository is shared out: each instance brings some current.
    wait_for("three heartbeats", 30, || {
        pg.count("SELECT COUNT(*) FROM instances") == 3
    });
    std::thread::sleep(std::time::Duration::from_secs(11));
    let pushed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for w in &works {
        std::fs::write(w.join("m2.hck.json"), std::fs::read(small_model()).unwrap()).unwrap();
        commit_all(w, "second model");
    }
    let second = heads(&works);
    wait_for("every repository current after a push", 120, || {
        current(&second) == 60
    });
    let by_instance: Vec<(String, i64)> = pg
        .client()
        .query(
            "SELECT instance, COUNT(DISTINCT repo_id) FROM polls WHERE result = 'updated' AND started_at > $1
             GROUP BY 1 ORDER BY 1",
            &[&pushed_at],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(by_instance.len(), 3, "{by_instance:?}");
    assert!(by_instance.iter().all(|(_, n)| *n >= 8), "{by_instance:?}");
    // One instance killed, then a push: the other two take its repositories over.
    let (_, mut b) = instances.remove(1);
    signal(&b, 9);
    let _ = b.wait();
    let killed_at = std::time::SystemTime::now();
    for w in &works {
        std::fs::remove_file(w.join("m2.hck.json")).unwrap();
        commit_all(w, "one model again");
    }
    let third = heads(&works);
    wait_for("every repository current without instance b", 120, || {
        current(&third) == 60
    });
    // The git server's log so far; the polls its requests belong to are all recorded a moment later.
    let log = env.server.git_requests();
    std::thread::sleep(std::time::Duration::from_secs(5));
    // Never two instances on one repository at once; never a commit twice.
    let polls: Vec<(String, String, String, i64)> = pg
        .client()
        .query(
            "SELECT repo_id, instance, started_at, duration_ms FROM polls WHERE instance IS NOT NULL ORDER BY repo_id, started_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let ms = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    for pair in polls.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.0 == b.0 && a.1 != b.1 {
            assert!(
                ms(&a.2) + a.3 <= ms(&b.2),
                "{} polled by {} and {} at once: {a:?} {b:?}",
                a.0,
                a.1,
                b.1
            );
        }
    }
    let twice = pg.count(
        "SELECT COUNT(*) FROM (SELECT repo_id, commit_id FROM sync_steps GROUP BY 1, 2 HAVING COUNT(*) > 1) t",
    );
    assert_eq!(twice, 0, "a commit was recorded twice");
    let models = pg.count("SELECT COUNT(*) FROM models");
    assert_eq!(models, 60);
    drop(instances);
    no_repository_fetched_by_two_at_once(&log, &polls, killed_at);
}

/// From the git server's request log (each instance fetching as its own user): no two instances' requests
/// for one repository were served at the same time, and each request of a surviving instance lies within
/// one of its recorded polls of that repository (so, with the polls of different instances on a repository
/// never overlapping, neither do their fetches). `b` was killed at `killed_at`: its last poll was never
/// recorded, and it made no request after.
fn no_repository_fetched_by_two_at_once(
    log: &[crate::git_http::LoggedRequest],
    polls: &[(String, String, String, i64)],
    killed_at: std::time::SystemTime,
) {
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let mut by_repo: HashMap<String, Vec<&crate::git_http::LoggedRequest>> = HashMap::new();
    for r in log.iter().filter(|r| r.user.is_some()) {
        let repo = r
            .path
            .split(".git/")
            .next()
            .unwrap()
            .trim_start_matches('/');
        by_repo.entry(format!("g/{repo}")).or_default().push(r);
    }
    assert_eq!(
        by_repo.len(),
        60,
        "{:?}",
        by_repo.keys().collect::<Vec<_>>()
    );
    let users: BTreeSet<&str> = log.iter().filter_map(|r| r.user.as_deref()).collect();
    assert_eq!(users, BTreeSet::from(["a", "b", "c"]));
    let at = |t: &str| {
        let ms = chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis();
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    };
    let mut windows: HashMap<(&str, &str), Vec<(SystemTime, SystemTime)>> = HashMap::new();
    for (repo, instance, started, ms) in polls {
        // Times in the table are to the millisecond.
        let from = at(started) - Duration::from_millis(2);
        let to = from + Duration::from_millis(*ms as u64 + 4);
        windows
            .entry((repo, instance))
            .or_default()
            .push((from, to));
    }
    let mut checked = 0;
    for (repo, mut requests) in by_repo {
        requests.sort_by_key(|r| r.started);
        for (i, r) in requests.iter().enumerate() {
            let user = r.user.as_deref().unwrap();
            for other in requests[i + 1..]
                .iter()
                .take_while(|o| o.started < r.finished)
            {
                assert_eq!(
                    other.user.as_deref(),
                    Some(user),
                    "{repo} fetched by two instances at once: {} {} and {} {}",
                    r.method,
                    r.path,
                    other.method,
                    other.path
                );
            }
            if user == "b" {
                assert!(r.started < killed_at, "b made a request after its kill");
                continue;
            }
            let within = windows.get(&(repo.as_str(), user)).is_some_and(|w| {
                w.iter()
                    .any(|(from, to)| *from <= r.started && r.finished <= *to)
            });
            assert!(
                within,
                "{user}'s {} {} on {repo} lies in none of its polls",
                r.method, r.path
            );
            checked += 1;
        }
    }
    assert!(checked > 120, "only {checked} requests checked");
}

/// `migrate --to`: a SQLite catalog with its history copied into an empty PostgreSQL database answers the
/// same there, continues from its recorded commits (nothing fetched again, new rows after the copied ids),
/// and a database that already holds a catalog is refused.
#[test]
fn migrate_copies_a_sqlite_catalog_into_postgresql() {
    let (env, id) = synced(Engine::Sqlite, "books");
    let pg = PgDb::new();
    let path = "MongoDB/Figures 060-106 - Schema Design Patterns section.hck.json";
    let before: Vec<Value> = [
        vec!["models", "--json"],
        vec!["history", &id, path, "--json"],
        vec!["search", "pet name", "--json", "--limit", "5000"],
        vec!["status", "--json"],
    ]
    .iter()
    .map(|a| env.run(a).ok().json())
    .collect();
    let out = env
        .run(&[
            "migrate",
            "--to",
            &pg.url,
            "--password-env",
            "MODELMIRROR_TEST_PG_PASSWORD",
        ])
        .ok()
        .stdout;
    assert!(
        out.contains("copied") && out.contains("model_versions"),
        "{out}"
    );
    assert!(!out.contains(&pg.password), "{out}");
    // The same configuration, on PostgreSQL now.
    let config = std::fs::read_to_string(env.path().join("config.toml")).unwrap();
    std::fs::write(
        env.path().join("config.toml"),
        format!(
            "database = {:?}\ndatabase_password_env = \"MODELMIRROR_TEST_PG_PASSWORD\"\n{config}",
            pg.url
        ),
    )
    .unwrap();
    let after: Vec<Value> = [
        vec!["models", "--json"],
        vec!["history", &id, path, "--json"],
        vec!["search", "pet name", "--json", "--limit", "5000"],
        vec!["status", "--json"],
    ]
    .iter()
    .map(|a| env.run(a).ok().json())
    .collect();
    assert_eq!(before[0], after[0], "models");
    assert_eq!(before[1], after[1], "history");
    let hits = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| format!("{} {} {}", h["path"], h["entity"], h["attribute"]))
            .collect()
    };
    assert_eq!(hits(&before[2]), hits(&after[2]), "search");
    assert_eq!(before[3], after[3], "status");
    env.server.clear_log();
    let again = env.run(&["sync"]).ok().stdout;
    assert!(again.contains("unchanged"), "{again}");
    // New rows continue after the copied ids.
    let srv = env.srv("team/books.git");
    let work = env.path().join("work-books");
    git(
        env.path(),
        &[
            "clone",
            "-q",
            &srv.to_string_lossy(),
            &work.to_string_lossy(),
        ],
    );
    std::fs::copy(small_model(), work.join("new.hck.json")).unwrap();
    commit_all(&work, "one more model");
    let synced_again = env.run(&["sync"]).ok().stdout;
    assert!(synced_again.contains("updated"), "{synced_again}");
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM models WHERE path = 'new.hck.json'"),
        1
    );
    // Into a database that holds a catalog: refused.
    std::fs::write(env.path().join("config.toml"), &config).unwrap();
    let refused = env.run(&[
        "migrate",
        "--to",
        &pg.url,
        "--password-env",
        "MODELMIRROR_TEST_PG_PASSWORD",
    ]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("already holds a catalog"),
        "{refused:?}"
    );
    // Any table holding a row is enough (here only `service`, after a first copy emptied again).
    let other = PgDb::new();
    let migrate = |to: &PgDb| {
        env.run(&[
            "migrate",
            "--to",
            &to.url,
            "--password-env",
            "MODELMIRROR_TEST_PG_PASSWORD",
        ])
    };
    assert_eq!(migrate(&other).code, 0);
    let mut c = other.client();
    let tables: Vec<String> = c
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'
             AND tablename NOT IN ('schema_version', 'catalog_generation')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.batch_execute(&format!(
        "TRUNCATE {} CASCADE; INSERT INTO service (key, value) VALUES ('left', 'over')",
        tables.join(", ")
    ))
    .unwrap();
    let refused = migrate(&other);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("already holds a catalog"),
        "{refused:?}"
    );
    // A password file holding more than the password: refused, and not shown.
    let file = env.path().join("two-lines");
    std::fs::write(&file, "first-line\nsecond-line\n").unwrap();
    let refused = env.run(&[
        "migrate",
        "--to",
        &other.url,
        "--password-file",
        &file.to_string_lossy(),
    ]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("must hold the password alone")
            && !refused.stderr.contains("first-line"),
        "{refused:?}"
    );
}

/// Two instances, a 300-commit history: the instance importing it is killed with SIGKILL in the middle; the
/// other takes the repository over once the lease has expired, finishes it, and no commit is recorded twice.
#[test]
fn an_instance_killed_mid_import_is_finished_by_the_other() {
    let env = Env::on(Engine::Postgres, Auth::None);
    let pg = env.pg.as_ref().unwrap();
    let bare = env.srv("gen/history.git");
    synthetic_history(&bare, 300, 24, 4);
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let start = |name: &str| {
        let config = env.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\ndatabase = {:?}\ndatabase_password_env = \"MODELMIRROR_TEST_PG_PASSWORD\"\n\
                 instance_name = {name:?}\nlease_seconds = 30\nschedule = \"0 0 1 1 *\"\n\
                 [providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"gen/history.git\"]\n",
                env.path().join(format!("state-{name}")),
                pg.url,
                env.server.url()
            ),
        )
        .unwrap();
        Running(
            bin()
                .args(["--config", &config.to_string_lossy(), "run"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut instances = vec![("a", start("a")), ("b", start("b"))];
    let steps = || {
        pg.client()
            .query_one("SELECT COUNT(*) FROM sync_steps", &[])
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    wait_for("the import under way", 60, || steps() >= 20);
    let holder: String = pg
        .client()
        .query_one(
            "SELECT lease_owner FROM leases WHERE name = 'g/gen/history'",
            &[],
        )
        .unwrap()
        .get(0);
    let at = instances.iter().position(|(n, _)| *n == holder).unwrap();
    let (_, mut killed) = instances.remove(at);
    signal(&killed, 9);
    let _ = killed.wait();
    let killed_at = chrono::Utc::now();
    let done_before = steps();
    assert!(done_before < 300, "the import ended before the kill");
    wait_for("the other instance finishing the import", 120, || {
        pg.client()
            .query_one(
                "SELECT commit_id FROM repos WHERE id = 'g/gen/history'",
                &[],
            )
            .map(|r| r.get::<_, Option<String>>(0).as_deref() == Some(head.as_str()))
            .unwrap_or(false)
    });
    let (survivor, _) = &instances[0];
    // The survivor's poll started within the lease period (plus a heartbeat and a retry: 10 s each).
    let first: String = pg
        .client()
        .query_one(
            "SELECT MIN(started_at) FROM polls WHERE instance = $1",
            &[survivor],
        )
        .unwrap()
        .get(0);
    let after = chrono::DateTime::parse_from_rfc3339(&first)
        .unwrap()
        .with_timezone(&chrono::Utc)
        - killed_at;
    assert!(
        after <= chrono::Duration::seconds(30 + 20),
        "{survivor} took the repository over {after} after the kill"
    );
    // Recorded as a takeover (not as a webhook's poll: none was sent).
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM polls WHERE trigger = 'webhook'"),
        0
    );
    let trigger: String = pg
        .client()
        .query_one(
            "SELECT trigger FROM polls WHERE instance = $1 ORDER BY started_at LIMIT 1",
            &[survivor],
        )
        .unwrap()
        .get(0);
    assert_eq!(trigger, "takeover");
    assert_eq!(
        pg.count(
            "SELECT COUNT(*) FROM (SELECT commit_id FROM sync_steps GROUP BY commit_id HAVING COUNT(*) > 1) t"
        ),
        0,
        "a commit was recorded twice"
    );
    assert_eq!(
        pg.count("SELECT COUNT(DISTINCT commit_id) FROM sync_steps"),
        300
    );
    assert_eq!(pg.count("SELECT COUNT(*) FROM models"), 24);
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM search s LEFT JOIN models m ON m.id = s.model_id WHERE m.id IS NULL"),
        0
    );
}

/// An instance stopped (SIGTERM) retires its heartbeat and starts again under its name at once; one killed
/// (SIGKILL) leaves its heartbeat behind, and the process started in its place takes the name over once two
/// heartbeats have passed without it; a second process under the name of one that runs is refused.
#[test]
fn an_instance_restarts_under_its_name_after_a_stop_or_a_kill() {
    let env = Env::on(Engine::Postgres, Auth::None);
    let pg = env.pg.as_ref().unwrap();
    env.one_model_repo("t/one.git");
    let config = env.path().join("a.toml");
    let text = format!(
        "state_dir = {:?}\ndatabase = {:?}\ndatabase_password_env = \"MODELMIRROR_TEST_PG_PASSWORD\"\n\
         instance_name = \"a\"\nschedule = \"0 0 1 1 *\"\n\
         [providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/one.git\"]\n",
        env.path().join("state"),
        pg.url,
        env.server.url()
    );
    std::fs::write(&config, &text).unwrap();
    let log = |n: usize| env.path().join(format!("a{n}.log"));
    let start = |n: usize| {
        Running(
            bin()
                .args(["--config", &config.to_string_lossy(), "run"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log(n)).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let token = || -> Option<String> {
        pg.client()
            .query_opt("SELECT token FROM instances WHERE name = 'a'", &[])
            .ok()
            .flatten()
            .map(|r| r.get(0))
    };
    let mut first = start(1);
    wait_for("the first start", 60, || {
        token().is_some() && env.count("SELECT COUNT(*) FROM models") == 1
    });
    signal(&first, 15);
    assert!(first.wait().unwrap().success());
    assert_eq!(token(), None, "a stopped instance retires its heartbeat");
    // Started again at once: not refused.
    let mut second = start(2);
    wait_for("the second start", 20, || token().is_some());
    let second_token = token();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(second.try_wait().unwrap().is_none(), "{}", read(&log(2)));
    // A reload that renames the instance keeps the running name (the others know it by it) and says so.
    let beat = || -> String {
        pg.client()
            .query_one("SELECT heartbeat_at FROM instances WHERE name = 'a'", &[])
            .map(|r| r.get(0))
            .unwrap_or_default()
    };
    let before = beat();
    std::fs::write(
        &config,
        text.replace("instance_name = \"a\"", "instance_name = \"b\""),
    )
    .unwrap();
    signal(&second, 1);
    wait_for("the reload's warning", 20, || {
        read(&log(2)).contains("instance_name changed to \"b\": restart the service to apply it")
    });
    wait_for("a heartbeat after the reload", 20, || beat() != before);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM instances WHERE name <> 'a'"),
        0,
        "a heartbeat under the new name"
    );
    assert_eq!(token(), second_token);
    std::fs::write(&config, &text).unwrap();
    // Killed: its heartbeat stays; the next process waits two heartbeats, then takes the name over.
    signal(&second, 9);
    let _ = second.wait();
    let mut third = start(3);
    wait_for("the name taken over", 60, || {
        token().is_some_and(|t| Some(t) != second_token)
    });
    assert!(third.try_wait().unwrap().is_none(), "{}", read(&log(3)));
    let said = read(&log(3));
    assert!(
        said.contains("waiting 25s to see whether it still runs")
            && said.contains("took instance_name over"),
        "{said}"
    );
    // A second process under the name of one that runs: refused.
    let mut fourth = start(4);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = fourth.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the duplicate runs");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(status.code(), Some(3), "a duplicate exits with status 3");
    let said = read(&log(4));
    assert!(
        said.contains("another modelmirror process runs as instance_name \"a\""),
        "{said}"
    );
    assert!(
        third.try_wait().unwrap().is_none(),
        "the running one stopped"
    );
    // Its name taken over by another process meanwhile (as when its heartbeats failed for a while): it
    // stops, saying why, rather than run beside the other under one name.
    pg.client()
        .execute(
            "UPDATE instances SET token = 'another', heartbeat_at = '9999-12-31T00:00:00.000Z' WHERE name = 'a'",
            &[],
        )
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = third.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the displaced instance runs on"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        status.code(),
        Some(3),
        "exit status 3: the unit does not restart"
    );
    let said = read(&log(3));
    assert!(
        said.contains("stopping: another modelmirror process runs as instance_name \"a\""),
        "{said}"
    );
    assert_eq!(
        token().as_deref(),
        Some("another"),
        "the displaced process left the other's row alone"
    );
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `sync` beside running instances polls a repository under its lease: while another process holds it,
/// `sync` waits (here until the lease expires), then polls, writes, and gives its own lease back.
#[test]
fn sync_waits_for_a_lease_another_process_holds() {
    let env = Env::on(Engine::Postgres, Auth::None);
    let (_, work) = env.one_model_repo("t/one.git");
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/one.git\"]\n",
        env.server.url()
    ));
    env.run(&["sync"]).ok();
    std::fs::copy(small_model(), work.join("second.hck.json")).unwrap();
    let pushed = commit_all(&work, "a second model");
    let pg = env.pg.as_ref().unwrap();
    let expires: String = pg
        .client()
        .query_one(
            "INSERT INTO leases (name, lease_owner, lease_token, lease_expires_at)
             VALUES ('g/t/one', 'elsewhere', 'another-process', modelmirror_time(now() + interval '4 seconds'))
             RETURNING lease_expires_at",
            &[],
        )
        .unwrap()
        .get(0);
    let run = env.run(&["sync"]).ok();
    assert!(run.stdout.contains("updated"), "{}", run.stdout);
    assert_eq!(
        env.rows("SELECT commit_id FROM repos WHERE id = 'g/t/one'"),
        [pushed]
    );
    let started = env.rows("SELECT started_at FROM polls ORDER BY id DESC LIMIT 1");
    assert!(
        started[0] >= expires,
        "polled at {} while another process held the lease until {expires}",
        started[0]
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM leases"),
        0,
        "its lease given back"
    );
}
