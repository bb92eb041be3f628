//! `modelmirror migrate --to`: a SQLite catalog copied into an empty PostgreSQL one, table by table, in one
//! transaction on each side (a consistent snapshot read, all or nothing written): models, history, commits,
//! polls, deliveries, statuses, providers and the search index, with their ids, so nothing is rebuilt.

use super::db::{Owned, params};
use super::{Database, Doing, Store, StoreError};

/// The tables copied, parents first, and their columns (the same in both engines).
const TABLES: &[(&str, &[&str])] = &[
    (
        "repos",
        &[
            "id",
            "provider",
            "path",
            "url",
            "default_branch",
            "commit_id",
            "settings",
            "last_check_at",
            "last_change_at",
            "last_error",
            "last_error_at",
            "failures",
            "provider_repo_id",
            "web_url",
            "origin",
            "state",
            "state_reason",
            "last_success_at",
        ],
    ),
    (
        "commits",
        &[
            "repo_id",
            "commit_id",
            "author_name",
            "author_email",
            "authored_at",
            "committed_at",
            "message",
        ],
    ),
    (
        "sync_steps",
        &[
            "id",
            "repo_id",
            "commit_id",
            "processed_at",
            "note",
            "added",
            "modified",
            "deleted",
        ],
    ),
    (
        "models",
        &[
            "id",
            "repo_id",
            "path",
            "blob",
            "commit_id",
            "status",
            "error",
            "name",
            "guid",
            "db_vendor",
            "app_target",
            "db_version",
            "description",
            "size_bytes",
            "entity_count",
            "attribute_count",
            "relationship_count",
            "view_count",
            "definition_count",
        ],
    ),
    ("containers", &["id", "model_id", "guid", "name"]),
    ("entities", super::step::ENTITY_COLUMNS),
    ("attributes", super::step::ATTRIBUTE_COLUMNS),
    (
        "relationships",
        &[
            "id",
            "model_id",
            "name",
            "parent_entity",
            "child_entity",
            "parent_cardinality",
            "child_cardinality",
            "relationship_type",
        ],
    ),
    (
        "model_versions",
        &[
            "id",
            "repo_id",
            "path",
            "commit_id",
            "change",
            "old_path",
            "blob",
            "status",
            "name",
            "entity_count",
            "attribute_count",
            "error",
        ],
    ),
    (
        "polls",
        &[
            "id",
            "repo_id",
            "trigger",
            "started_at",
            "duration_ms",
            "result",
            "commits",
            "models_added",
            "models_modified",
            "models_deleted",
            "error",
            "instance",
        ],
    ),
    (
        "providers",
        &[
            "name",
            "kind",
            "last_discovery_at",
            "last_discovery_error",
            "repos_found",
            "held_until",
            "held_reason",
        ],
    ),
    (
        "deliveries",
        &[
            "id",
            "received_at",
            "provider",
            "event",
            "delivery_id",
            "repo_id",
            "ref",
            "outcome",
            "reason",
            "poll_id",
        ],
    ),
    ("service", &["key", "value"]),
    (
        "statuses",
        &[
            "id",
            "repo_id",
            "provider",
            "commit_id",
            "posted_at",
            "state",
            "description",
            "target_url",
            "outcome",
            "attempts",
            "error",
        ],
    ),
];

impl Store {
    /// Copy this SQLite catalog into `target`, an empty PostgreSQL catalog; returns (table, rows) in order.
    pub(crate) fn copy_into(&self, target: &Store) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let (Database::Sqlite(_), Database::Postgres(to)) = (&self.database, &target.database)
        else {
            return Err(StoreError::Query(
                "migrate copies a SQLite catalog (`database` in the configuration) into PostgreSQL (`--to postgresql://…`)".into(),
            ));
        };
        let mut from = self.lock();
        let mut into = target.lock();
        // One snapshot of the source (a service writing meanwhile changes nothing of what is copied).
        from.batch("BEGIN").doing("reading the catalog")?;
        let result = (|| {
            let mut tx = into.begin().doing("starting the copy")?;
            // Every table the copy fills, empty, and kept so until it commits (nothing else writes there
            // meanwhile: a service started on it early waits).
            let tables: Vec<&str> = TABLES.iter().map(|(t, _)| *t).chain(["search"]).collect();
            tx.batch(&format!(
                "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                tables.join(", ")
            ))
            .doing("locking the target database's tables")?;
            let any = tables
                .iter()
                .map(|t| format!("EXISTS (SELECT 1 FROM {t})"))
                .collect::<Vec<_>>()
                .join(" OR ");
            let filled = tx
                .query_one(&format!("SELECT {any}"), params![], |r| r.get::<bool>(0))
                .doing("looking into the target database")?;
            if filled {
                return Err(StoreError::Query(format!(
                    "{} already holds a catalog: migrate copies into an empty database only (create a new one, or drop this one's tables)",
                    to.shown()
                )));
            }
            let mut counts = Vec::new();
            for (table, columns) in TABLES {
                let n = copy_table(&mut from, &mut tx, table, columns, table, columns)?;
                counts.push((*table, n));
            }
            let n = copy_table(
                &mut from,
                &mut tx,
                "search",
                &[
                    "rowid",
                    "name",
                    "code",
                    "path",
                    "description",
                    "kind",
                    "model_id",
                ],
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
            )?;
            counts.push(("search", n));
            // New rows continue after the copied ids.
            for (table, columns) in TABLES {
                if columns.first() == Some(&"id") && *table != "repos" {
                    tx.batch(&format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                    ))
                    .doing("moving the ids on")?;
                }
            }
            tx.commit().doing("committing the copy")?;
            Ok(counts)
        })();
        let _ = from.batch("ROLLBACK");
        result
    }
}

/// Rows read from the source at a time (by rowid, so a large table is never held whole).
const PAGE: i64 = 5_000;

/// Copy one table's rows, a page at a time, in batches; returns how many.
fn copy_table(
    from: &mut super::Conn,
    into: &mut super::Conn,
    table: &str,
    columns: &[&str],
    to_table: &str,
    to_columns: &[&str],
) -> Result<u64, StoreError> {
    let doing = format!("copying {table}");
    let select = format!(
        "SELECT rowid, {} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        columns.join(", ")
    );
    let (mut after, mut copied) = (i64::MIN, 0u64);
    loop {
        let page: Vec<(i64, Vec<Owned>)> = from
            .query(&select, params![after, PAGE], |r| {
                let rowid = r.get::<i64>(0)?;
                let values = (1..=columns.len())
                    .map(|i| r.get::<Owned>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((rowid, values))
            })
            .doing(&doing)?;
        let Some((last, _)) = page.last() else {
            return Ok(copied);
        };
        after = *last;
        copied += page.len() as u64;
        let rows = page.into_iter().map(|(_, row)| row).collect();
        super::step::bulk_insert(into, to_table, to_columns, rows, &doing)?;
    }
}
