//! The SQLite database: schema and migrations, the one writer, and the queries behind the CLI. The only module
//! that writes SQL.
//!
//! The database is a derived replica of the Git mirrors: every row can be rebuilt from them. Each processed
//! commit is one transaction that also moves the repository's processed-commit pointer, so a crash at any
//! moment leaves the database at a consistent commit. Writers share one connection (SQLite has one writer
//! anyway), handed out first come, first served; readers such as the CLI open their own connections, which
//! WAL mode lets run alongside.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use crate::git::CommitInfo;
use crate::model::{Attribute, Model};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}{}", hint(source))]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create the folder for database {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this modelmirror ({supported}); upgrade modelmirror"
    )]
    TooNew {
        path: PathBuf,
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
    #[error("{0}")]
    Query(String),
    #[error("database error while {doing}: {source}{}", hint(source))]
    Sql {
        doing: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// What to do about the SQLite errors an operator can fix.
fn hint(e: &rusqlite::Error) -> &'static str {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        return "";
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

impl<T> Doing<T> for Result<T, rusqlite::Error> {
    fn doing(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sql {
            doing: what.to_string(),
            source,
        })
    }
}

/// Schema migrations, applied in order; `PRAGMA user_version` holds how many ran. Migrations only ever add.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE repos (
    id              TEXT PRIMARY KEY,          -- <provider>/<path>
    provider        TEXT NOT NULL,
    path            TEXT NOT NULL,
    url             TEXT NOT NULL,             -- clone URL; never holds credentials
    default_branch  TEXT,
    commit_id       TEXT,                      -- last processed commit of the default branch
    settings        TEXT,                      -- include globs and size limit the catalog was built with
    last_check_at   TEXT,                      -- RFC 3339
    last_change_at  TEXT,
    last_error      TEXT,
    last_error_at   TEXT,
    failures        INTEGER NOT NULL DEFAULT 0 -- consecutive failed polls
);
CREATE TABLE commits (
    repo_id       TEXT NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    commit_id     TEXT NOT NULL,
    author_name   TEXT NOT NULL,
    author_email  TEXT NOT NULL,
    authored_at   TEXT NOT NULL,
    committed_at  TEXT NOT NULL,
    message       TEXT NOT NULL,
    PRIMARY KEY (repo_id, commit_id)
);
CREATE TABLE sync_steps (
    id            INTEGER PRIMARY KEY,
    repo_id       TEXT NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    commit_id     TEXT NOT NULL,
    processed_at  TEXT NOT NULL,
    note          TEXT,                        -- e.g. history-rewritten
    added         INTEGER NOT NULL,
    modified      INTEGER NOT NULL,
    deleted       INTEGER NOT NULL
);
CREATE INDEX sync_steps_repo ON sync_steps(repo_id, id);
CREATE TABLE models (
    id               INTEGER PRIMARY KEY,
    repo_id          TEXT NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    path             TEXT NOT NULL,
    blob             TEXT NOT NULL,            -- git blob id: the raw JSON is `git cat-file blob <blob>` in the mirror
    commit_id        TEXT NOT NULL,            -- commit that produced this version
    status           TEXT NOT NULL,            -- ok | error | skipped
    error            TEXT,
    name             TEXT,
    guid             TEXT,
    db_vendor        TEXT,
    app_target       TEXT,
    db_version       TEXT,
    description      TEXT,
    size_bytes       INTEGER NOT NULL,
    entity_count     INTEGER NOT NULL DEFAULT 0,
    attribute_count  INTEGER NOT NULL DEFAULT 0,
    relationship_count INTEGER NOT NULL DEFAULT 0,
    view_count       INTEGER NOT NULL DEFAULT 0,
    definition_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repo_id, path)
);
CREATE TABLE containers (
    id        INTEGER PRIMARY KEY,
    model_id  INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    guid      TEXT,
    name      TEXT NOT NULL
);
CREATE INDEX containers_model ON containers(model_id);
CREATE TABLE entities (
    id               INTEGER PRIMARY KEY,
    model_id         INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    ordinal          INTEGER NOT NULL,
    guid             TEXT,
    name             TEXT NOT NULL,
    code             TEXT,
    container        TEXT,
    description      TEXT,
    derived_from     TEXT,                     -- polyglot | external when resolved from a reference
    attribute_count  INTEGER NOT NULL
);
CREATE INDEX entities_model ON entities(model_id);
CREATE TABLE attributes (
    id           INTEGER PRIMARY KEY,
    entity_id    INTEGER NOT NULL REFERENCES entities(id) ON DELETE CASCADE,
    model_id     INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    ordinal      INTEGER NOT NULL,             -- pre-order position within the entity
    parent       INTEGER,                      -- ordinal of the enclosing attribute
    depth        INTEGER NOT NULL,
    guid         TEXT,
    path         TEXT NOT NULL,
    name         TEXT NOT NULL,
    code         TEXT,
    type         TEXT,
    mode         TEXT,
    required     INTEGER NOT NULL,
    primary_key  INTEGER NOT NULL,
    description  TEXT
);
CREATE INDEX attributes_entity ON attributes(entity_id);
CREATE INDEX attributes_model ON attributes(model_id);
CREATE TABLE relationships (
    id                  INTEGER PRIMARY KEY,
    model_id            INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    name                TEXT,
    parent_entity       TEXT,
    child_entity        TEXT,
    parent_cardinality  TEXT,
    child_cardinality   TEXT,
    relationship_type   TEXT
);
CREATE INDEX relationships_model ON relationships(model_id);
CREATE TABLE model_versions (
    id               INTEGER PRIMARY KEY,
    repo_id          TEXT NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    path             TEXT NOT NULL,
    commit_id        TEXT NOT NULL,
    change           TEXT NOT NULL,            -- added | modified | renamed | deleted
    old_path         TEXT,                     -- for renamed
    blob             TEXT,                     -- null for deleted
    status           TEXT,
    name             TEXT,
    entity_count     INTEGER,
    attribute_count  INTEGER,
    error            TEXT
);
CREATE INDEX model_versions_path ON model_versions(repo_id, path, id);
CREATE TABLE polls (
    id               INTEGER PRIMARY KEY,
    repo_id          TEXT NOT NULL,
    trigger          TEXT NOT NULL,            -- schedule | manual | startup
    started_at       TEXT NOT NULL,
    duration_ms      INTEGER NOT NULL,
    result           TEXT NOT NULL,            -- unchanged | updated | empty | error
    commits          INTEGER NOT NULL,
    models_added     INTEGER NOT NULL,
    models_modified  INTEGER NOT NULL,
    models_deleted   INTEGER NOT NULL,
    error            TEXT
);
CREATE INDEX polls_repo ON polls(repo_id, id);
"#,
    r#"
ALTER TABLE repos ADD COLUMN provider_repo_id TEXT;      -- the host's id: GitLab project id, Bitbucket uuid or id, GitHub id
ALTER TABLE repos ADD COLUMN web_url TEXT;
ALTER TABLE repos ADD COLUMN origin TEXT NOT NULL DEFAULT 'configured';  -- configured | discovered
ALTER TABLE repos ADD COLUMN state TEXT NOT NULL DEFAULT 'active';       -- active | empty | archived | removed
ALTER TABLE repos ADD COLUMN state_reason TEXT;
CREATE INDEX repos_provider_repo_id ON repos(provider, provider_repo_id);
CREATE TABLE providers (
    name                  TEXT PRIMARY KEY,
    kind                  TEXT NOT NULL,
    last_discovery_at     TEXT,
    last_discovery_error  TEXT,
    repos_found           INTEGER,
    held_until            TEXT,                -- rate limited or out of budget until then
    held_reason           TEXT
);
"#,
    r#"
