//! The two database engines behind one small interface: a connection that runs a statement with parameters,
//! reads rows by column, and opens transactions. The store's queries are written once (SQLite's `?N`
//! placeholders; PostgreSQL gets `$N`); where the engines' SQL differs (schema, full-text search, locking) the
//! store asks [`Conn::engine`].
//!
//! Why the blocking `postgres` client: the store is blocking code called from blocking threads (polls run on
//! `spawn_blocking`), as it is for SQLite; one code path serves both. Its calls run outside the async runtime
//! (see [`outside_runtime`]) so a call made from an async task cannot stall or break the runtime.

use std::collections::HashMap;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

/// A parameter's value, borrowed from what the caller passed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bool(bool),
}

/// Something that can be a statement's parameter.
pub(crate) trait Param {
    fn value(&self) -> Value<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value<'_> {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u64, usize);

impl Param for bool {
    fn value(&self) -> Value<'_> {
        Value::Bool(*self)
    }
}
impl Param for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl Param for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}
impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}
impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value<'_> {
        match self {
            Some(v) => v.value(),
            None => Value::Null,
        }
    }
}

/// A statement's parameters: `params![a, b, c]`.
macro_rules! params {
    () => { &[] as &[&dyn $crate::store::db::Param] };
    ($($p:expr),+ $(,)?) => { &[$(&($p) as &dyn $crate::store::db::Param),+] as &[&dyn $crate::store::db::Param] };
}
pub(crate) use params;

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match *self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(i)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(b))),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// PostgreSQL types its parameters from the statement; a value is written as whatever type it was given
/// (an integer into a `bigint` or `integer`, a boolean into an integer column as 0/1, and so on).
impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let int = match *self {
            Value::Null => return Ok(IsNull::Yes),
            // PostgreSQL text cannot hold U+0000 (a model's string may: JSON allows `\u0000`), and SQLite's can:
            // it is stored as U+FFFD rather than failing the commit on every poll.
            Value::Text(s) if s.contains('\0') => {
                return s.replace('\0', "\u{FFFD}").as_str().to_sql(ty, out);
            }
            Value::Text(s) => return s.to_sql(ty, out),
            Value::Int(i) => i,
            Value::Bool(b) if *ty == Type::BOOL => return b.to_sql(ty, out),
            Value::Bool(b) => i64::from(b),
        };
        match *ty {
            Type::INT8 => int.to_sql(ty, out),
            Type::INT4 => i32::try_from(int)?.to_sql(ty, out),
            Type::INT2 => i16::try_from(int)?.to_sql(ty, out),
            Type::BOOL => (int != 0).to_sql(ty, out),
            Type::FLOAT8 => (int as f64).to_sql(ty, out),
            _ => int.to_string().as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A PostgreSQL integer of any width (or a boolean), read as `i64`.
struct PgInt(i64);

impl<'a> postgres::types::FromSql<'a> for PgInt {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<PgInt, Box<dyn std::error::Error + Sync + Send>> {
        Ok(PgInt(match *ty {
            Type::INT8 => i64::from_sql(ty, raw)?,
            Type::INT4 => i64::from(i32::from_sql(ty, raw)?),
            Type::INT2 => i64::from(i16::from_sql(ty, raw)?),
            _ => i64::from(bool::from_sql(ty, raw)?),
        }))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL)
    }
}

/// A column's value read into a Rust type, from either engine.
pub(crate) trait FromCol: Sized {
    fn sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self>;
    fn pg(row: &postgres::Row, i: usize) -> Result<Self, postgres::Error>;
}

impl FromCol for i64 {
    fn sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn pg(row: &postgres::Row, i: usize) -> Result<Self, postgres::Error> {
        row.try_get::<_, PgInt>(i).map(|v| v.0)
    }
}
impl FromCol for Option<i64> {
    fn sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn pg(row: &postgres::Row, i: usize) -> Result<Self, postgres::Error> {
        row.try_get::<_, Option<PgInt>>(i).map(|v| v.map(|v| v.0))
    }
}
impl FromCol for bool {
    fn sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn pg(row: &postgres::Row, i: usize) -> Result<Self, postgres::Error> {
        row.try_get::<_, PgInt>(i).map(|v| v.0 != 0)
    }
}
impl FromCol for String {
    fn sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn pg(row: &postgres::Row, i: usize) -> Result<Self, postgres::Error> {
        row.try_get(i)
    }
}
impl FromCol for Option<String> {
    fn sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
    fn pg(row: &postgres::Row, i: usize) -> Result<Self, postgres::Error> {
        row.try_get(i)
    }
}

