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

/// A size-limited filesystem (tmpfs) mounted for one test, unmounted however the test ends.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` where this process may not mount (not root, no mount namespace rights).
    fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The disk holding the database fills during an import: the sync fails with a clear error, the database
/// keeps the last commit's catalog intact, and once space returns the next sync imports the new commit.
#[test]
fn the_disk_fills_during_a_write_and_syncing_recovers() {
    let env = Env::new(Auth::None);
    let Some(_disk) = SmallDisk::mount(&env.path().join("small"), "6m") else {
        eprintln!("skipped: cannot mount a size-limited tmpfs here (needs root)");
        return;
    };
    let db_path = env.path().join("small/modelmirror.db");
    let (bare, work) = env.new_repo("t/r.git");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("first.hck.json"),
    )
    .unwrap();
    let first = commit_all(&work, "first");
    env.write_config(&format!(
        "database = {db_path:?}\n[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/r.git\"]\n",
        env.server.url()
    ));
    assert_eq!(env.run(&["sync"]).code, 0);
    // Fill the disk, leaving a few kilobytes.
    let filler = env.path().join("small/filler");
    let free = || {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(env.path().join("small"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap()
    };
    let size = free().saturating_sub(256 * 1024);
    std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
    // A commit whose import needs far more than that.
    let mut sources: Vec<_> = std::fs::read_dir(fixtures().join("models/books"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sources.sort();
    for (i, p) in sources.iter().take(30).enumerate() {
        std::fs::copy(p, work.join(format!("more{i}.hck.json"))).unwrap();
    }
    let second = commit_all(&work, "many models");
    let out = env.run(&["sync"]);
    assert_ne!(
        out.code, 0,
        "the sync cannot succeed on a full disk: {out:?}"
    );
    assert!(
        out.stderr.contains("g/t/r")
            && out.stderr.contains("disk is full")
            && out.stderr.contains("free space"),
        "the error names the repository and the cause: {out:?}"
    );
    {
        let db = env.db_at(&db_path);
        assert_integrity(&db);
        assert_eq!(
            processed_commit(&db, "g/t/r").as_deref(),
            Some(first.as_str())
        );
        assert_catalog_is(&bare, &db, "g/t/r", &first, 64 << 20);
    }
    // Space returns: the next sync imports the commit.
    std::fs::remove_file(&filler).unwrap();
    let out = env.run(&["sync"]);
    assert_eq!(out.code, 0, "{out:?}");
    let db = env.db_at(&db_path);
    assert_integrity(&db);
    assert_eq!(
        processed_commit(&db, "g/t/r").as_deref(),
        Some(second.as_str())
    );
    assert_catalog_is(&bare, &db, "g/t/r", &second, 64 << 20);
}