CREATE TABLE deliveries (
    id            INTEGER PRIMARY KEY,
    received_at   TEXT NOT NULL,               -- RFC 3339 with milliseconds
    provider      TEXT NOT NULL,
    event         TEXT NOT NULL,               -- the host's event name
    delivery_id   TEXT,                        -- the host's delivery id
    repo_id       TEXT,                        -- the matched repository
    ref           TEXT,
    outcome       TEXT NOT NULL,               -- polled | ignored | rejected
    reason        TEXT,
    poll_id       INTEGER                      -- the poll it caused (polls.id)
);
CREATE INDEX deliveries_delivery_id ON deliveries(delivery_id);
CREATE INDEX deliveries_repo ON deliveries(repo_id, id);
CREATE INDEX deliveries_received ON deliveries(received_at);
CREATE INDEX polls_started ON polls(started_at);
"#,
    r#"
-- Full-text search over models, entities and attributes. rowid = models.id * 4 (model),
-- entities.id * 4 + 1 (entity), attributes.id * 4 + 2 (attribute).
CREATE VIRTUAL TABLE search USING fts5(
    name, code, path, description,
    kind UNINDEXED, model_id UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2',
    prefix = '2 3'
);
INSERT INTO search (rowid, name, code, path, description, kind, model_id)
    SELECT id * 4, name, NULL, path, description, 'model', id FROM models WHERE status = 'ok';
INSERT INTO search (rowid, name, code, path, description, kind, model_id)
    SELECT id * 4 + 1, name, code, NULL, description, 'entity', model_id FROM entities;
INSERT INTO search (rowid, name, code, path, description, kind, model_id)
    SELECT id * 4 + 2, name, code, path, description, 'attribute', model_id FROM attributes;

-- Read-only views for users' own SQL.
CREATE VIEW v_models AS
    SELECT m.repo_id AS repo, m.path, m.name AS model, m.db_vendor AS target, m.app_target, m.db_version,
           m.description, m.entity_count AS entities, m.attribute_count AS attributes,
           m.relationship_count AS relationships, m.commit_id AS "commit", m.blob, m.status, m.error
    FROM models m;
CREATE VIEW v_entities AS
    SELECT m.repo_id AS repo, m.path, m.name AS model, e.name AS entity, e.code, e.container, e.description,
           e.derived_from, e.attribute_count AS attributes
    FROM entities e JOIN models m ON m.id = e.model_id;
CREATE VIEW v_attributes AS
    SELECT m.repo_id AS repo, m.path, m.name AS model, e.name AS entity, a.path AS attribute, a.name, a.code,
           a.type, a.mode, a.required, a.primary_key, a.description, a.depth
    FROM attributes a JOIN entities e ON e.id = a.entity_id JOIN models m ON m.id = a.model_id;
CREATE VIEW v_relationships AS
    SELECT m.repo_id AS repo, m.path, m.name AS model, r.name AS relationship, r.parent_entity, r.child_entity,
           r.parent_cardinality, r.child_cardinality, r.relationship_type
    FROM relationships r JOIN models m ON m.id = r.model_id;
CREATE VIEW v_history AS
    SELECT v.repo_id AS repo, v.path, v.change, v.old_path, v.commit_id AS "commit", c.author_name AS author,
           c.committed_at AS time, c.message, v.blob, v.name AS model, v.entity_count AS entities,
           v.attribute_count AS attributes, v.error, v.id AS seq
    FROM model_versions v LEFT JOIN commits c ON c.repo_id = v.repo_id AND c.commit_id = v.commit_id;
"#,
    r#"
-- The service's own state: the last configuration reload (key, value).
CREATE TABLE service (key TEXT PRIMARY KEY, value TEXT);
"#,
    r#"
-- The search index follows every delete, however it happens (a model replaced, a repository pruned, a
-- cascade, a user's own SQL).
CREATE TRIGGER models_unindex AFTER DELETE ON models BEGIN
    DELETE FROM search WHERE rowid = old.id * 4;
END;
CREATE TRIGGER entities_unindex AFTER DELETE ON entities BEGIN
    DELETE FROM search WHERE rowid = old.id * 4 + 1;
END;
CREATE TRIGGER attributes_unindex AFTER DELETE ON attributes BEGIN
    DELETE FROM search WHERE rowid = old.id * 4 + 2;
END;
DELETE FROM search WHERE model_id NOT IN (SELECT id FROM models);
"#,
    r#"
-- When a poll last succeeded (last_check_at is any poll, failed ones too): for staleness alerts.
ALTER TABLE repos ADD COLUMN last_success_at TEXT;
UPDATE repos SET last_success_at = last_check_at WHERE last_error IS NULL;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The database handle shared by the daemon's tasks.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// How many days polls and deliveries are kept (`events_retention_days`).
    retention_days: std::sync::atomic::AtomicU32,
    /// Whose turn it is to use `conn`. Turns are served first come, first served: `std`'s mutex lets the
    /// thread that just unlocked take it straight back, so a history replay (a commit per transaction,
    /// back to back) would keep every other poll waiting until it ends.
    turns: Mutex<Turns>,
    /// Signalled when a turn ends.
    turn_ended: std::sync::Condvar,
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
    conn: std::sync::MutexGuard<'a, Connection>,
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
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// What the catalog holds for a repository, as the next poll needs it.
#[derive(Debug, Clone, Default)]
pub struct RepoState {
    pub default_branch: Option<String>,
    pub commit: Option<String>,
    pub settings: Option<String>,
    pub failures: u32,
}

/// What one stored file is.
pub enum Content<'a> {
    Model(&'a Model),
    /// It claims to be a model but could not be read: message with line and column.
    Error(String),
    /// Not read, e.g. over `max_model_bytes`.
    Skipped(String),
}

/// One processed commit: what the transaction records besides the model changes.
pub struct StepMeta<'a> {
    pub repo_id: &'a str,
    pub branch: &'a str,
    pub commit: &'a CommitInfo,
    pub note: Option<&'a str>,
    pub settings: &'a str,
    /// The processed commit this step starts from. If the database holds another one, some other process
    /// (a manual `sync` beside the service) moved it meanwhile, and the step is refused rather than applied
    /// twice.
    pub expect_commit: Option<&'a str>,
}

/// Writes the model changes of one step inside its transaction, one model at a time (so memory holds one
/// parsed model, not a whole commit's worth).
pub struct StepWriter<'t, 'a> {
    tx: &'t Transaction<'t>,
    meta: &'t StepMeta<'a>,
    counts: Counts,
}

impl StepWriter<'_, '_> {
    /// Store (or replace) the file at `path`; with `renamed_from`, the row at the old path goes and the
    /// history says `renamed`.
    pub fn put(
        &mut self,
        path: &str,
        renamed_from: Option<&str>,
        blob: &str,
        size: u64,
        content: &Content<'_>,
    ) -> Result<(), StoreError> {
        let (tx, meta) = (self.tx, self.meta);
        let existed = delete_model(tx, meta.repo_id, path)?;
        let renamed = match renamed_from {
            Some(from) if !existed => delete_model(tx, meta.repo_id, from)?,
            _ => false,
        };
        let model_id = insert_model(tx, meta, path, blob, size, content)?;
        if renamed {
            version(
                tx,
                meta,
                path,
                "renamed",
                renamed_from,
                Some(blob),
                Some(model_id),
            )?;
            self.counts.modified += 1;
        } else if existed {
            version(tx, meta, path, "modified", None, Some(blob), Some(model_id))?;
            self.counts.modified += 1;
        } else {
            version(tx, meta, path, "added", None, Some(blob), Some(model_id))?;
            self.counts.added += 1;
        }
        Ok(())
    }

