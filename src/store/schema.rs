//! The schema: migrations applied in order, `PRAGMA user_version` holding how many ran.

use std::path::Path;

use rusqlite::Connection;

use super::{Doing, StoreError};

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
    r#"
-- A number that grows with every change to what the catalog answers (repositories, models, history,
-- polls, deliveries, providers, the service's state), however it is made: the web catalog's ETags.
CREATE TABLE catalog_generation (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT INTO catalog_generation (id, n) VALUES (1, 0);
CREATE TRIGGER repos_insert_generation AFTER INSERT ON repos BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER repos_update_generation AFTER UPDATE ON repos BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER repos_delete_generation AFTER DELETE ON repos BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER commits_insert_generation AFTER INSERT ON commits BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER commits_update_generation AFTER UPDATE ON commits BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER commits_delete_generation AFTER DELETE ON commits BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER sync_steps_insert_generation AFTER INSERT ON sync_steps BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER sync_steps_update_generation AFTER UPDATE ON sync_steps BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER sync_steps_delete_generation AFTER DELETE ON sync_steps BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER models_insert_generation AFTER INSERT ON models BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER models_update_generation AFTER UPDATE ON models BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER models_delete_generation AFTER DELETE ON models BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER model_versions_insert_generation AFTER INSERT ON model_versions BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER model_versions_update_generation AFTER UPDATE ON model_versions BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER model_versions_delete_generation AFTER DELETE ON model_versions BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER polls_insert_generation AFTER INSERT ON polls BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER polls_update_generation AFTER UPDATE ON polls BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER polls_delete_generation AFTER DELETE ON polls BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER providers_insert_generation AFTER INSERT ON providers BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER providers_update_generation AFTER UPDATE ON providers BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER providers_delete_generation AFTER DELETE ON providers BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER deliveries_insert_generation AFTER INSERT ON deliveries BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER deliveries_update_generation AFTER UPDATE ON deliveries BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER deliveries_delete_generation AFTER DELETE ON deliveries BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER service_insert_generation AFTER INSERT ON service BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER service_update_generation AFTER UPDATE ON service BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER service_delete_generation AFTER DELETE ON service BEGIN UPDATE catalog_generation SET n = n + 1; END;
"#,
    r#"
-- Commit statuses posted to the Git host (`commit_status = true`): one row per status, once it is posted
-- or has failed for good.
CREATE TABLE statuses (
    id INTEGER PRIMARY KEY,
    repo_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    posted_at TEXT NOT NULL,
    state TEXT NOT NULL,          -- success | failure
    description TEXT NOT NULL,
    target_url TEXT,
    outcome TEXT NOT NULL,        -- posted | unchanged | failed
    attempts INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX statuses_repo ON statuses (repo_id, posted_at);
CREATE TRIGGER statuses_insert_generation AFTER INSERT ON statuses BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER statuses_update_generation AFTER UPDATE ON statuses BEGIN UPDATE catalog_generation SET n = n + 1; END;
CREATE TRIGGER statuses_delete_generation AFTER DELETE ON statuses BEGIN UPDATE catalog_generation SET n = n + 1; END;
"#,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A database opened read only must be of this version exactly.
pub(super) fn check_version(path: &Path, found: i64) -> Result<(), StoreError> {
    let path = path.to_path_buf();
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(StoreError::TooNew {
            path,
            found,
            supported: SCHEMA_VERSION,
        }),
        std::cmp::Ordering::Less => Err(StoreError::TooOld {
            path,
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

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
