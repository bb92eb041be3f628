//! The mirror pipeline end to end: real histories replayed on a real git smart-HTTP server, synced by the
//! real binary, the database compared with each commit's tree.

use crate::git_http::Auth;
use crate::support::*;

const TOKEN: &str = "glpat-right-token-0123456789";

fn gitlab_env() -> Env {
    let env = Env::new(Auth::basic("oauth2", TOKEN));
    std::fs::write(env.path().join("token"), format!("{TOKEN}\n")).unwrap();
    env
}

fn gitlab_config(env: &Env, extra_top: &str, repos: &[&str]) {
    let repos: Vec<String> = repos.iter().map(|r| format!("{r:?}")).collect();
    env.write_config(&format!(
        "{extra_top}\n[providers.gl]\nkind = \"gitlab\"\nurl = {:?}\ntoken_file = {:?}\nrepos = [{}]\n",
        env.server.url(),
        env.path().join("token").to_string_lossy(),
        repos.join(", ")
    ));
}

/// Replay a fixture history on the server one first-parent commit at a time; after every sync the catalog
/// must equal that commit's tree.
fn replay(bundle_name: &str) {
    let env = gitlab_env();
    let srv = env.repo_from_bundle("team/models.git", bundle_name);
    gitlab_config(&env, "", &["team/models"]);
    let history = first_parent_history(&srv, "main");
    assert!(
        history.len() > 10,
        "{bundle_name} history is too short: {}",
        history.len()
    );
    let db = || env.db();
    for (i, commit) in history.iter().enumerate() {
        git(&srv, &["update-ref", "refs/heads/main", commit]);
        let run = env.run(&["sync"]).ok();
        assert!(
            run.stdout.starts_with("gl/team/models updated: ")
                || run.stdout.starts_with("gl/team/models unchanged"),
            "step {i}: {}",
            run.stdout
        );
        let db = db();
        assert_eq!(
            processed_commit(&db, "gl/team/models").as_deref(),
            Some(commit.as_str())
        );
        assert_catalog_is(&srv, &db, "gl/team/models", commit, 64 * 1024 * 1024);
    }
    // The mirror holds only the default branch: no tags, no pull-request refs.
    let mirror = env.path().join("state/mirrors/gl/team/models.git");
    let refs = git(&mirror, &["for-each-ref", "--format=%(refname)"]);
    assert_eq!(refs.trim(), "refs/heads/main");
}

#[test]
fn books_history_replayed_commit_by_commit() {
    replay("books");
}

#[test]
fn playground_history_replayed_commit_by_commit() {
    replay("playground-models");
}

#[test]
fn first_import_walks_the_whole_history_with_each_models_commit() {
    let env = gitlab_env();
    let srv = env.repo_from_bundle("team/books.git", "books");
    gitlab_config(&env, "", &["team/books"]);
    let run = env.run(&["sync"]).ok();
    let head = git(&srv, &["rev-parse", "main"]).trim().to_string();
    let db = env.db();
    let (added, modified, deleted): (i64, i64, i64) = db
        .query_row(
            "SELECT SUM(added), SUM(modified), SUM(deleted) FROM sync_steps",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "gl/team/books updated: +{added} ~{modified} -{deleted} models at {}",
            &head[..12]
        )
    );
    assert_eq!(
        added - deleted,
        141,
        "what was added and not deleted is what is there"
    );
    assert_catalog_is(&srv, &db, "gl/team/books", &head, u64::MAX);
    let history = first_parent_history(&srv, "main");
    let steps: i64 = db
        .query_row("SELECT COUNT(*) FROM sync_steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        steps as usize,
        history.len(),
        "one step per first-parent commit"
    );
    let commits: i64 = db
        .query_row("SELECT COUNT(*) FROM commits", [], |r| r.get(0))
        .unwrap();
    assert_eq!(commits as usize, history.len());
    // Every model carries the commit that last changed it on the first-parent chain.
    let mut stmt = db.prepare("SELECT path, commit_id FROM models").unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 141);
    for (path, commit) in rows {
        let last = git(
            &srv,
            &[
                "log",
                "-1",
                "--first-parent",
                "--format=%H",
                "main",
                "--",
                &path,
            ],
        );
        assert_eq!(commit, last.trim(), "{path}");
    }
    // The history saw renames and deletions, with the commit metadata kept.
    let kinds: Vec<String> = db
        .prepare("SELECT DISTINCT change FROM model_versions ORDER BY 1")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds, ["added", "deleted", "modified", "renamed"]);
    let (author, message): (String, String) = db
        .query_row(
            "SELECT author_name, message FROM commits WHERE commit_id = ?1",
            [&history[0]],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let want_author = git(&srv, &["log", "-1", "--format=%an", &history[0]]);
    assert_eq!(author, want_author.trim());
    assert!(!message.is_empty());
}