    /// Remove the file at `path` from the catalog, if it is there.
    pub fn remove(&mut self, path: &str) -> Result<(), StoreError> {
        if delete_model(self.tx, self.meta.repo_id, path)? {
            version(self.tx, self.meta, path, "deleted", None, None, None)?;
            self.counts.deleted += 1;
        }
        Ok(())
    }
}

/// What a step did to the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: u32,
    pub modified: u32,
    pub deleted: u32,
}

impl Counts {
    pub fn add(&mut self, o: Counts) {
        self.added += o.added;
        self.modified += o.modified;
        self.deleted += o.deleted;
    }
    pub fn is_zero(&self) -> bool {
        self.added + self.modified + self.deleted == 0
    }
}

/// A row of `modelmirror status`.
#[derive(Debug, Clone, Serialize)]
pub struct RepoStatus {
    pub repo: String,
    pub url: String,
    /// active | empty | archived | removed (`status` adds unconfigured)
    pub state: String,
    /// configured | discovered: how the repository came to be mirrored.
    pub origin: String,
    pub state_reason: Option<String>,
    pub provider_id: Option<String>,
    pub web_url: Option<String>,
    /// When the repository's provider is held back by rate limits, until when and why.
    pub held_until: Option<String>,
    pub held_reason: Option<String>,
    pub default_branch: Option<String>,
    pub commit: Option<String>,
    pub last_check_at: Option<String>,
    /// The last poll that succeeded.
    pub last_success_at: Option<String>,
    pub last_change_at: Option<String>,
    pub models: i64,
    pub errors: i64,
    pub last_error: Option<String>,
}

/// A search hit.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub repo: String,
    pub path: String,
    pub model: Option<String>,
    pub entity: Option<String>,
    /// The attribute's path, or null for model and entity hits.
    pub attribute: Option<String>,
    /// model | entity | attribute
    pub kind: String,
    pub snippet: String,
}

/// One version of a model (`history`).
#[derive(Debug, Clone, Serialize)]
pub struct VersionRow {
    #[serde(skip)]
    pub seq: i64,
    pub path: String,
    pub commit: String,
    /// added | modified | renamed | deleted
    pub change: String,
    pub old_path: Option<String>,
    pub blob: Option<String>,
    pub model: Option<String>,
    pub entities: Option<i64>,
    pub attributes: Option<i64>,
    pub error: Option<String>,
    pub author: Option<String>,
    pub author_email: Option<String>,
    pub time: Option<String>,
    pub message: Option<String>,
}

/// One webhook delivery to record.
pub struct DeliveryRecord<'a> {
    pub received_at: &'a str,
    pub provider: &'a str,
    pub event: &'a str,
    pub delivery_id: Option<&'a str>,
    pub repo_id: Option<&'a str>,
    pub ref_name: Option<&'a str>,
    /// polled | ignored | rejected
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
}

/// A repository as webhook matching sees it.
#[derive(Debug, Clone)]
pub struct RepoKeyRow {
    pub id: String,
    pub provider_id: Option<String>,
    pub default_branch: Option<String>,
    pub state: String,
}

/// One line of `modelmirror events`: a delivery or a poll.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// delivery | poll
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub repo: Option<String>,
    pub provider: Option<String>,
    pub event: Option<String>,
    pub delivery_id: Option<String>,
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    /// polled | ignored | rejected (deliveries)
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// The poll a delivery caused.
    pub poll_id: Option<i64>,
    /// schedule | webhook | manual | startup (polls)
    pub trigger: Option<String>,
    pub duration_ms: Option<i64>,
    /// unchanged | updated | empty | error (polls)
    pub result: Option<String>,
    pub commits: Option<i64>,
    pub models_added: Option<i64>,
    pub models_modified: Option<i64>,
    pub models_deleted: Option<i64>,
    pub error: Option<String>,
    /// The row id (a poll's id is what deliveries' `poll_id` points at).
    pub id: i64,
}

/// One discovery run to record.
pub struct Discovery<'a> {
    pub provider: &'a str,
    pub kind: &'a str,
    pub found: &'a [FoundRepo],
    /// Whether every scope was listed; only then can a missing repository be called removed.
    pub complete: bool,
}

/// What a discovery run changed.
#[derive(Debug, Default)]
pub struct DiscoveryChanges {
    /// Newly marked `removed`.
    pub removed: Vec<String>,
    /// Missing at two runs in a row: deleted when `prune_removed` is on.
    pub prunable: Vec<String>,
    /// Why nothing was marked removed, when that was held back.
    pub note: Option<String>,
}

/// A repository found by discovery, with its id and clone URL resolved.
#[derive(Debug, Clone)]
pub struct FoundRepo {
    pub id: String,
    pub path: String,
    pub url: String,
    pub provider_id: String,
    pub web_url: Option<String>,
    pub archived: bool,
    pub empty: bool,
    /// Also listed in the provider's `repos`: it stays a configured repository.
    pub configured: bool,
}

/// A provider as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub provider: String,
    pub last_discovery_at: Option<String>,
    pub last_discovery_error: Option<String>,
    pub repos_found: Option<i64>,
    pub held_until: Option<String>,
    pub held_reason: Option<String>,
}

/// A row of `modelmirror models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub repo: String,
    pub path: String,
    pub name: Option<String>,
    pub target: Option<String>,
    pub entities: i64,
    pub attributes: i64,
    pub commit: String,
    pub blob: String,
    pub status: String,
    pub error: Option<String>,
}

/// A finished poll, for the `polls` table.
pub struct PollRecord<'a> {
    pub repo_id: &'a str,
    pub trigger: &'a str,
    pub started_at: &'a str,
    pub duration: Duration,
    pub result: &'a str,
    pub commits: u32,
    pub counts: Counts,
    pub error: Option<&'a str>,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// RFC 3339 with milliseconds, for poll start times (polls of different repositories interleave within a
/// second).
pub fn now_rfc3339_millis() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // A large import's pages pass through the write-ahead log; after the checkpoint the log file is cut
    // back to this size instead of keeping its largest size for ever.
    conn.pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)?;
    Ok(())
}

/// What the write-ahead log (`<database>-wal`) is cut back to after a checkpoint.
const WAL_KEPT_BYTES: i64 = 16 << 20;

impl Store {
    /// Open (creating when missing) and migrate the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            turns: Mutex::new(Turns::default()),
            turn_ended: std::sync::Condvar::new(),
            retention_days: std::sync::atomic::AtomicU32::new(
                crate::config::DEFAULT_EVENTS_RETENTION_DAYS,
            ),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the database accepts writes (for `/readyz`): a separate connection takes and drops the write
    /// lock. A writer holding it (the daemon importing a long commit) is proof enough: busy counts as writable;
    /// a read-only, full or damaged database does not.
    pub fn writable(&self) -> bool {
        let Ok(conn) = Connection::open(&self.path) else {
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

    /// Record the outcome of a configuration reload (`None`: applied; `Some(reason)`: rejected).
    pub fn record_reload(&self, rejected: Option<&str>) -> Result<(), StoreError> {
        let conn = self.lock();
        let now = now_rfc3339();
        for (k, v) in [
            ("last_reload_at", Some(now.as_str())),
            ("last_reload_error", rejected),
        ] {
            conn.execute(
                "INSERT INTO service (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )
            .doing("recording the reload")?;
        }
        Ok(())
    }

    /// Record that the service started: a start loads the configuration afresh, so an earlier reload's
    /// outcome no longer describes what runs.
    pub fn record_start(&self) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "DELETE FROM service WHERE key IN ('last_reload_at', 'last_reload_error')",
            [],
        )
        .doing("recording the start")?;
        conn.execute(
            "INSERT INTO service (key, value) VALUES ('started_at', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [now_rfc3339()],
        )
        .doing("recording the start")?;
        Ok(())
    }

    /// The service's recorded state (`started_at`, `last_reload_at`, `last_reload_error`).
    pub fn service_state(&self) -> Result<HashMap<String, Option<String>>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT key, value FROM service")
            .doing("reading the service state")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .doing("reading the service state")?;
        rows.collect::<Result<_, _>>()
            .doing("reading the service state")
    }

