//! Git providers: discovery over each host's REST API (faked exactly as documented, pagination and rate
//! limits included) with the real git smart-HTTP server for the git side; each authentication scheme, token
//! rotation, archived / empty / removed repositories, a private CA, a proxy, and `check`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::forges::{FakeRepo, Forge, Kind};
use crate::git_http::Auth;
use crate::support::*;

const TOKEN: &str = "tok-0123456789-abcdef";

/// A bare repository with one model, made once and copied.
fn make_repo(dest: &Path, template: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    git(
        Path::new("/"),
        &[
            "clone",
            "-q",
            "--bare",
            &template.to_string_lossy(),
            &dest.to_string_lossy(),
        ],
    );
}

fn make_empty_repo(dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    git(dest, &["init", "-q", "--bare", "-b", "main"]);
}

/// A forge of `kind` serving `repos` (real git repositories for each, empty ones empty), with its own
/// temporary folder, state and config.
struct Site {
    env: Env,
    forge: Forge,
    template: PathBuf,
}

impl Site {
    fn new(kind: Kind, git_auth: Auth, repos: Vec<FakeRepo>) -> Site {
        Site::new_on(Engine::Sqlite, kind, git_auth, repos)
    }

    /// [`Site::new`] with the catalog in `engine`.
    fn new_on(engine: Engine, kind: Kind, git_auth: Auth, repos: Vec<FakeRepo>) -> Site {
        let env = Env::on(engine, Auth::None);
        let root = env.path().join("forge");
        std::fs::create_dir_all(&root).unwrap();
        let (template, work) = env.new_repo("template.git");
        std::fs::copy(
            fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
            work.join("m.hck.json"),
        )
        .unwrap();
        commit_all(&work, "model");
        let forge = Forge::start(kind, &root, git_auth, TOKEN, Vec::new());
        let site = Site {
            env,
            forge,
            template,
        };
        site.set_repos(repos);
        std::fs::write(site.token_file(), TOKEN).unwrap();
        site
    }

    /// Serve these repositories (creating their git repositories as needed).
    fn set_repos(&self, repos: Vec<FakeRepo>) {
        for r in &repos {
            let dir = self.forge.git_dir(&r.path);
            if !dir.exists() {
                if r.empty {
                    make_empty_repo(&dir)
                } else {
                    make_repo(&dir, &self.template)
                }
            }
        }
        self.forge.set_repos(repos);
    }

    fn token_file(&self) -> PathBuf {
        self.env.path().join("token")
    }

    fn config(&self, kind: &str, body: &str) {
        self.env.write_config(&format!(
            "[providers.p]\nkind = {kind:?}\nurl = {:?}\ntoken_file = {:?}\n{body}\n",
            self.forge.url(),
            self.token_file().to_string_lossy()
        ));
    }