#[test]
fn backfill_false_imports_only_the_head() {
    let env = gitlab_env();
    let srv = env.repo_from_bundle("team/books.git", "books");
    gitlab_config(&env, "backfill = false", &["team/books"]);
    env.run(&["sync"]).ok();
    let head = git(&srv, &["rev-parse", "main"]).trim().to_string();
    let db = env.db();
    assert_catalog_is(&srv, &db, "gl/team/books", &head, u64::MAX);
    let steps: i64 = db
        .query_row("SELECT COUNT(*) FROM sync_steps", [], |r| r.get(0))
        .unwrap();
    assert_eq!(steps, 1);
}

#[test]
fn no_change_poll_lists_refs_once_and_fetches_nothing() {
    let env = gitlab_env();
    env.repo_from_bundle("team/books.git", "books");
    gitlab_config(&env, "", &["team/books"]);
    env.run(&["sync"]).ok();
    assert!(env.server.fetch_count() >= 1, "the first sync fetched");
    env.server.clear_log();
    let run = env.run(&["sync"]).ok();
    assert_eq!(run.stdout.trim(), "gl/team/books unchanged");
    assert_eq!(
        env.server.fetch_count(),
        0,
        "no fetch request: {:#?}",
        env.server.requests()
    );
    assert_eq!(
        env.server.ref_listing_count(),
        1,
        "{:#?}",
        env.server.requests()
    );
    assert_eq!(
        env.server.unauthorized_count(),
        0,
        "credentials go with the first request"
    );
}

#[test]
fn adds_modifies_renames_deletes_and_bad_files() {
    let env = gitlab_env();
    let (bare, work) = env.new_repo("team/synthetic.git");
    let max = 150_000u64;
    gitlab_config(
        &env,
        &format!("max_model_bytes = {max}"),
        &["team/synthetic"],
    );
    let models = fixtures().join("models/books");
    let small = models.join("MongoDB__Figure 006 - Subtyping.hck.json");
    let big = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.metadata().unwrap().len() > max)
        .expect("a fixture model over the limit");
    let check = |commit: &str| {
        let db = env.db();
        assert_catalog_is(&bare, &db, "gl/team/synthetic", commit, max);
    };

    std::fs::create_dir_all(work.join("models")).unwrap();
    std::fs::copy(&small, work.join("models/a.hck.json")).unwrap();
    std::fs::write(
        work.join("package.json"),
        r#"{"name": "not-a-model", "version": "1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        work.join("schema.json"),
        r#"{"$schema": "http://json-schema.org/draft-07/schema#"}"#,
    )
    .unwrap();
    std::fs::write(work.join("broken-other.json"), "{ this is not json").unwrap();
    let c1 = commit_all(&work, "first");
    let run = env.run(&["sync"]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "gl/team/synthetic updated: +1 ~0 -0 models at {}",
            &c1[..12]
        )
    );
    check(&c1);

    // Modify a, add a malformed model and one over the size limit.
    let text = std::fs::read_to_string(work.join("models/a.hck.json")).unwrap();
    std::fs::write(
        work.join("models/a.hck.json"),
        text.replacen("\"modelName\": \"", "\"modelName\": \"Renamed ", 1),
    )
    .unwrap();
    std::fs::write(
        work.join("models/broken.hck.json"),
        "{\n  \"modelName\": \"Broken\",\n  \"collections\": [\n    {\"GUID\": ,}\n",
    )
    .unwrap();
    std::fs::copy(&big, work.join("models/big.hck.json")).unwrap();
    let c2 = commit_all(&work, "second");
    let run = env.run(&["sync"]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "gl/team/synthetic updated: +2 ~1 -0 models at {}",
            &c2[..12]
        )
    );
    check(&c2);
    let models_json = env.run(&["models", "--json"]).ok().json();
    let by_path = |p: &str| {
        models_json
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["path"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("{p}"))
    };
    let broken = by_path("models/broken.hck.json");
    let err = broken["error"].as_str().unwrap();
    assert!(err.contains("line 4, column"), "{err}");
    let big_row = by_path("models/big.hck.json");
    let err = big_row["error"].as_str().unwrap();
    assert!(
        err.contains("max_model_bytes") && err.contains("models/big.hck.json"),
        "{err}"
    );
    assert!(
        by_path("models/a.hck.json")["name"]
            .as_str()
            .unwrap()
            .starts_with("Renamed ")
    );
    assert!(by_path("models/a.hck.json")["error"].is_null());

    // Rename a (and change it a little), delete the broken one.
    git(
        &work,
        &["mv", "models/a.hck.json", "models/renamed-a.hck.json"],
    );
    std::fs::remove_file(work.join("models/broken.hck.json")).unwrap();
    let c3 = commit_all(&work, "third");
    let run = env.run(&["sync"]).ok();
    assert_eq!(
        run.stdout.trim(),
        format!(
            "gl/team/synthetic updated: +0 ~1 -1 models at {}",
            &c3[..12]
        )
    );
    check(&c3);
    let db = env.db();
    let (change, old): (String, String) = db
        .query_row(
            "SELECT change, old_path FROM model_versions WHERE path = 'models/renamed-a.hck.json'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (change.as_str(), old.as_str()),
        ("renamed", "models/a.hck.json")
    );
    let status = env.run(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["models"], 1, "{status}");
    assert_eq!(status[0]["errors"], 0, "{status}");

    // A model that stops being a model leaves the catalog.
    std::fs::write(work.join("models/renamed-a.hck.json"), "[1, 2, 3]").unwrap();
    let c4 = commit_all(&work, "fourth");
    env.run(&["sync"]).ok();
    check(&c4);
}