    /// Keep polls and deliveries this many days.
    pub fn set_retention_days(&self, days: u32) {
        self.retention_days
            .store(days.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Cap the database at `max_bytes` (`database_max_bytes`; `None`: no cap beyond SQLite's own). A write
    /// that would pass it fails as on a full disk: its transaction rolls back and the error says so. A cap
    /// below the current size only stops growth (and says so in the log). The cap is on the database file;
    /// while a commit is written its pages pass through the `-wal` file beside it, which is cut back to
    /// 16 MiB after each checkpoint.
    pub fn set_max_bytes(&self, max_bytes: Option<u64>) -> Result<(), StoreError> {
        let conn = self.lock();
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
                self.path.display(),
                in_force.saturating_mul(page),
                max_bytes.unwrap_or_default()
            );
        }
        Ok(())
    }

    fn retention_cutoff(&self) -> String {
        let days = i64::from(
            self.retention_days
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        (chrono::Utc::now() - chrono::Duration::days(days))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// The writer connection, when its turn comes (first come, first served).
    fn lock(&self) -> Writer<'_> {
        // A panic while holding the connection cannot leave a transaction open (rusqlite rolls back on
        // drop), so a poisoned lock is still safe to use.
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
        Writer {
            conn: self.conn.lock().unwrap_or_else(|p| p.into_inner()),
            _turn: turn,
        }
    }

    /// Whether `thread` is waiting for the writer connection (held by another thread's commit).
    pub fn is_waiting(&self, thread: std::thread::ThreadId) -> bool {
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .contains(&thread)
    }

    /// Make sure the repository has a row, and keep its URL current.
    pub fn ensure_repo(
        &self,
        id: &str,
        provider: &str,
        path: &str,
        url: &str,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO repos (id, provider, path, url) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET provider = excluded.provider, path = excluded.path, url = excluded.url",
                params![id, provider, path, url],
            )
            .doing("registering the repository")?;
        Ok(())
    }

    pub fn repo_state(&self, id: &str) -> Result<RepoState, StoreError> {
        let conn = self.lock();
        let state = conn
            .query_row(
                "SELECT default_branch, commit_id, settings, failures FROM repos WHERE id = ?1",
                [id],
                |r| {
                    Ok(RepoState {
                        default_branch: r.get(0)?,
                        commit: r.get(1)?,
                        settings: r.get(2)?,
                        failures: r.get::<_, i64>(3)?.max(0) as u32,
                    })
                },
            )
            .optional()
            .doing("reading the repository state")?;
        Ok(state.unwrap_or_default())
    }

    /// The catalog's files of a repository: path → blob id.
    pub fn model_blobs(&self, repo_id: &str) -> Result<HashMap<String, String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT path, blob FROM models WHERE repo_id = ?1")
            .doing("reading the stored models")?;
        let rows = stmt
            .query_map([repo_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .doing("reading the stored models")?;
        rows.collect::<Result<_, _>>()
            .doing("reading the stored models")
    }

    /// A poll that found nothing new: note the check (and the branch name, which may have been renamed).
    pub fn record_check(
        &self,
        repo_id: &str,
        branch: Option<&str>,
        at: &str,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE repos SET last_check_at = ?2, last_success_at = ?2, default_branch = COALESCE(?3, default_branch),
                     last_error = NULL, last_error_at = NULL, failures = 0,
                     state = CASE WHEN ?3 IS NULL THEN 'empty' WHEN state = 'empty' THEN 'active' ELSE state END,
                     state_reason = CASE WHEN ?3 IS NULL THEN 'empty repository: polled until the first push'
                                         WHEN state = 'empty' THEN NULL ELSE state_reason END
                 WHERE id = ?1",
                params![repo_id, at, branch],
            )
            .doing("recording the check")?;
        Ok(())
    }

    /// A failed poll: keep all data, note the error, count the failure. Returns the consecutive failures.
    pub fn record_error(&self, repo_id: &str, error: &str, at: &str) -> Result<u32, StoreError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE repos SET last_error = ?2, last_error_at = ?3, last_check_at = ?3, failures = failures + 1
             WHERE id = ?1",
            params![repo_id, error, at],
        )
        .doing("recording the error")?;
        let n: i64 = conn
            .query_row("SELECT failures FROM repos WHERE id = ?1", [repo_id], |r| {
                r.get(0)
            })
            .optional()
            .doing("recording the error")?
            .unwrap_or(1);
        Ok(n.max(0) as u32)
    }

    /// Apply one processed commit in one transaction, moving the processed-commit pointer with it. `write`
    /// adds the model changes; if it fails, nothing of the step is kept.
    pub fn apply_step<E: From<StoreError>>(
        &self,
        meta: &StepMeta<'_>,
        write: impl FnOnce(&mut StepWriter<'_, '_>) -> Result<(), E>,
    ) -> Result<Counts, E> {
        let mut conn = self.lock();
        // IMMEDIATE: take the write lock up front (waiting out other writers), so the pointer read below
        // cannot be overtaken by another process.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("starting a transaction")?;
        let counts = {
            let mut writer = StepWriter {
                tx: &tx,
                meta,
                counts: Counts::default(),
            };
            check_pointer(&tx, meta)?;
            record_commit(&tx, meta)?;
            write(&mut writer)?;
            let counts = writer.counts;
            finish_step(&tx, meta, counts)?;
            counts
        };
        tx.commit().doing("committing the transaction")?;
        Ok(counts)
    }

    /// Record one discovery run of a provider in one transaction: the repositories found (with their host
    /// ids, web URLs and states). When the run listed every scope (`complete`) and found something,
    /// repositories no longer found are marked `removed` (data kept); those already `removed` at the previous
    /// run and still missing are returned as ready to prune. Repositories also listed in `repos` only get their
    /// host id and web URL.
    pub fn record_discovery(&self, d: &Discovery<'_>) -> Result<DiscoveryChanges, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("starting a transaction")?;
        let now = now_rfc3339();
        for r in d.found {
            if r.configured {
                tx.execute(
                    "INSERT INTO repos (id, provider, path, url, provider_repo_id, web_url, origin)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'configured')
                     ON CONFLICT(id) DO UPDATE SET provider_repo_id = excluded.provider_repo_id,
                         web_url = excluded.web_url, origin = 'configured'",
                    params![r.id, d.provider, r.path, r.url, r.provider_id, r.web_url],
                )
                .doing("recording a discovered repository")?;
                continue;
            }
            let has_commit: bool = tx
                .query_row(
                    "SELECT commit_id IS NOT NULL FROM repos WHERE id = ?1",
                    [&r.id],
                    |row| row.get(0),
                )
                .optional()
                .doing("reading a repository")?
                .unwrap_or(false);
            let (state, reason) = if r.archived {
                (
                    "archived",
                    Some(format!("archived on {}: not mirrored", d.provider)),
                )
            } else if r.empty && !has_commit {
                (
                    "empty",
                    Some("empty repository: polled until the first push".to_string()),
                )
            } else {
                ("active", None)
            };
            tx.execute(
                "INSERT INTO repos (id, provider, path, url, provider_repo_id, web_url, origin, state, state_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'discovered', ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET url = excluded.url, provider_repo_id = excluded.provider_repo_id,
                     web_url = excluded.web_url, origin = 'discovered', state = excluded.state,
                     state_reason = excluded.state_reason",
                params![r.id, d.provider, r.path, r.url, r.provider_id, r.web_url, state, reason],
            )
            .doing("recording a discovered repository")?;
        }
        let mut changes = DiscoveryChanges::default();
        let found: std::collections::HashSet<&str> =
            d.found.iter().map(|r| r.id.as_str()).collect();
        let known: Vec<(String, String)> = tx
            .prepare("SELECT id, state FROM repos WHERE provider = ?1 AND origin = 'discovered'")
            .and_then(|mut st| {
                st.query_map([d.provider], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .doing("reading discovered repositories")?;
        let missing: Vec<(String, String)> = known
            .into_iter()
            .filter(|(id, _)| !found.contains(id.as_str()))
            .collect();
        let listed_any = d.found.iter().any(|r| !r.configured);
        if !d.complete {
            changes.note =
                Some("some scopes could not be listed: no repository was marked removed".into());
        } else if !listed_any && !missing.is_empty() {
            // An empty answer where repositories were before is more likely a token that lost access than a
            // host that deleted everything: remove nothing.
            changes.note = Some(
                "discovery found no repositories at all (did the token lose access?): no repository was marked removed"
                    .into(),
            );
        } else {
            for (id, state) in missing {
                if state == "removed" {
                    changes.prunable.push(id);
                    continue;
                }
                tx.execute(
                    "UPDATE repos SET state = 'removed', state_reason = ?2 WHERE id = ?1",
                    params![id, format!("not found by discovery (or excluded by include/exclude) at {now}; data kept")],
                )
                .doing("marking a repository removed")?;
                changes.removed.push(id);
            }
        }
        tx.execute(
            "INSERT INTO providers (name, kind, last_discovery_at, last_discovery_error, repos_found)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, last_discovery_at = excluded.last_discovery_at,
                 last_discovery_error = excluded.last_discovery_error, repos_found = excluded.repos_found",
            params![d.provider, d.kind, now, changes.note, d.found.len() as i64],
        )
        .doing("recording the discovery")?;
        tx.commit().doing("committing the discovery")?;
        Ok(changes)
    }

    /// Delete a repository's catalog, history, polls and deliveries (`prune_removed`).
    pub fn prune_repo(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("starting a transaction")?;
        tx.execute("DELETE FROM polls WHERE repo_id = ?1", [id])
            .doing("pruning a repository")?;
        tx.execute("DELETE FROM deliveries WHERE repo_id = ?1", [id])
            .doing("pruning a repository")?;
        tx.execute("DELETE FROM repos WHERE id = ?1", [id])
            .doing("pruning a repository")?;
        tx.commit().doing("pruning a repository")?;
        Ok(())
    }

    /// Forget a repository's catalog and history (models, versions, commits, steps) and its processed
    /// commit, in one transaction, so it can be imported again from its mirror (`rebuild`). Polls, deliveries
    /// and the repository's row (host id, state) stay.
    pub fn reset_catalog(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("starting a transaction")?;
        for sql in [
            "DELETE FROM models WHERE repo_id = ?1",
            "DELETE FROM model_versions WHERE repo_id = ?1",
            "DELETE FROM sync_steps WHERE repo_id = ?1",
            "DELETE FROM commits WHERE repo_id = ?1",
            "UPDATE repos SET commit_id = NULL, settings = NULL, last_change_at = NULL WHERE id = ?1",
        ] {
            tx.execute(sql, [id]).doing("clearing the catalog")?;
        }
        tx.commit().doing("clearing the catalog")?;
        Ok(())
    }

    /// Full-text search. `query` is FTS5 syntax (see [`fts_query`] for turning plain words into it).
    pub fn search(
        &self,
        query: &str,
        repo: Option<&str>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT s.kind, m.repo_id, m.path, m.name, e.name, a.path,
                        snippet(search, -1, '[', ']', '…', 12)
                 FROM search s
                 JOIN models m ON m.id = s.model_id
                 LEFT JOIN attributes a ON s.kind = 'attribute' AND a.id = s.rowid / 4
                 LEFT JOIN entities e ON e.id = CASE s.kind WHEN 'entity' THEN s.rowid / 4
                                                            WHEN 'attribute' THEN a.entity_id END
                 WHERE search MATCH ?1 AND (?2 IS NULL OR m.repo_id = ?2) AND (?3 IS NULL OR s.kind = ?3)
                 ORDER BY bm25(search, 10.0, 6.0, 3.0, 1.0) LIMIT ?4",
            )
            .doing("searching")?;
        let rows = stmt.query_map(params![query, repo, kind, limit as i64], |r| {
            Ok(SearchHit {
                kind: r.get(0)?,
                repo: r.get(1)?,
                path: r.get(2)?,
                model: r.get(3)?,
                entity: r.get(4)?,
                attribute: r.get(5)?,
                snippet: r.get(6)?,
            })
        });
        let rows = match rows {
            Ok(rows) => rows.collect::<Result<Vec<_>, _>>(),
            Err(e) => Err(e),
        };
        // The statement is fixed; only the query text can make it fail here.
        rows.map_err(|e| {
            StoreError::Query(format!(
                "cannot understand the search {:?} ({e}); use plain words, or FTS5 query syntax",
                query.chars().take(200).collect::<String>()
            ))
        })
    }

    /// Every version of the model at `path`, newest first, following renames back to the first version.
    pub fn history(&self, repo: &str, path: &str) -> Result<Vec<VersionRow>, StoreError> {
        let conn = self.lock();
        // The versions at a path, plus the renames that took a model away from it ("renamed to …").
        let mut stmt = conn
            .prepare_cached(
                "SELECT v.id, v.path, v.commit_id, v.change, v.old_path, v.blob, v.name, v.entity_count,
                        v.attribute_count, v.error, c.author_name, c.author_email, c.committed_at, c.message,
                        v.path = ?2
                 FROM model_versions v
                 LEFT JOIN commits c ON c.repo_id = v.repo_id AND c.commit_id = v.commit_id
                 WHERE v.repo_id = ?1 AND (v.path = ?2 OR (v.old_path = ?2 AND v.change = 'renamed')) AND v.id < ?3
                 ORDER BY v.id DESC",
            )
            .doing("reading the history")?;
        let mut out = Vec::new();
        let mut current = path.to_string();
        let mut before = i64::MAX;
        // Each rename into the path sends the walk to the old path, before the rename.
        for _ in 0..10_000 {
            let rows = stmt
                .query_map(params![repo, current, before], |r| {
                    let here: bool = r.get(14)?;
                    let new_path: String = r.get(1)?;
                    Ok(VersionRow {
                        seq: r.get(0)?,
                        path: if here {
                            new_path.clone()
                        } else {
                            current.clone()
                        },
                        commit: r.get(2)?,
                        change: if here {
                            r.get(3)?
                        } else {
                            format!("renamed to {new_path}")
                        },
                        old_path: if here { r.get(4)? } else { None },
                        blob: if here { r.get(5)? } else { None },
                        model: if here { r.get(6)? } else { None },
                        entities: if here { r.get(7)? } else { None },
                        attributes: if here { r.get(8)? } else { None },
                        error: if here { r.get(9)? } else { None },
                        author: r.get(10)?,
                        author_email: r.get(11)?,
                        time: r.get(12)?,
                        message: r.get(13)?,
                    })
                })
                .doing("reading the history")?
                .collect::<Result<Vec<_>, _>>()
                .doing("reading the history")?;
            let mut next = None;
            for row in rows {
                let renamed_in = (row.change == "renamed").then(|| (row.old_path.clone(), row.seq));
                out.push(row);
                if let Some((Some(old), seq)) = renamed_in {
                    next = Some((old, seq));
                    break;
                }
            }
            match next {
                Some((old, seq)) => {
                    current = old;
                    before = seq;
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// A provider's rate-limit hold as recorded (by this or another process), if it has not passed.
    pub fn provider_hold(&self, provider: &str) -> Result<Option<(String, String)>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT held_until, COALESCE(held_reason, '') FROM providers WHERE name = ?1 AND held_until > ?2",
            params![provider, now_rfc3339()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .doing("reading the rate-limit hold")
    }

    /// A failed discovery run: nothing about the repositories changes.
    pub fn record_discovery_error(
        &self,
        provider: &str,
        kind: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO providers (name, kind, last_discovery_at, last_discovery_error) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET last_discovery_at = excluded.last_discovery_at,
                     last_discovery_error = excluded.last_discovery_error",
                params![provider, kind, now_rfc3339(), error],
            )
            .doing("recording the discovery error")?;
        Ok(())
    }

    /// Note (or clear, with `None`) that a provider is held back by rate limits.
    pub fn record_hold(
        &self,
        provider: &str,
        kind: &str,
        hold: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO providers (name, kind, held_until, held_reason) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET held_until = excluded.held_until, held_reason = excluded.held_reason",
                params![provider, kind, hold.map(|h| h.0), hold.map(|h| h.1)],
            )
            .doing("recording the rate-limit hold")?;
        Ok(())
    }

    /// The discovered repositories of a provider that are mirrored (not archived or removed): (path, url).
    pub fn discovered_repos(&self, provider: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT path, url FROM repos WHERE provider = ?1 AND origin = 'discovered'
                 AND state IN ('active', 'empty') ORDER BY id",
            )
            .doing("reading discovered repositories")?;
        let rows = stmt
            .query_map([provider], |r| Ok((r.get(0)?, r.get(1)?)))
            .doing("reading discovered repositories")?;
        rows.collect::<Result<_, _>>()
            .doing("reading discovered repositories")
    }

    /// What `status` shows about providers: (name, last discovery, its error, repositories found).
    pub fn provider_status(&self) -> Result<Vec<ProviderStatus>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT name, last_discovery_at, last_discovery_error, repos_found,
                        CASE WHEN held_until > ?1 THEN held_until END, CASE WHEN held_until > ?1 THEN held_reason END
                 FROM providers ORDER BY name",
            )
            .doing("reading providers")?;
        let rows = stmt
            .query_map([now_rfc3339()], |r| {
                Ok(ProviderStatus {
                    provider: r.get(0)?,
                    last_discovery_at: r.get(1)?,
                    last_discovery_error: r.get(2)?,
                    repos_found: r.get(3)?,
                    held_until: r.get(4)?,
                    held_reason: r.get(5)?,
                })
            })
            .doing("reading providers")?;
        rows.collect::<Result<_, _>>().doing("reading providers")
    }

    /// Record a finished poll; returns its id. Old polls and deliveries are pruned here too.
    pub fn record_poll(&self, p: &PollRecord<'_>) -> Result<i64, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO polls (repo_id, trigger, started_at, duration_ms, result, commits,
                 models_added, models_modified, models_deleted, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                p.repo_id,
                p.trigger,
                p.started_at,
                p.duration.as_millis() as i64,
                p.result,
                p.commits,
                p.counts.added,
                p.counts.modified,
                p.counts.deleted,
                p.error
            ],
        )
        .doing("recording the poll")?;
        let id = conn.last_insert_rowid();
        let cutoff = self.retention_cutoff();
        conn.execute("DELETE FROM polls WHERE started_at < ?1", [&cutoff])
            .doing("pruning old polls")?;
        conn.execute("DELETE FROM deliveries WHERE received_at < ?1", [&cutoff])
            .doing("pruning old deliveries")?;
        Ok(id)
    }

    /// Record a webhook delivery and what came of it (pruning old ones now and then).
    pub fn record_delivery(&self, d: &DeliveryRecord<'_>) -> Result<i64, StoreError> {
        let conn = self.lock();
        let id: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM deliveries", [], |r| {
                r.get(0)
            })
            .doing("recording the delivery")?;
        if id % 100 == 0 {
            conn.execute(
                "DELETE FROM deliveries WHERE received_at < ?1",
                [self.retention_cutoff()],
            )
            .doing("pruning old deliveries")?;
        }
        conn.execute(
            "INSERT INTO deliveries (received_at, provider, event, delivery_id, repo_id, ref, outcome, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![d.received_at, d.provider, d.event, d.delivery_id, d.repo_id, d.ref_name, d.outcome, d.reason],
        )
        .doing("recording the delivery")?;
        Ok(conn.last_insert_rowid())
    }

    /// Link the deliveries that asked for a poll of `repo_id`, received before the poll started and not yet
    /// linked, to the poll that ran (whatever triggered it: it served them).
    pub fn link_deliveries(
        &self,
        repo_id: &str,
        poll_id: i64,
        started_at: &str,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE deliveries SET poll_id = ?2
                 WHERE repo_id = ?1 AND outcome = 'polled' AND poll_id IS NULL AND received_at <= ?3",
                params![repo_id, poll_id, started_at],
            )
            .doing("linking deliveries to their poll")?;
        Ok(())
    }

    /// What webhook matching needs, read through a connection of its own (never waiting behind a write
    /// transaction, which WAL lets readers do).
    pub fn repos_of_provider_reader(&self, provider: &str) -> Result<Vec<RepoKeyRow>, StoreError> {
        let conn = Connection::open(&self.path).map_err(|source| StoreError::Open {
            path: self.path.clone(),
            source,
        })?;
        let _ = conn.busy_timeout(Duration::from_secs(5));
        let mut stmt = conn
            .prepare(
                "SELECT id, provider_repo_id, default_branch, state FROM repos WHERE provider = ?1",
            )
            .doing("reading repositories")?;
        let rows = stmt
            .query_map([provider], |r| {
                Ok(RepoKeyRow {
                    id: r.get(0)?,
                    provider_id: r.get(1)?,
                    default_branch: r.get(2)?,
                    state: r.get(3)?,
                })
            })
            .doing("reading repositories")?;
        rows.collect::<Result<_, _>>().doing("reading repositories")
    }

    /// Delivery ids seen within the retention period, newest first (to refuse replays after a restart).
    pub fn recent_delivery_ids(&self, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT provider, delivery_id FROM deliveries WHERE delivery_id IS NOT NULL AND outcome = 'polled'
                 ORDER BY id DESC LIMIT ?1",
            )
            .doing("reading recent deliveries")?;
        let rows = stmt
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .doing("reading recent deliveries")?;
        rows.collect::<Result<_, _>>()
            .doing("reading recent deliveries")
    }

    /// Deliveries and polls, newest first.
    pub fn events(&self, repo: Option<&str>, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT 'delivery', received_at, repo_id, provider, event, delivery_id, ref, outcome, reason, poll_id,
                        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, id
                 FROM deliveries WHERE (?1 IS NULL OR repo_id = ?1)
                 UNION ALL
                 SELECT 'poll', started_at, repo_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        trigger, duration_ms, result, commits, models_added, models_modified, models_deleted, error, id
                 FROM polls WHERE (?1 IS NULL OR repo_id = ?1)
                 ORDER BY 2 DESC, 19 DESC LIMIT ?2",
            )
            .doing("reading events")?;
        let rows = stmt
            .query_map(params![repo, limit as i64], |r| {
                Ok(EventRow {
                    kind: r.get(0)?,
                    time: r.get(1)?,
                    repo: r.get(2)?,
                    provider: r.get(3)?,
                    event: r.get(4)?,
                    delivery_id: r.get(5)?,
                    ref_name: r.get(6)?,
                    outcome: r.get(7)?,
                    reason: r.get(8)?,
                    poll_id: r.get(9)?,
                    trigger: r.get(10)?,
                    duration_ms: r.get(11)?,
                    result: r.get(12)?,
                    commits: r.get(13)?,
                    models_added: r.get(14)?,
                    models_modified: r.get(15)?,
                    models_deleted: r.get(16)?,
                    error: r.get(17)?,
                    id: r.get(18)?,
                })
            })
            .doing("reading events")?;
        rows.collect::<Result<_, _>>().doing("reading events")
    }

    pub fn status(&self) -> Result<Vec<RepoStatus>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT r.id, r.url, r.default_branch, r.commit_id, r.last_check_at, r.last_change_at,
                        (SELECT COUNT(*) FROM models m WHERE m.repo_id = r.id AND m.status = 'ok'),
                        (SELECT COUNT(*) FROM models m WHERE m.repo_id = r.id AND m.status = 'error'),
                        r.last_error, r.state, r.state_reason, r.provider_repo_id, r.web_url,
                        CASE WHEN p.held_until > ?1 THEN p.held_until END,
                        CASE WHEN p.held_until > ?1 THEN p.held_reason END, r.last_success_at, r.origin
                 FROM repos r LEFT JOIN providers p ON p.name = r.provider ORDER BY r.id",
            )
            .doing("reading the status")?;
        let rows = stmt
            .query_map([now_rfc3339()], |r| {
                Ok(RepoStatus {
                    repo: r.get(0)?,
                    url: r.get(1)?,
                    state: r.get(9)?,
                    origin: r.get(16)?,
                    state_reason: r.get(10)?,
                    provider_id: r.get(11)?,
                    web_url: r.get(12)?,
                    held_until: r.get(13)?,
                    held_reason: r.get(14)?,
                    default_branch: r.get(2)?,
                    commit: r.get(3)?,
                    last_check_at: r.get(4)?,
                    last_success_at: r.get(15)?,
                    last_change_at: r.get(5)?,
                    models: r.get(6)?,
                    errors: r.get(7)?,
                    last_error: r.get(8)?,
                })
            })
            .doing("reading the status")?;
        rows.collect::<Result<_, _>>().doing("reading the status")
    }

    pub fn models(&self, repo: Option<&str>) -> Result<Vec<ModelRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT repo_id, path, name, db_vendor, entity_count, attribute_count, commit_id, blob, status, error
                 FROM models WHERE (?1 IS NULL OR repo_id = ?1) ORDER BY repo_id, path",
            )
            .doing("listing models")?;
        let rows = stmt
            .query_map([repo], |r| {
                Ok(ModelRow {
                    repo: r.get(0)?,
                    path: r.get(1)?,
                    name: r.get(2)?,
                    target: r.get(3)?,
                    entities: r.get(4)?,
                    attributes: r.get(5)?,
                    commit: r.get(6)?,
                    blob: r.get(7)?,
                    status: r.get(8)?,
                    error: r.get(9)?,
                })
            })
            .doing("listing models")?;
        rows.collect::<Result<_, _>>().doing("listing models")
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .doing("reading the schema version")?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction().doing("migrating the schema")?;
        tx.execute_batch(sql)
            .doing(&format!("applying migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .doing("migrating the schema")?;
        tx.commit().doing("migrating the schema")?;
    }
    Ok(())
}