/// A column's value of any type, owned (for copying rows between engines).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Owned {
    Null,
    Int(i64),
    Text(String),
}

impl Param for Owned {
    fn value(&self) -> Value<'_> {
        match self {
            Owned::Null => Value::Null,
            Owned::Int(i) => Value::Int(*i),
            Owned::Text(s) => Value::Text(s),
        }
    }
}

impl FromCol for Owned {
    fn sqlite(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        use rusqlite::types::ValueRef;
        Ok(match row.get_ref(i)? {
            ValueRef::Null => Owned::Null,
            ValueRef::Integer(n) => Owned::Int(n),
            ValueRef::Real(f) => Owned::Text(f.to_string()),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                Owned::Text(String::from_utf8_lossy(t).into_owned())
            }
        })
    }
    fn pg(row: &postgres::Row, i: usize) -> Result<Self, postgres::Error> {
        if let Ok(v) = row.try_get::<_, Option<PgInt>>(i) {
            return Ok(v.map_or(Owned::Null, |v| Owned::Int(v.0)));
        }
        row.try_get::<_, Option<String>>(i)
            .map(|v| v.map_or(Owned::Null, Owned::Text))
    }
}

/// One row of a result.
pub(crate) enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    pub(crate) fn get<T: FromCol>(&self, i: usize) -> Result<T, DbError> {
        match self {
            Row::Sqlite(r) => T::sqlite(r, i).map_err(DbError::Sqlite),
            Row::Pg(r) => T::pg(r, i).map_err(DbError::Pg),
        }
    }
}

/// What a statement failed with.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(rusqlite::Error),
    #[error("{}", pg_message(.0))]
    Pg(postgres::Error),
    #[error("the query returned no row")]
    NoRow,
    #[error("cannot set up TLS: {0}")]
    Tls(openssl::error::ErrorStack),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError::Sqlite(e)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> DbError {
        DbError::Pg(e)
    }
}

/// A PostgreSQL error as one line: the server's own message (with its detail and hint) when it sent one.
pub(crate) fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => e.to_string(),
    }
}

impl DbError {
    /// Whether the connection itself is gone (server restarted, network cut): the next use reconnects.
    pub(crate) fn is_disconnect(&self) -> bool {
        match self {
            DbError::Pg(e) => pg_lost(e),
            _ => false,
        }
    }
}

/// Whether a PostgreSQL error is the connection's: closed, or an I/O error under it (not a server's error,
/// not a value that did not convert).
pub(crate) fn pg_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
}

/// A PostgreSQL connection and the statements it has prepared (by their SQL text).
pub(crate) struct Pg {
    /// `None` only while being dropped (see `Drop`).
    client: Option<postgres::Client>,
    statements: HashMap<String, postgres::Statement>,
}

impl Pg {
    pub(crate) fn new(client: postgres::Client) -> Pg {
        Pg {
            client: Some(client),
            statements: HashMap::new(),
        }
    }

    fn client(&mut self) -> &mut postgres::Client {
        // Present from `new` until `drop`.
        self.client
            .as_mut()
            .unwrap_or_else(|| unreachable!("a PostgreSQL connection used after it was dropped"))
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let translated = placeholders(sql);
        let stmt = outside_runtime(|| self.client().prepare(&translated))?;
        // A multi-row insert's text grows with its rows, and a prepared statement holds server memory in
        // proportion: long ones are prepared each time (closed once used), not kept.
        if sql.len() > MAX_KEPT_STATEMENT {
            return Ok(stmt);
        }
        // Bounded: the store's statements are fixed texts, but a few carry a number (a limit) in them.
        if self.statements.len() > 512 {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.as_ref().is_none_or(postgres::Client::is_closed)
    }
}

/// The longest statement text kept prepared on a connection (about 50 rows of a multi-row insert).
const MAX_KEPT_STATEMENT: usize = 4096;

impl Drop for Pg {
    fn drop(&mut self) {
        // The client owns a small runtime of its own, which must not be dropped on an async task's thread.
        if let Some(client) = self.client.take() {
            outside_runtime(move || drop(client));
        }
    }
}

/// Run blocking database work where blocking is allowed: on an async worker thread, the runtime is told
/// first (its other tasks move to other threads); on a single-threaded runtime, on a thread of its own;
/// elsewhere (a blocking thread, the CLI) as it is.
pub(crate) fn outside_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}

/// SQLite's `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// A connection to either engine.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Pg(Box<Pg>),
}