    /// `modelmirror run` on this site's configuration, as a real process.
    fn run_daemon(&self) -> std::process::Child {
        bin()
            .args([
                "--config",
                &self.env.path().join("config.toml").to_string_lossy(),
                "run",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    fn status(&self) -> Vec<Value> {
        self.env
            .run(&["status", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    fn row(&self, id: &str) -> Value {
        self.try_row(id)
            .unwrap_or_else(|| panic!("no status row for {id}"))
    }

    fn try_row(&self, id: &str) -> Option<Value> {
        self.status().into_iter().find(|r| r["repo"] == id)
    }

    /// Whether `id` is in the catalog with its one model (false before the database exists).
    fn imported(&self, id: &str) -> bool {
        self.env.db_path().exists() && self.try_row(id).is_some_and(|r| r["models"] == 1)
    }
}

fn repos_with_pages(prefix: &str, deep: &str) -> Vec<FakeRepo> {
    vec![
        FakeRepo::new(&format!("{prefix}/alpha"), 11),
        FakeRepo::new(&format!("{prefix}/beta"), 12),
        FakeRepo::new(&format!("{prefix}/gamma"), 13),
        FakeRepo::new(&format!("{prefix}/delta"), 14),
        FakeRepo::new(deep, 15),
        FakeRepo::new(&format!("{prefix}/old"), 16).with_archived(true),
        FakeRepo::new(&format!("{prefix}/fresh"), 17).with_empty(true),
    ]
}

/// Discovery for one kind: every repository across several pages, archived ones skipped, empty ones
/// waited for, host ids and web URLs stored, the discovered repositories mirrored with the kind's git auth.
fn discover_and_mirror(
    kind: Kind,
    kind_name: &str,
    git_auth: Auth,
    scope_key: &str,
    scope: &str,
    deep: &str,
    extra: &str,
) {
    let repos = repos_with_pages(scope, deep);
    let site = Site::new(kind, git_auth, repos.clone());
    site.config(kind_name, &format!("{scope_key} = [{scope:?}]\n{extra}"));
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 0, "{kind_name}: {run:#?}");
    let active: Vec<&FakeRepo> = repos.iter().filter(|r| !r.archived && !r.empty).collect();
    for r in &active {
        let id = format!("p/{}", r.path);
        assert!(
            run.stdout
                .contains(&format!("{id} updated: +1 ~0 -0 models")),
            "{kind_name}: {id} not mirrored:\n{}",
            run.stdout
        );
        let row = site.row(&id);
        assert_eq!(row["state"], "active", "{row}");
        assert_eq!(row["models"], 1, "{row}");
        // Bitbucket Cloud identifies repositories by uuid, the others by number.
        let id_ok = row["provider_id"].as_str().is_some_and(|s| {
            if kind == Kind::BitbucketCloud {
                s.starts_with('{')
            } else {
                s == r.id.to_string()
            }
        });
        assert!(id_ok, "{kind_name}: {row}");
        assert!(
            row["web_url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http")),
            "{kind_name}: {row}"
        );
    }
    let archived = site.row(&format!("p/{scope}/old"));
    if kind == Kind::BitbucketCloud {
        // Bitbucket Cloud has no archive flag: such a repository is mirrored like any other.
        assert_eq!(archived["state"], "active", "{archived}");
    } else {
        assert_eq!(archived["state"], "archived", "{archived}");
        assert!(
            archived["state_reason"]
                .as_str()
                .unwrap()
                .contains("archived"),
            "{archived}"
        );
        assert!(
            archived["last_check_at"].is_null(),
            "archived repositories are not polled: {archived}"
        );
    }
    let empty = site.row(&format!("p/{scope}/fresh"));
    assert_eq!(empty["state"], "empty", "{empty}");
    assert!(
        run.stdout
            .contains(&format!("p/{scope}/fresh unchanged (empty repository)")),
        "{}",
        run.stdout
    );
    // Several pages were read (the fake serves 3 per page).
    let listing: Vec<_> = site
        .forge
        .api_requests()
        .into_iter()
        .filter(|r| r.path.contains("repos") || r.path.contains("projects"))
        .collect();
    assert!(
        listing.len() >= 3,
        "{kind_name}: pagination not followed: {listing:#?}"
    );
    // No token in anything written or shown.
    let hits = find_secret(
        &site.env.path().join("state"),
        TOKEN,
        &[&run.stdout, &run.stderr],
    );
    assert!(hits.is_empty(), "{kind_name}: token leaked into {hits:?}");
}

#[test]
fn gitlab_discovers_a_group_and_its_subgroups() {
    discover_and_mirror(
        Kind::Gitlab,
        "gitlab",
        Auth::basic("oauth2", TOKEN),
        "groups",
        "data",
        "data/sub/deeper/epsilon",
        "",
    );
}

#[test]
fn github_discovers_an_organisation() {
    discover_and_mirror(
        Kind::Github,
        "github",
        Auth::basic("x-access-token", TOKEN),
        "orgs",
        "acme",
        "acme/epsilon",
        "",
    );
}

#[test]
fn bitbucket_cloud_discovers_a_workspace_with_an_access_token() {
    discover_and_mirror(
        Kind::BitbucketCloud,
        "bitbucket-cloud",
        Auth::basic("x-token-auth", TOKEN),
        "workspaces",
        "ws",
        "ws/epsilon",
        "",
    );
}

#[test]
fn bitbucket_cloud_api_token_uses_basic_auth_with_the_email() {
    let email = crate::forges::BB_CLOUD_EMAIL;
    discover_and_mirror(
        Kind::BitbucketCloud,
        "bitbucket-cloud",
        // git wants the static user for API tokens; REST the e-mail.
        Auth::basic("x-bitbucket-api-token-auth", TOKEN),
        "workspaces",
        "ws",
        "ws/epsilon",
        &format!("username = {email:?}"),
    );
}

#[test]
fn bitbucket_datacenter_discovers_a_project_with_bearer_tokens() {
    discover_and_mirror(
        Kind::BitbucketDatacenter,
        "bitbucket-datacenter",
        Auth::bearer(TOKEN),
        "projects",
        "PRJ",
        "PRJ/epsilon",
        "",
    );
}

#[test]
fn github_user_and_bitbucket_project_scopes() {
    // A GitHub user instead of an organisation.
    let site = Site::new(
        Kind::Github,
        Auth::basic("x-access-token", TOKEN),
        vec![FakeRepo::new("user-dana/models", 5)],
    );
    site.config("github", "orgs = [\"user-dana\"]");
    let run = site.env.run(&["sync"]).ok();
    assert!(
        run.stdout.contains("p/user-dana/models updated"),
        "{}",
        run.stdout
    );
    // One project of a Bitbucket Cloud workspace.
    let site = Site::new(
        Kind::BitbucketCloud,
        Auth::basic("x-token-auth", TOKEN),
        vec![
            FakeRepo::new("ws/in-project", 1),
            FakeRepo::new("ws/elsewhere", 2),
        ],
    );
    site.forge.set_project_key("ws/in-project", "DATA");
    site.forge.set_project_key("ws/elsewhere", "OTHER");
    site.config("bitbucket-cloud", "workspaces = [\"ws/DATA\"]");
    let run = site.env.run(&["sync"]).ok();
    assert!(
        run.stdout.contains("p/ws/in-project updated"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("elsewhere"), "{}", run.stdout);
}

#[test]
fn include_exclude_removed_and_prune() {
    let repos = vec![
        FakeRepo::new("data/keep", 1),
        FakeRepo::new("data/sandbox/try", 2),
        FakeRepo::new("data/goes-away", 3),
    ];
    let site = Site::new(Kind::Gitlab, Auth::basic("oauth2", TOKEN), repos);
    site.config(
        "gitlab",
        "groups = [\"data\"]\nexclude = [\"data/sandbox/**\"]",
    );
    let run = site.env.run(&["sync"]).ok();
    assert!(
        run.stdout.contains("p/data/keep updated")
            && run.stdout.contains("p/data/goes-away updated"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("sandbox"), "excluded: {}", run.stdout);

    site.forge.set_repos(vec![
        FakeRepo::new("data/keep", 1),
        FakeRepo::new("data/sandbox/try", 2),
    ]);
    let run = site.env.run(&["sync"]).ok();
    assert!(
        !run.stdout.contains("goes-away"),
        "a removed repository is not polled: {}",
        run.stdout
    );
    let row = site.row("p/data/goes-away");
    assert_eq!(row["state"], "removed", "{row}");
    assert!(
        row["state_reason"].as_str().unwrap().contains("data kept"),
        "{row}"
    );
    assert_eq!(row["models"], 1, "its data is kept: {row}");
    let mirror = site.env.path().join("state/mirrors/p/data/goes-away.git");
    assert!(mirror.exists());

    // With prune_removed, its data and mirror go. (It comes back first, then disappears again.)
    site.forge.set_repos(vec![
        FakeRepo::new("data/keep", 1),
        FakeRepo::new("data/goes-away", 3),
    ]);
    site.env.run(&["sync"]).ok();
    assert_eq!(site.row("p/data/goes-away")["state"], "active");
    site.config(
        "gitlab",
        "groups = [\"data\"]\nexclude = [\"data/sandbox/**\"]\nprune_removed = true",
    );
    site.forge.set_repos(vec![FakeRepo::new("data/keep", 1)]);
    // The first miss only marks it removed; the second in a row prunes it.
    site.env.run(&["sync"]).ok();
    assert_eq!(site.row("p/data/goes-away")["state"], "removed");
    assert!(mirror.exists());
    site.env.run(&["sync"]).ok();
    assert!(
        site.status()
            .iter()
            .all(|r| r["repo"] != "p/data/goes-away")
    );
    assert!(!mirror.exists(), "the mirror was deleted");
    let db = site.env.db();
    let left: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM models WHERE repo_id = 'p/data/goes-away'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn short_rate_limits_are_waited_out_and_long_ones_hold_the_provider() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        repos_with_pages("data", "data/x/y"),
    );
    site.config("gitlab", "groups = [\"data\"]");
    // A 429 with Retry-After: 1 is waited for, then discovery goes on.
    site.forge.rate_limit_next(1, 429, Some(1));
    let started = Instant::now();
    let run = site.env.run(&["sync"]).ok();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert!(
        run.stdout.contains("p/data/alpha updated"),
        "{}",
        run.stdout
    );

    // A long Retry-After: no busy loop, the provider is held, status says until when; known repositories
    // are still polled.
    let before = site.forge.api_request_count();
    site.forge.rate_limit_next(100, 429, Some(900));
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout
            .contains("p discovery error: provider p is held back until "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("p/data/alpha unchanged"),
        "known repositories keep syncing: {}",
        run.stdout
    );
    assert_eq!(
        site.forge.api_request_count() - before,
        1,
        "one request, then it stopped asking"
    );
    let row = site.row("p/data/alpha");
    let until =
        chrono::DateTime::parse_from_rfc3339(row["held_until"].as_str().expect("held_until"))
            .unwrap();
    let ahead = until
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!(
        (800..=900).contains(&ahead),
        "held for Retry-After: {ahead}s"
    );
    assert!(
        row["held_reason"].as_str().unwrap().contains("429"),
        "{row}"
    );
    let human = site.env.run(&["status"]).ok().stdout;
    assert!(
        human.contains("provider p:") && human.contains("held back until"),
        "{human}"
    );
}

#[test]
fn github_primary_rate_limit_waits_for_the_reset() {
    let site = Site::new(
        Kind::Github,
        Auth::basic("x-access-token", TOKEN),
        repos_with_pages("acme", "acme/z"),
    );
    site.config("github", "orgs = [\"acme\"]");
    // 403 with x-ratelimit-remaining: 0 and a reset one second ahead.
    site.forge.rate_limit_next(1, 403, None);
    let run = site.env.run(&["sync"]).ok();
    assert!(
        run.stdout.contains("p/acme/alpha updated"),
        "{}",
        run.stdout
    );
}

#[test]
fn max_requests_per_hour_holds_the_provider() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        repos_with_pages("data", "data/x/y"),
    );
    site.config("gitlab", "groups = [\"data\"]\nmax_requests_per_hour = 2");
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("max_requests_per_hour (2) reached"),
        "{}",
        run.stdout
    );
    assert_eq!(site.forge.api_request_count(), 2, "the budget was kept");
}

#[test]
fn wrong_token_and_unknown_group_say_what_to_do() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        repos_with_pages("data", "data/x/y"),
    );
    site.config("gitlab", "groups = [\"nope\"]");
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout
            .contains("404 from provider p: group nope not found"),
        "{}",
        run.stdout
    );
    std::fs::write(site.token_file(), "wrong-token").unwrap();
    site.config("gitlab", "groups = [\"data\"]");
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains(
            "401 from provider p: token rejected — it needs the read_api and read_repository scopes"
        ),
        "{}",
        run.stdout
    );
}