fn check_pointer(tx: &Transaction<'_>, meta: &StepMeta<'_>) -> Result<(), StoreError> {
    let found: Option<String> = tx
        .query_row(
            "SELECT commit_id FROM repos WHERE id = ?1",
            [meta.repo_id],
            |r| r.get(0),
        )
        .optional()
        .doing("reading the processed commit")?
        .flatten();
    if found.as_deref() != meta.expect_commit {
        return Err(StoreError::Conflict {
            repo: meta.repo_id.to_string(),
            expected: meta.expect_commit.unwrap_or("none").to_string(),
            found: found.unwrap_or_else(|| "none".into()),
        });
    }
    Ok(())
}

fn record_commit(tx: &Transaction<'_>, meta: &StepMeta<'_>) -> Result<(), StoreError> {
    let c = meta.commit;
    tx.execute(
        "INSERT OR IGNORE INTO commits (repo_id, commit_id, author_name, author_email, authored_at, committed_at, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![meta.repo_id, c.id, c.author_name, c.author_email, c.authored_at, c.committed_at, c.message],
    )
    .doing("recording the commit")?;
    Ok(())
}

fn finish_step(
    tx: &Transaction<'_>,
    meta: &StepMeta<'_>,
    counts: Counts,
) -> Result<(), StoreError> {
    let now = now_rfc3339();
    tx.execute(
        "INSERT INTO sync_steps (repo_id, commit_id, processed_at, note, added, modified, deleted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            meta.repo_id,
            meta.commit.id,
            now,
            meta.note,
            counts.added,
            counts.modified,
            counts.deleted
        ],
    )
    .doing("recording the step")?;
    tx.execute(
        "UPDATE repos SET commit_id = ?2, default_branch = ?3, settings = ?4, last_check_at = ?5,
             last_success_at = ?5,
             last_change_at = CASE WHEN ?6 THEN ?5 ELSE last_change_at END,
             last_error = NULL, last_error_at = NULL, failures = 0,
             state = CASE WHEN state = 'empty' THEN 'active' ELSE state END,
             state_reason = CASE WHEN state = 'empty' THEN NULL ELSE state_reason END
         WHERE id = ?1",
        params![
            meta.repo_id,
            meta.commit.id,
            meta.branch,
            meta.settings,
            now,
            !counts.is_zero() || meta.note.is_some()
        ],
    )
    .doing("moving the processed commit")?;
    Ok(())
}