fn values<'a>(params: &'a [&'a dyn Param]) -> Vec<Value<'a>> {
    params.iter().map(|p| p.value()).collect()
}

fn pg_refs<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl Conn {
    pub(crate) fn engine(&self) -> Engine {
        match self {
            Conn::Sqlite(_) => Engine::Sqlite,
            Conn::Pg(_) => Engine::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas).
    pub(crate) fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Sqlite(c) => Some(c),
            Conn::Pg(_) => None,
        }
    }

    /// Run one statement; returns the rows it changed.
    pub(crate) fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        let values = values(params);
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))? as u64)
            }
            Conn::Pg(pg) => {
                let stmt = pg.statement(sql)?;
                let refs = pg_refs(&values);
                Ok(outside_runtime(|| pg.client().execute(&stmt, &refs))?)
            }
        }
    }

    /// Run an `INSERT` into a table with an `id` column; returns the new row's id.
    pub(crate) fn insert(&mut self, sql: &str, params: &[&dyn Param]) -> Result<i64, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let values = values(params);
                let mut stmt = c.prepare_cached(sql)?;
                stmt.execute(rusqlite::params_from_iter(values.iter()))?;
                Ok(c.last_insert_rowid())
            }
            Conn::Pg(_) => {
                let sql = format!("{sql} RETURNING id");
                self.query_one(&sql, params, |r| r.get(0))
            }
        }
    }

    /// Every row of a query, each turned into a `T` by `f`.
    pub(crate) fn query<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let values = values(params);
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Conn::Pg(pg) => {
                let stmt = pg.statement(sql)?;
                let refs = pg_refs(&values);
                let rows = outside_runtime(|| pg.client().query(&stmt, &refs))?;
                rows.iter().map(|r| f(&Row::Pg(r))).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub(crate) fn query_opt<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let values = values(params);
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                match rows.next()? {
                    Some(r) => Ok(Some(f(&Row::Sqlite(r))?)),
                    None => Ok(None),
                }
            }
            Conn::Pg(pg) => {
                let stmt = pg.statement(sql)?;
                let refs = pg_refs(&values);
                let rows = outside_runtime(|| pg.client().query(&stmt, &refs))?;
                rows.first().map(|r| f(&Row::Pg(r))).transpose()
            }
        }
    }

    /// The one row a query must return.
    pub(crate) fn query_one<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_opt(sql, params, f)?.ok_or(DbError::NoRow)
    }

    /// Run statements with no parameters (schema changes).
    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(pg) => Ok(outside_runtime(|| pg.client().batch_execute(sql))?),
        }
    }

    /// Start a transaction, rolled back unless committed. SQLite takes the write lock at once (`IMMEDIATE`),
    /// so what the transaction reads first cannot be overtaken by another process.
    pub(crate) fn begin(&mut self) -> Result<Tx<'_>, DbError> {
        match self {
            Conn::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE")?,
            // Read committed whatever the server's default: each statement sees what committed before it (the
            // lease check after its lock, the pointer after the generation row's lock).
            Conn::Pg(pg) => outside_runtime(|| {
                pg.client()
                    .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            })?,
        }
        Ok(Tx {
            conn: self,
            open: true,
        })
    }

    /// Start a transaction that writes the catalog. PostgreSQL: the catalog's generation row is locked first,
    /// as every write takes it (a trigger bumps it), so transactions take their locks in one order and cannot
    /// deadlock one another.
    pub(crate) fn begin_catalog(&mut self) -> Result<Tx<'_>, DbError> {
        let mut tx = self.begin()?;
        if tx.engine() == Engine::Postgres {
            tx.execute(
                "SELECT n FROM catalog_generation WHERE id = 1 FOR UPDATE",
                params![],
            )?;
        }
        Ok(tx)
    }

    /// Whether a PostgreSQL connection was lost (a SQLite one never is).
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Conn::Sqlite(_) => false,
            Conn::Pg(pg) => pg.is_closed(),
        }
    }
}

/// An open transaction: rolled back when dropped uncommitted (an error, a panic).
pub(crate) struct Tx<'c> {
    conn: &'c mut Conn,
    open: bool,
}

impl Tx<'_> {
    /// Commit; if that fails, the transaction is rolled back (when dropped) rather than left open.
    pub(crate) fn commit(mut self) -> Result<(), DbError> {
        self.conn.batch("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            placeholders("SELECT '?1', \"a?\" FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?1', \"a?\" FROM t WHERE a = $1 AND b = $12"
        );
    }
}
