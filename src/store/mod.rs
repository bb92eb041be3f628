//! The catalog database (SQLite, or PostgreSQL): schema and migrations, the one writer, and the queries behind the CLI. The only module
//! that writes SQL.
//!
//! The database is a derived replica of the Git mirrors: every row can be rebuilt from them. Each processed
//! commit is one transaction that also moves the repository's processed-commit pointer, so a crash at any
//! moment leaves the database at a consistent commit. Writers share one connection (SQLite has one writer
//! anyway), handed out first come, first served; readers such as the CLI open their own connections, which
//! WAL mode lets run alongside.
//!
//! By concern: [`schema`] (migrations), [`step`] (writing one processed commit), [`repos`] (repository and
//! provider state, discovery runs), [`events`] (polls, deliveries, the service's own state) and [`catalog`]
//! (reading the catalog). Each adds its methods to the one [`Store`].

mod catalog;
mod copy;
mod db;
mod events;
mod leases;
mod pg;
mod repos;
mod schema;
mod step;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;

pub(crate) use catalog::{ModelRow, RepoStatus};
pub use catalog::{SearchHit, VersionRow, fts_query};
pub(crate) use db::Conn;
pub use db::DbError;
pub(crate) use events::{DeliveryRecord, EventRow, PollRecord, StatusRecord};
pub(crate) use leases::Holder;
pub use pg::PgTarget;
pub(crate) use pg::is_url as is_database_url;
pub(crate) use repos::{Discovery, FoundRepo, RepoKeyRow, RepoState};
pub use step::{Content, Counts, StepMeta, StepWriter};

/// Where the catalog lives: a SQLite file (the default) or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(Box<PgTarget>),
}

impl std::fmt::Display for Database {
    /// The file's path, or the PostgreSQL URL (which never holds a password: one is refused there).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(p) => write!(f, "{}", p.display()),
            Database::Postgres(t) => write!(f, "{}", t.shown()),
        }
    }
}

impl Database {
    /// The SQLite file, if the catalog is one.
    pub(crate) fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "another modelmirror process runs as instance_name {name:?} on this database (its last heartbeat at {heartbeat_at}): give each instance its own instance_name"
    )]
    InstanceTaken { name: String, heartbeat_at: String },
    #[error("database {db}: {error}{}", hint(error))]
    Open { db: String, error: DbError },
    #[error(
        "database {path} is a folder: point `database` at a file in it (e.g. {path}/modelmirror.db), or leave `database` out to use <state_dir>/modelmirror.db"
    )]
    IsFolder { path: PathBuf },
    #[error("cannot create the folder for database {path}: {error}")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "database {db} has schema version {found}, newer than this modelmirror ({supported}); upgrade modelmirror"
    )]
    TooNew {
        db: String,
        found: i64,
        supported: i64,
    },
    #[error(
        "no catalog at {path}: run `modelmirror sync` (or the service) first, or point `database` / `state_dir` at the catalog to serve"
    )]
    Missing { path: PathBuf },
    #[error(
        "cannot read the catalog {path}: {error}. modelmirror serve reads it as the user it runs as: give that user read access to the file (and, for the live database, run it as the service's user, `sudo -u modelmirror modelmirror serve`)"
    )]
    ReadOnly {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error(
        "database {db} has schema version {found}, older than this modelmirror ({supported}); run `modelmirror sync` once with write access to it, which upgrades it"
    )]
    TooOld {
        db: String,
        found: i64,
        supported: i64,
    },
    #[error(
        "repository {repo} was updated by another modelmirror process meanwhile (it is at {found}, this poll started at {expected}); the next poll continues from there"
    )]
    Conflict {
        repo: String,
        expected: String,
        found: String,
    },
    #[error(
        "repository {repo}: this process no longer holds its lease (renewals failed for longer than lease_seconds, or it was given back), so another instance may poll it now; this poll stopped without writing, and the next poll continues"
    )]
    LeaseLost { repo: String },
    #[error("{0}")]
    Query(String),
    #[error("database error while {doing}: {error}{}", hint(error))]
    Sql { doing: String, error: DbError },
    #[error("database {db}: {problem}")]
    Url { db: String, problem: String },
    #[error(
        "database {db}: PostgreSQL {found} is too old; modelmirror needs PostgreSQL 13 or newer (upgrade the server)"
    )]
    ServerTooOld { db: String, found: String },
}