/// The service re-reads the token file before every poll and discovery: rotating it needs no restart.
#[test]
fn token_rotation_needs_no_restart() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![FakeRepo::new("data/alpha", 1)],
    );
    site.config(
        "gitlab",
        "groups = [\"data\"]\nschedule = \"* * * * * *\"\ndiscover_schedule = \"*/2 * * * * *\"",
    );
    let mut child = site.run_daemon();
    wait_for("p/data/alpha imported", 20, || {
        site.imported("p/data/alpha")
    });
    // Rotate: the host accepts only the new token from now on; the file gets it too.
    let new = "tok-rotated-9876543210";
    site.forge.set_token(new);
    site.forge.server.set_auth(Auth::basic("oauth2", new));
    std::fs::write(site.token_file(), new).unwrap();
    let rotated = chrono::Utc::now();
    // A repository added after the rotation is found (discovery with the new token) and mirrored.
    site.set_repos(vec![
        FakeRepo::new("data/alpha", 1),
        FakeRepo::new("data/beta", 2),
    ]);
    wait_for("p/data/beta imported", 20, || site.imported("p/data/beta"));
    std::thread::sleep(Duration::from_secs(2));
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
    let db = site.env.db();
    let errors_after: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM polls WHERE result = 'error' AND started_at > ?1",
            [(rotated + chrono::Duration::seconds(1))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        errors_after, 0,
        "polls after the rotation used the new token"
    );
    let ok_after: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM polls WHERE repo_id = 'p/data/alpha' AND result != 'error' AND started_at > ?1",
            [(rotated + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)],
            |r| r.get(0),
        )
        .unwrap();
    assert!(ok_after >= 1);
}

