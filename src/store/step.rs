//! Writing one processed commit: one transaction that records the commit, applies its model changes (with
//! their history and search rows) and moves the repository's processed-commit pointer.

use super::db::{Conn, Engine, Owned, Param, params};
use super::{Doing, Store, StoreError, now_rfc3339};
use crate::git::CommitInfo;
use crate::model::{Attribute, Model};

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
    tx: &'t mut Conn,
    meta: &'t StepMeta<'a>,
    counts: Counts,
    /// Search rows not yet written (see [`Search`]).
    search: Search,
}

/// Search rows of the step's models, written in batches.
///
/// Why: SQLite opens a statement savepoint for most writes inside a transaction (a row with an index or a
/// constraint may have to be taken back), and at each savepoint FTS5 writes its pending rows to disk. Search
/// rows written model by model thus became one tiny index segment per model, merged over and over: a fifth
/// of a large import's writing time. Written in batches, they make few large segments. A batch is bounded
/// ([`SEARCH_BATCH_BYTES`]), so a huge model is never held twice over in memory.
#[derive(Default)]
struct Search {
    rows: Vec<SearchRow>,
    bytes: usize,
}

struct SearchRow {
    rowid: i64,
    name: String,
    code: Option<String>,
    path: Option<String>,
    description: Option<String>,
    kind: &'static str,
    model_id: i64,
}

/// Search rows held before they are written (their text).
const SEARCH_BATCH_BYTES: usize = 256 << 10;

impl Search {
    /// Hold one row; written with the batch once the batch is large.
    fn push(&mut self, tx: &mut Conn, row: SearchRow) -> Result<(), StoreError> {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        self.bytes +=
            64 + row.name.len() + text(&row.code) + text(&row.path) + text(&row.description);
        self.rows.push(row);
        if self.bytes >= SEARCH_BATCH_BYTES {
            self.write(tx)?;
        }
        Ok(())
    }

    /// Drop the rows held for model `model_id` (it was deleted).
    fn forget(&mut self, model_id: i64) {
        self.rows.retain(|r| r.model_id != model_id);
    }

    /// Write the rows held, in rowid order: FTS5 writes its pending rows to disk whenever a rowid is lower than
    /// the one before (a model's, entities' and attributes' rowids interleave otherwise).
    fn write(&mut self, tx: &mut Conn) -> Result<(), StoreError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.rows.sort_unstable_by_key(|r| r.rowid);
        if tx.engine() == Engine::Postgres {
            let text = |s: &Option<String>| s.clone().map_or(Owned::Null, Owned::Text);
            let rows = self
                .rows
                .drain(..)
                .map(|r| {
                    vec![
                        Owned::Int(r.rowid),
                        Owned::Text(r.name),
                        text(&r.code),
                        text(&r.path),
                        text(&r.description),
                        Owned::Text(r.kind.into()),
                        Owned::Int(r.model_id),
                    ]
                })
                .collect();
            self.bytes = 0;
            return bulk_insert(
                tx,
                "search",
                &[
                    "id",
                    "name",
                    "code",
                    "path",
                    "description",
                    "kind",
                    "model_id",
                ],
                rows,
                "indexing",
            );
        }
        let sql = match tx.engine() {
            Engine::Sqlite => {
                "INSERT INTO search (rowid, name, code, path, description, kind, model_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            }
            Engine::Postgres => {
                "INSERT INTO search (id, name, code, path, description, kind, model_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            }
        };
        for r in self.rows.drain(..) {
            tx.execute(
                sql,
                params![
                    r.rowid,
                    r.name,
                    r.code,
                    r.path,
                    r.description,
                    r.kind,
                    r.model_id
                ],
            )
            .doing("indexing")?;
        }
        self.bytes = 0;
        Ok(())
    }
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
        let (tx, meta) = (&mut *self.tx, self.meta);
        let existed = delete_model(tx, meta.repo_id, path, &mut self.search)?;
        let from_existed = match renamed_from {
            Some(from) => delete_model(tx, meta.repo_id, from, &mut self.search)?,
            None => false,
        };
        // A rename onto a file that was there (the poll never makes one): the old path is gone as well.
        if let (true, true, Some(from)) = (existed, from_existed, renamed_from) {
            version(tx, meta, from, "deleted", None, None)?;
            self.counts.deleted += 1;
        }
        let renamed = from_existed && !existed;
        insert_model(tx, meta, path, blob, size, content, &mut self.search)?;
        let (change, old_path) = if renamed {
            ("renamed", renamed_from)
        } else if existed {
            ("modified", None)
        } else {
            ("added", None)
        };
        version(
            tx,
            meta,
            path,
            change,
            old_path,
            Some((blob, Stored::of(content))),
        )?;
        if renamed || existed {
            self.counts.modified += 1;
        } else {
            self.counts.added += 1;
        }
        Ok(())
    }

