//! The configuration's tests: loading, merging, validation messages, and the documentation of every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Every key the configuration accepts is described in config.example.toml, in its own table (set, or
/// commented out with its default), and in a row of one of the tables of docs/configuration.md. The accepted
/// keys come from the parser itself: an unknown key's error lists every expected one, so a key added to the
/// code without documentation fails here. The example, and the README's minimal configuration, load.
#[test]
fn every_key_is_documented_in_the_example_and_the_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config.example.toml")).unwrap();
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    // The example's text per table: "" (top level), "webhook", "metrics", "web", "providers".
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in example.lines() {
        let header = line
            .trim_start_matches("# ")
            .strip_prefix('[')
            .and_then(|rest| {
                rest.split([']', '.'])
                    .next()
                    .filter(|name| name.chars().all(|c| c.is_ascii_lowercase()))
            });
        if let Some(name) = header {
            current = name.to_string();
        }
        let text = sections.entry(current.clone()).or_default();
        text.push('\n');
        text.push_str(line);
    }
    // The first cell of every table row of the configuration reference.
    let rows: Vec<&str> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .collect();
    let path = Path::new("/etc/modelmirror/config.toml");
    let tables = [
        ("", "zz_unknown = 1\n"),
        (
            "webhook",
            "[webhook]\nlisten = \"127.0.0.1:0\"\nzz_unknown = 1\n",
        ),
        (
            "metrics",
            "[metrics]\nlisten = \"127.0.0.1:0\"\nzz_unknown = 1\n",
        ),
        ("web", "[web]\nlisten = \"127.0.0.1:0\"\nzz_unknown = 1\n"),
        (
            "providers",
            "[providers.x]\nkind = \"git\"\nzz_unknown = 1\n",
        ),
    ];
    let (mut checked, mut missing) = (0, Vec::new());
    for (table, text) in tables {
        let err = Config::from_text(path, text).unwrap_err().to_string();
        let expected = err
            .split_once("expected one of ")
            .or_else(|| err.split_once("expected "))
            .unwrap_or_else(|| panic!("{table}: no list of keys in {err}"))
            .1;
        let section = sections.get(table).map(String::as_str).unwrap_or_default();
        for key in expected.split(',').filter_map(|k| k.split('`').nth(1)) {
            let is_table =
                ["webhook", "metrics", "web", "providers"].contains(&key) && table.is_empty();
            let in_example = if is_table {
                sections.contains_key(key)
            } else {
                [format!("\n{key} ="), format!("\n# {key} =")]
                    .iter()
                    .any(|form| section.contains(form.as_str()))
            };
            if !in_example {
                missing.push(format!("[{table}] {key} is not in config.example.toml"));
            }
            let forms = if is_table {
                vec![format!("`[{key}]"), format!("`[{key}.")]
            } else if table.is_empty() || table == "providers" {
                vec![format!("`{key}`")]
            } else {
                vec![format!("`[{table}] {key}`"), format!("`[{table}] {key}`,")]
            };
            let in_reference = rows
                .iter()
                .any(|cell| forms.iter().any(|f| cell.contains(f.as_str())))
                || (table == "webhook"
                    && rows.iter().any(|cell| {
                        cell.starts_with("`[webhook]") && cell.contains(&format!("`{key}`"))
                    }));
            if !in_reference {
                missing.push(format!(
                    "[{table}] {key} is not in a table of docs/configuration.md"
                ));
            }
            checked += 1;
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    assert!(checked > 30, "only {checked} keys found");
    // And the example itself is a valid configuration.
    if let Err(e) = Config::from_text(path, &example) {
        panic!("config.example.toml does not load: {e}");
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let minimal = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md shows a minimal configuration in a toml block");
    if let Err(e) = Config::from_text(path, minimal) {
        panic!("the README's minimal configuration does not load: {e}");
    }
}

#[test]
fn defaults_and_repo_ids() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[providers.gl]\nkind = \"gitlab\"\nrepos = [\"group/sub/project\"]\n",
    );
    let c = Config::load(&main).unwrap();
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(
        c.database,
        crate::store::Database::Sqlite(PathBuf::from(DEFAULT_STATE_DIR).join("modelmirror.db"))
    );
    assert_eq!(c.concurrency, 4);
    assert_eq!(c.filter.max_model_bytes, 64 * 1024 * 1024);
    assert!(c.filter.matches("a/b/c.json") && c.filter.matches("top.json"));
    assert!(!c.filter.matches("a/b/c.yaml"));
    assert_eq!(c.repos[0].id, "gl/group/sub/project");
    assert_eq!(c.repos[0].url, "https://gitlab.com/group/sub/project.git");
    assert_eq!(
        c.mirror_path(&c.repos[0]),
        PathBuf::from("/var/lib/modelmirror/mirrors/gl/group/sub/project.git")
    );
}

