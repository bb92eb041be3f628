//! Unusual trees and inputs, found in review: odd file names and modes, settings changes, tokens that would
//! break a header, redirects to another host. After each sync the catalog must equal the commit's tree.

use std::sync::Arc;

use crate::git_http::{ApiResponse, Auth, GitHttpServer};
use crate::support::*;

const ID: &str = "gh/team/models";

fn setup(extra_top: &str) -> (Env, std::path::PathBuf, std::path::PathBuf) {
    let env = Env::new(Auth::None);
    let (bare, work) = env.new_repo("team/models.git");
    config(&env, extra_top);
    (env, bare, work)
}

fn config(env: &Env, extra_top: &str) {
    env.write_config(&format!(
        "{extra_top}\n[providers.gh]\nkind = \"git\"\nurl = {:?}\nrepos = [\"team/models.git\"]\n",
        env.server.url()
    ));
}

fn model(name: &str, entities: usize) -> String {
    let cols: Vec<String> = (0..entities)
        .map(|i| format!("{{\"collectionName\":\"e{i}\",\"properties\":[{{\"name\":\"id\",\"type\":\"string\"}}]}}"))
        .collect();
    format!(
        "{{\n  \"modelName\": \"{name}\",\n  \"collections\": [{}]\n}}\n",
        cols.join(",")
    )
}

#[test]
fn a_backslash_is_part_of_a_file_name() {
    let (env, bare, work) = setup("");
    std::fs::create_dir_all(work.join("a")).unwrap();
    std::fs::write(work.join("a\\b.json"), model("one", 1)).unwrap();
    std::fs::write(work.join("a/b.json"), model("two", 2)).unwrap();
    let c = commit_all(&work, "both");
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), ID, &c, 64 << 20);
    std::fs::remove_file(work.join("a\\b.json")).unwrap();
    let c = commit_all(&work, "one gone");
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), ID, &c, 64 << 20);
}

#[test]
fn raising_max_model_bytes_imports_the_skipped_files() {
    let (env, bare, work) = setup("max_model_bytes = 100");
    std::fs::write(work.join("m.json"), model("big", 3)).unwrap();
    let c = commit_all(&work, "one");
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), ID, &c, 100);
    config(&env, "max_model_bytes = 100000");
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), ID, &c, 100_000);
    config(&env, "max_model_bytes = 100");
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), ID, &c, 100);
}

#[test]
fn a_folder_name_that_is_not_utf8_does_not_stop_the_import() {
    use std::os::unix::ffi::OsStrExt;
    let (env, bare, work) = setup("backfill = false");
    std::fs::write(work.join("m.json"), model("m", 1)).unwrap();
    let dir = work.join(std::ffi::OsStr::from_bytes(b"d\xff"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("readme.txt"), "hi").unwrap();
    let c = commit_all(&work, "one");
    let run = env.run(&["sync"]);
    assert_eq!(run.code, 0, "{run:#?}");
    assert_catalog_is(&bare, &env.db(), ID, &c, 64 << 20);
}

/// Mode 100664 (written by old git versions) is a regular file, in diffs and full comparisons alike.
#[test]
fn group_writable_file_mode_counts_as_a_file() {
    let (env, bare, work) = setup("");
    std::fs::write(work.join("a.json"), model("a", 1)).unwrap();
    commit_all(&work, "one");
    env.run(&["sync"]).ok();
    std::fs::write(work.join("b.json"), model("b", 2)).unwrap();
    let a = git(&work, &["hash-object", "-w", "a.json"]);
    let b = git(&work, &["hash-object", "-w", "b.json"]);
    let listing = format!(
        "100644 blob {}\ta.json\n100664 blob {}\tb.json\n",
        a.trim(),
        b.trim()
    );
    let tree = {
        use std::io::Write;
        let mut child = std::process::Command::new("git")
            .args(["mktree"])
            .current_dir(&work)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(listing.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let c = git(
        &work,
        &["commit-tree", tree.trim(), "-p", "HEAD", "-m", "two"],
    );
    git(
        &work,
        &[
            "push",
            "-q",
            "-f",
            &bare.to_string_lossy(),
            &format!("{}:refs/heads/main", c.trim()),
        ],
    );
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), ID, c.trim(), 64 << 20);
    // A full comparison (settings changed) sees the same.
    config(&env, "include = [\"**/*.json\", \"other/**\"]");
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), ID, c.trim(), 64 << 20);
}

/// A token with a line break would break the header (and libgit2 would quote it in its error): refused with
/// a message that names the file, not the token.
#[test]
fn a_token_with_a_line_break_is_refused_without_showing_it() {
    let env = Env::new(Auth::None);
    let token_file = env.path().join("token");
    std::fs::write(&token_file, "SECRETPART1\nSECRETPART2\n").unwrap();
    env.write_config(&format!(
        "[providers.d]\nkind = \"bitbucket-datacenter\"\nurl = {:?}\ntoken_file = {:?}\nrepos = [\"P/r\"]\n",
        env.server.url(),
        token_file.to_string_lossy()
    ));
    for args in [&["sync"][..], &["check", "--json"][..]] {
        let run = env.run(args);
        assert_ne!(run.code, 0, "{run:#?}");
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(
            all.contains("holds a line break or other control character"),
            "{all}"
        );
        assert!(!all.contains("SECRETPART"), "{all}");
    }
}

/// Credentials are never replayed to another host on a redirect.
#[test]
fn a_redirect_to_another_host_gets_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("srv")).unwrap();
    let other = GitHttpServer::start(&dir.path().join("srv"), Auth::None);
    let target = format!("http://localhost:{}", other.port());
    let redirector = GitHttpServer::start_with_api(
        &dir.path().join("srv"),
        Auth::None,
        Arc::new(move |req: &crate::git_http::ApiRequest| {
            let location = format!("{target}{}?{}", req.path, req.query);
            Some(ApiResponse::text(302, "moved").with_header("Location", &location))
        }),
    );
    std::fs::write(dir.path().join("token"), "redirect-secret-31").unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "state_dir = {:?}\n[providers.gh]\nkind = \"github\"\nurl = {:?}\ntoken_file = {:?}\nrepos = [\"o/r\"]\n",
            dir.path().join("state").to_string_lossy(),
            redirector.url(),
            dir.path().join("token").to_string_lossy()
        ),
    )
    .unwrap();
    let out = bin()
        .args([
            "--config",
            &dir.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        redirector
            .requests()
            .iter()
            .any(|r| r.authorization.is_some()),
        "the first request carried the token"
    );
    assert!(
        other.requests().iter().all(|r| r.authorization.is_none()),
        "credentials went to another host: {:#?}",
        other.requests()
    );
}
