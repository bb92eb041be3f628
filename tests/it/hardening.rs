//! Hardening (issue 15, items 2–6): secrets in URL user names, control characters in human output, logging
//! filters and settings that used to fail silently, folders where files belong, and a damaged upstream
//! reported as what it is.

use crate::git_http::Auth;
use crate::support::*;

/// A `git` provider over the test's smart-HTTP server with `repos`, after `top` top-level lines.
fn config(env: &Env, repos: &str, top: &str) {
    env.write_config(&format!(
        "{top}\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [{repos}]\n",
        env.server.url()
    ));
}

#[test]
fn a_token_in_the_user_part_of_a_url_is_never_printed() {
    let env = Env::new(Auth::None);
    env.write_config(
        "[providers.g]\nkind = \"git\"\nrepos = [\"http://url-SECRET-777@host/acme/b.git\"]\n",
    );
    for args in [
        &["check"][..],
        &["check", "--json"],
        &["sync"],
        &["status"],
        &["events"],
        &["models"],
    ] {
        let run = env.run(args);
        assert_ne!(run.code, 0, "{args:?} accepts the URL");
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(
            !all.contains("SECRET-777"),
            "{args:?} printed the user name: {all}"
        );
        assert!(
            all.contains("http://***@host/acme/b.git"),
            "{args:?}: {all}"
        );
    }
}

#[test]
fn control_characters_in_file_names_reach_no_terminal() {
    let env = Env::new(Auth::None);
    let (_bare, work) = env.new_repo("t/r.git");
    let evil = "evil\u{1b}]0;owned\u{7}\u{1b}[31m\nsplit.hck.json";
    std::fs::copy(small_model(), work.join(evil)).unwrap();
    commit_all(&work, "a model with a hostile name\u{1b}[2J");
    config(&env, "\"t/r.git\"", "");
    let sync = env.run(&["sync"]).ok();
    let models = env.run(&["models"]).ok();
    let json = env.run(&["models", "--json"]).ok().json();
    let path = json[0]["path"].as_str().unwrap().to_string();
    assert_eq!(path, evil, "--json keeps the name as it is");
    let history = env.run(&["history", "g/t/r", &path]).ok();
    let show = env.run(&["show", "g/t/r", &path]).ok();
    let search = env.run(&["search", "Subtyping"]).ok();
    for (what, out) in [
        ("sync", &sync.stdout),
        ("models", &models.stdout),
        ("history", &history.stdout),
        ("show", &show.stdout),
        ("search", &search.stdout),
    ] {
        assert!(!out.contains('\u{1b}'), "{what} passed an escape: {out:?}");
        assert!(!out.contains('\u{7}'), "{what} passed a bell: {out:?}");
    }
    assert!(
        models
            .stdout
            .contains("evil\\u{1b}]0;owned\\u{7}\\u{1b}[31m\\nsplit.hck.json"),
        "{}",
        models.stdout
    );
    // The table keeps one line per row: the header and the model.
    assert_eq!(models.stdout.lines().count(), 2, "{}", models.stdout);
}

