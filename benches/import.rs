//! Import costs, side by side with their baselines, on the same local git smart-HTTP server the tests use:
//! 1. initial import of one repository of 2,000 models (built from the fixture models) vs `git clone --bare`
//!    of it, and through `file://` vs `git clone --bare --no-local`; the real fixture repositories the same
//!    two ways, without and with their history; 2. incremental cost: one commit changing one model, in repositories of 100 and of 10,000 models
//!    (the work must follow the change, not the repository); 3. history replay: the real books history and a
//!    generated 1,000-commit history, commits processed per second. Run with `cargo bench --bench import`.

#[path = "../tests/common/git_http.rs"]
mod git_http;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use git_http::{Auth, GitHttpServer};
use support::{
    env_or, fast_import, fixtures as fixtures_dir, git, median, timed_modelmirror, verdict,
};

fn fixtures() -> Vec<String> {
    let dir = fixtures_dir().join("models/books");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture models")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.metadata().is_ok_and(|m| m.len() < 40_000))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect()
}

/// Fixture text `i` (cycling), made distinct by `tag` in its model name.
fn model_text(texts: &[String], i: usize, tag: &str) -> String {
    texts[i % texts.len()].replacen("\"modelName\": \"", &format!("\"modelName\": \"{tag} "), 1)
}

/// A bare repository at `bare` whose `main` holds `models` models in one commit.
fn build(bare: &Path, models: usize, texts: &[String]) {
    fast_import(bare, true, |out| {
        let mut files = Vec::new();
        for i in 0..models {
            let body = model_text(texts, i, &format!("n{i}"));
            write!(out, "blob\nmark :{}\ndata {}\n{body}\n", i + 1, body.len()).expect("write");
            files.push(format!("M 100644 :{} d{}/m{i:05}.hck.json", i + 1, i % 50));
        }
        write!(
            out,
            "commit refs/heads/main\ncommitter Bench <b@example.com> 1700000000 +0000\ndata 4\nbase\n{}\n\n",
            files.join("\n")
        )
        .expect("write");
    });
}

/// A generated history on `main`: `commits` commits, each rewriting 3 of `files` models.
fn build_history(bare: &Path, commits: usize, files: usize, texts: &[String]) {
    fast_import(bare, true, |out| {
        for c in 0..commits {
            let touched: Vec<usize> = if c == 0 {
                (0..files).collect()
            } else {
                (0..3).map(|k| (c * 7 + k * 13) % files).collect()
            };
            let lines: Vec<String> = touched
                .into_iter()
                .map(|f| {
                    let body = model_text(texts, f, &format!("c{c} f{f}"));
                    format!(
                        "M 100644 inline m{f:03}.hck.json\ndata {}\n{body}",
                        body.len()
                    )
                })
                .collect();
            write!(
                out,
                "commit refs/heads/main\ncommitter Bench <b@example.com> {} +0000\ndata 2\nc\n{}\n\n",
                1_700_000_000 + c * 60,
                lines.join("\n")
            )
            .expect("write");
        }
    });
}

/// One more commit on `main` changing one model.
fn change_one(bare: &Path, texts: &[String], round: usize) {
    fast_import(bare, false, |out| {
        let body = model_text(texts, 0, &format!("changed {round}"));
        write!(
            out,
            "commit refs/heads/main\ncommitter Bench <b@example.com> {} +0000\ndata 6\nchange\nfrom refs/heads/main^0\nM 100644 inline d0/m00000.hck.json\ndata {}\n{body}\n\n",
            1_700_000_100 + round,
            body.len()
        )
        .expect("write");
    });
}

struct Setup {
    _dir: tempfile::TempDir,
    server: GitHttpServer,
    config: PathBuf,
    root: PathBuf,
}

fn setup(repos: &[(&str, usize)], texts: &[String]) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    for (name, models) in repos {
        build(
            &root.join("srv").join(format!("{name}.git")),
            *models,
            texts,
        );
    }
    let server = GitHttpServer::start(&root.join("srv"), Auth::None);
    let list: Vec<String> = repos.iter().map(|(n, _)| format!("\"{n}.git\"")).collect();
    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nlog_level = \"warn\"\n[providers.b]\nkind = \"git\"\nurl = {:?}\nrepos = [{}]\n",
            root.join("state"),
            server.url(),
            list.join(", ")
        ),
    )
    .expect("config");
    Setup {
        _dir: dir,
        server,
        config,
        root,
    }
}

