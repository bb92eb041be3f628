//! The command line: where the configuration comes from, what `--json` prints, the demo of the README,
//! and clear errors for bad input.

use crate::git_http::Auth;
use crate::support::*;

#[test]
fn config_flag_before_or_after_the_command_or_from_the_environment() {
    let env = Env::new(Auth::None);
    small_repo(&env);
    let cfg = env
        .path()
        .join("config.toml")
        .to_string_lossy()
        .into_owned();
    let a = bin()
        .args(["--config", &cfg, "status", "--json"])
        .output()
        .unwrap();
    let b = bin()
        .args(["status", "--json", "--config", &cfg])
        .output()
        .unwrap();
    let c = bin()
        .args(["status", "--json"])
        .env("MODELMIRROR_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(a.status.success() && b.status.success() && c.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.stdout, c.stdout);
    let missing = bin()
        .args(["status"])
        .env("MODELMIRROR_CONFIG", "/nonexistent/mm.toml")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("/nonexistent/mm.toml") && err.contains("--config"),
        "{err}"
    );
    // The error once, its cause once, and no claim to show a database that is not there.
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!err.contains("showing"), "{err}");
}

fn small_repo(env: &Env) {
    let (_, work) = env.new_repo("t/r.git");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("m.hck.json"),
    )
    .unwrap();
    commit_all(&work, "model");
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/r.git\"]\n",
        env.server.url()
    ));
}

#[test]
fn json_output_has_the_documented_keys() {
    let env = Env::new(Auth::None);
    small_repo(&env);
    env.run(&["sync", "g/t/r"]).ok();
    let status = env.run(&["status", "--json"]).ok().json();
    let row = &status[0];
    for key in [
        "repo",
        "default_branch",
        "commit",
        "last_check_at",
        "last_change_at",
        "models",
        "errors",
        "last_error",
    ] {
        assert!(row.get(key).is_some(), "status lacks {key}: {row}");
    }
    assert_eq!(row["repo"], "g/t/r");
    assert_eq!(row["default_branch"], "main");
    assert_eq!(row["models"], 1);
    assert!(chrono::DateTime::parse_from_rfc3339(row["last_check_at"].as_str().unwrap()).is_ok());
    let models = env
        .run(&["models", "--json", "--repo", "g/t/r"])
        .ok()
        .json();
    let m = &models[0];
    for key in [
        "repo",
        "path",
        "name",
        "target",
        "entities",
        "attributes",
        "commit",
        "blob",
        "error",
    ] {
        assert!(m.get(key).is_some(), "models lacks {key}: {m}");
    }
    assert_eq!(m["path"], "m.hck.json");
    assert_eq!(m["target"], "Polyglot");
    assert!(m["error"].is_null());
    // A repository nobody configured is a typo, not an empty list.
    let other = env.run(&["models", "--json", "--repo", "g/other"]);
    assert_eq!(other.code, 2, "{other:?}");
    assert!(
        other.stderr.contains("unknown repository `g/other`"),
        "{}",
        other.stderr
    );
}