/// What to do about the database errors an operator can fix.
fn hint(e: &DbError) -> &'static str {
    let f = match e {
        DbError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => f,
        DbError::Pg(e) => return pg::hint(e),
        _ => return "",
    };
    match f.code {
        rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure => {
            " — free space on the disk holding the database (or check it for errors), or raise database_max_bytes if it is set; nothing of the failed step was kept, and the next poll retries it"
        }
        rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::PermissionDenied => {
            " — the database file or its folder is not writable by this user (the service runs as `modelmirror`)"
        }
        rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase => {
            " — the database is damaged: stop the service, move it aside and run `modelmirror rebuild` (see Troubleshooting)"
        }
        _ => "",
    }
}

trait Doing<T> {
    fn doing(self, what: &str) -> Result<T, StoreError>;
}

impl<T, E: Into<DbError>> Doing<T> for Result<T, E> {
    fn doing(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|error| StoreError::Sql {
            doing: what.to_string(),
            error: error.into(),
        })
    }
}

/// How many days polls and deliveries are kept unless `events_retention_days` says otherwise.
pub(crate) const DEFAULT_RETENTION_DAYS: u32 = 30;

/// The database handle shared by the daemon's tasks.
pub struct Store {
    database: Database,
    conn: Mutex<Conn>,
    /// How many days polls and deliveries are kept (`events_retention_days`).
    retention_days: std::sync::atomic::AtomicU32,
    /// Whose turn it is to use `conn`. Turns are served first come, first served: `std`'s mutex lets the
    /// thread that just unlocked take it straight back, so a history replay (a commit per transaction,
    /// back to back) would keep every other poll waiting until it ends.
    turns: Mutex<Turns>,
    /// Signalled when a turn ends.
    turn_ended: std::sync::Condvar,
    /// Opened to read only (`serve`, the web catalog's readers): a PostgreSQL connection made again after
    /// a server restart is read-only too.
    read_only: bool,
    /// PostgreSQL: the connection heartbeats and leases use (see `leases`), made when first needed.
    lease_conn: Mutex<Option<Conn>>,
    /// PostgreSQL: the connection of the reads that must not wait for the writer (see `read_aside`), kept
    /// (a connection per webhook delivery would cost a server process each), made when first needed.
    aside_conn: Mutex<Option<Conn>>,
    /// This process has retired its heartbeat (see `leases::retire`): a heartbeat still under way does not
    /// bring it back.
    retired: std::sync::atomic::AtomicBool,
    /// PostgreSQL: this process polls under leases (the service, `sync`), by this token. Each step checks in
    /// its transaction that the lease on its repository is still this process's, so an instance whose lease
    /// expired (a long outage, a stalled host) writes nothing once another may have taken it over.
    lease_token: std::sync::OnceLock<String>,
}

/// The writer connection's queue: tickets handed out, the one being served, and who waits (a poll
/// waiting for another's long commit is not stuck).
#[derive(Default)]
struct Turns {
    next: u64,
    serving: u64,
    waiting: Vec<std::thread::ThreadId>,
}

/// The writer connection, held for one turn.
struct Writer<'a> {
    // Fields drop in this order: the connection is free before the next turn is served.
    conn: std::sync::MutexGuard<'a, Conn>,
    _turn: Turn<'a>,
}

/// A turn being served: ending it (a panic included) serves the next ticket.
struct Turn<'a>(&'a Store);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turns = self.0.turns.lock().unwrap_or_else(|p| p.into_inner());
        turns.serving += 1;
        drop(turns);
        self.0.turn_ended.notify_all();
    }
}