/// Two instances on PostgreSQL and one discovered provider: the instance that does not discover mirrors what
/// the other records, even when it read the list before that (here the discovery first waits out a rate
/// limit, and the next firing is a year away), and each polls its share (the discovery waits until both
/// instances beat, so the discovering one does not take every repository).
#[test]
fn two_instances_share_what_one_of_them_discovers() {
    let repos: Vec<FakeRepo> = (1..=8)
        .map(|i| FakeRepo::new(&format!("data/r{i}"), i))
        .collect();
    let site = Site::new_on(
        Engine::Postgres,
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        repos,
    );
    site.config(
        "gitlab",
        "groups = [\"data\"]\nschedule = \"0 0 1 1 *\"\ndiscover_schedule = \"0 0 1 1 *\"",
    );
    let text = std::fs::read_to_string(site.env.path().join("config.toml")).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    assert!(first.starts_with("state_dir"), "{first}");
    site.forge.rate_limit_next(1, 429, Some(15));
    let daemons: Vec<Running> = ["a", "b"]
        .iter()
        .map(|name| {
            let config = site.env.path().join(format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "state_dir = {:?}\ninstance_name = {name:?}\nlease_seconds = 30\n{rest}",
                    site.env.path().join(format!("state-{name}"))
                ),
            )
            .unwrap();
            Running(
                bin()
                    .args(["--config", &config.to_string_lossy(), "run"])
                    .stdout(std::process::Stdio::null())
                    .stderr(
                        std::fs::File::create(site.env.path().join(format!("{name}.log"))).unwrap(),
                    )
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    wait_for("every discovered repository imported", 60, || {
        site.env
            .count("SELECT COUNT(*) FROM pg_tables WHERE tablename = 'schema_version'")
            == 1
            && site.env.count("SELECT COUNT(*) FROM models") == 8
    });
    let polled_by = site
        .env
        .rows("SELECT DISTINCT instance FROM polls WHERE result = 'updated' ORDER BY instance");
    assert_eq!(polled_by, ["a", "b"], "each instance polls its share");
    let discovered_by = site
        .env
        .count("SELECT COUNT(*) FROM leases WHERE name LIKE 'discovery:%'");
    assert_eq!(discovered_by, 0, "the discovery lease given back");
    drop(daemons);
}

/// New repositories start mirroring without a restart; removed ones stop.
#[test]
fn the_service_follows_discovery() {
    let site = Site::new(
        Kind::BitbucketDatacenter,
        Auth::bearer(TOKEN),
        vec![FakeRepo::new("PRJ/one", 1), FakeRepo::new("PRJ/two", 2)],
    );
    site.config(
        "bitbucket-datacenter",
        "projects = [\"PRJ\"]\nschedule = \"* * * * * *\"\ndiscover_schedule = \"* * * * * *\"",
    );
    let mut child = site.run_daemon();
    wait_for("p/PRJ/two imported", 20, || site.imported("p/PRJ/two"));
    site.set_repos(vec![
        FakeRepo::new("PRJ/one", 1),
        FakeRepo::new("PRJ/three", 3),
    ]);
    wait_for("p/PRJ/three imported", 20, || site.imported("p/PRJ/three"));
    wait_for("p/PRJ/two marked removed", 20, || {
        site.try_row("p/PRJ/two")
            .is_some_and(|r| r["state"] == "removed")
    });
    let polls_of_two = |db: &rusqlite::Connection| -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM polls WHERE repo_id = 'p/PRJ/two'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let n = polls_of_two(&site.env.db());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        polls_of_two(&site.env.db()) <= n + 1,
        "a removed repository is no longer polled"
    );
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
    assert_eq!(site.row("p/PRJ/two")["models"], 1, "its data is kept");
}

/// An HTTPS server with a certificate from a private CA: accepted with `ca_file`, refused without, for
/// REST and git alike.
#[test]
fn private_ca_with_ca_file_and_without() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![FakeRepo::new("data/alpha", 1)],
    );
    let cert = crate::tls::TestCert::generate(&site.env.path().join("certs"));
    let tls = crate::tls::TlsTerminator::start(site.forge.server.addr(), &cert);
    site.forge.set_external_url(Some(&tls.https_url()));
    let write = |ca: bool| {
        let ca_line = if ca {
            format!("ca_file = {:?}\n", cert.ca_pem.to_string_lossy())
        } else {
            String::new()
        };
        site.env.write_config(&format!(
            "[providers.p]\nkind = \"gitlab\"\nurl = {:?}\ntoken_file = {:?}\ngroups = [\"data\"]\n{ca_line}",
            tls.https_url(),
            site.token_file().to_string_lossy()
        ));
    };
    write(false);
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout.contains("p discovery error")
            && run.stdout.to_lowercase().contains("certificate"),
        "{}",
        run.stdout
    );
    // git refuses it too: a configured repository over the same HTTPS server.
    site.env.write_config(&format!(
        "[providers.p]\nkind = \"gitlab\"\nurl = {:?}\ntoken_file = {:?}\nrepos = [\"data/alpha\"]\n",
        tls.https_url(),
        site.token_file().to_string_lossy()
    ));
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stdout.to_lowercase().contains("certificate"),
        "{}",
        run.stdout
    );
    assert_eq!(
        site.env
            .db()
            .query_row("SELECT COUNT(*) FROM models", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0
    );

    write(true);
    let handshakes = tls.handshakes();
    let run = site.env.run(&["sync"]).ok();
    assert!(
        run.stdout.contains("p/data/alpha updated"),
        "{}",
        run.stdout
    );
    assert!(tls.handshakes() > handshakes, "the traffic went over TLS");
}