#[test]
fn unknown_key_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "state_dir = \"/tmp/x\"\n\n[providers.gl]\nkind = \"gitlab\"\nrepoz = [\"a/b\"]\n",
    );
    let e = Config::load(&main).unwrap_err().to_string();
    assert!(e.contains("config.toml:5:"), "{e}");
    assert!(e.contains("repoz"), "{e}");
}

#[test]
fn provider_defined_twice_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(dir.path(), "config.toml", "state_dir = \"s\"\n");
    write(
        dir.path(),
        "conf.d/a.toml",
        "[providers.gl]\nkind = \"gitlab\"\n",
    );
    write(
        dir.path(),
        "conf.d/b.toml",
        "[providers.gl]\nkind = \"github\"\n",
    );
    let e = Config::load(&main).unwrap_err().to_string();
    assert!(
        e.contains("a.toml") && e.contains("b.toml") && e.contains("`gl`"),
        "{e}"
    );
}

#[test]
fn conf_d_merges_and_relative_paths_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "state_dir = \"state\"\nschedule = \"0 * * * *\"\n[providers.plain]\nkind = \"git\"\nrepos = [\"file:///srv/plain.git\"]\n",
    );
    write(dir.path(), "token", "s3cret\n");
    write(
        dir.path(),
        "conf.d/gh.toml",
        "[providers.gh]\nkind = \"github\"\ntoken_file = \"token\"\nschedule = \"*/10 * * * * *\"\nrepos = [\"o/r\"]\n",
    );
    let c = Config::load(&main).unwrap();
    assert_eq!(c.state_dir, dir.path().join("state"));
    // Files in order: the main file's provider, then conf.d's.
    assert_eq!(c.repos[1].id, "gh/o/r");
    assert_eq!(c.repos[1].schedule.period(), Duration::from_secs(10));
    // The top-level schedule is the default of a provider that sets none.
    assert_eq!(c.repos[0].schedule.period(), Duration::from_secs(3600));
    let tok = c.providers[1]
        .credentials
        .token
        .as_ref()
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(tok.expose(), "s3cret");
    assert!(!format!("{:?}", c).contains("s3cret"));
}

