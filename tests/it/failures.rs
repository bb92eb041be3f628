//! Crashes: SIGKILL in the middle of a long import, then a restart. The database must pass its integrity
//! check, hold exactly the models of the commit it records, and then catch up.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::git_http::Auth;
use crate::support::*;

/// Start `modelmirror sync`, wait until `due(pid)` holds (checked every few milliseconds) or the process ends by
/// itself, then SIGKILL it. Whether it was killed while still running.
fn sync_killed_when(env: &Env, mut due: impl FnMut(u32) -> bool) -> bool {
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
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if due(child.id()) {
            child.kill().unwrap(); // SIGKILL
            let _ = child.wait();
            return true;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Commits written so far (0 before the database or its tables exist).
fn steps_done(env: &Env) -> i64 {
    let Ok(db) = rusqlite::Connection::open_with_flags(
        env.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return 0;
    };
    db.query_row("SELECT COUNT(*) FROM sync_steps", [], |r| r.get(0))
        .unwrap_or(0)
}

/// After a kill: the database is intact and holds exactly the models of the commit it records (none when it
/// records none).
fn assert_consistent(env: &Env, bare: &std::path::Path, repo_id: &str) {
    if !env.db_path().exists() {
        return;
    }
    let db = env.db();
    assert_integrity(&db);
    match processed_commit(&db, repo_id) {
        Some(commit) => assert_catalog_is(bare, &db, repo_id, &commit, u64::MAX),
        None => {
            let n: i64 = db
                .query_row(
                    "SELECT COUNT(*) FROM models WHERE repo_id = ?1",
                    [repo_id],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0, "models stored without a recorded commit");
        }
    }
}

/// SIGKILL at many points of a 150-commit history replay: while cloning, then after 1, 10, 40, 80 and 120
/// commits (each kill lands while the next commit is being read or written). Every restart resumes where the
/// last one stopped, and in the end every commit is processed exactly once.
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
    let mirror = env.path().join("state/mirrors/g/gen/history.git/objects");
    let mut kills = 0;
    if sync_killed_when(&env, |_| mirror.exists()) {
        kills += 1;
    }
    assert_consistent(&env, &bare, "g/gen/history");
    for after in [1, 10, 40, 80, 120] {
        if sync_killed_when(&env, |_| steps_done(&env) >= after) {
            kills += 1;
        }
        assert_consistent(&env, &bare, "g/gen/history");
    }
    assert!(
        kills >= 5,
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

/// SIGKILL at several points of one large import (1,500 models in one commit): during the fetch, then once the
/// process has written 1, 3, 6 and 10 MB more than the fetch (of about 18 MB: the commit's rows on their way into the
/// database). After each kill the database is intact and holds no half commit; the next run imports it
/// whole, and a later commit is caught up.
#[test]
fn sigkill_during_a_large_import_then_restart() {
    let env = Env::new(Auth::None);
    let bare = env.srv("big.git");
    let work = env.path().join("big-work");
    many_models(&bare, 1500);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"big.git\"]\n",
        env.server.url()
    ));
    let packs = env.path().join("state/mirrors/g/big.git/objects/pack");
    let fetched = || {
        std::fs::read_dir(&packs).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "pack"))
        })
    };
    let mut kills = 0;
    if sync_killed_when(&env, |_| packs.exists()) {
        kills += 1;
    }
    assert_consistent(&env, &bare, "g/big");
    for megabytes in [1u64, 3, 6, 10] {
        // Once the mirror holds the pack, a restart does not fetch it again; before, allow for the fetch.
        let fetch = if fetched() { 0 } else { 8 << 20 };
        if sync_killed_when(&env, |pid| bytes_written(pid) > fetch + (megabytes << 20)) {
            kills += 1;
        }
        assert_consistent(&env, &bare, "g/big");
    }
    assert!(
        kills >= 4,
        "the import was too quick to be interrupted ({kills} kills)"
    );
    let out = env.run(&["sync"]);
    assert_eq!(out.code, 0, "{out:?}");
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let db = env.db();
    assert_integrity(&db);
    assert_eq!(
        processed_commit(&db, "g/big").as_deref(),
        Some(head.as_str())
    );
    assert_catalog_is(&bare, &db, "g/big", &head, u64::MAX);
    // It then catches up with a later commit.
    let _ = std::fs::remove_dir_all(&work);
    git(
        env.path(),
        &["clone", "-q", &bare.to_string_lossy(), "big-work"],
    );
    std::fs::remove_file(work.join("m0007.hck.json")).unwrap();
    std::fs::rename(work.join("m0008.hck.json"), work.join("renamed.hck.json")).unwrap();
    commit_all(&work, "later");
    let out = env.run(&["sync"]);
    assert_eq!(out.code, 0, "{out:?}");
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let db = env.db();
    assert_eq!(
        processed_commit(&db, "g/big").as_deref(),
        Some(head.as_str())
    );
    assert_catalog_is(&bare, &db, "g/big", &head, u64::MAX);
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