    /// Remove at once the search rows of the models now at `paths` (those this step replaces or removes), in
    /// rowid order, in one statement. Deleting a model removes its rows anyway (triggers), but row by row as
    /// the rows cascade, entities' and attributes' rowids interleaved, and FTS5 writes its pending changes to
    /// disk at every rowid lower than the one before and at every later statement: a step that replaced a few
    /// models spent a quarter of its time there.
    pub(crate) fn unindex<'p>(
        &mut self,
        paths: impl IntoIterator<Item = &'p str>,
    ) -> Result<(), StoreError> {
        let paths: Vec<&str> = paths.into_iter().collect();
        if paths.is_empty() {
            return Ok(());
        }
        // Turning strings into JSON cannot fail; were it to, nothing would be taken here and the triggers
        // would take the rows as before.
        let list = serde_json::to_string(&paths).unwrap_or_else(|_| "[]".into());
        // SQLite finds the rowids and deletes them in order (the IN list is a sorted index): nothing of a
        // large step is held here.
        let sql = match self.tx.engine() {
            Engine::Sqlite => {
                "WITH touched(id) AS (
                     SELECT id FROM models
                     WHERE repo_id = ?1 AND path IN (SELECT value FROM json_each(?2)))
                 DELETE FROM search WHERE rowid IN (
                     SELECT id * 4 FROM touched
                     UNION ALL SELECT e.id * 4 + 1 FROM entities e JOIN touched t ON e.model_id = t.id
                     UNION ALL SELECT a.id * 4 + 2 FROM attributes a JOIN touched t ON a.model_id = t.id)"
            }
            // PostgreSQL's delete triggers cost no more than this; one statement still saves round trips.
            Engine::Postgres => {
                "DELETE FROM search WHERE model_id IN (
                     SELECT id FROM models
                     WHERE repo_id = ?1 AND path IN (SELECT jsonb_array_elements_text(CAST(CAST(?2 AS TEXT) AS jsonb))))"
            }
        };
        self.tx
            .execute(sql, params![self.meta.repo_id, list])
            .doing("unindexing")?;
        Ok(())
    }

    /// Remove the file at `path` from the catalog, if it is there.
    pub(crate) fn remove(&mut self, path: &str) -> Result<(), StoreError> {
        if delete_model(self.tx, self.meta.repo_id, path, &mut self.search)? {
            version(self.tx, self.meta, path, "deleted", None, None)?;
            self.counts.deleted += 1;
        }
        Ok(())
    }
}

/// What a step did to the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub(crate) added: u32,
    pub(crate) modified: u32,
    pub(crate) deleted: u32,
}

impl Counts {
    pub(crate) fn add(&mut self, o: Counts) {
        self.added += o.added;
        self.modified += o.modified;
        self.deleted += o.deleted;
    }
    pub(crate) fn is_zero(&self) -> bool {
        self.added + self.modified + self.deleted == 0
    }
}

impl Store {
    /// Apply one processed commit in one transaction, moving the processed-commit pointer with it. `write`
    /// adds the model changes; if it fails, nothing of the step is kept.
    pub fn apply_step<E: From<StoreError>>(
        &self,
        meta: &StepMeta<'_>,
        write: impl FnOnce(&mut StepWriter<'_, '_>) -> Result<(), E>,
    ) -> Result<Counts, E> {
        let mut conn = self.lock();
        // SQLite takes the write lock up front (waiting out other writers) and PostgreSQL locks the
        // repository's row, so the pointer read below cannot be overtaken by another process.
        let mut tx = conn.begin_catalog().doing("starting a transaction")?;
        let counts = {
            check_pointer(&mut tx, meta, self.lease_token())?;
            record_commit(&mut tx, meta)?;
            let mut writer = StepWriter {
                tx: &mut tx,
                meta,
                counts: Counts::default(),
                search: Search::default(),
            };
            write(&mut writer)?;
            writer.search.write(writer.tx)?;
            let counts = writer.counts;
            finish_step(&mut tx, meta, counts)?;
            counts
        };
        tx.commit().doing("committing the transaction")?;
        Ok(counts)
    }
}

