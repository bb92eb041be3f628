//! The schema: migrations applied in order, for each engine. SQLite: `PRAGMA user_version` holds how many
//! ran. PostgreSQL: the `schema_version` table does, and an advisory lock keeps two instances starting
//! together from migrating at once. Both engines hold the same tables, columns and views; the search index
//! is each engine's own (FTS5, tsvector + GIN).

use std::path::Path;

use rusqlite::Connection;

use super::db::{Conn, DbError, params};
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
    r#"
-- Several instances on one database (PostgreSQL): who holds each repository's (and each provider's
-- discovery) lease, and each instance's heartbeat. A SQLite catalog has one instance and holds no lease;
-- the tables are here so both engines have the same schema.
CREATE TABLE leases (
    name              TEXT PRIMARY KEY,        -- a repository id, or discovery:<provider>
    lease_owner       TEXT NOT NULL,           -- instance_name
    lease_token       TEXT NOT NULL,           -- the owning process (two processes never share one)
    lease_expires_at  TEXT NOT NULL            -- RFC 3339, the database server's clock
);
CREATE TABLE instances (
    name          TEXT PRIMARY KEY,
    token         TEXT NOT NULL,               -- the process that beats under this name
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL
);
ALTER TABLE polls ADD COLUMN instance TEXT;    -- which instance polled
"#,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A database opened read only must be of this version exactly.
pub(super) fn check_version(db: &str, found: i64, supported: i64) -> Result<(), StoreError> {
    let db = db.to_string();
    match found.cmp(&supported) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(StoreError::TooNew {
            db,
            found,
            supported,
        }),
        std::cmp::Ordering::Less => Err(StoreError::TooOld {
            db,
            found,
            supported,
        }),
    }
}

pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .doing("reading the schema version")?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            db: path.display().to_string(),
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