/// The disk holding the database fills during an import (a 6 MB tmpfs, where this process may mount one):
/// the sync fails with a clear error, the database keeps the last commit's catalog intact, and once space
/// returns the next sync imports the new commit.
#[test]
fn the_disk_fills_during_a_write_and_syncing_recovers() {
    let env = Env::new(Auth::None);
    // Never skipped: without a small disk this test cannot run, and says so by failing.
    let _disk = SmallDisk::mount(&env.path().join("small"), "6m").expect(
        "cannot mount a size-limited tmpfs: this test needs root with the right to mount (run scripts/test.sh as root)",
    );
    let filler = env.path().join("small/filler");
    let free = || {
        let out = Command::new("df")
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
    full_then_recover(
        &env,
        &env.path().join("small/modelmirror.db"),
        "",
        || {
            // Fill the disk, leaving a few kilobytes.
            let size = free().saturating_sub(256 * 1024);
            std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
        },
        || std::fs::remove_file(&filler).unwrap(),
    );
}

/// The same with SQLite's page limit instead of a small disk (runs everywhere): `database_max_bytes` caps
/// the database, an import that would pass it fails like a full disk and says to raise the cap, and raising
/// it lets the next sync import the commit.
#[test]
fn a_database_at_database_max_bytes_fails_the_write_and_syncing_recovers() {
    let env = Env::new(Auth::None);
    full_then_recover(
        &env,
        &env.path().join("state/modelmirror.db"),
        "database_max_bytes = 1048576\n",
        || {},
        || {},
    );
}

/// One model synced; `fill()`; a commit of every books model (141 files, 5.9 MB) fails to import without losing anything;
/// `make_room()` (and no `cap` in the configuration); the next sync imports it.
fn full_then_recover(
    env: &Env,
    db_path: &std::path::Path,
    cap: &str,
    fill: impl FnOnce(),
    make_room: impl FnOnce(),
) {
    let (bare, work) = env.new_repo("t/r.git");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("first.hck.json"),
    )
    .unwrap();
    let first = commit_all(&work, "first");
    let config = |top: &str| {
        env.write_config(&format!(
            "database = {db_path:?}\n{top}[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/r.git\"]\n",
            env.server.url()
        ));
    };
    config(cap);
    assert_eq!(env.run(&["sync"]).code, 0);
    fill();
    // A commit whose import needs far more room than is left.
    let mut sources: Vec<_> = std::fs::read_dir(fixtures().join("models/books"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sources.sort();
    for (i, p) in sources.iter().enumerate() {
        std::fs::copy(p, work.join(format!("more{i}.hck.json"))).unwrap();
    }
    let second = commit_all(&work, "many models");
    let out = env.run(&["sync"]);
    assert_ne!(
        out.code, 0,
        "the sync cannot succeed on a full database: {out:?}"
    );
    assert!(
        out.stderr.contains("g/t/r")
            && out.stderr.contains("disk is full")
            && out.stderr.contains("free space")
            && out.stderr.contains("database_max_bytes"),
        "the error names the repository, the cause and what to do: {out:?}"
    );
    {
        let db = env.db_at(db_path);
        assert_integrity(&db);
        assert_eq!(
            processed_commit(&db, "g/t/r").as_deref(),
            Some(first.as_str())
        );
        assert_catalog_is(&bare, &db, "g/t/r", &first, 64 << 20);
        // The error is recorded too (its own small write fits where the commit did not).
        let recorded: Option<String> = db
            .query_row("SELECT last_error FROM repos WHERE id = 'g/t/r'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(
            recorded
                .as_deref()
                .is_some_and(|e| e.contains("disk is full")),
            "recorded: {recorded:?}"
        );
    }
    // Room returns: the next sync imports the commit.
    make_room();
    config("");
    let out = env.run(&["sync"]);
    assert_eq!(out.code, 0, "{out:?}");
    let db = env.db_at(db_path);
    assert_integrity(&db);
    assert_eq!(
        processed_commit(&db, "g/t/r").as_deref(),
        Some(second.as_str())
    );
    assert_catalog_is(&bare, &db, "g/t/r", &second, 64 << 20);
}

/// `database_max_bytes` set below what the database already holds: nothing is lost, the start says the
/// database will not grow and what to do, polls that write nothing new still succeed, and a commit that needs
/// room fails like a full disk until the cap is raised.
#[test]
fn database_max_bytes_below_the_current_size_keeps_the_data_and_says_so() {
    let env = Env::new(Auth::None);
    let bare = env.srv("big.git");
    many_models(&bare, 200);
    let config = |top: &str| {
        env.write_config(&format!(
            "{top}[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"big.git\"]\n",
            env.server.url()
        ))
    };
    config("");
    env.run(&["sync"]).ok();
    let first = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let size = std::fs::metadata(env.db_path()).unwrap().len();
    assert!(
        size > 1 << 20,
        "the import made the database bigger than the cap: {size}"
    );
    config("database_max_bytes = 1048576\n");
    let out = env.run(&["sync"]);
    assert_eq!(out.code, 0, "an unchanged poll needs no room: {out:?}");
    assert!(
        out.stderr
            .contains("more than database_max_bytes (1048576)")
            && out.stderr.contains("raise database_max_bytes"),
        "says so at start: {}",
        out.stderr
    );
    let work = env.path().join("work");
    git(
        env.path(),
        &["clone", "-q", &bare.to_string_lossy(), "work"],
    );
    for i in 0..100 {
        let text = std::fs::read_to_string(work.join(format!("m{i:04}.hck.json"))).unwrap();
        std::fs::write(
            work.join(format!("n{i:04}.hck.json")),
            text.replacen("\"modelName\": \"", "\"modelName\": \"new ", 1),
        )
        .unwrap();
    }
    let second = commit_all(&work, "100 more models");
    let out = env.run(&["sync"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("g/big error") && out.stdout.contains("disk is full"),
        "the poll fails like a full disk: {out:?}"
    );
    {
        let db = env.db();
        assert_integrity(&db);
        assert_catalog_is(&bare, &db, "g/big", &first, u64::MAX);
    }
    config("");
    env.run(&["sync"]).ok();
    let db = env.db();
    assert_integrity(&db);
    assert_catalog_is(&bare, &db, "g/big", &second, u64::MAX);
}

/// A blob already in the mirror is damaged on disk (here: bytes of its compressed data overwritten), and a
/// new commit with many files needs it. The poll fails with an error that names the repository and the blob
/// and says what to do; the catalog keeps the previous commit; following that advice repairs it.
#[test]
fn a_damaged_blob_in_the_mirror_fails_the_poll_and_loses_nothing() {
    let env = Env::new(Auth::None);
    let bare = env.srv("big.git");
    many_models(&bare, 40);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"big.git\"]\n",
        env.server.url()
    ));
    env.run(&["sync"]).ok();
    let first = git(&bare, &["rev-parse", "main"]).trim().to_string();
    // Damage, in the mirror's pack, the bytes of a model blob stored whole (not as a delta: a damaged delta can
    // inflate to a plausible-looking header, and the test must not depend on the deltas `git pack-objects`
    // chose on this machine). Only the compressed data is overwritten; the entry's header stays readable.
    let mirror = env.path().join("state/mirrors/g/big.git");
    let pack_dir = mirror.join("objects/pack");
    let idx = std::fs::read_dir(&pack_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "idx"))
        .unwrap();
    // `verify-pack -v`: "<id> <type> <size> <size in pack> <offset>", then "<depth> <base>" for a delta.
    let listing = git(&mirror, &["verify-pack", "-v", &idx.to_string_lossy()]);
    let whole: std::collections::HashMap<String, (usize, usize)> = listing
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[1] == "blob").then(|| {
                (
                    f[0].to_string(),
                    (f[4].parse().unwrap(), f[3].parse().unwrap()),
                )
            })
        })
        .collect();
    let (file, blob) = git(&bare, &["ls-tree", "main"])
        .lines()
        .filter_map(|l| {
            let (meta, name) = l.split_once('\t')?;
            let id = meta.split_whitespace().nth(2)?;
            (name.ends_with(".hck.json") && whole.contains_key(id))
                .then(|| (name.to_string(), id.to_string()))
        })
        .next()
        .expect("a model stored whole in the pack");
    let (offset, in_pack) = whole[&blob];
    // The next commit adds 30 copies of that model: the same blob, already in the mirror, so it is not
    // fetched again.
    let work = env.path().join("work");
    git(
        env.path(),
        &["clone", "-q", &bare.to_string_lossy(), "work"],
    );
    for i in 0..30 {
        std::fs::copy(work.join(&file), work.join(format!("copy{i:02}.hck.json"))).unwrap();
    }
    commit_all(&work, "copies");
    let pack = idx.with_extension("pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    // The entry's header: type and size, 7 bits per byte while the top bit is set.
    let mut data = offset;
    while bytes[data] & 0x80 != 0 {
        data += 1;
    }
    data += 1;
    for b in &mut bytes[data + 2..offset + in_pack - 2] {
        *b = 0x5a;
    }
    std::fs::set_permissions(&pack, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&pack, &bytes).unwrap();

    let out = env.run(&["sync"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("g/big"),
        "names the repository: {}",
        out.stderr
    );
    assert!(out.stderr.contains(&blob), "names the blob: {}", out.stderr);
    assert!(
        out.stderr.contains(&mirror.display().to_string()) && out.stderr.contains("delete"),
        "says what to do: {}",
        out.stderr
    );
    let db = env.db();
    assert_integrity(&db);
    assert_eq!(
        processed_commit(&db, "g/big").as_deref(),
        Some(first.as_str())
    );
    assert_catalog_is(&bare, &db, "g/big", &first, u64::MAX);
    let recorded: Option<String> = db
        .query_row("SELECT last_error FROM repos WHERE id = 'g/big'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(recorded.is_some_and(|e| e.contains(&blob)));
    // The advice works: without the mirror the next poll clones again and imports the new commit.
    std::fs::remove_dir_all(&mirror).unwrap();
    env.run(&["sync"]).ok();
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let db = env.db();
    assert_catalog_is(&bare, &db, "g/big", &head, u64::MAX);
}

/// What a `kill -9` in the middle of an update leaves in a mirror does not stop it for good: a stale
/// `config.lock` (seen when the first clone was killed while libgit2 wrote the mirror's settings: every later
/// poll then said "being updated by another process" and was never retried as an error), a branch's `.lock`,
/// a half-received pack. While another modelmirror process really is using the mirror, the poll leaves
/// everything as it is and says so; once that process is gone, the next poll removes the leftovers and syncs.
#[test]
fn leftovers_of_a_killed_update_do_not_block_the_mirror() {
    let env = Env::new(Auth::None);
    let bare = env.srv("t/r.git");
    many_models(&bare, 3);
    env.write_config(&format!(
        "[providers.g]\nkind = \"git\"\nurl = {:?}\nrepos = [\"t/r.git\"]\n",
        env.server.url()
    ));
    env.run(&["sync"]).ok();
    let first = git(&bare, &["rev-parse", "main"]).trim().to_string();
    let work = env.path().join("work");
    git(
        env.path(),
        &["clone", "-q", &bare.to_string_lossy(), "work"],
    );
    std::fs::copy(work.join("m0000.hck.json"), work.join("copy.hck.json")).unwrap();
    commit_all(&work, "a copy");
    let second = git(&bare, &["rev-parse", "main"]).trim().to_string();

    let mirror = env.path().join("state/mirrors/g/t/r.git");
    let leftovers = [
        mirror.join("config.lock"),
        mirror.join("refs/heads/main.lock"),
        mirror.join("objects/pack/pack_git2_0123456789abcdef"),
    ];
    for f in &leftovers {
        std::fs::write(f, b"left by a killed process").unwrap();
    }
    // Another process holds the mirror: nothing is touched.
    let holder = std::fs::File::create(mirror.join("modelmirror.flock")).unwrap();
    holder.lock().unwrap();
    let out = env.run(&["sync"]);
    assert!(
        out.stdout
            .contains("being updated by another modelmirror process"),
        "{out:?}"
    );
    for f in &leftovers {
        assert!(
            f.exists(),
            "{} removed while the mirror was in use",
            f.display()
        );
    }
    assert_eq!(
        processed_commit(&env.db(), "g/t/r").as_deref(),
        Some(first.as_str())
    );
    // That process is gone (the kernel drops its lock): the leftovers are stale, and go.
    drop(holder);
    let out = env.run(&["sync"]).ok();
    assert!(out.stdout.starts_with("g/t/r updated"), "{}", out.stdout);
    assert!(
        out.stderr.contains("stopped mid-update") && out.stderr.contains("config.lock"),
        "says what it removed: {}",
        out.stderr
    );
    for f in &leftovers {
        assert!(!f.exists(), "{} still there", f.display());
    }
    {
        let db = env.db();
        assert_integrity(&db);
        assert_catalog_is(&bare, &db, "g/t/r", &second, u64::MAX);
    }
    // A lock modelmirror cannot remove (here a folder where libgit2 wants its branch lock file) is an error
    // of the repository, recorded and saying what to do: never a silent "busy".
    let stuck = mirror.join("refs/heads/main.lock");
    std::fs::create_dir_all(stuck.join("x")).unwrap();
    std::fs::copy(work.join("m0001.hck.json"), work.join("copy2.hck.json")).unwrap();
    let third = commit_all(&work, "another copy");
    let out = env.run(&["sync"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("g/t/r error") && out.stdout.contains("delete that file"),
        "{out:?}"
    );
    let recorded: Option<String> = env
        .db()
        .query_row("SELECT last_error FROM repos WHERE id = 'g/t/r'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(recorded.is_some_and(|e| e.contains("main.lock")));
    std::fs::remove_dir_all(&stuck).unwrap();
    env.run(&["sync"]).ok();
    assert_catalog_is(&bare, &env.db(), "g/t/r", &third, u64::MAX);
}