fn check_pointer(
    tx: &mut Conn,
    meta: &StepMeta<'_>,
    lease_token: Option<&str>,
) -> Result<(), StoreError> {
    // Under a lease (PostgreSQL, several instances): still this process's. The shared lock, taken first,
    // keeps a claim from taking it over until this transaction ends (renewals do not wait for it); the
    // check after it sees any claim made before.
    if let (Engine::Postgres, Some(token)) = (tx.engine(), lease_token) {
        tx.execute(
            "SELECT pg_advisory_xact_lock_shared(CAST(?2 AS BIGINT)::integer, hashtext(?1))::text",
            params![meta.repo_id, super::leases::LEASE_LOCK_CLASS],
        )
        .doing("locking the repository's lease")?;
        let held = tx
            .query_opt(
                "SELECT lease_owner FROM leases WHERE name = ?1 AND lease_token = ?2
                     AND lease_expires_at > modelmirror_time(clock_timestamp())",
                params![meta.repo_id, token],
                |r| r.get::<String>(0),
            )
            .doing("checking the repository's lease")?;
        if held.is_none() {
            return Err(StoreError::LeaseLost {
                repo: meta.repo_id.to_string(),
            });
        }
    }
    let sql = match tx.engine() {
        Engine::Sqlite => "SELECT commit_id FROM repos WHERE id = ?1",
        Engine::Postgres => "SELECT commit_id FROM repos WHERE id = ?1 FOR UPDATE",
    };
    let found: Option<String> = tx
        .query_opt(sql, params![meta.repo_id], |r| r.get(0))
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

fn record_commit(tx: &mut Conn, meta: &StepMeta<'_>) -> Result<(), StoreError> {
    let c = meta.commit;
    tx.execute(
        "INSERT INTO commits (repo_id, commit_id, author_name, author_email, authored_at, committed_at, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        params![meta.repo_id, c.id, c.author_name, c.author_email, c.authored_at, c.committed_at, c.message],
    )
    .doing("recording the commit")?;
    Ok(())
}

fn finish_step(tx: &mut Conn, meta: &StepMeta<'_>, counts: Counts) -> Result<(), StoreError> {
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

fn delete_model(
    tx: &mut Conn,
    repo_id: &str,
    path: &str,
    search: &mut Search,
) -> Result<bool, StoreError> {
    let id: Option<i64> = tx
        .query_opt(
            "SELECT id FROM models WHERE repo_id = ?1 AND path = ?2",
            params![repo_id, path],
            |r| r.get(0),
        )
        .doing("removing a model")?;
    let Some(id) = id else {
        return Ok(false);
    };
    // The search rows go with it: those written by the triggers (none left when the step began with
    // `unindex`), those still held here by hand (a model written earlier in this step; the poll never does
    // that, but nothing here may rely on it).
    tx.execute("DELETE FROM models WHERE id = ?1", params![id])
        .doing("removing a model")?;
    search.forget(id);
    Ok(true)
}

/// What a model row says of a file's content, as its history records it.
struct Stored<'a> {
    status: &'static str,
    name: Option<&'a str>,
    entities: i64,
    attributes: i64,
    error: Option<&'a str>,
}

impl<'a> Stored<'a> {
    fn of(content: &'a Content<'a>) -> Stored<'a> {
        match content {
            Content::Model(m) => Stored {
                status: "ok",
                name: Some(m.name.as_str()),
                entities: m.entity_count() as i64,
                attributes: m.attribute_count() as i64,
                error: None,
            },
            Content::Error(e) => Stored::failed("error", e),
            Content::Skipped(r) => Stored::failed("skipped", r),
        }
    }

    fn failed(status: &'static str, why: &'a str) -> Stored<'a> {
        Stored {
            status,
            name: None,
            entities: 0,
            attributes: 0,
            error: Some(why),
        }
    }
}

/// One row of a model's history: `stored` is the blob and what the catalog now holds for it (none for a
/// deletion).
///
/// A plain one-row INSERT on purpose: an `INSERT … SELECT` makes SQLite open a statement savepoint, and each
/// savepoint makes FTS5 write its pending search rows to disk: tiny index segments, merged over and over (a
/// fifth of a large import's writing time went there).
fn version(
    tx: &mut Conn,
    step: &StepMeta<'_>,
    path: &str,
    change: &str,
    old_path: Option<&str>,
    stored: Option<(&str, Stored<'_>)>,
) -> Result<(), StoreError> {
    let (blob, s) = match &stored {
        Some((blob, s)) => (Some(*blob), Some(s)),
        None => (None, None),
    };
    tx.execute(
        "INSERT INTO model_versions (repo_id, path, commit_id, change, old_path, blob, status, name,
             entity_count, attribute_count, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
        step.repo_id,
        path,
        step.commit.id,
        change,
        old_path,
        blob,
        s.map(|s| s.status),
        s.and_then(|s| s.name),
        s.map(|s| s.entities),
        s.map(|s| s.attributes),
        s.and_then(|s| s.error),
    ])
    .doing("recording the model's history")?;
    Ok(())
}