#[test]
fn unknown_repository_and_bad_config_are_clear_errors() {
    let env = Env::new(Auth::None);
    small_repo(&env);
    let run = env.run(&["sync", "g/nope"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown repository `g/nope`"),
        "{}",
        run.stderr
    );
    std::fs::write(
        env.path().join("config.toml"),
        "[providers.g]\nkind = \"git\"\nrepos = [\"x\"]\nbogus = 1\n",
    )
    .unwrap();
    let run = env.run(&["status"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("config.toml:4:") && run.stderr.contains("bogus"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_validates_and_warns_about_a_literal_token() {
    let env = Env::new(Auth::None);
    small_repo(&env);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nusername = \"u\"\ntoken = \"literal_secret_123\"\nrepos = [\"t/r.git\"]\n",
        env.server.url()
    ));
    let run = env.run(&["check"]).ok();
    assert!(run.stdout.contains("ok      config"), "{}", run.stdout);
    assert!(
        run.stdout.contains("warning") && run.stdout.contains("literal `token`"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("g/t/r: default branch main at "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .trim_end()
            .ends_with("all checks passed, with 2 warning(s)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("literal_secret_123"));
}

/// The README's quick start: the bundled demo configuration works offline through a file:// URL.
#[test]
fn the_bundled_demo_works() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &demo.join("repos/books.git").to_string_lossy(),
            "repos/books.git",
        ],
    );
    // The demo's web catalog, on a free port for the test.
    let shipped = std::fs::read_to_string(demo.join("config.toml")).unwrap();
    assert!(shipped.contains("listen = \"127.0.0.1:8090\""), "{shipped}");
    let port = free_port();
    std::fs::write(
        dir.path().join("config.toml"),
        shipped.replace("127.0.0.1:8090", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let cfg = dir
        .path()
        .join("config.toml")
        .to_string_lossy()
        .into_owned();
    let out = bin().args(["--config", &cfg, "sync"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("demo/books updated: +"));
    let out = bin()
        .args(["--config", &cfg, "models", "--json"])
        .output()
        .unwrap();
    let models: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(models.as_array().unwrap().len(), 141);
    // The README's next step: browse it.
    let _serving = Running(
        bin()
            .args(["--config", &cfg, "serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("modelmirror serve to listen", 20, || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let page = crate::http_client::get(addr, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("demo/books"), "{}", page.text());
}

/// A repository on this machine (`file://`, as in the demo): the new mirror takes the source's object files
/// (hard links here: one filesystem) instead of a pack libgit2 would build by computing deltas; later commits
/// arrive through the usual fetch. Without the shortcut the mirror's pack is a new one, named after its
/// different content, and the inode check fails.
#[test]
fn a_local_repository_is_mirrored_from_its_own_files() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new(Auth::None);
    let source = env.repo_from_bundle("books.git", "books");
    git(&source, &["repack", "-a", "-d", "-q"]);
    local_provider(&env, "books.git");
    let first = env.run(&["sync"]).ok().stdout;
    assert!(first.starts_with("l/books updated: +"), "{first}");
    let packs = |repo: &std::path::Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(repo.join("objects/pack"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.path()
                    .extension()
                    .is_some_and(|x| x == "pack" || x == "idx")
            })
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().ino(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mirror = env.path().join("state/mirrors/l/books.git");
    assert_eq!(packs(&mirror), packs(&source), "the source's own files");
    assert_eq!(packs(&mirror).len(), 2);
    let models = || {
        env.run(&["models", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(models(), 141);

    // A new commit in the source comes through the fetch, into the same catalog.
    let work = env.path().join("work");
    git(
        env.path(),
        &["clone", "-q", &source.to_string_lossy(), "work"],
    );
    std::fs::copy(small_model(), work.join("added.hck.json")).unwrap();
    commit_all(&work, "one more");
    let second = env.run(&["sync"]).ok().stdout;
    assert!(second.starts_with("l/books updated: +1 ~0 -0"), "{second}");
    assert_eq!(models(), 142);
}

/// A `git` provider `l` whose repositories are the server folder's, through `file://`.
fn local_provider(env: &Env, repo: &str) {
    env.write_config(&format!(
        "[providers.l]\nkind = \"git\"\nurl = {:?}\nrepos = [\"{repo}\"]\n",
        env.path().join("srv")
    ));
}

/// Seeding copies every object file of the source, also a push it caught halfway (a commit on another branch
/// whose tree was not yet moved in). When the default branch later moves to that commit, libgit2 finds the
/// commit in the mirror and downloads nothing: the poll must notice the missing tree, say so, empty the mirror
/// and fetch it whole. Without the check every later poll fails on the missing tree.
#[test]
fn a_mirror_never_keeps_a_head_without_its_history() {
    let env = Env::new(Auth::None);
    let (source, work) = env.one_model_repo("r.git");
    git(&work, &["checkout", "-q", "-b", "next"]);
    std::fs::copy(small_model(), work.join("b.hck.json")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "two"]);
    git(&work, &["push", "-q", "origin", "next"]);
    let two = git(&work, &["rev-parse", "HEAD"]).trim().to_string();
    let tree = git(&work, &["rev-parse", "HEAD^{tree}"]).trim().to_string();
    let loose = source.join("objects").join(&tree[..2]).join(&tree[2..]);
    let aside = env.path().join("tree.aside");
    std::fs::rename(&loose, &aside).unwrap();
    local_provider(&env, "r.git");
    env.run(&["sync"]).ok();
    // The push completes, and main moves to its commit.
    std::fs::rename(&aside, &loose).unwrap();
    git(&source, &["update-ref", "refs/heads/main", &two]);
    let second = env.run(&["sync"]).ok();
    assert!(
        second.stderr.contains(&format!(
            "had commit {two} but not every object of its history"
        )) && second
            .stderr
            .contains("the mirror was emptied and is fetched again"),
        "{}",
        second.stderr
    );
    assert!(
        second.stdout.starts_with("l/r updated: +1 ~0 -0"),
        "{}",
        second.stdout
    );
    let third = env.run(&["sync"]).ok().stdout;
    assert!(!third.contains("updated"), "nothing left to do: {third}");
}

/// `token_file = "${CREDENTIALS_DIRECTORY}/NAME"`, as with systemd's `LoadCredential=`.
#[test]
fn token_file_from_a_systemd_credential() {
    let env = Env::new(Auth::basic("oauth2", "cred-token-55"));
    let (_, work) = env.new_repo("g/r.git");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("m.hck.json"),
    )
    .unwrap();
    commit_all(&work, "model");
    let creds = env.path().join("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("gitlab"), "cred-token-55\n").unwrap();
    env.write_config(&format!(
        "[providers.gl]\nkind = \"gitlab\"\nurl = {:?}\ntoken_file = \"${{CREDENTIALS_DIRECTORY}}/gitlab\"\nrepos = [\"g/r\"]\n",
        env.server.url()
    ));
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Without the variable the configuration says which one is missing.
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CREDENTIALS_DIRECTORY is not set"), "{err}");
    // …but reading the catalog outside the service needs no secret.
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "status",
            "--json",
        ])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository the configuration no longer names (dropped from `repos`, or its provider renamed) shows as
/// `unconfigured` with why, its data kept; with the configuration broken, nothing is marked.
#[test]
fn status_marks_repositories_the_configuration_no_longer_names() {
    let env = Env::new(Auth::None);
    for rel in ["t/a.git", "t/b.git"] {
        env.one_model_repo(rel);
    }
    let config = |name: &str, repos: &str| {
        env.write_config(&format!(
            "[providers.{name}]\nkind = \"git\"\nurl = {:?}\nrepos = [{repos}]\n",
            env.server.url()
        ));
    };
    config("g", "\"t/a.git\", \"t/b.git\"");
    env.run(&["sync"]).ok();
    let states = |env: &Env| -> Vec<(String, String)> {
        let json = env.run(&["status", "--json"]).ok().json();
        json.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["repo"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        states(&env),
        [
            ("g/t/a".into(), "active".into()),
            ("g/t/b".into(), "active".into())
        ]
    );
    config("g", "\"t/a.git\"");
    assert_eq!(
        states(&env),
        [
            ("g/t/a".into(), "active".into()),
            ("g/t/b".into(), "unconfigured".into())
        ]
    );
    let text = env.run(&["status"]).ok().stdout;
    assert!(
        text.contains("not in the `repos` of provider `g` any more"),
        "{text}"
    );
    config("renamed", "\"t/a.git\"");
    let all = states(&env);
    assert!(
        all.contains(&("g/t/a".into(), "unconfigured".into()))
            && all.contains(&("g/t/b".into(), "unconfigured".into()))
            && all.contains(&("renamed/t/a".into(), "active".into())),
        "{all:?}"
    );
    let text = env.run(&["status"]).ok().stdout;
    assert!(
        text.contains("provider `g` is not in the configuration"),
        "{text}"
    );
    // The data is kept.
    let models: i64 = env
        .db()
        .query_row(
            "SELECT COUNT(*) FROM models WHERE repo_id = 'g/t/b'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(models, 1);
}