#[test]
fn bad_values_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[providers.GL]\nkind = \"gitlab\"\n", "lowercase"),
        ("[providers.gl]\nkind = \"gitlub\"\n", "use one of"),
        ("schedule = \"every minute\"\n", "schedule"),
        ("concurrency = 0\n", "concurrency"),
        (
            "[providers.d]\nkind = \"bitbucket-datacenter\"\nrepos = [\"P/r\"]\n",
            "url",
        ),
        (
            "[providers.g]\nkind = \"gitlab\"\nrepos = [\"../etc\"]\n",
            "..",
        ),
        (
            "[providers.g]\nkind = \"git\"\nrepos = [\"https://u:p@h/x.git\"]\n",
            "token_file",
        ),
        (
            "[providers.g]\nkind = \"gitlab\"\nurl = \"https://u:p@h\"\n",
            "token_file",
        ),
        ("include = [\"[\"]\n", "include"),
        (
            "[providers.g]\nkind = \"git\"\nrepos = [\"https://h/x.git\"]\ncommit_status = true\n",
            "kind git has no commit status API",
        ),
        (
            "[providers.g]\nkind = \"gitlab\"\ncommit_status = true\nstatus_context = \"\"\n",
            "status_context",
        ),
        (
            "[providers.b]\nkind = \"bitbucket-cloud\"\nhead_check = \"graphql\"\n",
            "kind bitbucket-cloud has no GraphQL API",
        ),
        (
            "[providers.g]\nkind = \"github\"\nhead_check = \"rest\"\n",
            "head_check = \"rest\"",
        ),
        (
            "[providers.g]\nkind = \"github\"\nhead_check = \"graphql\"\nhead_check_full_every = 0\n",
            "head_check_full_every must be at least 1",
        ),
        ("log_level = \"degub\"\n", "log_level = \"degub\""),
        ("state_dir = 3\n", "config.toml:1:"),
        ("this is not toml", "config.toml:1:"),
    ];
    for (text, needle) in cases {
        let main = write(dir.path(), "config.toml", text);
        let e = Config::load(&main).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?} gave {e}");
        assert!(!e.contains("u:p@"), "{e}");
    }
}

#[test]
fn literal_token_warns_and_is_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[providers.g]\nkind = \"github\"\ntoken = \"ghp_literal\"\nrepos = [\"o/r\"]\n",
    );
    let c = Config::load(&main).unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("literal")));
    assert!(!format!("{c:?}").contains("ghp_literal"));
}

#[test]
fn secrets_are_checked_apart_from_parsing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[providers.g]\nkind = \"gitlab\"\ntoken_file = \"missing\"\n[providers.h]\nkind = \"github\"\ntoken_file = \"open\"\n[providers.e]\nkind = \"github\"\ntoken_env = \"MODELMIRROR_TEST_UNSET_VAR\"\n",
    );
    let open = write(dir.path(), "open", "tok\n");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::load(&main).unwrap();
    let check = c.check_secrets();
    let errors: Vec<String> = check.errors.iter().map(ToString::to_string).collect();
    let warnings: Vec<String> = check.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let has = |a: &str, b: &str| errors.iter().any(|e| e.contains(a) && e.contains(b));
    assert!(has("provider g", "cannot read token_file"), "{errors:?}");
    assert!(has("MODELMIRROR_TEST_UNSET_VAR", "not set"), "{errors:?}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("readable by group or others") && warnings[0].contains("chmod 600")
    );
}

#[test]
fn discovery_keys_belong_to_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    let main = write(
        dir.path(),
        "config.toml",
        "[providers.g]\nkind = \"gitlab\"\norgs = [\"x\"]\n",
    );
    let e = Config::load(&main).unwrap_err().to_string();
    assert!(
        e.contains("`orgs` does not apply") && e.contains("`groups`"),
        "{e}"
    );
    let main = write(
        dir.path(),
        "config.toml",
        "[providers.g]\nkind = \"gitlab\"\ngroups = [\"data\"]\nexclude = [\"data/archive/**\"]\nproxy = \"http://u:secret@proxy:3128\"\n",
    );
    let c = Config::load(&main).unwrap();
    let p = &c.providers[0];
    assert_eq!(p.discover, vec!["data"]);
    assert_eq!(p.api_url.as_deref(), Some("https://gitlab.com/api/v4"));
    assert!(p.repo_filter.allows("data/models") && !p.repo_filter.allows("data/archive/old"));
    assert_eq!(p.discover_schedule.period(), Duration::from_secs(3600));
    assert!(
        !format!("{c:?}").contains("u:secret@"),
        "the proxy password is redacted"
    );
}