impl std::ops::Deref for Writer<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with milliseconds, for poll start times (polls of different repositories interleave within a
/// second).
pub(crate) fn now_rfc3339_millis() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A large import's pages pass through the write-ahead log; after the checkpoint the log file is cut
    // back to this size instead of keeping its largest size for ever.
    conn.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// A read-only connection to `path` that has read its schema (so that a database it cannot use fails here);
/// `immutable`: the file is taken not to change while open (for a copy no writer touches).
fn read_only(path: &Path, immutable: bool) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match immutable {
        false => Connection::open_with_flags(path, flags)?,
        true => {
            let mut uri = url::Url::from_file_path(path)
                .map_err(|()| rusqlite::Error::InvalidPath(path.to_path_buf()))?;
            uri.set_query(Some("immutable=1"));
            Connection::open_with_flags(uri.as_str(), flags | OpenFlags::SQLITE_OPEN_URI)?
        }
    };
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "query_only", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))?;
    Ok(conn)
}

/// What the write-ahead log (`<database>-wal`) is cut back to after a checkpoint.
const WAL_KEPT_BYTES: i64 = 16 << 20;

/// The PostgreSQL connection a statement ran on is gone (a server restart, an administrator, the network):
/// closed, an I/O failure, or the server's own word for it (SQLSTATE class 08, or any FATAL error: each ends
/// the session — an administrator, a shutdown, `idle_session_timeout`).
fn connection_lost(e: &StoreError) -> bool {
    let StoreError::Sql {
        error: DbError::Pg(e),
        ..
    } = e
    else {
        return false;
    };
    db::pg_lost(e)
        || e.code().is_some_and(|c| c.code().starts_with("08"))
        || e.as_db_error()
            .is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC"))
}