#[test]
fn a_bad_log_level_or_rust_log_is_an_error_not_silence() {
    let env = Env::new(Auth::None);
    env.one_model_repo("t/r.git");
    config(&env, "\"t/r.git\"", "log_level = \"degub\"");
    for args in [&["check"][..], &["run"], &["sync"]] {
        let run = env.run(args);
        assert_eq!(run.code, if args == ["check"] { 1 } else { 2 }, "{args:?}");
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(all.contains("log_level = \"degub\""), "{args:?}: {all}");
        assert!(
            all.contains("error, warn, info, debug, trace, off"),
            "{all}"
        );
    }
    // A filter with directives, every one with its level, is fine.
    config(
        &env,
        "\"t/r.git\"",
        "log_level = \"warn,modelmirror=debug\"",
    );
    env.run(&["check"]).ok();
    // RUST_LOG is checked too, before anything runs.
    config(&env, "\"t/r.git\"", "");
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env("RUST_LOG", "degub")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RUST_LOG = \"degub\""), "{err}");
    // A blank one is no filter: the default (and log_level) apply, and warnings get through.
    config(&env, "\"t/r.git\"", "");
    std::fs::write(
        env.path().join("config.toml"),
        format!(
            "state_dir = {:?}\n[providers.g]\nkind = \"git\"\nurl = {:?}\nusername = \"u\"\ntoken_file = {:?}\nrepos = [\"t/r.git\"]\n",
            env.path().join("state").to_string_lossy(),
            env.server.url(),
            env.path().join("open-token").to_string_lossy()
        ),
    )
    .unwrap();
    // Readable by others: `sync` warns about it.
    std::fs::write(env.path().join("open-token"), "tok").unwrap();
    std::fs::set_permissions(
        env.path().join("open-token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env("RUST_LOG", "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARN") && err.contains("readable by group or others"),
        "a blank RUST_LOG silenced the warning: {err}"
    );
    config(&env, "\"t/r.git\"", "");
    // A valid one lets warnings through.
    let out = bin()
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn silent_fallbacks_and_folders_where_files_belong_are_errors() {
    let env = Env::new(Auth::None);
    env.one_model_repo("t/r.git");
    for (top, key) in [
        (
            "[webhook]\nlisten = \"127.0.0.1:0\"\nqueue_size = 0",
            "[webhook] queue_size must be at least 1",
        ),
        (
            "[webhook]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 0",
            "[webhook] max_body_bytes must be at least 1",
        ),
    ] {
        // Top-level tables go after the provider's in TOML order: write the provider first.
        env.write_config(&format!(
            "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/r.git\"]\nallow_unsigned_webhooks = true\n{top}\n",
            env.server.url()
        ));
        let run = env.run(&["check"]);
        assert_eq!(run.code, 1, "{top}");
        assert!(run.stdout.contains(key), "{}", run.stdout);
    }
    // No provider: check passes with a warning that says so.
    env.write_config("");
    let run = env.run(&["check"]).ok();
    assert!(
        run.stdout.contains("no provider is configured"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .trim_end()
            .ends_with("all checks passed, with 1 warning(s)"),
        "{}",
        run.stdout
    );
    // A database that is a folder.
    let folder = env.path().join("dbdir");
    std::fs::create_dir_all(&folder).unwrap();
    config(
        &env,
        "\"t/r.git\"",
        &format!("database = {:?}", folder.to_string_lossy()),
    );
    let run = env.run(&["sync"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("is a folder"), "{}", run.stderr);
    // A token_file that is a folder is that, not a mode problem.
    let tokens = env.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nusername = \"u\"\ntoken_file = {:?}\nrepos = [\"t/r.git\"]\n",
        env.server.url(),
        tokens.to_string_lossy()
    ));
    let run = env.run(&["check"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("is a folder: point token_file at the file"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("readable by group"), "{}", run.stdout);
}

#[test]
fn a_damaged_upstream_is_not_a_missing_repository() {
    let env = Env::new(Auth::None);
    let (bare, work) = env.one_model_repo("t/r.git");
    std::fs::write(work.join("more.txt"), "more").unwrap();
    commit_all(&work, "more");
    // The server lost the new commit's tree.
    let tree = git(&work, &["rev-parse", "HEAD^{tree}"]).trim().to_string();
    let loose = bare.join("objects").join(&tree[..2]).join(&tree[2..]);
    assert!(
        loose.exists(),
        "the tree is loose on the server: {}",
        loose.display()
    );
    std::fs::remove_file(&loose).unwrap();
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nrepos = [\"file://{}\"]\n",
        bare.display()
    ));
    let run = env.run(&["sync"]);
    assert_eq!(run.code, 1);
    assert!(!run.stdout.contains("not found at"), "{}", run.stdout);
    assert!(
        run.stdout.contains("exists, but it lacks an object"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(&tree[..7]),
        "libgit2's words, with the object: {}",
        run.stdout
    );
}

#[test]
fn a_mirror_of_a_one_file_repository_stays_small() {
    let env = Env::new(Auth::None);
    let (_bare, work) = env.new_repo("t/r.git");
    std::fs::write(work.join("a.txt"), "{}").unwrap();
    commit_all(&work, "one file");
    config(&env, "\"t/r.git\"", "");
    env.run(&["sync"]).ok();
    let mirror = env.path().join("state/mirrors/g/t/r.git");
    assert!(mirror.join("HEAD").exists(), "{}", mirror.display());
    assert!(!mirror.join("hooks").exists(), "no sample hooks");
    // The size as `du --apparent-size` counts it: every file and folder.
    let mut bytes = 0;
    let mut stack = vec![mirror.clone()];
    while let Some(d) = stack.pop() {
        bytes += std::fs::metadata(&d).unwrap().len();
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                bytes += std::fs::metadata(&p).unwrap().len();
            }
        }
    }
    assert!(bytes < 30 * 1024, "{bytes} bytes");
    // And it still works: the next commit arrives.
    std::fs::write(work.join("a.txt"), "{\"b\": 1}").unwrap();
    let head = commit_all(&work, "more");
    env.run(&["sync"]).ok();
    assert_eq!(
        current_commit(&env, "g/t/r").as_deref(),
        Some(head.as_str())
    );
    git(&mirror, &["fsck", "--no-progress"]);
}