fn sync(s: &Setup, repo: &str) -> Duration {
    timed_modelmirror(&s.config, &["sync", &format!("b/{repo}")])
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let texts = fixtures();
    let big = env_or("MODELS", 2000);
    let large = env_or("LARGE", 10_000);

    // 1. Initial import vs git clone --bare, and libgit2's fetch alone (the floor under modelmirror's time: it
    // must fetch with libgit2). Median of three rounds, each from scratch.
    let s = setup(&[("big", big)], &texts);
    let url = s.server.repo_url("big.git");
    let (mut clones, mut fetches, mut imports) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let dest = s.root.join(format!("clone{round}.git"));
        let started = Instant::now();
        let ok = Command::new("git")
            .args(["clone", "-q", "--bare", &url, &dest.to_string_lossy()])
            .status()
            .expect("git clone");
        assert!(ok.success());
        clones.push(started.elapsed());

        let dest = s.root.join(format!("fetch{round}.git"));
        let started = Instant::now();
        let repo = git2::Repository::init_bare(&dest).expect("init");
        repo.remote_anonymous(&url)
            .expect("remote")
            .fetch(&["+refs/heads/main:refs/heads/main"], None, None)
            .expect("libgit2 fetch");
        fetches.push(started.elapsed());

        let _ = std::fs::remove_dir_all(s.root.join("state"));
        imports.push(sync(&s, "big"));
    }
    let (clone, fetch, import) = (median(clones), median(fetches), median(imports));
    println!("| benchmark | modelmirror | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| initial import, {big} models | {} (complete catalog) | {} (`git clone --bare`) | {:.2}x | at most 1.5x: {} |",
        secs(import),
        secs(clone),
        import.as_secs_f64() / clone.as_secs_f64(),
        verdict(import.as_secs_f64() <= 1.5 * clone.as_secs_f64())
    );
    println!(
        "| libgit2 fetch alone, same repository | {} (no parsing, no database) | {} (`git clone --bare`) | {:.2}x | (the floor under the row above) |",
        secs(fetch),
        secs(clone),
        fetch.as_secs_f64() / clone.as_secs_f64()
    );

    // The same repository through a file:// URL, against `git clone --bare --no-local` (which, like a remote,
    // goes through git's pack protocol).
    let local = s.root.join("local.toml");
    std::fs::write(
        &local,
        format!(
            "state_dir = {:?}\nlog_level = \"warn\"\n[providers.b]\nkind = \"git\"\nurl = {:?}\nrepos = [\"big.git\"]\n",
            s.root.join("lstate"),
            s.root.join("srv")
        ),
    )
    .expect("config");
    let (mut clones, mut imports) = (Vec::new(), Vec::new());
    for round in 0..3 {
        clones.push(clone_no_local(
            &s.root.join("srv/big.git"),
            &s.root.join(format!("nolocal{round}.git")),
        ));
        let _ = std::fs::remove_dir_all(s.root.join("lstate"));
        imports.push(timed_modelmirror(&local, &["sync", "b/big"]));
    }
    let (clone, import) = (median(clones), median(imports));
    println!(
        "| initial import, {big} models, file:// | {} (complete catalog) | {} (`git clone --bare --no-local`) | {:.2}x | at most 2x: {} |",
        secs(import),
        secs(clone),
        import.as_secs_f64() / clone.as_secs_f64(),
        verdict(import.as_secs_f64() <= 2.0 * clone.as_secs_f64())
    );
    drop(s);

    real_repositories();
    if std::env::var("ONLY").is_ok_and(|v| v == "initial") {
        return;
    }

    // 2. Incremental: one changed model in a small and a large repository.
    let s = setup(&[("small", 100), ("large", large)], &texts);
    sync(&s, "small");
    sync(&s, "large");
    let mut times = Vec::new();
    for repo in ["small", "large"] {
        let bare = s.root.join("srv").join(format!("{repo}.git"));
        let mut v = Vec::new();
        for round in 0..5 {
            change_one(&bare, &texts, round);
            v.push(sync(&s, repo));
        }
        times.push(median(v));
    }
    println!(
        "| one changed model: 100 vs {large} models in the repository | {} vs {} | | {:.2}x | at most 1.5x: {} |",
        secs(times[0]),
        secs(times[1]),
        times[1].as_secs_f64() / times[0].as_secs_f64(),
        verdict(times[1].as_secs_f64() <= 1.5 * times[0].as_secs_f64())
    );
    drop(s);

    // 3. History replay (backfill is on by default): every first-parent commit processed in order.
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).expect("mkdir");
    let bundle = fixtures_dir().join("repos/books.bundle");
    git(
        &srv,
        &[
            "clone",
            "-q",
            "--mirror",
            &bundle.to_string_lossy(),
            "books.git",
        ],
    );
    git(
        &srv.join("books.git"),
        &["symbolic-ref", "HEAD", "refs/heads/main"],
    );
    build_history(&srv.join("generated.git"), 1000, 30, &texts);
    let server = GitHttpServer::start(&srv, Auth::None);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\nlog_level = \"warn\"\n[providers.b]\nkind = \"git\"\nurl = {:?}\nrepos = [\"books.git\", \"generated.git\"]\n",
            dir.path().join("state"),
            server.url()
        ),
    )
    .expect("config");
    let s = Setup {
        _dir: dir,
        server,
        config,
        root: PathBuf::new(),
    };
    for repo in ["books", "generated"] {
        let took = sync(&s, repo);
        let commits: f64 = git(
            &s.server.root().join(format!("{repo}.git")),
            &["rev-list", "--first-parent", "--count", "HEAD"],
        )
        .parse()
        .unwrap_or(0.0);
        println!(
            "| history replay, {repo} ({commits} first-parent commits) | {} | | {:.0} commits/s | |",
            secs(took),
            commits / took.as_secs_f64()
        );
    }
}

