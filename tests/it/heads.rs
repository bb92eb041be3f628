//! `head_check = "graphql"`: the default-branch heads of a provider's repositories asked in batches over the
//! host's GraphQL API (faked as `shared/docs/providers-status-graphql.md` part E documents, partial results
//! included), git used only for the repositories whose head moved, the ones the answer left out, and the
//! full sweep every `head_check_full_every` polls.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::forges::{FakeRepo, Forge, Kind};
use crate::git_http::Auth;
use crate::support::*;

const TOKEN: &str = "heads-tok-8f2c51e0";

struct Site {
    env: Env,
    forge: Forge,
    /// A working clone per repository path, to push from.
    work: Vec<(String, PathBuf)>,
    child: Option<std::process::Child>,
}

impl Site {
    /// A fake `kind` host knowing `known` of the repositories `paths` (all of them exist for git), and a
    /// configuration polling every second with `head_check = "graphql"`.
    fn new(kind: Kind, paths: &[String], known: usize, full_every: u32) -> Site {
        let env = Env::new(Auth::None);
        let root = env.path().join("forge");
        std::fs::create_dir_all(&root).unwrap();
        let repos = paths
            .iter()
            .take(known)
            .enumerate()
            .map(|(i, p)| FakeRepo::new(p, 100 + i as u64))
            .collect();
        let forge = Forge::start(kind, &root, Auth::None, TOKEN, repos);
        let mut work = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let bare = forge.git_dir(path);
            std::fs::create_dir_all(&bare).unwrap();
            git(&bare, &["init", "-q", "--bare", "-b", "main"]);
            let w = env.path().join("work").join(i.to_string());
            std::fs::create_dir_all(&w).unwrap();
            git(&w, &["init", "-q", "-b", "main"]);
            git(&w, &["remote", "add", "origin", &bare.to_string_lossy()]);
            std::fs::copy(small_model(), w.join("m.hck.json")).unwrap();
            commit_all(&w, "a model");
            work.push((path.clone(), w));
        }
        std::fs::write(env.path().join("token"), TOKEN).unwrap();
        let list: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
        env.write_config(&format!(
            "schedule = \"* * * * * *\"\n[providers.p]\nkind = {:?}\nurl = {:?}\ntoken_file = {:?}\nrepos = [{}]\n\
             head_check = \"graphql\"\nhead_check_full_every = {full_every}\n",
            match kind {
                Kind::Github => "github",
                _ => "gitlab",
            },
            forge.url(),
            env.path().join("token").to_string_lossy(),
            list.join(", ")
        ));
        Site {
            env,
            forge,
            work,
            child: None,
        }
    }

    fn run(&mut self) {
        self.child = Some(
            bin()
                .args([
                    "--config",
                    &self.env.path().join("config.toml").to_string_lossy(),
                    "run",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    /// Ref listings over git so far, per repository path.
    fn listings(&self, path: &str) -> usize {
        let dir = format!(
            "/{}/info/refs",
            self.forge.kind().clone_path(path).trim_end_matches('/')
        );
        self.forge
            .server
            .git_requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == dir)
            .count()
    }

    fn graphql_requests(&self) -> usize {
        self.forge
            .api_requests()
            .iter()
            .filter(|r| r.path == "/api/graphql")
            .count()
    }

    fn commit(&self, id: &str) -> Option<String> {
        current_commit(&self.env, id)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            signal(child, libc::SIGTERM);
            wait_with_deadline(child, 15);
        }
    }
}

fn heads_are_batched_and_git_is_used_only_where_needed(kind: Kind, paths: Vec<String>) {
    let known = paths.len() - 1;
    let mut site = Site::new(kind, &paths, known, 4);
    site.run();
    wait_for("the startup polls", 30, || {
        paths
            .iter()
            .all(|p| site.commit(&format!("p/{p}")).is_some())
    });
    // A few cycles with nothing new.
    std::thread::sleep(Duration::from_secs(2));
    let (graphql0, started) = (site.graphql_requests(), Instant::now());
    let before: Vec<usize> = paths.iter().map(|p| site.listings(p)).collect();
    std::thread::sleep(Duration::from_secs(6));
    let cycles = started.elapsed().as_secs() as usize;
    let graphql = site.graphql_requests() - graphql0;
    let listed: Vec<usize> = paths
        .iter()
        .zip(&before)
        .map(|(p, b)| site.listings(p) - b)
        .collect();
    // One batch a cycle for all the repositories (GitLab: a few requests, sized by complexity).
    let per_batch = if kind == Kind::Github {
        1
    } else {
        known.div_ceil(10)
    };
    assert!(
        graphql <= (cycles + 2) * per_batch && graphql >= (cycles - 2) * per_batch,
        "{graphql} GraphQL requests in {cycles} cycles"
    );
    // The repositories the API knows list refs over git only in the full sweep: every 4th poll.
    for (p, n) in paths.iter().zip(&listed).take(known) {
        assert!(
            (1..=cycles.div_ceil(4) + 1).contains(n),
            "{p}: {n} listings in {cycles} cycles: {listed:?}"
        );
    }
    // The one the API does not know (null in the answer) polls over git every time, and the rest go on.
    let unknown = listed[known];
    assert!(
        unknown >= cycles - 2,
        "{unknown} listings for the unknown repository in {cycles} cycles"
    );

    // A push: the repository whose head moved is fetched within a cycle or two.
    let (path, work) = &site.work[1];
    std::fs::write(
        work.join("two.hck.json"),
        std::fs::read(small_model()).unwrap(),
    )
    .unwrap();
    let head = commit_all(work, "a second model");
    let id = format!("p/{path}");
    wait_for("the pushed head", 10, || {
        site.commit(&id).as_deref() == Some(head.as_str())
    });
    let (path, work) = &site.work[known];
    std::fs::write(
        work.join("two.hck.json"),
        std::fs::read(small_model()).unwrap(),
    )
    .unwrap();
    let head = commit_all(work, "a second model");
    let id = format!("p/{path}");
    wait_for("the unknown repository's push", 10, || {
        site.commit(&id).as_deref() == Some(head.as_str())
    });
    // The token went to the API only as a header.
    assert!(
        site.forge
            .api_requests()
            .iter()
            .all(|r| !r.query.contains(TOKEN) && !r.path.contains(TOKEN))
    );
}

#[test]
fn github_heads_in_one_request_a_cycle() {
    let paths = (0..6).map(|i| format!("acme/r{i}")).collect();
    heads_are_batched_and_git_is_used_only_where_needed(Kind::Github, paths);
}

#[test]
fn gitlab_heads_in_batches_its_complexity_limit_allows() {
    // 20 known projects: the first request holds 10, the next ones as many as the measured complexity allows
    // (16), so two requests a cycle, none refused as too complex.
    let paths = (0..21).map(|i| format!("grp/sub/r{i}")).collect();
    heads_are_batched_and_git_is_used_only_where_needed(Kind::Gitlab, paths);
}

#[test]
fn an_answering_api_does_not_hide_a_git_that_fails() {
    let paths: Vec<String> = (0..2).map(|i| format!("acme/r{i}")).collect();
    let mut site = Site::new(Kind::Github, &paths, 2, 2);
    site.run();
    wait_for("the startup polls", 30, || {
        paths
            .iter()
            .all(|p| site.commit(&format!("p/{p}")).is_some())
    });
    // Git now refuses the token; the GraphQL API still answers that nothing moved.
    site.forge
        .server
        .set_auth(Auth::basic("git", "another-token"));
    let error = |site: &Site| {
        let status = site.env.run(&["status", "--json"]).ok().json();
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["repo"] == "p/acme/r0")
            .map(|r| r["last_error"].clone())
            .unwrap_or_default()
    };
    wait_for("the full sweep's error", 15, || !error(&site).is_null());
    // From then on every poll goes over git (and fails) until git works again: the error stays.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let e = error(&site);
        assert!(!e.is_null(), "the error was cleared while git still fails");
        std::thread::sleep(Duration::from_millis(200));
    }
    site.forge.server.set_auth(Auth::None);
    wait_for("git working again clears it", 20, || error(&site).is_null());
}