/// The PostgreSQL schema, in migrations applied in order (`schema_version` holds how many ran). The first
/// is the SQLite schema as it stands at its migration 9: the same tables, columns (integers as `bigint`,
/// timestamps as RFC 3339 text, as in SQLite) and views. Differences: the search table is a plain table with
/// a generated `tsvector` column and a GIN index; the catalog's generation is bumped once per statement.
const PG_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE repos (
    id               TEXT PRIMARY KEY,
    provider         TEXT NOT NULL,
    path             TEXT NOT NULL,
    url              TEXT NOT NULL,
    default_branch   TEXT,
    commit_id        TEXT,
    settings         TEXT,
    last_check_at    TEXT,
    last_change_at   TEXT,
    last_error       TEXT,
    last_error_at    TEXT,
    failures         BIGINT NOT NULL DEFAULT 0,
    provider_repo_id TEXT,
    web_url          TEXT,
    origin           TEXT NOT NULL DEFAULT 'configured',
    state            TEXT NOT NULL DEFAULT 'active',
    state_reason     TEXT,
    last_success_at  TEXT
);
CREATE INDEX repos_provider_repo_id ON repos(provider, provider_repo_id);
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
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    repo_id       TEXT NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    commit_id     TEXT NOT NULL,
    processed_at  TEXT NOT NULL,
    note          TEXT,
    added         BIGINT NOT NULL,
    modified      BIGINT NOT NULL,
    deleted       BIGINT NOT NULL
);
CREATE INDEX sync_steps_repo ON sync_steps(repo_id, id);
CREATE TABLE models (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    repo_id          TEXT NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    path             TEXT NOT NULL,
    blob             TEXT NOT NULL,
    commit_id        TEXT NOT NULL,
    status           TEXT NOT NULL,
    error            TEXT,
    name             TEXT,
    guid             TEXT,
    db_vendor        TEXT,
    app_target       TEXT,
    db_version       TEXT,
    description      TEXT,
    size_bytes       BIGINT NOT NULL,
    entity_count     BIGINT NOT NULL DEFAULT 0,
    attribute_count  BIGINT NOT NULL DEFAULT 0,
    relationship_count BIGINT NOT NULL DEFAULT 0,
    view_count       BIGINT NOT NULL DEFAULT 0,
    definition_count BIGINT NOT NULL DEFAULT 0,
    UNIQUE (repo_id, path)
);
CREATE TABLE containers (
    id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    model_id  BIGINT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    guid      TEXT,
    name      TEXT NOT NULL
);
CREATE INDEX containers_model ON containers(model_id);
CREATE TABLE entities (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    model_id         BIGINT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    ordinal          BIGINT NOT NULL,
    guid             TEXT,
    name             TEXT NOT NULL,
    code             TEXT,
    container        TEXT,
    description      TEXT,
    derived_from     TEXT,
    attribute_count  BIGINT NOT NULL
);
CREATE INDEX entities_model ON entities(model_id);
CREATE TABLE attributes (
    id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    entity_id    BIGINT NOT NULL REFERENCES entities(id) ON DELETE CASCADE,
    model_id     BIGINT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    ordinal      BIGINT NOT NULL,
    parent       BIGINT,
    depth        BIGINT NOT NULL,
    guid         TEXT,
    path         TEXT NOT NULL,
    name         TEXT NOT NULL,
    code         TEXT,
    type         TEXT,
    mode         TEXT,
    required     BIGINT NOT NULL,
    primary_key  BIGINT NOT NULL,
    description  TEXT
);
CREATE INDEX attributes_entity ON attributes(entity_id);
CREATE INDEX attributes_model ON attributes(model_id);
CREATE TABLE relationships (
    id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    model_id            BIGINT NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    name                TEXT,
    parent_entity       TEXT,
    child_entity        TEXT,
    parent_cardinality  TEXT,
    child_cardinality   TEXT,
    relationship_type   TEXT
);
CREATE INDEX relationships_model ON relationships(model_id);
CREATE TABLE model_versions (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    repo_id          TEXT NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
    path             TEXT NOT NULL,
    commit_id        TEXT NOT NULL,
    change           TEXT NOT NULL,
    old_path         TEXT,
    blob             TEXT,
    status           TEXT,
    name             TEXT,
    entity_count     BIGINT,
    attribute_count  BIGINT,
    error            TEXT
);
CREATE INDEX model_versions_path ON model_versions(repo_id, path, id);
CREATE INDEX model_versions_old_path ON model_versions(repo_id, old_path, id) WHERE old_path IS NOT NULL;
CREATE TABLE polls (
    id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    repo_id          TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    duration_ms      BIGINT NOT NULL,
    result           TEXT NOT NULL,
    commits          BIGINT NOT NULL,
    models_added     BIGINT NOT NULL,
    models_modified  BIGINT NOT NULL,
    models_deleted   BIGINT NOT NULL,
    error            TEXT
);
CREATE INDEX polls_repo ON polls(repo_id, id);
CREATE INDEX polls_started ON polls(started_at);
CREATE TABLE providers (
    name                  TEXT PRIMARY KEY,
    kind                  TEXT NOT NULL,
    last_discovery_at     TEXT,
    last_discovery_error  TEXT,
    repos_found           BIGINT,
    held_until            TEXT,
    held_reason           TEXT
);
CREATE TABLE deliveries (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    received_at   TEXT NOT NULL,
    provider      TEXT NOT NULL,
    event         TEXT NOT NULL,
    delivery_id   TEXT,
    repo_id       TEXT,
    ref           TEXT,
    outcome       TEXT NOT NULL,
    reason        TEXT,
    poll_id       BIGINT
);
CREATE INDEX deliveries_delivery_id ON deliveries(delivery_id);
CREATE INDEX deliveries_repo ON deliveries(repo_id, id);
CREATE INDEX deliveries_received ON deliveries(received_at);
CREATE TABLE service (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE statuses (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    repo_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    posted_at TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    target_url TEXT,
    outcome TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX statuses_repo ON statuses (repo_id, posted_at);

-- Full-text search over models, entities and attributes; id = models.id * 4 (model), entities.id * 4 + 1
-- (entity), attributes.id * 4 + 2 (attribute), as in SQLite. Words are runs of letters and digits (as
-- SQLite's unicode61 tokenizer splits them), without the accents of Latin letters (as its remove_diacritics
-- does; no extension needed), weighted by column: name, code, path, description.
CREATE FUNCTION modelmirror_fold(t TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT translate(t,
        'ÀÁÂÃÄÅàáâãäåĀāĂăĄąÇçĆćĈĉĊċČčĎďĐđÈÉÊËèéêëĒēĔĕĖėĘęĚěĜĝĞğĠġĢģĤĥĦħÌÍÎÏìíîïĨĩĪīĬĭĮįİıĴĵĶķĹĺĻļĽľĿŀŁłÑñŃńŅņŇňÒÓÔÕÖØòóôõöøŌōŎŏŐőŔŕŖŗŘřŚśŜŝŞşŠšŢţŤťŦŧÙÚÛÜùúûüŨũŪūŬŭŮůŰűŲųŴŵÝýÿŶŷŸŹźŻżŽž',
        'AAAAAAaaaaaaAaAaAaCcCcCcCcCcDdDdEEEEeeeeEeEeEeEeEeGgGgGgGgHhHhIIIIiiiiIiIiIiIiIiJjKkLlLlLlLlLlNnNnNnNnOOOOOOooooooOoOoOoRrRrRrSsSsSsSsTtTtTtUUUUuuuuUuUuUuUuUuUuWwYyyYyYZzZzZz') $$;
CREATE FUNCTION modelmirror_words(t TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT modelmirror_fold(regexp_replace(COALESCE(t, ''), '[^[:alnum:]]+', ' ', 'g')) $$;
CREATE TABLE search (
    id           BIGINT PRIMARY KEY,
    name         TEXT,
    code         TEXT,
    path         TEXT,
    description  TEXT,
    kind         TEXT NOT NULL,
    model_id     BIGINT NOT NULL,
    words        tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', modelmirror_words(name)), 'A') ||
        setweight(to_tsvector('simple', modelmirror_words(code)), 'B') ||
        setweight(to_tsvector('simple', modelmirror_words(path)), 'C') ||
        setweight(to_tsvector('simple', modelmirror_words(description)), 'D')) STORED
);
CREATE INDEX search_words ON search USING gin (words);
CREATE INDEX search_model ON search (model_id);

-- The search index follows every delete, however it happens.
CREATE FUNCTION modelmirror_unindex() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM search WHERE id = OLD.id * 4 + TG_ARGV[0]::bigint;
    RETURN NULL;
END $$;
CREATE TRIGGER models_unindex AFTER DELETE ON models FOR EACH ROW EXECUTE FUNCTION modelmirror_unindex(0);
CREATE TRIGGER entities_unindex AFTER DELETE ON entities FOR EACH ROW EXECUTE FUNCTION modelmirror_unindex(1);
CREATE TRIGGER attributes_unindex AFTER DELETE ON attributes FOR EACH ROW EXECUTE FUNCTION modelmirror_unindex(2);

-- A number that grows with every change to what the catalog answers: the web catalog's ETags.
CREATE TABLE catalog_generation (id BIGINT PRIMARY KEY CHECK (id = 1), n BIGINT NOT NULL);
INSERT INTO catalog_generation (id, n) VALUES (1, 0);
CREATE FUNCTION modelmirror_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_generation SET n = n + 1 WHERE id = 1;
    RETURN NULL;
END $$;
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['repos', 'commits', 'sync_steps', 'models', 'model_versions', 'polls', 'providers',
                             'deliveries', 'service', 'statuses'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %I
                        FOR EACH STATEMENT EXECUTE FUNCTION modelmirror_generation()', t || '_generation', t);
    END LOOP;
END $$;

-- Read-only views for users' own SQL (as in SQLite).
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
-- Several instances on one database: leases (a repository id, or discovery/<provider>), heartbeats, and
-- which instance ran each poll. Times are RFC 3339 text of the server's clock (no two hosts' clocks mixed).
CREATE FUNCTION modelmirror_time(t timestamptz) RETURNS TEXT LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;
CREATE TABLE leases (
    name              TEXT PRIMARY KEY,
    lease_owner       TEXT NOT NULL,
    lease_token       TEXT NOT NULL,
    lease_expires_at  TEXT NOT NULL
);
CREATE TABLE instances (
    name          TEXT PRIMARY KEY,
    token         TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    heartbeat_at  TEXT NOT NULL
);
ALTER TABLE polls ADD COLUMN instance TEXT;
"#,
];

/// The PostgreSQL schema version this build writes.
pub(crate) const PG_SCHEMA_VERSION: i64 = PG_MIGRATIONS.len() as i64;

/// The advisory lock migrations take (any fixed number; "mm" + "schema").
const MIGRATION_LOCK: i64 = 0x6d6d_7363_6865_6d61;

/// How many PostgreSQL migrations ran (0: no catalog yet).
pub(super) fn pg_version(conn: &mut Conn) -> Result<i64, DbError> {
    let exists = conn.query_one(
        "SELECT to_regclass('schema_version') IS NOT NULL",
        params![],
        |r| r.get::<bool>(0),
    )?;
    if !exists {
        return Ok(0);
    }
    Ok(conn
        .query_opt("SELECT version FROM schema_version", params![], |r| {
            r.get::<i64>(0)
        })?
        .unwrap_or(0))
}

/// Apply the PostgreSQL migrations not yet applied, in one transaction under an advisory lock (an instance
/// starting while another migrates waits, then finds the work done).
pub(super) fn migrate_pg(conn: &mut Conn, db: &str) -> Result<(), StoreError> {
    // Current already (every start but the first): nothing to lock or create, so a role that may read and
    // write but not create tables (no CREATE on the schema) runs.
    let current = pg_version(conn).doing("reading the schema version")?;
    if current == PG_SCHEMA_VERSION {
        return Ok(());
    }
    let mut tx = conn.begin().doing("migrating the schema")?;
    tx.query_one(
        "SELECT pg_advisory_xact_lock(?1)::text",
        params![MIGRATION_LOCK],
        |r| r.get::<String>(0),
    )
    .doing("waiting for the schema lock")?;
    tx.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .doing("migrating the schema")?;
    let version = pg_version(&mut tx).doing("reading the schema version")?;
    if version > PG_SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            db: db.to_string(),
            found: version,
            supported: PG_SCHEMA_VERSION,
        });
    }
    for (i, sql) in PG_MIGRATIONS
        .iter()
        .enumerate()
        .skip(version.max(0) as usize)
    {
        tx.batch(sql)
            .doing(&format!("applying migration {}", i + 1))?;
    }
    if version < PG_SCHEMA_VERSION {
        tx.batch("DELETE FROM schema_version")
            .doing("migrating the schema")?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            params![PG_SCHEMA_VERSION],
        )
        .doing("migrating the schema")?;
    }
    tx.commit().doing("migrating the schema")?;
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
        let db = crate::store::Database::Sqlite(path.clone());
        drop(Store::open(&db).unwrap());
        drop(Store::open(&db).unwrap());
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Store::open(&db).err().unwrap().to_string();
        assert!(err.contains("upgrade modelmirror"), "{err}");
    }

    /// PostgreSQL: migrations run once, two instances starting together do not race (the advisory lock),
    /// and a newer schema is refused.
    #[test]
    fn postgres_migrations_run_once_under_a_lock_and_a_newer_schema_is_refused() {
        let (db, _dropped) = crate::store::test_db::postgres();
        std::thread::scope(|s| {
            let opens: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Store::open(&db).map(drop)))
                .collect();
            for o in opens {
                o.join().unwrap().unwrap();
            }
        });
        let store = Store::open(&db).unwrap();
        assert_eq!(
            store.count("SELECT version FROM schema_version"),
            PG_SCHEMA_VERSION
        );
        assert_eq!(store.count("SELECT COUNT(*) FROM schema_version"), 1);
        store
            .lock()
            .execute("UPDATE schema_version SET version = version + 1", params![])
            .unwrap();
        let err = Store::open(&db).err().unwrap().to_string();
        assert!(err.contains("upgrade modelmirror"), "{err}");
        let err = Store::open_read_only(&db).err().unwrap().to_string();
        assert!(err.contains("upgrade modelmirror"), "{err}");
    }

    /// PostgreSQL: once the schema is current, a role that may read and write its tables but not create any
    /// (no CREATE on the schema) opens the catalog and writes to it.
    #[test]
    fn a_role_without_create_runs_on_a_current_schema() {
        let (db, _dropped) = crate::store::test_db::postgres();
        drop(Store::open(&db).unwrap());
        let crate::store::Database::Postgres(target) = &db else {
            unreachable!()
        };
        let role = format!("mm_rw_{}", std::process::id());
        let mut admin = crate::store::pg::reconnect(target, false).unwrap();
        admin
            .batch(&format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'rw-pass';
                 REVOKE CREATE ON SCHEMA public FROM PUBLIC;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
                 GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
            ))
            .unwrap();
        let mut url = url::Url::parse(&target.url).unwrap();
        url.set_username(&role).unwrap();
        let rw = crate::store::PgTarget::parse(
            url.as_str(),
            Some(crate::secret::Secret::new("rw-pass".into())),
        )
        .unwrap();
        let opened = Store::open(&crate::store::Database::Postgres(Box::new(rw)))
            .and_then(|s| s.ensure_repo("p/r", "p", "r", "file:///r"));
        admin
            .batch(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
            .unwrap();
        opened.unwrap();
    }
}