/// Turn what a person types into an FTS5 query: plain words become prefix terms that must all match (case
/// and accents ignored by the index). A query that uses FTS5 syntax on purpose — a quote, a parenthesis, a
/// word that is exactly AND / OR / NOT, `NEAR(`, or a column filter (`name:`, `code:`, `path:`,
/// `description:`) — is passed on as written. Anything else (colons in `ns:field`, URLs, `^`, `-`) is text.
pub fn fts_query(input: &str) -> String {
    let columns = [
        "name:",
        "code:",
        "path:",
        "description:",
        "kind:",
        "-name:",
        "-code:",
        "-path:",
        "-description:",
    ];
    let words: Vec<&str> = input.split_whitespace().collect();
    // AND/OR/NOT are operators only between two other words; alone, first
    // or last they are plain search terms ("AND" finds "ANDROID").
    let operator =
        |i: usize| matches!(words[i], "AND" | "OR" | "NOT") && i > 0 && i + 1 < words.len();
    let advanced = input.contains(['"', '(', ')'])
        || words.iter().enumerate().any(|(i, w)| {
            operator(i) || w.starts_with("NEAR(") || columns.iter().any(|c| w.starts_with(c))
        });
    if advanced {
        return input.to_string();
    }
    input
        .split_whitespace()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn delete_model(tx: &Transaction<'_>, repo_id: &str, path: &str) -> Result<bool, StoreError> {
    let id: Option<i64> = tx
        .prepare_cached("SELECT id FROM models WHERE repo_id = ?1 AND path = ?2")
        .and_then(|mut s| s.query_row(params![repo_id, path], |r| r.get(0)).optional())
        .doing("removing a model")?;
    let Some(id) = id else {
        return Ok(false);
    };
    // The search rows go with it (triggers).
    tx.prepare_cached("DELETE FROM models WHERE id = ?1")
        .and_then(|mut s| s.execute([id]))
        .doing("removing a model")?;
    Ok(true)
}

fn version(
    tx: &Transaction<'_>,
    step: &StepMeta<'_>,
    path: &str,
    change: &str,
    old_path: Option<&str>,
    blob: Option<&str>,
    model_id: Option<i64>,
) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO model_versions (repo_id, path, commit_id, change, old_path, blob, status, name,
                 entity_count, attribute_count, error)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, m.status, m.name, m.entity_count, m.attribute_count, m.error
             FROM (SELECT 1) LEFT JOIN models m ON m.id = ?7",
        )
        .doing("recording the model's history")?;
    stmt.execute(params![
        step.repo_id,
        path,
        step.commit.id,
        change,
        old_path,
        blob,
        model_id
    ])
    .doing("recording the model's history")?;
    Ok(())
}