fn insert_model(
    tx: &mut Conn,
    step: &StepMeta<'_>,
    path: &str,
    blob: &str,
    size: u64,
    content: &Content<'_>,
    search: &mut Search,
) -> Result<(), StoreError> {
    let Stored { status, error, .. } = Stored::of(content);
    let model = match content {
        Content::Model(m) => Some(*m),
        Content::Error(_) | Content::Skipped(_) => None,
    };
    let model_id = tx
        .insert(
        "INSERT INTO models (repo_id, path, blob, commit_id, status, error, name, guid, db_vendor, app_target,
             db_version, description, size_bytes, entity_count, attribute_count, relationship_count, view_count,
             definition_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        params![
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
        ],
    )
    .doing("storing a model")?;
    if let Some(m) = model {
        search.push(
            tx,
            SearchRow {
                rowid: model_id * 4,
                name: m.name.clone(),
                code: None,
                path: Some(path.to_string()),
                description: m.description.clone(),
                kind: "model",
                model_id,
            },
        )?;
        insert_content(tx, model_id, m, search)?;
    }
    Ok(())
}

/// Insert rows in few statements (PostgreSQL: each statement is a round trip to the server).
pub(super) fn bulk_insert(
    tx: &mut Conn,
    table: &str,
    columns: &[&str],
    rows: Vec<Vec<Owned>>,
    doing: &str,
) -> Result<(), StoreError> {
    let width = columns.len().max(1);
    for chunk in rows.chunks(rows_per_statement(width)) {
        let values: Vec<String> = (0..chunk.len())
            .map(|row| {
                let marks: Vec<String> = (1..=width)
                    .map(|c| format!("?{}", row * width + c))
                    .collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            columns.join(", "),
            values.join(", ")
        );
        let params: Vec<&dyn Param> = chunk.iter().flatten().map(|v| v as &dyn Param).collect();
        tx.execute(&sql, &params).doing(doing)?;
    }
    Ok(())
}

/// Rows of `width` columns in one multi-row statement (PostgreSQL takes at most 65,535 parameters a
/// statement).
fn rows_per_statement(width: usize) -> usize {
    (60_000 / width.max(1)).min(1_000)
}

/// The columns of `entities` and `attributes` a model's rows fill (`migrate` copies the same).
pub(super) const ENTITY_COLUMNS: &[&str] = &[
    "id",
    "model_id",
    "ordinal",
    "guid",
    "name",
    "code",
    "container",
    "description",
    "derived_from",
    "attribute_count",
];
pub(super) const ATTRIBUTE_COLUMNS: &[&str] = &[
    "id",
    "entity_id",
    "model_id",
    "ordinal",
    "parent",
    "depth",
    "guid",
    "path",
    "name",
    "code",
    "type",
    "mode",
    "required",
    "primary_key",
    "description",
];

/// Rows of one table waiting for their multi-row statement: written once a statement's worth is there, so
/// a huge model is never held twice over.
struct Pending {
    table: &'static str,
    columns: &'static [&'static str],
    doing: &'static str,
    rows: Vec<Vec<Owned>>,
}

impl Pending {
    fn new(table: &'static str, columns: &'static [&'static str], doing: &'static str) -> Pending {
        Pending {
            table,
            columns,
            doing,
            rows: Vec::new(),
        }
    }

    fn is_full(&self) -> bool {
        self.rows.len() >= rows_per_statement(self.columns.len())
    }

    fn write(&mut self, tx: &mut Conn) -> Result<(), StoreError> {
        let rows = std::mem::take(&mut self.rows);
        bulk_insert(tx, self.table, self.columns, rows, self.doing)
    }
}

/// `n` new ids of `table` from its sequence, in one round trip (PostgreSQL).
fn new_ids(tx: &mut Conn, table: &str, n: usize) -> Result<Vec<i64>, StoreError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    tx.query(
        &format!(
            "SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, ?1)"
        ),
        params![n],
        |r| r.get(0),
    )
    .doing("numbering rows")
}