impl Store {
    /// Open (creating when missing) and migrate the database.
    pub fn open(database: &Database) -> Result<Store, StoreError> {
        let path = match database {
            Database::Sqlite(path) => path,
            Database::Postgres(target) => {
                let conn = pg::open(target, false)?;
                return Ok(Store::with(database, conn, false));
            }
        };
        if path.is_dir() {
            return Err(StoreError::IsFolder {
                path: path.to_path_buf(),
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| StoreError::Dir {
                path: path.to_path_buf(),
                error,
            })?;
        }
        let open_err = |error: rusqlite::Error| StoreError::Open {
            db: path.display().to_string(),
            error: error.into(),
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        schema::migrate(&mut conn, path)?;
        Ok(Store::with(database, Conn::Sqlite(conn), false))
    }

    /// Open an existing database to read only: nothing in it is created, migrated or written (SQLite may
    /// add the `-wal`/`-shm` files a WAL database is read with, as any reader does). A database on a disk or
    /// in a folder this user cannot write, with no write-ahead log beside it (a copy), is read as immutable.
    /// Its schema must be this version's.
    pub(crate) fn open_read_only(database: &Database) -> Result<Store, StoreError> {
        let path = match database {
            Database::Sqlite(path) => path,
            Database::Postgres(target) => {
                let conn = pg::open(target, true)?;
                return Ok(Store::with(database, conn, true));
            }
        };
        if path.is_dir() {
            return Err(StoreError::IsFolder {
                path: path.to_path_buf(),
            });
        }
        if !path.is_file() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = match read_only(path, false) {
            Ok(conn) => conn,
            Err(error) => {
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                match Path::new(&wal).exists() {
                    true => Err(error),
                    false => read_only(path, true),
                }
                .map_err(|error| StoreError::ReadOnly {
                    path: path.to_path_buf(),
                    error,
                })?
            }
        };
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|error| StoreError::ReadOnly {
                path: path.to_path_buf(),
                error,
            })?;
        schema::check_version(&path.display().to_string(), found, schema::SCHEMA_VERSION)?;
        Ok(Store::with(database, Conn::Sqlite(conn), true))
    }

    fn with(database: &Database, conn: Conn, read_only: bool) -> Store {
        Store {
            database: database.clone(),
            conn: Mutex::new(conn),
            turns: Mutex::new(Turns::default()),
            turn_ended: std::sync::Condvar::new(),
            retention_days: std::sync::atomic::AtomicU32::new(DEFAULT_RETENTION_DAYS),
            read_only,
            lease_conn: Mutex::new(None),
            aside_conn: Mutex::new(None),
            retired: std::sync::atomic::AtomicBool::new(false),
            lease_token: std::sync::OnceLock::new(),
        }
    }

    /// Where the catalog is.
    pub(crate) fn database(&self) -> &Database {
        &self.database
    }

    /// What about the database works, but not as a user would expect (PostgreSQL: its locale). Read by
    /// `check` and at the service's start.
    pub(crate) fn database_warnings(&self) -> Result<Vec<String>, StoreError> {
        if self.database.sqlite_path().is_some() {
            return Ok(Vec::new());
        }
        let (collate, ctype) = self
            .lock()
            .query_one(
                "SELECT datcollate::text, datctype::text FROM pg_database WHERE datname = current_database()",
                db::params![],
                |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
            )
            .doing("reading the database's locale")?;
        let mut warnings = Vec::new();
        if matches!(ctype.as_str(), "C" | "POSIX") {
            warnings.push(format!(
                "the database's LC_CTYPE is {ctype}: search splits words at letters outside ASCII (ü, é, ß, 東…), so words holding them are found only in pieces; create the database with a UTF-8 locale (CREATE DATABASE … LC_CTYPE 'C.UTF-8' LC_COLLATE 'C.UTF-8' TEMPLATE template0) and `modelmirror rebuild` into it (or `migrate` a SQLite catalog there)"
            ));
        }
        let by_code_point = ["C", "POSIX", "C.UTF-8", "C.utf8", "ucs_basic"];
        if !by_code_point.contains(&collate.as_str()) {
            warnings.push(format!(
                "the database's LC_COLLATE is {collate}: lists are sorted in that language's order, not by code point as with SQLite (`models`, the web catalog); for the same order create the database with LC_COLLATE 'C.UTF-8'"
            ));
        }
        Ok(warnings)
    }

    /// Whether the database accepts writes (for `/readyz`). SQLite: a separate connection takes and drops
    /// the write lock; a writer holding it (the daemon importing a long commit) is proof enough: busy counts
    /// as writable; a read-only, full or damaged database does not. PostgreSQL: a new connection reaches the
    /// server and may write (not a standby, not read-only).
    pub(crate) fn writable(&self) -> bool {
        let path = match &self.database {
            Database::Sqlite(path) => path,
            Database::Postgres(target) => return pg::writable(target),
        };
        let Ok(conn) = Connection::open(path) else {
            return false;
        };
        let _ = conn.busy_timeout(Duration::from_millis(500));
        match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
            Ok(()) => true,
            Err(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                )
            }
            Err(_) => false,
        }
    }

    /// Keep polls and deliveries this many days.
    pub(crate) fn set_retention_days(&self, days: u32) {
        self.retention_days
            .store(days.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Cap the database at `max_bytes` (`database_max_bytes`; `None`: no cap beyond SQLite's own). A write
    /// that would pass it fails as on a full disk: its transaction rolls back and the error says so. A cap
    /// below the current size only stops growth (and says so in the log). The cap is on the database file;
    /// while a commit is written its pages pass through the `-wal` file beside it, which is cut back to
    /// 16 MiB after each checkpoint. PostgreSQL has no such cap (the configuration refuses one there).
    pub(crate) fn set_max_bytes(&self, max_bytes: Option<u64>) -> Result<(), StoreError> {
        let conn = self.lock();
        let Some(conn) = conn.sqlite() else {
            return Ok(());
        };
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .doing("reading the page size")?;
        let pages = match max_bytes {
            Some(bytes) => i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(512),
            // SQLite's largest page count: no cap.
            None => 4_294_967_294,
        };
        // The pragma answers with the count now in force (never below the current size).
        let in_force: i64 = conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
            .doing("setting database_max_bytes")?;
        if in_force > pages {
            tracing::warn!(
                "{} is already {} bytes, more than database_max_bytes ({}): it will not grow; raise database_max_bytes to import more",
                self.database,
                in_force.saturating_mul(page),
                max_bytes.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Polls and deliveries older than this are pruned.
    fn retention_cutoff(&self) -> String {
        let days = i64::from(
            self.retention_days
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        (chrono::Utc::now() - chrono::Duration::days(days))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// The writer connection, when its turn comes (first come, first served). A PostgreSQL connection lost
    /// (a server restart, a network cut) is made again here; if that fails, the statements fail and say why,
    /// and the next turn tries again.
    fn lock(&self) -> Writer<'_> {
        // A panic while holding the connection cannot leave a transaction open (a `Tx` rolls back on drop),
        // so a poisoned lock is still safe to use.
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        let mine = turns.next;
        turns.next += 1;
        if turns.serving != mine {
            let me = std::thread::current().id();
            turns.waiting.push(me);
            while turns.serving != mine {
                turns = self
                    .turn_ended
                    .wait(turns)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if let Some(i) = turns.waiting.iter().position(|t| *t == me) {
                turns.waiting.swap_remove(i);
            }
        }
        // Served from here on: whatever happens next, the turn ends with this guard.
        let turn = Turn(self);
        drop(turns);
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let (true, Database::Postgres(target)) = (conn.is_closed(), &self.database) {
            match pg::reconnect(target, self.read_only) {
                Ok(new) => *conn = new,
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Writer { conn, _turn: turn }
    }

    /// A connection of its own, for a read that must not wait behind the writer.
    /// Run `read` on a connection beside the writer's (never behind an import's write transaction): a new
    /// one with SQLite (cheap, and WAL readers never wait), a kept one with PostgreSQL (made again, and the
    /// read run again once, when the connection turns out lost: after a server restart the first read does not
    /// fail).
    fn read_aside<T>(
        &self,
        read: impl Fn(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.database {
            Database::Sqlite(path) => {
                let conn = Connection::open(path).map_err(|error| StoreError::Open {
                    db: path.display().to_string(),
                    error: error.into(),
                })?;
                let _ = conn.busy_timeout(Duration::from_secs(5));
                read(&mut Conn::Sqlite(conn))
            }
            Database::Postgres(target) => {
                let mut slot = self.aside_conn.lock().unwrap_or_else(|p| p.into_inner());
                let conn = match slot.take() {
                    Some(c) if !c.is_closed() => slot.insert(c),
                    _ => slot.insert(pg::reconnect(target, true)?),
                };
                match read(conn) {
                    // A cut connection may answer its first use with the server's farewell (FATAL 57P01)
                    // rather than as closed.
                    Err(e) if conn.is_closed() || connection_lost(&e) => {
                        tracing::debug!("a side read failed, trying a new connection: {e}");
                        read(slot.insert(pg::reconnect(target, true)?))
                    }
                    done => done,
                }
            }
        }
    }

    /// Whether `thread` is waiting for the writer connection (held by another thread's commit).
    pub(crate) fn is_waiting(&self, thread: std::thread::ThreadId) -> bool {
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .contains(&thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_is_served_first_come_first_served() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Database::Sqlite(dir.path().join("db"))).unwrap();
        let (store, turns, stop) = (&store, &AtomicU64::new(0), &AtomicBool::new(false));
        std::thread::scope(|s| {
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = store.lock();
                    conn.batch("SELECT 1").unwrap();
                    turns.fetch_add(1, Ordering::SeqCst);
                    drop(conn);
                }
            });
            while turns.load(Ordering::SeqCst) < 100 {
                std::thread::yield_now();
            }
            for _ in 0..20 {
                let (tx, rx) = std::sync::mpsc::channel();
                let waiter = s.spawn(move || {
                    tx.send(std::thread::current().id()).unwrap();
                    let _conn = store.lock();
                    turns.load(Ordering::SeqCst)
                });
                let id = rx.recv().unwrap();
                // The replayer's turns once the waiter is seen in the queue (at most one more may end: the
                // one under way when it queued).
                let queued_at = loop {
                    if store.is_waiting(id) || waiter.is_finished() {
                        break turns.load(Ordering::SeqCst);
                    }
                    std::thread::yield_now();
                };
                let served_at = waiter.join().unwrap();
                assert!(
                    served_at <= queued_at + 1,
                    "the waiter was served after {} more turns of the other thread",
                    served_at.saturating_sub(queued_at)
                );
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    /// A repository's row written alone (a check, an error) while another instance's catalog transaction
    /// holds the generation row and then writes the same row: no deadlock, both go through.
    #[test]
    fn a_row_written_alone_waits_its_turn_without_deadlock() {
        let (db, _dropped) = test_db::postgres();
        let Database::Postgres(target) = &db else {
            unreachable!()
        };
        let store = Store::open(&db).unwrap();
        store.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
        // The other instance: a discovery's transaction, generation row first.
        let mut other = pg::reconnect(target, false).unwrap();
        let mut tx = other.begin_catalog().unwrap();
        std::thread::scope(|s| {
            let check = s.spawn(|| store.record_check("p/r", Some("main"), "2026-01-01T00:00:00Z"));
            std::thread::sleep(Duration::from_millis(500));
            tx.execute(
                "UPDATE repos SET url = 'file:///moved' WHERE id = 'p/r'",
                db::params![],
            )
            .expect("the other transaction's write");
            tx.commit().unwrap();
            check.join().unwrap().expect("the check");
        });
        assert_eq!(
            store.texts("SELECT url || ' ' || default_branch FROM repos"),
            ["file:///moved main"]
        );
    }

    /// A PostgreSQL database whose locale search or ordering would differ from SQLite's is warned about;
    /// one in C.UTF-8 (the tests' server) is not.
    #[test]
    fn a_database_locale_that_changes_answers_is_warned_about() {
        let (db, _dropped) = test_db::postgres();
        assert_eq!(
            Store::open(&db).unwrap().database_warnings().unwrap(),
            Vec::<String>::new()
        );
        let Database::Postgres(target) = &db else {
            unreachable!()
        };
        let mut admin = pg::reconnect(&test_db::pg_admin(), false).unwrap();
        let name = format!("mm_unit_c_{}", std::process::id());
        admin
            .batch(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch(&format!(
                "CREATE DATABASE {name} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
            ))
            .unwrap();
        let mut url = url::Url::parse(&target.url).unwrap();
        url.set_path(&format!("/{name}"));
        let c = PgTarget::parse(url.as_str(), target.password.clone()).unwrap();
        let warnings =
            Store::open(&Database::Postgres(Box::new(c))).and_then(|s| s.database_warnings());
        admin
            .batch(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .unwrap();
        let warnings = warnings.unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("LC_CTYPE is C"), "{warnings:?}");
    }

    /// A server that ends idle sessions (`idle_session_timeout`) does not end the store's kept connections.
    #[test]
    fn kept_connections_outlive_the_servers_idle_session_timeout() {
        let (db, _dropped) = test_db::postgres();
        let Database::Postgres(target) = &db else {
            unreachable!()
        };
        let name = url::Url::parse(&target.url).unwrap().path()[1..].to_string();
        let mut admin = pg::reconnect(&test_db::pg_admin(), false).unwrap();
        let version: i64 = admin
            .query_one(
                "SELECT current_setting('server_version_num')::bigint",
                db::params![],
                |r| r.get(0),
            )
            .unwrap();
        // PostgreSQL 13 has no such timeout: there the connections open with the setting left alone.
        if version >= 140_000 {
            admin
                .batch(&format!(
                    "ALTER DATABASE {name} SET idle_session_timeout = '1s'"
                ))
                .unwrap();
        }
        let store = Store::open(&db).unwrap();
        let pid = store.count("SELECT pg_backend_pid()");
        std::thread::sleep(Duration::from_millis(1800));
        assert_eq!(
            store.count("SELECT pg_backend_pid()"),
            pid,
            "the connection was ended while idle"
        );
    }

    /// The kept side connection (PostgreSQL) cut by the server (a restart, an administrator): the next read
    /// still answers, on a new connection.
    #[test]
    fn a_side_read_survives_its_connection_cut() {
        let (db, _dropped) = test_db::postgres();
        let store = Store::open(&db).unwrap();
        store.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
        assert_eq!(store.repos_of_provider_reader("p").unwrap().len(), 1);
        let mut admin = pg::reconnect(&test_db::pg_admin(), false).unwrap();
        let Database::Postgres(target) = &db else {
            unreachable!()
        };
        let name = url::Url::parse(&target.url).unwrap().path()[1..].to_string();
        let cut = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = ?1 AND pid <> pg_backend_pid()",
                db::params![name],
                |r| r.get::<bool>(0),
            )
            .unwrap();
        assert!(!cut.is_empty() && cut.iter().all(|c| *c), "{cut:?}");
        // Gone (PostgreSQL 13 has no wait argument to pg_terminate_backend).
        for _ in 0..100 {
            let left = admin
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = ?1 AND pid <> pg_backend_pid()",
                    db::params![name],
                    |r| r.get::<i64>(0),
                )
                .unwrap();
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(store.repos_of_provider_reader("p").unwrap().len(), 1);
        assert!(store.delivery_seen("p", "d1").is_ok());
    }
}

/// Catalogs for the store's own tests: a SQLite file and a fresh PostgreSQL database on the server the test
/// command starts (`scripts/test.sh` sets `MODELMIRROR_TEST_PG_URL` and `MODELMIRROR_TEST_PG_PASSWORD`).
#[cfg(test)]
pub(crate) mod test_db {
    use super::*;

    /// A database dropped with the test.
    pub(crate) struct Dropped {
        _dir: Option<tempfile::TempDir>,
        admin: Option<(PgTarget, String)>,
    }

    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some((admin, name)) = self.admin.take()
                && let Ok(mut conn) = pg::reconnect(&admin, false)
            {
                let _ = conn.batch(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }

    /// The test server's URL and password; a test that needs it fails (never skips) without it.
    pub(crate) fn pg_admin() -> PgTarget {
        let url = std::env::var("MODELMIRROR_TEST_PG_URL").unwrap_or_else(|_| {
            panic!(
                "MODELMIRROR_TEST_PG_URL is not set: run the tests with scripts/test.sh, which starts a PostgreSQL server for them"
            )
        });
        let password = std::env::var("MODELMIRROR_TEST_PG_PASSWORD").ok();
        PgTarget::parse(&url, password.map(crate::secret::Secret::new)).unwrap()
    }

    /// A new, empty PostgreSQL database.
    pub(crate) fn postgres() -> (Database, Dropped) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let admin = pg_admin();
        let name = format!(
            "mm_unit_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = pg::reconnect(&admin, false)
            .unwrap_or_else(|e| panic!("cannot reach the tests' PostgreSQL server: {e}"));
        conn.batch(&format!("CREATE DATABASE {name}")).unwrap();
        let mut url = url::Url::parse(&admin.url).unwrap();
        url.set_path(&format!("/{name}"));
        let target = PgTarget::parse(url.as_str(), admin.password.clone()).unwrap();
        (
            Database::Postgres(Box::new(target)),
            Dropped {
                _dir: None,
                admin: Some((admin, name)),
            },
        )
    }

    /// A new SQLite file.
    pub(crate) fn sqlite() -> (Database, Dropped) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::Sqlite(dir.path().join("db"));
        (
            db,
            Dropped {
                _dir: Some(dir),
                admin: None,
            },
        )
    }

    /// A new store of each engine, opened and migrated.
    pub(crate) fn stores() -> Vec<(Store, Dropped)> {
        [sqlite(), postgres()]
            .into_iter()
            .map(|(db, dropped)| (Store::open(&db).unwrap(), dropped))
            .collect()
    }

    impl Store {
        /// A number from the catalog, for tests that look inside.
        pub(crate) fn count(&self, sql: &str) -> i64 {
            self.lock()
                .query_one(sql, db::params![], |r| r.get(0))
                .unwrap()
        }

        /// Text rows from the catalog, for tests that look inside.
        pub(crate) fn texts(&self, sql: &str) -> Vec<String> {
            self.lock().query(sql, db::params![], |r| r.get(0)).unwrap()
        }
    }
}