/// A proxy with credentials carries both REST and git traffic (to an HTTPS host, through `CONNECT`); its
/// password shows nowhere. Without `proxy`, `HTTPS_PROXY` from the environment applies.
#[test]
fn proxy_carries_rest_and_git() {
    let site = Site::new(
        Kind::Github,
        Auth::basic("x-access-token", TOKEN),
        vec![FakeRepo::new("acme/alpha", 1)],
    );
    let cert = crate::tls::TestCert::generate(&site.env.path().join("certs"));
    let tls = crate::tls::TlsTerminator::start(site.forge.server.addr(), &cert);
    site.forge.set_external_url(Some(&tls.https_url()));
    let proxy = crate::proxy::TestProxy::start(Some(("proxyuser".into(), "proxy-pass-42".into())));
    let config = |proxy_line: &str| {
        site.env.write_config(&format!(
            "[providers.p]\nkind = \"github\"\nurl = {:?}\ntoken_file = {:?}\norgs = [\"acme\"]\nca_file = {:?}\n{proxy_line}",
            tls.https_url(),
            site.token_file().to_string_lossy(),
            cert.ca_pem.to_string_lossy()
        ));
    };
    config(&format!("proxy = {:?}\n", proxy.url_with_credentials()));
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 0, "{run:#?}\nproxy log: {:#?}", proxy.log());
    assert!(
        run.stdout.contains("p/acme/alpha updated"),
        "{}",
        run.stdout
    );
    let tunnels = proxy
        .log()
        .iter()
        .filter(|e| e.forwarded && e.request.starts_with("CONNECT 127.0.0.1:"))
        .count();
    assert!(
        tunnels >= 2,
        "REST and git both tunnelled through the proxy: {:#?}",
        proxy.log()
    );
    let server = site.forge.server.requests();
    assert!(
        server
            .iter()
            .any(|r| r.path.contains("/api/v3/orgs/acme/repos")),
        "REST reached the host"
    );
    assert!(
        server.iter().any(|r| r.path.ends_with("/git-upload-pack")),
        "git reached the host"
    );
    let status = site.env.run(&["status", "--json"]).ok();
    let hits = find_secret(
        &site.env.path().join("state"),
        "proxy-pass-42",
        &[&run.stdout, &run.stderr, &status.stdout],
    );
    assert!(hits.is_empty(), "the proxy password leaked into {hits:?}");

    // A wrong proxy password is an error that does not show the password.
    config(&format!(
        "proxy = {:?}\n",
        proxy
            .url_with_credentials()
            .replace("proxy-pass-42", "wrong-pass-77")
    ));
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        !run.stdout.contains("wrong-pass-77") && !run.stderr.contains("wrong-pass-77"),
        "{run:#?}"
    );

    // Without `proxy`, the environment's HTTPS_PROXY applies to both.
    let plain = crate::proxy::TestProxy::start(None);
    config("");
    let out = bin()
        .args([
            "--config",
            &site.env.path().join("config.toml").to_string_lossy(),
            "sync",
        ])
        .env("HTTPS_PROXY", plain.url())
        .env("https_proxy", plain.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tunnels = plain
        .log()
        .iter()
        .filter(|e| e.forwarded && e.request.starts_with("CONNECT"))
        .count();
    assert!(
        tunnels >= 2,
        "REST and git used HTTPS_PROXY: {:#?}",
        plain.log()
    );
}