/// A model's containers, entities, attributes and relationships for PostgreSQL: ids taken from the
/// sequences first, then each table in a few multi-row statements (row by row, the round trips to the server
/// were most of an import's time).
fn insert_content_bulk(
    tx: &mut Conn,
    model_id: i64,
    m: &Model,
    search: &mut Search,
) -> Result<(), StoreError> {
    let text = |s: &Option<String>| s.clone().map_or(Owned::Null, Owned::Text);
    let int = |n: usize| Owned::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let containers = m
        .containers
        .iter()
        .map(|c| {
            vec![
                Owned::Int(model_id),
                text(&c.guid),
                Owned::Text(c.name.clone()),
            ]
        })
        .collect();
    bulk_insert(
        tx,
        "containers",
        &["model_id", "guid", "name"],
        containers,
        "storing containers",
    )?;
    let entity_ids = new_ids(tx, "entities", m.entities.len())?;
    let total: usize = m.entities.iter().map(|e| e.attributes.len()).sum();
    let attribute_ids = new_ids(tx, "attributes", total)?;
    let mut entities = Pending::new("entities", ENTITY_COLUMNS, "storing entities");
    let mut attributes = Pending::new("attributes", ATTRIBUTE_COLUMNS, "storing attributes");
    let mut next_attribute = attribute_ids.iter();
    for ((i, e), &entity_id) in m.entities.iter().enumerate().zip(&entity_ids) {
        if entities.is_full() {
            entities.write(tx)?;
        }
        entities.rows.push(vec![
            Owned::Int(entity_id),
            Owned::Int(model_id),
            int(i),
            text(&e.guid),
            Owned::Text(e.name.clone()),
            text(&e.code),
            text(&e.container),
            text(&e.description),
            text(&e.derived_from),
            int(e.attributes.len()),
        ]);
        search.push(
            tx,
            SearchRow {
                rowid: entity_id * 4 + 1,
                name: e.name.clone(),
                code: e.code.clone(),
                path: None,
                description: e.description.clone(),
                kind: "entity",
                model_id,
            },
        )?;
        for (j, a) in e.attributes.iter().enumerate() {
            let Some(&attribute_id) = next_attribute.next() else {
                break;
            };
            if attributes.is_full() {
                // Their entities first.
                entities.write(tx)?;
                attributes.write(tx)?;
            }
            attributes.rows.push(vec![
                Owned::Int(attribute_id),
                Owned::Int(entity_id),
                Owned::Int(model_id),
                int(j),
                a.parent.map_or(Owned::Null, int),
                Owned::Int(i64::from(a.depth)),
                text(&a.guid),
                Owned::Text(a.path.clone()),
                Owned::Text(a.name.clone()),
                text(&a.code),
                text(&a.data_type),
                text(&a.mode),
                Owned::Int(i64::from(a.required)),
                Owned::Int(i64::from(a.primary_key)),
                text(&a.description),
            ]);
            search.push(
                tx,
                SearchRow {
                    rowid: attribute_id * 4 + 2,
                    name: a.name.clone(),
                    code: a.code.clone(),
                    path: Some(a.path.clone()),
                    description: a.description.clone(),
                    kind: "attribute",
                    model_id,
                },
            )?;
        }
    }
    entities.write(tx)?;
    attributes.write(tx)?;
    let relationships = m
        .relationships
        .iter()
        .map(|r| {
            vec![
                Owned::Int(model_id),
                text(&r.name),
                text(&r.parent_entity),
                text(&r.child_entity),
                text(&r.parent_cardinality),
                text(&r.child_cardinality),
                text(&r.relationship_type),
            ]
        })
        .collect();
    bulk_insert(
        tx,
        "relationships",
        &[
            "model_id",
            "name",
            "parent_entity",
            "child_entity",
            "parent_cardinality",
            "child_cardinality",
            "relationship_type",
        ],
        relationships,
        "storing relationships",
    )
}