/// `git clone --bare --no-local SOURCE DEST`: how long it took.
fn clone_no_local(source: &Path, dest: &Path) -> Duration {
    let started = Instant::now();
    let ok = Command::new("git")
        .args(["clone", "-q", "--bare", "--no-local"])
        .arg(source)
        .arg(dest)
        .status()
        .expect("git clone");
    assert!(ok.success());
    started.elapsed()
}

/// The real fixture histories (public Hackolade repositories), over smart HTTP and through file://: the
/// import of the default branch alone (`backfill = false`) against the matching `git clone --bare`, and with
/// its history (`backfill = true`, the default) as a separate figure. Median of three, each from scratch.
fn real_repositories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let srv = root.join("srv");
    std::fs::create_dir_all(&srv).expect("mkdir");
    let repos = ["books", "playground-models"];
    for name in repos {
        let bundle = fixtures_dir().join(format!("repos/{name}.bundle"));
        git(
            &srv,
            &[
                "clone",
                "-q",
                "--bare",
                &bundle.to_string_lossy(),
                &format!("{name}.git"),
            ],
        );
    }
    let server = GitHttpServer::start(&srv, Auth::None);
    let list: Vec<String> = repos.iter().map(|n| format!("\"{n}.git\"")).collect();
    let config = |name: &str, url: String, backfill: bool| {
        let path = root.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "state_dir = {:?}\nlog_level = \"warn\"\nbackfill = {backfill}\n[providers.b]\nkind = \"git\"\nurl = {url:?}\nrepos = [{}]\n",
                root.join("state"),
                list.join(", ")
            ),
        )
        .expect("config");
        path
    };
    let http = server.url();
    let file = srv.to_string_lossy().into_owned();
    let configs = [
        (
            "smart HTTP",
            config("http", http.clone(), false),
            config("http-history", http, true),
        ),
        (
            "file://",
            config("file", file.clone(), false),
            config("file-history", file, true),
        ),
    ];
    for name in repos {
        let models = git(
            &srv.join(format!("{name}.git")),
            &["ls-tree", "-r", "--name-only", "HEAD"],
        )
        .lines()
        .filter(|l| l.ends_with(".json"))
        .count();
        let commits = git(
            &srv.join(format!("{name}.git")),
            &["rev-list", "--first-parent", "--count", "HEAD"],
        );
        for (transport, head_only, history) in &configs {
            let (mut clones, mut heads, mut histories) = (Vec::new(), Vec::new(), Vec::new());
            let mut fetches = Vec::new();
            for round in 0..3 {
                if *transport != "file://" {
                    // libgit2's fetch alone, in this process: the floor under modelmirror's figure.
                    let dest = root.join(format!("fetch-{round}.git"));
                    let _ = std::fs::remove_dir_all(&dest);
                    let started = Instant::now();
                    let repo = git2::Repository::init_bare(&dest).expect("init");
                    repo.remote_anonymous(&server.repo_url(&format!("{name}.git")))
                        .expect("remote")
                        .fetch(&["+refs/heads/main:refs/heads/main"], None, None)
                        .expect("libgit2 fetch");
                    fetches.push(started.elapsed());
                }
                let dest = root.join(format!("clone-{round}.git"));
                let _ = std::fs::remove_dir_all(&dest);
                clones.push(if *transport == "file://" {
                    clone_no_local(&srv.join(format!("{name}.git")), &dest)
                } else {
                    let started = Instant::now();
                    let url = server.repo_url(&format!("{name}.git"));
                    let ok = Command::new("git")
                        .args(["clone", "-q", "--bare", &url, &dest.to_string_lossy()])
                        .status()
                        .expect("git clone");
                    assert!(ok.success());
                    started.elapsed()
                });
                for (config, into) in [(head_only, &mut heads), (history, &mut histories)] {
                    let _ = std::fs::remove_dir_all(root.join("state"));
                    into.push(timed_modelmirror(config, &["sync", &format!("b/{name}")]));
                }
            }
            let (clone, head, history) = (median(clones), median(heads), median(histories));
            let (baseline, target) = if *transport == "file://" {
                ("`git clone --bare --no-local`", 2.0)
            } else {
                ("`git clone --bare`", 1.5)
            };
            let floor = if fetches.is_empty() {
                String::new()
            } else {
                let fetch = median(fetches);
                format!(
                    "; libgit2's fetch alone {} ({:.2}x)",
                    secs(fetch),
                    fetch.as_secs_f64() / clone.as_secs_f64()
                )
            };
            println!(
                "| real repository {name} ({models} JSON files, {commits} first-parent commits), {transport} | {} without history; {} with it (backfill){floor} | {} ({baseline}) | {:.2}x (with history {:.2}x) | at most {target}x: {} |",
                secs(head),
                secs(history),
                secs(clone),
                head.as_secs_f64() / clone.as_secs_f64(),
                history.as_secs_f64() / clone.as_secs_f64(),
                verdict(head.as_secs_f64() <= target * clone.as_secs_f64())
            );
        }
    }
}