fn insert_model(
    tx: &Transaction<'_>,
    step: &StepMeta<'_>,
    path: &str,
    blob: &str,
    size: u64,
    content: &Content<'_>,
) -> Result<i64, StoreError> {
    let (status, error, model) = match content {
        Content::Model(m) => ("ok", None, Some(*m)),
        Content::Error(e) => ("error", Some(e.as_str()), None),
        Content::Skipped(r) => ("skipped", Some(r.as_str()), None),
    };
    tx.prepare_cached(
        "INSERT INTO models (repo_id, path, blob, commit_id, status, error, name, guid, db_vendor, app_target,
             db_version, description, size_bytes, entity_count, attribute_count, relationship_count, view_count,
             definition_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )
    .and_then(|mut s| {
        s.execute(params![
            step.repo_id,
            path,
            blob,
            step.commit.id,
            status,
            error,
            model.map(|m| m.name.as_str()),
            model.and_then(|m| m.guid.as_deref()),
            model.and_then(|m| m.db_vendor.as_deref()),
            model.and_then(|m| m.app_target.as_deref()),
            model.and_then(|m| m.db_version.as_deref()),
            model.and_then(|m| m.description.as_deref()),
            size as i64,
            model.map_or(0, |m| m.entity_count() as i64),
            model.map_or(0, |m| m.attribute_count() as i64),
            model.map_or(0, |m| m.relationships.len() as i64),
            model.map_or(0, |m| m.views.len() as i64),
            model.map_or(0, |m| m.definitions.len() as i64),
        ])
    })
    .doing("storing a model")?;
    let model_id = tx.last_insert_rowid();
    if let Some(m) = model {
        tx.prepare_cached(
            "INSERT INTO search (rowid, name, code, path, description, kind, model_id)
             VALUES (?1 * 4, ?2, NULL, ?3, ?4, 'model', ?1)",
        )
        .and_then(|mut s| s.execute(params![model_id, m.name, path, m.description]))
        .doing("indexing a model")?;
        insert_content(tx, model_id, m)?;
    }
    Ok(model_id)
}