fn insert_content(
    tx: &mut Conn,
    model_id: i64,
    m: &Model,
    search: &mut Search,
) -> Result<(), StoreError> {
    if tx.engine() == Engine::Postgres {
        return insert_content_bulk(tx, model_id, m, search);
    }
    for c in &m.containers {
        tx.execute(
            "INSERT INTO containers (model_id, guid, name) VALUES (?1, ?2, ?3)",
            params![model_id, c.guid, c.name],
        )
        .doing("storing containers")?;
    }
    for (i, e) in m.entities.iter().enumerate() {
        let entity_id = tx
            .insert(
                "INSERT INTO entities (model_id, ordinal, guid, name, code, container, description, derived_from,
                     attribute_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                model_id,
                i as i64,
                e.guid,
                e.name,
                e.code,
                e.container,
                e.description,
                e.derived_from,
                e.attributes.len() as i64
            ],
            )
            .doing("storing entities")?;
        search.push(
            tx,
            SearchRow {
                rowid: entity_id * 4 + 1,
                name: e.name.clone(),
                code: e.code.clone(),
                path: None,
                description: e.description.clone(),
                kind: "entity",
                model_id,
            },
        )?;
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
            let attribute_id = tx
                .insert(
                    "INSERT INTO attributes (entity_id, model_id, ordinal, parent, depth, guid, path, name, code, type,
                         mode, required, primary_key, description)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    params![
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
                ],
                )
                .doing("storing attributes")?;
            search.push(
                tx,
                SearchRow {
                    rowid: attribute_id * 4 + 2,
                    name: name.clone(),
                    code: code.clone(),
                    path: Some(path.clone()),
                    description: description.clone(),
                    kind: "attribute",
                    model_id,
                },
            )?;
        }
    }
    for r in &m.relationships {
        tx.execute(
            "INSERT INTO relationships (model_id, name, parent_entity, child_entity, parent_cardinality,
                 child_cardinality, relationship_type) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
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
    /// A model of one entity with `n` attributes, each described by `word{i}` and sixty more words.
    fn model(name: &str, word: &str, n: usize) -> Model {
        let attribute = |i: usize| Attribute {
            guid: None,
            path: format!("field{i}"),
            name: format!("field{i}"),
            code: None,
            data_type: Some("string".into()),
            mode: None,
            required: false,
            primary_key: false,
            description: Some(format!("{word}{i} {}", "words ".repeat(60))),
            depth: 0,
            parent: None,
        };
        Model {
            name: name.into(),
            guid: None,
            db_vendor: None,
            app_target: None,
            db_version: None,
            description: None,
            containers: Vec::new(),
            entities: vec![crate::model::Entity {
                guid: None,
                name: "Orders".into(),
                code: None,
                container: None,
                description: None,
                derived_from: None,
                attributes: (0..n).map(attribute).collect(),
            }],
            relationships: Vec::new(),
            views: Vec::new(),
            definitions: Vec::new(),
        }
    }

    fn search_rows(store: &Store) -> i64 {
        store.count("SELECT COUNT(*) FROM search")
    }

    /// PostgreSQL, under leases: a step is written only while this process holds the repository's lease;
    /// while a step commits, its lease cannot be claimed by another process, even once expired.
    #[test]
    fn a_step_is_written_only_under_its_lease() {
        use crate::store::Holder;
        let (db, _dropped) = crate::store::test_db::postgres();
        let (a, b) = (Store::open(&db).unwrap(), Store::open(&db).unwrap());
        a.steps_under_lease("token-a");
        a.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
        let (me, other) = (
            Holder {
                name: "a",
                token: "token-a",
            },
            Holder {
                name: "b",
                token: "token-b",
            },
        );
        let m = model("M", "m", 3);
        let put = |w: &mut StepWriter<'_, '_>| w.put("m.json", None, "b1", 10, &Content::Model(&m));
        // Not taken: refused.
        let c1 = commit("c1");
        let err = a.apply_step(&step(&c1, None), put).unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        assert!(err.to_string().contains("p/r"), "{err}");
        assert_eq!(a.count("SELECT COUNT(*) FROM commits"), 0);
        // Taken (for three seconds): written. The lease expires while the next step commits, yet no one can
        // claim it until that step ends.
        assert!(a.claim("p/r", &me, 3).unwrap());
        a.apply_step(&step(&c1, None), put).unwrap();
        let c2 = commit("c2");
        a.apply_step(&step(&c2, Some("c1")), |w: &mut StepWriter<'_, '_>| {
            std::thread::sleep(std::time::Duration::from_millis(3500));
            assert!(!b.claim("p/r", &other, 60).unwrap(), "claimed mid-step");
            put(w)
        })
        .unwrap();
        // Expired now: the next step is refused and the other process takes the lease.
        let c3 = commit("c3");
        let err = a.apply_step(&step(&c3, Some("c2")), put).unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        assert_eq!(a.count("SELECT COUNT(*) FROM commits"), 2);
        assert!(b.claim("p/r", &other, 60).unwrap());
        assert!(
            !a.renew("p/r", &me, 60).unwrap(),
            "renewed a lease taken over"
        );
    }

    /// A model whose strings hold U+0000 (JSON allows `\u0000`) is stored on both engines (PostgreSQL's text
    /// cannot hold it: U+FFFD there).
    #[test]
    fn a_nul_in_a_model_is_stored() {
        for (store, _db) in crate::store::test_db::stores() {
            store.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
            let mut m = model("Nul\0Model", "n", 2);
            m.entities[0].description = Some("before\0after".into());
            let c1 = commit("c1");
            store
                .apply_step(&step(&c1, None), |w: &mut StepWriter<'_, '_>| {
                    w.put("n.json", None, "b1", 10, &Content::Model(&m))
                })
                .unwrap();
            let names = store.texts("SELECT name FROM models");
            assert!(
                names == ["Nul\0Model"] || names == ["Nul\u{FFFD}Model"],
                "{names:?}"
            );
            assert_eq!(store.count("SELECT COUNT(*) FROM entities"), 1);
        }
    }

    /// A model of 2,500 entities of two attributes each: every row stored once, each attribute with its own
    /// entity (PostgreSQL writes entities and attributes a statement's worth at a time, entities first).
    #[test]
    fn a_model_of_many_entities_is_stored_whole() {
        for (store, _db) in crate::store::test_db::stores() {
            store.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
            let mut m = model("Wide", "w", 0);
            let one = m.entities.pop().unwrap();
            m.entities = (0..2500)
                .map(|i| crate::model::Entity {
                    name: format!("e{i}"),
                    attributes: model("x", "y", 2)
                        .entities
                        .remove(0)
                        .attributes
                        .into_iter()
                        .map(|mut a| {
                            a.name = format!("e{i}.{}", a.name);
                            a
                        })
                        .collect(),
                    ..one.clone()
                })
                .collect();
            let c1 = commit("c1");
            store
                .apply_step(&step(&c1, None), |w: &mut StepWriter<'_, '_>| {
                    w.put("wide.json", None, "b1", 10, &Content::Model(&m))
                })
                .unwrap();
            assert_eq!(store.count("SELECT COUNT(*) FROM entities"), 2500);
            assert_eq!(
                store.count(
                    "SELECT COUNT(*) FROM attributes a JOIN entities e ON e.id = a.entity_id
                     WHERE a.name LIKE e.name || '.%'"
                ),
                5000
            );
            assert_eq!(store.count("SELECT COUNT(*) FROM search"), 7501);
        }
    }

    /// `unindex` takes exactly the search rows of the models a step replaces, before they are replaced.
    #[test]
    fn unindex_removes_the_rows_of_the_models_a_step_replaces_and_no_other() {
        for (store, _db) in crate::store::test_db::stores() {
            unindex_removes_the_rows_of_the_models_a_step_replaces_and_no_other_on(&store);
        }
    }

    fn unindex_removes_the_rows_of_the_models_a_step_replaces_and_no_other_on(store: &Store) {
        store.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
        let (a, b, a2) = (
            model("A", "alpha", 50),
            model("B", "beta", 40),
            model("A", "gamma", 30),
        );
        let c1 = commit("c1");
        store
            .apply_step(&step(&c1, None), |w: &mut StepWriter<'_, '_>| {
                w.put("a.json", None, "b1", 10, &Content::Model(&a))?;
                w.put("b.json", None, "b2", 10, &Content::Model(&b))
            })
            .unwrap();
        assert_eq!(search_rows(store), 52 + 42);
        let c2 = commit("c2");
        store
            .apply_step(&step(&c2, Some("c1")), |w: &mut StepWriter<'_, '_>| {
                w.unindex(["a.json", "missing.json"])?;
                w.put("a.json", None, "b3", 10, &Content::Model(&a2))
            })
            .unwrap();
        assert_eq!(search_rows(store), 32 + 42, "a's old rows went, b's stayed");
        let hits = |q: &str| store.search(q, None, None, 100).unwrap().len();
        assert_eq!(hits("alpha1"), 0);
        assert_eq!(hits("gamma1"), 11, "gamma1 and gamma10…gamma19");
        assert_eq!(hits("beta39"), 1);
        // A rename onto a file that is there (the poll never makes one): the old path goes too, and its
        // history says so.
        let c3 = commit("c3");
        let counts = store
            .apply_step(&step(&c3, Some("c2")), |w: &mut StepWriter<'_, '_>| {
                w.unindex(["a.json", "b.json"])?;
                w.put("b.json", Some("a.json"), "b4", 10, &Content::Model(&a))
            })
            .unwrap();
        assert_eq!((counts.modified, counts.deleted), (1, 1));
        assert_eq!(
            store.model_blobs("p/r").unwrap().keys().collect::<Vec<_>>(),
            ["b.json"]
        );
        assert_eq!(search_rows(store), 52);
        let changes = store.texts(
            "SELECT path || ' ' || change FROM model_versions WHERE commit_id = 'c3' ORDER BY id",
        );
        assert_eq!(changes, ["a.json deleted", "b.json modified"]);
    }

    /// A model whose search text spans several batches: every row is found, and the history records
    /// what the catalog held for each file (written without reading the models table back).
    #[test]
    fn search_rows_in_several_batches_and_the_history_of_each_kind_of_file() {
        for (store, _db) in crate::store::test_db::stores() {
            search_rows_in_several_batches_and_the_history_of_each_kind_of_file_on(&store);
        }
    }

    fn search_rows_in_several_batches_and_the_history_of_each_kind_of_file_on(store: &Store) {
        store.ensure_repo("p/r", "p", "r", "file:///r").unwrap();
        let model = model("Big", "zebra", 3000);
        // About 1.1 MB of search text: more than four batches.
        const { assert!(3000 * 360 > 4 * SEARCH_BATCH_BYTES) };
        let c1 = commit("c1");
        store
            .apply_step(&step(&c1, None), |w: &mut StepWriter<'_, '_>| {
                w.put("big.json", None, "b1", 10, &Content::Model(&model))?;
                w.put(
                    "bad.json",
                    None,
                    "b2",
                    10,
                    &Content::Error("line 1, column 2: x".into()),
                )?;
                w.put(
                    "skip.json",
                    None,
                    "b3",
                    10,
                    &Content::Skipped("too big".into()),
                )
            })
            .unwrap();
        for i in [0, 1500, 2999] {
            let hits = store.search(&format!("zebra{i}"), None, None, 5).unwrap();
            assert_eq!(hits.len(), 1, "zebra{i}: {hits:?}");
        }
        let history = |store: &Store| -> Vec<String> {
            store.texts(
                "SELECT path || ' ' || change || ' ' || COALESCE(status, '-') || ' ' || COALESCE(name, '-') || ' '
                     || COALESCE(CAST(entity_count AS TEXT), '-') || ' '
                     || COALESCE(CAST(attribute_count AS TEXT), '-') || ' '
                     || COALESCE(error, '-') FROM model_versions ORDER BY id",
            )
        };
        assert_eq!(
            history(store),
            [
                "big.json added ok Big 1 3000 -",
                "bad.json added error - 0 0 line 1, column 2: x",
                "skip.json added skipped - 0 0 too big",
            ]
        );
        // A file written twice in one step (the poll never does it): only the second's search rows stay.
        let c2 = commit("c2");
        store
            .apply_step(&step(&c2, Some("c1")), |w: &mut StepWriter<'_, '_>| {
                w.put("twice.json", None, "b4", 10, &Content::Model(&model))?;
                w.remove("twice.json")?;
                w.put("twice.json", None, "b5", 10, &Content::Model(&model))
            })
            .unwrap();
        let rows = store.count("SELECT COUNT(*) FROM search");
        assert_eq!(rows, 2 * 3002, "big.json and twice.json, once each");
        // Every attribute stored (PostgreSQL writes them a statement's worth at a time), each once, in order.
        assert_eq!(
            store.count(
                "SELECT COUNT(DISTINCT a.ordinal) FROM attributes a JOIN entities e ON e.id = a.entity_id
                 JOIN models m ON m.id = e.model_id WHERE m.path = 'twice.json' AND a.name = 'field' || a.ordinal"
            ),
            3000
        );
        let c3 = commit("c3");
        store
            .apply_step(&step(&c3, Some("c2")), |w: &mut StepWriter<'_, '_>| {
                w.remove("big.json")?;
                w.remove("twice.json")
            })
            .unwrap();
        let hits = store.search("zebra2999", None, None, 5).unwrap();
        assert!(hits.is_empty(), "{hits:?}");
        let rows = store.count("SELECT COUNT(*) FROM search");
        assert_eq!(rows, 0, "no search row outlives its model");
        assert_eq!(
            history(store).last().map(String::as_str),
            Some("twice.json deleted - - - - -")
        );
    }

    #[test]
    fn a_step_from_a_stale_pointer_is_refused_and_leaves_nothing() {
        for (store, _db) in crate::store::test_db::stores() {
            a_step_from_a_stale_pointer_is_refused_and_leaves_nothing_on(&store);
        }
    }

    fn a_step_from_a_stale_pointer_is_refused_and_leaves_nothing_on(store: &Store) {
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
        let versions = store.count("SELECT COUNT(*) FROM model_versions");
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
}