/// `check` on a configuration with each kind of mistake: every one is reported with what to do, and the
/// exit status is 1; a good configuration passes with exit 0.
#[test]
fn check_reports_each_kind_of_mistake() {
    let gl = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![
            FakeRepo::new("data/alpha", 1),
            FakeRepo::new("data/old", 2).with_archived(true),
        ],
    );
    let gh = Site::new(
        Kind::Github,
        Auth::basic("x-access-token", TOKEN),
        vec![FakeRepo::new("acme/alpha", 1)],
    );
    let bb = Site::new(
        Kind::BitbucketCloud,
        Auth::basic("bbuser", TOKEN),
        vec![FakeRepo::new("ws/alpha", 1)],
    );
    let dir = gl.env.path();
    std::fs::write(dir.join("good"), TOKEN).unwrap();
    std::fs::write(dir.join("wrong"), "not-the-token").unwrap();
    std::fs::write(dir.join("open"), TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("good"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.join("wrong"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir.join("open"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let f = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let good_config = format!(
        "[providers.gl]\nkind = \"gitlab\"\nurl = {:?}\ntoken_file = {:?}\ngroups = [\"data\"]\n",
        gl.forge.url(),
        f("good")
    );
    gl.env.write_config(&good_config);
    let run = gl.env.run(&["check"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "ok      token     gl: token of user alice; scopes: read_api, read_repository"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("found 2 repositories (1 archived, 0 empty, 0 excluded by include/exclude)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("gl/data/alpha: default branch main at "),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("data/old:"),
        "archived repositories are not checked: {}",
        run.stdout
    );

    gl.env.write_config(&format!(
        "[providers.gl]\nkind = \"gitlab\"\nurl = {:?}\ntoken_file = {:?}\ngroups = [\"data\"]\n\
         [providers.gh]\nkind = \"github\"\nurl = {:?}\ntoken_file = {:?}\norgs = [\"no-such-org\"]\n\
         [providers.bb]\nkind = \"bitbucket-cloud\"\nurl = {:?}\nusername = \"bbuser\"\ntoken_file = {:?}\nrepos = [\"ws/alpha\", \"ws/missing\"]\n\
         [providers.lost]\nkind = \"github\"\nurl = {:?}\ntoken_file = {:?}\nrepos = [\"acme/alpha\"]\n",
        gl.forge.url(),
        f("wrong"),
        gh.forge.url(),
        f("good"),
        bb.forge.url(),
        f("open"),
        gh.forge.url(),
        f("no-such-file"),
    ));
    let run = gl.env.run(&["check", "--json"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let results = run.json();
    let find = |check: &str, status: &str, needle: &str| {
        results.as_array().unwrap().iter().any(|r| {
            r["check"] == check
                && r["status"] == status
                && r["message"].as_str().unwrap_or("").contains(needle)
        })
    };
    let all = serde_json::to_string_pretty(&results).unwrap();
    assert!(
        find(
            "token",
            "error",
            "401 from provider gl: token rejected — it needs the read_api and read_repository scopes"
        ),
        "{all}"
    );
    assert!(
        find(
            "discovery",
            "error",
            "404 from provider gh: organisation or user no-such-org not found"
        ),
        "{all}"
    );
    assert!(
        find("secret", "warning", "readable by group or others"),
        "{all}"
    );
    assert!(
        find("secret", "warning", "retired app passwords on 2026-07-28"),
        "{all}"
    );
    assert!(find("secret", "error", "cannot read token_file"), "{all}");
    assert!(find("repo", "ok", "default branch main"), "{all}");
    assert!(find("repo", "error", "repository not found"), "{all}");
    assert!(find("token", "ok", "bbuser"), "{all}");
    assert!(!all.contains(TOKEN));

    // A syntax error is reported with file and line, and nothing else is tried.
    std::fs::write(
        dir.join("config.toml"),
        "[providers.gl]\nkind = \"gitlab\"\nbogus = true\n",
    )
    .unwrap();
    let run = gl.env.run(&["check"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("error   config") && run.stdout.contains("config.toml:3:"),
        "{}",
        run.stdout
    );
}

/// A repository listed in `repos` and also found by discovery: it gets its host id and web URL (webhooks match
/// by them), is mirrored once, and is never marked removed by discovery.
#[test]
fn configured_and_discovered_overlap() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![
            FakeRepo::new("data/alpha", 41),
            FakeRepo::new("data/beta", 42),
        ],
    );
    site.config(
        "gitlab",
        "groups = [\"data\"]\nrepos = [\"data/alpha\"]\nprune_removed = true",
    );
    let run = site.env.run(&["sync"]).ok();
    assert_eq!(
        run.stdout.matches("p/data/alpha ").count(),
        1,
        "{}",
        run.stdout
    );
    let row = site.row("p/data/alpha");
    assert_eq!(row["provider_id"], "41", "{row}");
    assert!(row["web_url"].is_string(), "{row}");
    // Gone from the group (moved elsewhere): still configured, still mirrored, never pruned.
    site.forge.set_repos(vec![FakeRepo::new("data/beta", 42)]);
    site.env.run(&["sync"]).ok();
    let run = site.env.run(&["sync"]).ok();
    assert!(
        run.stdout.contains("p/data/alpha unchanged"),
        "{}",
        run.stdout
    );
    assert_eq!(site.row("p/data/alpha")["state"], "active");
    assert_eq!(site.row("p/data/alpha")["models"], 1);
}

/// Discovery that lists nothing where there were repositories (a token that lost access) or that fails for
/// one scope removes nothing.
#[test]
fn a_suspicious_or_partial_discovery_removes_nothing() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![FakeRepo::new("data/alpha", 1)],
    );
    site.config("gitlab", "groups = [\"data\"]\nprune_removed = true");
    site.env.run(&["sync"]).ok();
    site.forge.add_namespace("data");
    site.forge.set_repos(vec![]);
    site.env.run(&["sync"]).ok();
    site.env.run(&["sync"]).ok();
    let row = site.row("p/data/alpha");
    assert_eq!(row["state"], "active", "{row}");
    assert_eq!(row["models"], 1);
    let human = site.env.run(&["status"]).ok().stdout;
    assert!(human.contains("did the token lose access"), "{human}");
    // One scope failing (unknown group) while the other lists: nothing marked removed, exit 1.
    site.forge.set_repos(vec![FakeRepo::new("data/alpha", 1)]);
    site.config(
        "gitlab",
        "groups = [\"data\", \"nope\"]\nprune_removed = true",
    );
    let run = site.env.run(&["sync"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.contains("group nope not found")
            && run.stdout.contains("p/data/alpha unchanged"),
        "{}",
        run.stdout
    );
    assert_eq!(site.row("p/data/alpha")["state"], "active");
}

/// A pagination link naming another origin is asked at the API's own origin: the token never goes elsewhere.
#[test]
fn pagination_links_stay_on_the_api_origin() {
    let site = Site::new(
        Kind::Github,
        Auth::basic("x-access-token", TOKEN),
        repos_with_pages("acme", "acme/z"),
    );
    let elsewhere = crate::proxy::TestProxy::start(None);
    site.forge.set_external_url(Some(&elsewhere.url()));
    site.config("github", "orgs = [\"acme\"]");
    let run = site.env.run(&["sync"]).ok();
    assert!(
        run.stdout.contains("p/acme/epsilon") || run.stdout.contains("p/acme/z"),
        "every page was read: {}",
        run.stdout
    );
    assert!(
        elsewhere.log().is_empty(),
        "a request went to the other origin: {:#?}",
        elsewhere.log()
    );
}

/// An empty repository that gets its first push loses its "empty" reason.
#[test]
fn empty_then_filled_clears_the_reason() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![FakeRepo::new("data/fresh", 1).with_empty(true)],
    );
    site.config("gitlab", "groups = [\"data\"]");
    site.env.run(&["sync"]).ok();
    assert_eq!(site.row("p/data/fresh")["state"], "empty");
    let dir = site.forge.git_dir("data/fresh");
    std::fs::remove_dir_all(&dir).unwrap();
    make_repo(&dir, &site.template);
    site.forge.set_repos(vec![FakeRepo::new("data/fresh", 1)]);
    site.env.run(&["sync"]).ok();
    let row = site.row("p/data/fresh");
    assert_eq!(row["state"], "active", "{row}");
    assert!(row["state_reason"].is_null(), "{row}");
    assert_eq!(row["models"], 1);
}

/// SIGTERM while discovery waits out a rate limit stops the service at once.
#[test]
fn shutdown_does_not_wait_for_discovery() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![FakeRepo::new("data/alpha", 1)],
    );
    site.config("gitlab", "groups = [\"data\"]");
    site.forge.rate_limit_next(100, 429, Some(20));
    let mut child = site.run_daemon();
    wait_for("a discovery request", 10, || {
        site.forge.api_request_count() >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
}

/// A reload rediscovers only the providers whose settings changed: saving another file (here: the main
/// file rewritten with a new top-level setting) makes no API request; changing the provider's scopes does, at
/// once.
#[test]
fn reloads_rediscover_only_changed_providers() {
    let site = Site::new(
        Kind::Gitlab,
        Auth::basic("oauth2", TOKEN),
        vec![FakeRepo::new("data/alpha", 41)],
    );
    // Discovery once a year: every later discovery request comes from a reload.
    let provider = "groups = [\"data\"]\ndiscover_schedule = \"0 0 1 1 *\"";
    site.config("gitlab", provider);
    let mut child = site.run_daemon();
    wait_for("p/data/alpha imported", 20, || {
        site.imported("p/data/alpha")
    });
    let reloads = |site: &Site| -> i64 {
        site.env
            .db()
            .query_row(
                "SELECT COUNT(*) FROM service WHERE key = 'last_reload_at'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0)
    };
    let before = site.forge.api_request_count();
    std::fs::write(
        site.env.path().join("config.toml"),
        std::fs::read_to_string(site.env.path().join("config.toml"))
            .unwrap()
            .replacen(
                "[providers.p]",
                "events_retention_days = 7\n\n[providers.p]",
                1,
            ),
    )
    .unwrap();
    wait_for("the first reload", 10, || reloads(&site) == 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        site.forge.api_request_count(),
        before,
        "an unrelated change rediscovered: {:?}",
        site.forge.api_requests()
    );
    // The provider's own scopes change: discovery runs again now.
    site.forge.add_namespace("more");
    site.config(
        "gitlab",
        &provider.replace("groups = [\"data\"]", "groups = [\"data\", \"more\"]"),
    );
    wait_for("a rediscovery", 10, || {
        site.forge.api_request_count() > before
    });
    signal(&child, libc::SIGTERM);
    assert!(wait_with_deadline(&mut child, 10).success());
}
