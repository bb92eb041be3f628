//! Crashes: SIGKILL in the middle of a long import, then a restart. The database must pass its integrity
//! check, hold exactly the models of the commit it records, and then catch up.

use std::time::Duration;

use crate::git_http::Auth;
use crate::support::*;

#[test]
fn sigkill_during_sync_then_restart() {
    let env = Env::new(Auth::None);
    let bare = env.srv("gen/history.git");
    synthetic_history(&bare, 150, 24, 4);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"gen/history.git\"]\n",
        env.server.url()
    ));
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let mut kills = 0;
    for delay_ms in [300u64, 700, 1200, 2000, 3000] {
        let mut child = bin()
            .args([
                "--config",
                &env.path().join("config.toml").to_string_lossy(),
                "sync",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let _ = child.wait();
        if !env.db_path().exists() {
            continue;
        }
        let db = env.db();
        assert_integrity(&db);
        if let Some(commit) = processed_commit(&db, "g/gen/history") {
            assert_catalog_is(&bare, &db, "g/gen/history", &commit, u64::MAX);
        }
    }
    assert!(
        kills >= 2,
        "the import was too quick to be interrupted ({kills} kills)"
    );
    let run = env.run(&["sync"]).ok();
    assert!(run.stdout.starts_with("g/gen/history "), "{}", run.stdout);
    let db = env.db();
    assert_integrity(&db);
    assert_eq!(
        processed_commit(&db, "g/gen/history").as_deref(),
        Some(head.as_str())
    );
    assert_catalog_is(&bare, &db, "g/gen/history", &head, u64::MAX);
    let steps: i64 = db
        .query_row(
            "SELECT COUNT(DISTINCT commit_id) FROM sync_steps",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        steps, 150,
        "every commit processed exactly once across the restarts"
    );
}

/// Another process (a user's own SQL, a backup) holds a read transaction open for the whole import: the
/// writer is not blocked by it (WAL), every commit is written, and the reader keeps its snapshot.
#[test]
fn a_long_foreign_read_transaction_does_not_stop_the_writer() {
    let env = Env::new(Auth::None);
    let bare = env.srv("gen/history.git");
    synthetic_history(&bare, 40, 12, 3);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"gen/history.git\"]\n",
        env.server.url()
    ));
    // The database exists (schema and all) before the reader opens it.
    assert!(env.run(&["status"]).code == 0);
    let reader = env.db();
    reader.execute_batch("BEGIN").unwrap();
    let before: i64 = reader
        .query_row("SELECT COUNT(*) FROM models", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, 0);
    let out = env.run(&["sync"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The reader still sees its snapshot …
    let during: i64 = reader
        .query_row("SELECT COUNT(*) FROM models", [], |r| r.get(0))
        .unwrap();
    assert_eq!(during, 0);
    reader.execute_batch("COMMIT").unwrap();
    // … and afterwards the full catalog of the head, which the writer committed meanwhile.
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let db = env.db();
    assert_eq!(
        processed_commit(&db, "g/gen/history").as_deref(),
        Some(head.as_str())
    );
    assert_catalog_is(&bare, &db, "g/gen/history", &head, 64 << 20);
    assert_integrity(&db);
}
