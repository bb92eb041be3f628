//! Several instances on one PostgreSQL database: heartbeats, and leases on repositories and on each
//! provider's discovery. A lease is a row (`name`, `lease_owner`, `lease_expires_at`) taken with one
//! conditional upsert: it is free, expired, or already this instance's. Times are the database server's, so
//! hosts whose clocks differ agree. A SQLite catalog has one instance: every lease is granted at once and
//! nothing is written.

use serde::Serialize;

use super::db::{Engine, params};
use super::{Doing, Store, StoreError};

/// An instance as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InstanceRow {
    pub(crate) name: String,
    pub(crate) started_at: String,
    pub(crate) heartbeat_at: String,
    /// Its heartbeat is within the lease period.
    pub(crate) live: bool,
    /// How many repository leases it holds now.
    pub(crate) leases: i64,
}

impl Store {
    /// Note this instance's heartbeat (`started_at` for its first), and return the live instances' names
    /// (heartbeat within `lease_secs`), sorted. SQLite: this instance alone.
    pub(crate) fn heartbeat(
        &self,
        name: &str,
        started_at: &str,
        lease_secs: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.lock();
        if conn.engine() == Engine::Sqlite {
            return Ok(vec![name.to_string()]);
        }
        conn.execute(
            "INSERT INTO instances (name, started_at, heartbeat_at) VALUES (?1, ?2, modelmirror_time(now()))
             ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                 started_at = excluded.started_at",
            params![name, started_at],
        )
        .doing("recording the heartbeat")?;
        conn.query(
            "SELECT name FROM instances
             WHERE heartbeat_at > modelmirror_time(now() - make_interval(secs => ?1)) ORDER BY name",
            params![lease_secs],
            |r| r.get(0),
        )
        .doing("reading the live instances")
    }

    /// Take (or extend) the lease `name` for `owner` for `lease_secs`; false when another instance holds it.
    /// SQLite: always granted.
    pub(crate) fn claim(
        &self,
        name: &str,
        owner: &str,
        lease_secs: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        if conn.engine() == Engine::Sqlite {
            return Ok(true);
        }
        let got = conn
            .query_opt(
                "INSERT INTO leases (name, lease_owner, lease_expires_at)
                 VALUES (?1, ?2, modelmirror_time(now() + make_interval(secs => ?3)))
                 ON CONFLICT (name) DO UPDATE SET lease_owner = excluded.lease_owner,
                     lease_expires_at = excluded.lease_expires_at
                 WHERE leases.lease_owner = excluded.lease_owner
                    OR leases.lease_expires_at < modelmirror_time(now())
                 RETURNING lease_owner",
                params![name, owner, lease_secs],
                |r| r.get::<String>(0),
            )
            .doing("taking a lease")?;
        Ok(got.is_some())
    }

    /// Give the lease `name` back, if `owner` holds it.
    pub(crate) fn release(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        if conn.engine() == Engine::Sqlite {
            return Ok(());
        }
        conn.execute(
            "DELETE FROM leases WHERE name = ?1 AND lease_owner = ?2",
            params![name, owner],
        )
        .doing("giving a lease back")?;
        Ok(())
    }

    /// Every instance that ever ran on this database, with its heartbeat and the leases it holds.
    pub(crate) fn instances(&self, lease_secs: u64) -> Result<Vec<InstanceRow>, StoreError> {
        let mut conn = self.lock();
        if conn.engine() == Engine::Sqlite {
            return Ok(Vec::new());
        }
        conn.query(
            "SELECT i.name, i.started_at, i.heartbeat_at,
                    i.heartbeat_at > modelmirror_time(now() - make_interval(secs => ?1)),
                    (SELECT COUNT(*) FROM leases l WHERE l.lease_owner = i.name
                         AND l.lease_expires_at > modelmirror_time(now()) AND l.name NOT LIKE 'discovery/%')
             FROM instances i ORDER BY i.name",
            params![lease_secs],
            |r| {
                Ok(InstanceRow {
                    name: r.get(0)?,
                    started_at: r.get(1)?,
                    heartbeat_at: r.get(2)?,
                    live: r.get(3)?,
                    leases: r.get(4)?,
                })
            },
        )
        .doing("reading the instances")
    }
}
