//! What the git-serving benchmarks share: running git, building repositories with `git fast-import`, the
//! fixture folder, and medians. Each benchmark uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The search benchmarks' queries: common words, prefixes, two words, and one that finds nothing.
pub const QUERIES: [&str; 8] = [
    "pet name",
    "vaccin",
    "customer",
    "order line",
    "account number",
    "breed",
    "date",
    "zzzz",
];

/// `modelmirror --config CONFIG ARGS…`, run to its end: how long it took. Panics with its stderr when it fails.
pub fn timed_modelmirror(config: &Path, args: &[&str]) -> Duration {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_modelmirror"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("modelmirror runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// `modelmirror --config CONFIG run` in the background, its output discarded.
pub fn start_daemon(config: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_modelmirror"))
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("modelmirror run")
}

/// `../shared/fixtures` beside the project.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures")
}

/// Run git in `dir` with a fixed identity; its trimmed stdout. Panics when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Create the bare repository `bare` (if `init`) and feed `stream` to `git fast-import` in it.
pub fn fast_import(bare: &Path, init: bool, stream: impl FnOnce(&mut dyn Write)) {
    if init {
        std::fs::create_dir_all(bare).expect("mkdir");
        git(bare, &["init", "-q", "--bare", "-b", "main"]);
    }
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .stdin(Stdio::piped())
        .spawn()
        .expect("fast-import");
    let mut stdin = child.stdin.take().expect("stdin");
    stream(&mut stdin);
    drop(stdin);
    assert!(child.wait().expect("fast-import").success());
}

/// `repos` bare repositories `srv/r0.git` … each holding one real fixture model in one commit.
pub fn small_repos(root: &Path, srv: &Path, repos: usize) {
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).expect("mkdir");
    std::fs::create_dir_all(srv).expect("mkdir");
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        seed.join("m.hck.json"),
    )
    .expect("fixture model");
    git(&seed, &["add", "-A"]);
    git(&seed, &["commit", "-q", "-m", "model"]);
    git(
        srv,
        &["clone", "-q", "--bare", &seed.to_string_lossy(), "r0.git"],
    );
    for i in 1..repos {
        let ok = Command::new("cp")
            .args(["-r", "r0.git", &format!("r{i}.git")])
            .current_dir(srv)
            .status()
            .expect("cp");
        assert!(ok.success());
    }
}

/// An environment variable as a number, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The target column's verdict.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