#[test]
fn force_push_to_an_older_commit() {
    let env = gitlab_env();
    let srv = env.repo_from_bundle("team/books.git", "books");
    gitlab_config(&env, "", &["team/books"]);
    env.run(&["sync"]).ok();
    let history = first_parent_history(&srv, "main");
    let old = &history[history.len() / 3];
    git(&srv, &["update-ref", "refs/heads/main", old]);
    let run = env.run(&["sync"]).ok();
    assert!(run.stdout.contains("updated"), "{}", run.stdout);
    let db = env.db();
    assert_catalog_is(&srv, &db, "gl/team/books", old, u64::MAX);
    let note: Option<String> = db
        .query_row(
            "SELECT note FROM sync_steps ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(note.as_deref(), Some("history-rewritten"));
    // And forward again: the newer commits are walked one by one.
    let head = history.last().unwrap();
    git(&srv, &["update-ref", "refs/heads/main", head]);
    env.run(&["sync"]).ok();
    assert_catalog_is(&srv, &env.db(), "gl/team/books", head, u64::MAX);
}

#[test]
fn default_branch_renamed_on_the_server() {
    let env = gitlab_env();
    let srv = env.repo_from_bundle("team/books.git", "books");
    gitlab_config(&env, "", &["team/books"]);
    env.run(&["sync"]).ok();
    git(&srv, &["branch", "-m", "main", "trunk"]);
    git(&srv, &["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let run = env.run(&["sync"]).ok();
    assert_eq!(run.stdout.trim(), "gl/team/books unchanged");
    let status = env.run(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["default_branch"], "trunk");
    let mirror = env.path().join("state/mirrors/gl/team/books.git");
    let refs = git(&mirror, &["for-each-ref", "--format=%(refname)"]);
    assert_eq!(
        refs.trim(),
        "refs/heads/trunk",
        "the old branch name is dropped from the mirror"
    );
    assert_eq!(status[0]["models"], 141);
    // The new branch moves on: its commits are processed.
    let history = first_parent_history(&srv, "trunk");
    git(&srv, &["update-ref", "refs/heads/trunk", &history[5]]);
    env.run(&["sync"]).ok();
    assert_catalog_is(&srv, &env.db(), "gl/team/books", &history[5], u64::MAX);
}

#[test]
fn empty_repository_then_first_commit() {
    let env = gitlab_env();
    let (bare, work) = env.new_repo("team/empty.git");
    gitlab_config(&env, "", &["team/empty"]);
    let run = env.run(&["sync"]).ok();
    assert_eq!(
        run.stdout.trim(),
        "gl/team/empty unchanged (empty repository)"
    );
    let status = env.run(&["status", "--json"]).ok().json();
    assert!(
        status[0]["commit"].is_null() && status[0]["last_error"].is_null(),
        "{status}"
    );
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("m.hck.json"),
    )
    .unwrap();
    let c = commit_all(&work, "first model");
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), "gl/team/empty", &c, u64::MAX);
}