fn insert_content(tx: &Transaction<'_>, model_id: i64, m: &Model) -> Result<(), StoreError> {
    let mut containers = tx
        .prepare_cached("INSERT INTO containers (model_id, guid, name) VALUES (?1, ?2, ?3)")
        .doing("storing containers")?;
    for c in &m.containers {
        containers
            .execute(params![model_id, c.guid, c.name])
            .doing("storing containers")?;
    }
    let mut entities = tx
        .prepare_cached(
            "INSERT INTO entities (model_id, ordinal, guid, name, code, container, description, derived_from,
                 attribute_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .doing("storing entities")?;
    let mut attributes = tx
        .prepare_cached(
            "INSERT INTO attributes (entity_id, model_id, ordinal, parent, depth, guid, path, name, code, type, mode,
                 required, primary_key, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .doing("storing attributes")?;
    let mut search = tx
        .prepare_cached(
            "INSERT INTO search (rowid, name, code, path, description, kind, model_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .doing("indexing")?;
    for (i, e) in m.entities.iter().enumerate() {
        entities
            .execute(params![
                model_id,
                i as i64,
                e.guid,
                e.name,
                e.code,
                e.container,
                e.description,
                e.derived_from,
                e.attributes.len() as i64
            ])
            .doing("storing entities")?;
        let entity_id = tx.last_insert_rowid();
        search
            .execute(params![
                entity_id * 4 + 1,
                e.name,
                e.code,
                None::<&str>,
                e.description,
                "entity",
                model_id
            ])
            .doing("indexing an entity")?;
        for (j, a) in e.attributes.iter().enumerate() {
            let Attribute {
                guid,
                path,
                name,
                code,
                data_type,
                mode,
                required,
                primary_key,
                description,
                depth,
                parent,
            } = a;
            attributes
                .execute(params![
                    entity_id,
                    model_id,
                    j as i64,
                    parent.map(|p| p as i64),
                    depth,
                    guid,
                    path,
                    name,
                    code,
                    data_type,
                    mode,
                    required,
                    primary_key,
                    description
                ])
                .doing("storing attributes")?;
            let attribute_id = tx.last_insert_rowid();
            search
                .execute(params![
                    attribute_id * 4 + 2,
                    name,
                    code,
                    path,
                    description,
                    "attribute",
                    model_id
                ])
                .doing("indexing an attribute")?;
        }
    }
    let mut rels = tx
        .prepare_cached(
            "INSERT INTO relationships (model_id, name, parent_entity, child_entity, parent_cardinality,
                 child_cardinality, relationship_type) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .doing("storing relationships")?;
    for r in &m.relationships {
        rels.execute(params![
            model_id,
            r.name,
            r.parent_entity,
            r.child_entity,
            r.parent_cardinality,
            r.child_cardinality,
            r.relationship_type
        ])
        .doing("storing relationships")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread taking the writer back to back (a history replay: a transaction per commit) does not keep
    /// another waiting: once the other has queued, it gets the next turn.
    #[test]
    fn the_writer_is_served_first_come_first_served() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (store, turns, stop) = (&store, &AtomicU64::new(0), &AtomicBool::new(false));
        std::thread::scope(|s| {
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let conn = store.lock();
                    conn.execute_batch("SELECT 1").unwrap();
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

    fn commit(id: &str) -> CommitInfo {
        CommitInfo {
            id: id.into(),
            author_name: "A".into(),
            author_email: "a@example.com".into(),
            authored_at: "2024-01-01T00:00:00Z".into(),
            committed_at: "2024-01-01T00:00:00Z".into(),
            message: "m".into(),
        }
    }

    fn step<'a>(c: &'a CommitInfo, expect: Option<&'a str>) -> StepMeta<'a> {
        StepMeta {
            repo_id: "p/r",
            branch: "main",
            commit: c,
            note: None,
            settings: "s",
            expect_commit: expect,
        }
    }

    #[test]
    fn a_step_from_a_stale_pointer_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
        let c1 = commit("c1");
        let put = |w: &mut StepWriter<'_, '_>| -> Result<(), StoreError> {
            w.put(
                "a.json",
                None,
                "b1",
                10,
                &Content::Error("line 1, column 2: x".into()),
            )
        };
        let counts = store.apply_step(&step(&c1, None), put).unwrap();
        assert_eq!(counts.added, 1);
        // A second process that also started from "no commit" must not apply the same step again.
        let err = store.apply_step(&step(&c1, None), put).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("another modelmirror process"));
        let versions: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM model_versions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(versions, 1);
        let c2 = commit("c2");
        store
            .apply_step(&step(&c2, Some("c1")), |w: &mut StepWriter<'_, '_>| {
                w.remove("a.json")
            })
            .unwrap();
        assert_eq!(
            store.repo_state("p/r").unwrap().commit.as_deref(),
            Some("c2")
        );
        assert!(store.model_blobs("p/r").unwrap().is_empty());
    }

    #[test]
    fn migrations_run_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(Store::open(&path).unwrap());
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("upgrade modelmirror"), "{err}");
    }
}
