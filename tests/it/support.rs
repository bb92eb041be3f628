//! Test fixtures: temporary server roots and state folders, the git CLI for building histories, the
//! modelmirror binary as a real process, and the expected catalog of a commit computed independently.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rusqlite::{Connection, types::ValueRef};
use tempfile::TempDir;

use crate::counting;
use crate::git_http::{Auth, GitHttpServer};
use crate::pg::PgDb;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

pub fn bundle(name: &str) -> PathBuf {
    let p = fixtures().join("repos").join(format!("{name}.bundle"));
    assert!(
        p.is_file(),
        "fixture {} is missing: the tests need ../shared beside the project",
        p.display()
    );
    p
}

/// Run git (the CLI, independent of libgit2) and return its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The output of one modelmirror command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: {self:#?}");
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_modelmirror"));
    c.env_remove("MODELMIRROR_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    // The machine's proxy would stand between the daemon and the test servers (tests that want one set it).
    for v in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

/// A server root with bare repositories, a git smart-HTTP server in front of it, and a state folder.
pub struct Env {
    pub dir: TempDir,
    pub server: GitHttpServer,
    /// The catalog's PostgreSQL database, when the environment uses one instead of SQLite.
    pub pg: Option<PgDb>,
}

/// A test run on both engines, as `name::sqlite` and `name::postgresql`: the catalog answers the same.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::support::Engine;
            #[test]
            fn sqlite() {
                super::$name(Engine::Sqlite)
            }
            #[test]
            fn postgresql() {
                super::$name(Engine::Postgres)
            }
        }
    )*};
}
pub(crate) use on_both_engines;