#[test]
fn repository_removed_from_the_server_keeps_the_last_good_data() {
    let env = gitlab_env();
    let srv = env.repo_from_bundle("team/books.git", "books");
    gitlab_config(&env, "", &["team/books"]);
    env.run(&["sync"]).ok();
    let head = git(&srv, &["rev-parse", "main"]).trim().to_string();
    let moved = env.path().join("moved.git");
    std::fs::rename(&srv, &moved).unwrap();
    let run = env.run(&["sync"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout
            .starts_with("gl/team/books error: repository not found at "),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("check the path"), "{}", run.stdout);
    assert_catalog_is(&moved, &env.db(), "gl/team/books", &head, u64::MAX);
    let status = env.run(&["status", "--json"]).ok().json();
    assert_eq!(status[0]["models"], 141);
    assert!(
        status[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("not found"),
        "{status}"
    );
    // Back again: the error clears.
    std::fs::rename(&moved, &srv).unwrap();
    env.run(&["sync"]).ok();
    let status = env.run(&["status", "--json"]).ok().json();
    assert!(status[0]["last_error"].is_null(), "{status}");
}

#[test]
fn wrong_token_is_an_authentication_error_and_no_token_leaks() {
    let env = gitlab_env();
    env.repo_from_bundle("team/books.git", "books");
    gitlab_config(&env, "", &["team/books"]);
    let wrong = "glpat-wrong-token-9876543210";
    std::fs::write(env.path().join("token"), wrong).unwrap();
    let mut cmd = bin();
    let out = cmd
        .env("RUST_LOG", "trace")
        .arg("sync")
        .arg("--config")
        .arg(env.path().join("config.toml"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("gl/team/books error: authentication failed for "),
        "{stdout}"
    );
    assert!(stdout.contains("token_file"), "{stdout}");
    assert!(
        env.server.requests().len() <= 2,
        "the rejected credentials were not retried: {:#?}",
        env.server.requests()
    );
    let status = env.run(&["status", "--json"]).ok();
    let hits = find_secret(
        &env.path().join("state"),
        wrong,
        &[&stdout, &stderr, &status.stdout],
    );
    assert!(hits.is_empty(), "the wrong token leaked into {hits:?}");

    // Rotating the token file is picked up by the next poll.
    std::fs::write(env.path().join("token"), TOKEN).unwrap();
    let out = bin()
        .env("RUST_LOG", "trace")
        .args([
            "--config",
            &env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let models = env.run(&["models", "--json"]).ok();
    let status = env.run(&["status", "--json"]).ok();
    let texts = [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        models.stdout,
        status.stdout,
    ];
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let hits = find_secret(&env.path().join("state"), TOKEN, &refs);
    assert!(hits.is_empty(), "the token leaked into {hits:?}");
    let b64 = crate::git_http::base64_encode(format!("oauth2:{TOKEN}").as_bytes());
    let hits = find_secret(&env.path().join("state"), &b64, &refs);
    assert!(hits.is_empty(), "the encoded token leaked into {hits:?}");
}

/// Each provider kind presents its token the way its host expects (providers.md part C).
#[test]
fn every_provider_kind_authenticates_git_over_http() {
    let env = Env::new(Auth::None);
    std::fs::write(env.path().join("token"), "kind-token").unwrap();
    let token_file = env.path().join("token").to_string_lossy().into_owned();
    let cases: [(&str, &str, &str, Auth, &str); 7] = [
        (
            "gitlab",
            "",
            "g/books",
            Auth::basic("oauth2", "kind-token"),
            "g/books.git",
        ),
        (
            "github",
            "",
            "o/books",
            Auth::basic("x-access-token", "kind-token"),
            "o/books.git",
        ),
        (
            "bitbucket-cloud",
            "",
            "ws/books",
            Auth::basic("x-token-auth", "kind-token"),
            "ws/books.git",
        ),
        (
            "bitbucket-cloud",
            "username = \"me@example.com\"\n",
            "ws/books",
            // An API token: REST takes the e-mail, git the static user.
            Auth::basic("x-bitbucket-api-token-auth", "kind-token"),
            "ws/books.git",
        ),
        (
            "bitbucket-datacenter",
            "",
            "PROJ/books",
            Auth::bearer("kind-token"),
            "scm/PROJ/books.git",
        ),
        (
            "bitbucket-datacenter",
            "username = \"dcuser\"\n",
            "PROJ/books",
            Auth::basic("dcuser", "kind-token"),
            "scm/PROJ/books.git",
        ),
        (
            "git",
            "username = \"deploy\"\n",
            "plain/books.git",
            Auth::basic("deploy", "kind-token"),
            "plain/books.git",
        ),
    ];
    for (kind, extra, path, auth, served) in cases {
        if !env.srv(served).exists() {
            env.repo_from_bundle(served, "books");
        }
        env.server.set_auth(auth.clone());
        env.write_config(&format!(
            "[providers.p]\nkind = {kind:?}\nurl = {:?}\ntoken_file = {token_file:?}\n{extra}repos = [{path:?}]\n",
            env.server.url()
        ));
        let _ = std::fs::remove_dir_all(env.path().join("state"));
        let run = env.run(&["sync"]);
        assert_eq!(run.code, 0, "{kind} with {auth:?}: {run:#?}");
        assert!(run.stdout.contains("updated"), "{kind}: {}", run.stdout);
        assert_eq!(
            env.server.unauthorized_count(),
            0,
            "{kind}: credentials were sent up front"
        );
        env.server.clear_log();
    }
}