#[test]
fn log_filters_must_parse_and_give_modelmirror_a_level() {
    for good in [
        "info",
        "WARN",
        "warn,hyper=off",
        "warn,modelmirror=debug",
        "modelmirror=debug",
        "modelmirror",
        "info,target[span{field=value}]=debug",
    ] {
        assert_eq!(log_filter_problem(good), None, "{good}");
    }
    for bad in [
        "degub",
        "modelmirorr=debug",
        "modelmirrorr=debug",
        "modelmirror::poll=debug",
        "",
        "  ",
        "hyper=debug",
    ] {
        assert!(log_filter_problem(bad).is_some(), "{bad:?} was accepted");
    }
    assert!(log_filter_problem("degub").unwrap().contains("\"degub\""));
}

/// `database` as a PostgreSQL URL: the password from a file or a variable (never the URL), TLS parameters
/// checked, and the keys that only fit one engine refused with the other.
#[test]
fn a_postgresql_database_and_its_password() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pw", "s3cret-pass\n");
    let load = |text: &str| {
        let main = write(dir.path(), "config.toml", text);
        Config::load(&main).map_err(|e| e.to_string())
    };
    let c = load(
        "database = \"postgresql://mm@db.example:5432/catalog?sslmode=verify-full\"\ndatabase_password_file = \"pw\"\n",
    )
    .unwrap();
    let shown = c.database.to_string();
    assert_eq!(
        shown,
        "postgresql://mm@db.example:5432/catalog?sslmode=verify-full"
    );
    assert!(
        !format!("{:?}", c.database).contains("s3cret"),
        "{:?}",
        c.database
    );
    for (text, expect) in [
        (
            "database = \"postgresql://mm:hunter2@db/catalog\"\n",
            "holds a password",
        ),
        (
            "database = \"postgres://mm@db/catalog?password=hunter2\"\n",
            "password parameter",
        ),
        (
            "database = \"postgresql://mm@db/catalog?sslmode=sometimes\"\ndatabase_password_file = \"pw\"\n",
            "sslmode=sometimes is not one of",
        ),
        ("database = \"postgresql://db/catalog\"\n", "names no user"),
        (
            "database = \"postgresql://mm@db/catalog\"\ndatabase_password_env = \"MODELMIRROR_TEST_UNSET_VAR\"\n",
            "MODELMIRROR_TEST_UNSET_VAR (database_password_env) is not set",
        ),
        (
            "database = \"postgresql://mm@db/catalog\"\ndatabase_password_file = \"missing\"\n",
            "cannot read database_password_file",
        ),
        (
            "database = \"postgresql://mm@db/catalog\"\ndatabase_max_bytes = 10000000\n",
            "limit the database's size in PostgreSQL itself",
        ),
        (
            "database = \"catalog.db\"\ndatabase_password_file = \"pw\"\n",
            "this one is a SQLite file",
        ),
        ("database_password_file = \"pw\"\n", "none is set"),
        (
            "database = \"jdbc:postgresql://db/catalog?password=hunter2\"\n",
            "not a database modelmirror can use",
        ),
        (
            "database = \"postgresql+psycopg://mm:hunter2@db/catalog\"\n",
            "not a database modelmirror can use",
        ),
    ] {
        let err = load(text).unwrap_err();
        assert!(err.contains(expect), "{text}: {err}");
        assert!(!err.contains("hunter2"), "{text}: {err}");
    }
}

/// `instance_name` defaults to the host name and refuses spaces; `lease_seconds` is bounded.
#[test]
fn instance_name_and_lease_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let main = write(dir.path(), "config.toml", text);
        Config::load(&main).map_err(|e| e.to_string())
    };
    let c = load("").unwrap();
    assert!(!c.instance_name.is_empty() && !c.instance_name.contains(' '));
    assert_eq!(c.lease_seconds, 60);
    let c = load("instance_name = \"mirror-2\"\nlease_seconds = 45\n").unwrap();
    assert_eq!(
        (c.instance_name.as_str(), c.lease_seconds),
        ("mirror-2", 45)
    );
    let err = load("instance_name = \"two words\"\n").unwrap_err();
    assert!(err.contains("without spaces"), "{err}");
    let err = load("lease_seconds = 20\n").unwrap_err();
    assert!(err.contains("lease_seconds must be 30 to 3600"), "{err}");
}