/// Which engine holds an environment's catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Env {
    pub fn new(auth: Auth) -> Env {
        Env::on(Engine::Sqlite, auth)
    }

    /// An environment whose catalog is in `engine` (PostgreSQL: a new database of its own).
    pub fn on(engine: Engine, auth: Auth) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("srv")).expect("srv");
        let server = GitHttpServer::start(&dir.path().join("srv"), auth);
        let pg = (engine == Engine::Postgres).then(PgDb::new);
        Env { dir, server, pg }
    }

    /// One number from the catalog, whichever engine holds it.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.pg {
            Some(pg) => pg.count(sql),
            None => self
                .db()
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// Every row `sql` returns, each as its columns' text (`NULL` for none) joined by `|`, whichever engine
    /// holds the catalog. Values may be written differently by the two engines: compare rows of one.
    pub fn rows(&self, sql: &str) -> Vec<String> {
        match &self.pg {
            Some(pg) => pg
                .client()
                .simple_query(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("NULL").to_string())
                            .collect::<Vec<_>>()
                            .join("|"),
                    ),
                    _ => None,
                })
                .collect(),
            None => {
                let db = self.db();
                let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    Ok((0..n)
                        .map(|i| match r.get_ref(i).unwrap() {
                            ValueRef::Null => "NULL".to_string(),
                            ValueRef::Integer(n) => n.to_string(),
                            ValueRef::Real(x) => x.to_string(),
                            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                            ValueRef::Blob(b) => format!("{b:02x?}"),
                        })
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .map(Result::unwrap)
                .collect()
            }
        }
    }

    /// Runs `sql` (statements separated by `;`) on the catalog, whichever engine holds it.
    pub fn execute(&self, sql: &str) {
        let done = match &self.pg {
            Some(pg) => pg.client().batch_execute(sql).map_err(|e| e.to_string()),
            None => self.db().execute_batch(sql).map_err(|e| e.to_string()),
        };
        if let Err(e) = done {
            panic!("{sql}: {e}")
        }
    }

    /// The catalog gone, as if its database were deleted: SQLite's files removed, PostgreSQL's schema dropped
    /// and made again empty. The mirrors stay.
    pub fn wipe_catalog(&self) {
        match &self.pg {
            Some(_) => self.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public"),
            None => {
                for f in ["modelmirror.db", "modelmirror.db-wal", "modelmirror.db-shm"] {
                    let _ = std::fs::remove_file(self.path().join("state").join(f));
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the bare repository `rel` (e.g. `team/books.git`) lives on the server.
    pub fn srv(&self, rel: &str) -> PathBuf {
        self.path().join("srv").join(rel)
    }

    /// A server repository holding all objects of a fixture bundle, its `main` reset to `commit` (or left
    /// at the bundle's head).
    pub fn repo_from_bundle(&self, rel: &str, name: &str) -> PathBuf {
        let dest = self.srv(rel);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        git(
            self.path(),
            &[
                "clone",
                "-q",
                "--mirror",
                &bundle(name).to_string_lossy(),
                &dest.to_string_lossy(),
            ],
        );
        git(&dest, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        dest
    }

    /// A repository whose `main` holds one small model, `m.hck.json` (see [`small_model`]), plus a working
    /// clone of it to make commits in.
    pub fn one_model_repo(&self, rel: &str) -> (PathBuf, PathBuf) {
        let (bare, work) = self.new_repo(rel);
        std::fs::copy(small_model(), work.join("m.hck.json")).expect("copy the model");
        commit_all(&work, "model");
        (bare, work)
    }

    /// An empty bare repository plus a working clone of it to make commits in.
    pub fn new_repo(&self, rel: &str) -> (PathBuf, PathBuf) {
        let bare = self.srv(rel);
        std::fs::create_dir_all(&bare).expect("mkdir");
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let work = self.path().join("work").join(rel);
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", &bare.to_string_lossy()]);
        (bare, work)
    }

    /// Write the main config file (with `state_dir` in this environment) plus `extra`.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let p = self.path().join("config.toml");
        let database = match &self.pg {
            Some(pg) => format!(
                "database = {:?}\ndatabase_password_env = \"MODELMIRROR_TEST_PG_PASSWORD\"\n",
                pg.url
            ),
            None => String::new(),
        };
        let text = format!(
            "state_dir = {:?}\n{database}{extra}",
            self.path().join("state").to_string_lossy()
        );
        std::fs::write(&p, text).expect("write config");
        p
    }

    pub fn db_path(&self) -> PathBuf {
        self.path().join("state").join("modelmirror.db")
    }

    pub fn db(&self) -> Connection {
        Connection::open(self.db_path()).expect("open db")
    }

    /// The database at another path (`database = ...` in the configuration).
    pub fn db_at(&self, path: &Path) -> Connection {
        Connection::open(path).expect("open db")
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = bin()
            .arg("--config")
            .arg(self.path().join("config.toml"))
            .args(args)
            .output()
            .expect("modelmirror runs");
        Run::from(out)
    }
}

/// Commit every change in a working tree and push it to the bare repository.
pub fn commit_all(work: &Path, message: &str) -> String {
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", message]);
    git(work, &["push", "-q", "-f", "origin", "HEAD:main"]);
    git(work, &["rev-parse", "HEAD"]).trim().to_string()
}

/// What the catalog must hold for one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    pub blob: String,
    pub status: String,
    pub entities: i64,
    pub attributes: i64,
}

/// The catalog of a commit, computed with the git CLI and the test's own counting: path → expectation.
pub fn expected_catalog(repo: &Path, commit: &str, max_bytes: u64) -> BTreeMap<String, Expected> {
    let listing = git(repo, &["ls-tree", "-r", "-z", "--long", commit]);
    let mut out = BTreeMap::new();
    for entry in listing.split('\0').filter(|e| !e.is_empty()) {
        let (meta, path) = entry.split_once('\t').expect("ls-tree entry");
        let fields: Vec<&str> = meta.split_whitespace().collect();
        let (mode, kind, blob, size) = (fields[0], fields[1], fields[2], fields[3]);
        if kind != "blob" || !path.ends_with(".json") || mode == "120000" {
            continue;
        }
        let size: u64 = size.parse().expect("size");
        if size > max_bytes {
            out.insert(
                path.to_string(),
                Expected {
                    blob: blob.into(),
                    status: "skipped".into(),
                    entities: 0,
                    attributes: 0,
                },
            );
            continue;
        }
        let bytes = Command::new("git")
            .args(["cat-file", "blob", blob])
            .current_dir(repo)
            .output()
            .expect("git cat-file")
            .stdout;
        let text = String::from_utf8_lossy(&bytes);
        let claims = text
            .trim_start_matches('\u{feff}')
            .trim_start()
            .strip_prefix('{')
            .is_some_and(|r| r.trim_start().starts_with("\"modelName\""));
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if counting::is_model(&v) => {
                let (e, a) = counting::counts(&v);
                out.insert(
                    path.to_string(),
                    Expected {
                        blob: blob.into(),
                        status: "ok".into(),
                        entities: e as i64,
                        attributes: a as i64,
                    },
                );
            }
            _ if claims => {
                out.insert(
                    path.to_string(),
                    Expected {
                        blob: blob.into(),
                        status: "error".into(),
                        entities: 0,
                        attributes: 0,
                    },
                );
            }
            _ => {}
        }
    }
    out
}

/// What the database holds for a repository: path → (blob, status, entities, attributes).
pub fn stored_catalog(db: &Connection, repo_id: &str) -> BTreeMap<String, Expected> {
    let mut stmt = db
        .prepare("SELECT path, blob, status, entity_count, attribute_count FROM models WHERE repo_id = ?1")
        .expect("prepare");
    stmt.query_map([repo_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Expected {
                blob: r.get(1)?,
                status: r.get(2)?,
                entities: r.get(3)?,
                attributes: r.get(4)?,
            },
        ))
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// The small fixture model most tests start from.
pub fn small_model() -> PathBuf {
    fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json")
}

/// Wait until `cond` holds, checking every 100 ms; panic naming `what` after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The repository's processed commit, or `None` while there is no database, no row or no commit yet (for
/// polling a running daemon).
pub fn current_commit(env: &Env, repo_id: &str) -> Option<String> {
    if !env.db_path().exists() {
        return None;
    }
    env.db()
        .query_row(
            "SELECT commit_id FROM repos WHERE id = ?1",
            [repo_id],
            |r| r.get(0),
        )
        .ok()
        .flatten()
}

pub fn processed_commit(db: &Connection, repo_id: &str) -> Option<String> {
    db.query_row(
        "SELECT commit_id FROM repos WHERE id = ?1",
        [repo_id],
        |r| r.get(0),
    )
    .expect("repo row")
}

/// Assert that the catalog equals the tree of `commit`, listing the differences when not.
pub fn assert_catalog_is(
    env_repo: &Path,
    db: &Connection,
    repo_id: &str,
    commit: &str,
    max_bytes: u64,
) {
    let want = expected_catalog(env_repo, commit, max_bytes);
    let got = stored_catalog(db, repo_id);
    if want != got {
        let mut diff = Vec::new();
        for (p, w) in &want {
            match got.get(p) {
                None => diff.push(format!("missing {p}")),
                Some(g) if g != w => diff.push(format!("{p}: want {w:?}, got {g:?}")),
                _ => {}
            }
        }
        for p in got.keys().filter(|p| !want.contains_key(*p)) {
            diff.push(format!("unexpected {p}"));
        }
        panic!(
            "catalog of {repo_id} differs from commit {commit}:\n{}",
            diff.join("\n")
        );
    }
}

/// Every first-parent commit of `reference`, oldest first.
pub fn first_parent_history(repo: &Path, reference: &str) -> Vec<String> {
    git(
        repo,
        &["rev-list", "--first-parent", "--reverse", reference],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Search every file below `dir` (and the given extra texts) for `needle`; return where it was found.
pub fn find_secret(dir: &Path, needle: &str, texts: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        if t.contains(needle) {
            hits.push(format!("output #{i}"));
        }
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// The books fixture models under 120 KB, in file-name order.
fn fixture_texts() -> Vec<String> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(fixtures().join("models/books"))
        .expect("fixture models")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.metadata().map(|m| m.len() < 120_000).unwrap_or(false))
        .collect();
    sources.sort();
    sources
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect()
}

/// A new bare repository at `bare` and a `git fast-import` into it, with its input.
fn fast_import(bare: &Path) -> (std::process::Child, std::process::ChildStdin) {
    std::fs::create_dir_all(bare).expect("mkdir");
    git(bare, &["init", "-q", "--bare", "-b", "main"]);
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .stdin(Stdio::piped())
        .spawn()
        .expect("fast-import");
    let stdin = child.stdin.take().expect("stdin");
    (child, stdin)
}

/// Build a long synthetic history fast with `git fast-import`: `commits` commits on `main`, each rewriting
/// `per_commit` of `files` models made from real fixture models (their names changed so every blob differs).
pub fn synthetic_history(bare: &Path, commits: usize, files: usize, per_commit: usize) {
    use std::io::Write;
    let texts: Vec<String> = fixture_texts().into_iter().take(files).collect();
    assert_eq!(texts.len(), files, "enough fixture models");
    let (mut child, mut stdin) = fast_import(bare);
    let mut mark = 0usize;
    for c in 0..commits {
        let mut changes = Vec::new();
        let touched: Vec<usize> = if c == 0 {
            (0..files).collect()
        } else {
            (0..per_commit).map(|k| (c * 7 + k * 13) % files).collect()
        };
        for f in touched {
            mark += 1;
            let body =
                texts[f].replacen("\"modelName\": \"", &format!("\"modelName\": \"c{c} "), 1);
            write!(stdin, "blob\nmark :{mark}\ndata {}\n{body}\n", body.len()).expect("write");
            changes.push(format!("M 100644 :{mark} models/m{f:03}.hck.json"));
        }
        let msg = format!("commit {c}");
        let t = 1_700_000_000 + c * 60;
        write!(
            stdin,
            "commit refs/heads/main\nauthor Gen <gen@example.com> {t} +0000\ncommitter Gen <gen@example.com> {t} +0000\ndata {}\n{msg}\n{}\n\n",
            msg.len(),
            changes.join("\n")
        )
        .expect("write");
    }
    drop(stdin);
    assert!(child.wait().expect("fast-import").success());
}

/// A bare repository whose `main` holds `count` models in one commit (`m0000.hck.json` …): the books fixture
/// models, cycled, each under its own model name.
pub fn many_models(bare: &Path, count: usize) {
    use std::io::Write;
    let texts = fixture_texts();
    let (mut child, mut stdin) = fast_import(bare);
    let mut files = Vec::new();
    for i in 0..count {
        let body = texts[i % texts.len()].replacen(
            "\"modelName\": \"",
            &format!("\"modelName\": \"m{i} "),
            1,
        );
        write!(
            stdin,
            "blob\nmark :{}\ndata {}\n{body}\n",
            i + 1,
            body.len()
        )
        .expect("write");
        files.push(format!("M 100644 :{} m{i:04}.hck.json", i + 1));
    }
    write!(
        stdin,
        "commit refs/heads/main\ncommitter Gen <gen@example.com> 1700000000 +0000\ndata 3\nbig\n{}\n\n",
        files.join("\n")
    )
    .expect("write");
    drop(stdin);
    assert!(child.wait().expect("fast-import").success());
}

/// `PRAGMA integrity_check` says ok.
pub fn assert_integrity(db: &Connection) {
    let r: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(r, "ok");
}

pub fn signal(child: &std::process::Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Wait for a child with a deadline; kill it and fail when it does not exit in time.
pub fn wait_with_deadline(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, unless it already ended: a failing assertion
/// leaves no daemon running.
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Bytes the process `pid` has written so far (`wchar` of `/proc/PID/io`): a progress signal that works while
/// nothing is committed yet.
pub fn bytes_written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A size-limited filesystem (tmpfs) mounted for one test, unmounted however the test ends.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` where this process may not mount (not root, no mount namespace rights).
    pub fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }

    /// Make it read only.
    pub fn read_only(&self) {
        let ok = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot remount {} read only", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
