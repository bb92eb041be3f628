//! Several instances on one PostgreSQL database: heartbeats, and leases on repositories and on each
//! provider's discovery. A lease is a row (`name`, `lease_owner`, `lease_token`, `lease_expires_at`) taken
//! with one conditional upsert: it is free, expired, or already this process's (its token: two processes
//! never share one, even under one `instance_name`). Renewing and giving back touch only the row this
//! process holds. Times are the database server's, so hosts whose clocks differ agree. These statements use
//! a connection of their own, never waiting behind the writer's long commits (a heartbeat queued there
//! would make a busy instance look dead). A SQLite catalog has one instance: every lease is granted at once
//! and nothing is written or locked.

use serde::Serialize;

use super::db::params;
use super::{Database, Doing, Store, StoreError, pg};

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

/// Who holds a lease: the instance's name and this process's token.
pub(crate) struct Holder<'a> {
    pub(crate) name: &'a str,
    pub(crate) token: &'a str,
}

/// The advisory lock class of repository leases (two-key form, apart from the migrations' one-key lock): a
/// step holds its repository's key shared for its transaction, and a claim takes it for a moment, so no
/// lease changes hands while a step of its holder commits.
pub(super) const LEASE_LOCK_CLASS: i32 = 0x6d6d_6c65;

impl Store {
    /// From now on (PostgreSQL), each step is written only while this process holds its repository's lease
    /// under `token` (see [`Store::lease_token`]). Set once: the token in force is returned.
    pub(crate) fn steps_under_lease(&self, token: &str) -> String {
        self.lease_token.get_or_init(|| token.to_string()).clone()
    }

    /// The token steps are written under, if any.
    pub(super) fn lease_token(&self) -> Option<&str> {
        self.lease_token.get().map(String::as_str)
    }

    /// Run `f` on the leases' own connection (made again when lost). `None` for SQLite.
    fn on_lease_conn<T>(
        &self,
        f: impl FnOnce(&mut super::Conn) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let Database::Postgres(target) = &self.database else {
            return None;
        };
        let mut slot = self.lease_conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(super::Conn::is_closed) {
            match pg::reconnect(target, false) {
                Ok(c) => *slot = Some(c),
                Err(e) => return Some(Err(e)),
            }
        }
        let conn = slot.as_mut()?;
        Some(f(conn))
    }

    /// Note this process's heartbeat, and return the live instances' names (heartbeat within
    /// `lease_secs`), sorted. Refused when another live process beats under the same name. SQLite: this
    /// instance alone.
    pub(crate) fn heartbeat(
        &self,
        me: &Holder<'_>,
        started_at: &str,
        lease_secs: u64,
    ) -> Result<Vec<String>, StoreError> {
        let result = self.on_lease_conn(|conn| {
            // Retired (stopping): no heartbeat again. (Checked under the connection's lock, which `retire`
            // holds while it deletes the row.)
            if self.retired.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(vec![me.name.to_string()]);
            }
            let taken = conn
                .query_opt(
                    "INSERT INTO instances (name, token, started_at, heartbeat_at)
                     VALUES (?1, ?2, ?3, modelmirror_time(now()))
                     ON CONFLICT (name) DO UPDATE SET token = excluded.token, started_at = excluded.started_at,
                         heartbeat_at = excluded.heartbeat_at
                     WHERE instances.token = excluded.token
                        OR instances.heartbeat_at < modelmirror_time(now() - make_interval(secs => ?4))
                     RETURNING name",
                    params![me.name, me.token, started_at, lease_secs],
                    |r| r.get::<String>(0),
                )
                .doing("recording the heartbeat")?;
            if taken.is_none() {
                let heartbeat_at = conn
                    .query_opt(
                        "SELECT heartbeat_at FROM instances WHERE name = ?1",
                        params![me.name],
                        |r| r.get::<String>(0),
                    )
                    .doing("reading the heartbeat under this instance_name")?
                    .unwrap_or_default();
                return Err(StoreError::InstanceTaken {
                    name: me.name.to_string(),
                    heartbeat_at,
                });
            }
            conn.query(
                "SELECT name FROM instances
                 WHERE heartbeat_at > modelmirror_time(now() - make_interval(secs => ?1)) ORDER BY name",
                params![lease_secs],
                |r| r.get(0),
            )
            .doing("reading the live instances")
        });
        result.unwrap_or_else(|| Ok(vec![me.name.to_string()]))
    }

    /// Take `me`'s instance_name over from the process that beat under it last at `heartbeat_at` (and has not
    /// since: it stopped without retiring, killed); false when that process beat again meanwhile.
    pub(crate) fn take_instance(
        &self,
        me: &Holder<'_>,
        started_at: &str,
        heartbeat_at: &str,
    ) -> Result<bool, StoreError> {
        let result = self.on_lease_conn(|conn| {
            // Stopping already: take nothing (checked under the connection's lock, as `heartbeat` does).
            if self.retired.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(false);
            }
            conn.execute(
                "UPDATE instances SET token = ?2, started_at = ?3, heartbeat_at = modelmirror_time(now())
                 WHERE name = ?1 AND heartbeat_at = ?4",
                params![me.name, me.token, started_at, heartbeat_at],
            )
            .doing("taking the instance_name over")
            .map(|n| n == 1)
        });
        result.unwrap_or(Ok(true))
    }

    /// This process stops: its heartbeat goes (the others take its repositories over at their next
    /// heartbeat, and a process started under its name is not refused).
    pub(crate) fn retire(&self, me: &Holder<'_>) -> Result<(), StoreError> {
        // Set first: a heartbeat under way checks it under the connection's lock, which the delete below
        // waits for.
        self.retired
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let result = self.on_lease_conn(|conn| {
            conn.execute(
                "DELETE FROM instances WHERE name = ?1 AND token = ?2",
                params![me.name, me.token],
            )
            .doing("retiring this instance")
            .map(drop)
        });
        result.unwrap_or(Ok(()))
    }

    /// Take the lease `name` for `lease_secs`; false when another process holds it, or when its expired
    /// holder is still committing a step under it (taken at a later try). SQLite: granted.
    pub(crate) fn claim(
        &self,
        name: &str,
        me: &Holder<'_>,
        lease_secs: u64,
    ) -> Result<bool, StoreError> {
        let result = self.on_lease_conn(|conn| {
            conn.query_opt(
                "INSERT INTO leases (name, lease_owner, lease_token, lease_expires_at)
                 VALUES (?1, ?2, ?3, modelmirror_time(now() + make_interval(secs => ?4)))
                 ON CONFLICT (name) DO UPDATE SET lease_owner = excluded.lease_owner,
                     lease_token = excluded.lease_token, lease_expires_at = excluded.lease_expires_at
                 WHERE (leases.lease_token = excluded.lease_token
                        OR leases.lease_expires_at < modelmirror_time(now()))
                   AND pg_try_advisory_xact_lock(CAST(?5 AS BIGINT)::integer, hashtext(?1))
                 RETURNING lease_owner",
                params![name, me.name, me.token, lease_secs, LEASE_LOCK_CLASS],
                |r| r.get::<String>(0),
            )
            .doing("taking a lease")
            .map(|got| got.is_some())
        });
        result.unwrap_or(Ok(true))
    }

    /// Extend the lease `name` this process holds; false when it no longer holds it (expired and taken, or
    /// given back). SQLite: true.
    pub(crate) fn renew(
        &self,
        name: &str,
        me: &Holder<'_>,
        lease_secs: u64,
    ) -> Result<bool, StoreError> {
        let result = self.on_lease_conn(|conn| {
            conn.execute(
                "UPDATE leases SET lease_expires_at = modelmirror_time(now() + make_interval(secs => ?3))
                 WHERE name = ?1 AND lease_token = ?2",
                params![name, me.token, lease_secs],
            )
            .doing("renewing a lease")
            .map(|n| n == 1)
        });
        result.unwrap_or(Ok(true))
    }

    /// Give the lease `name` back, if this process holds it.
    pub(crate) fn release(&self, name: &str, me: &Holder<'_>) -> Result<(), StoreError> {
        let result = self.on_lease_conn(|conn| {
            conn.execute(
                "DELETE FROM leases WHERE name = ?1 AND lease_token = ?2",
                params![name, me.token],
            )
            .doing("giving a lease back")
            .map(drop)
        });
        result.unwrap_or(Ok(()))
    }

    /// Every instance that ran on this database, with its heartbeat and the repository leases it holds.
    pub(crate) fn instances(&self, lease_secs: u64) -> Result<Vec<InstanceRow>, StoreError> {
        let result = self.on_lease_conn(|conn| {
            conn.query(
                "SELECT i.name, i.started_at, i.heartbeat_at,
                        i.heartbeat_at > modelmirror_time(now() - make_interval(secs => ?1)),
                        (SELECT COUNT(*) FROM leases l WHERE l.lease_token = i.token
                             AND l.lease_expires_at > modelmirror_time(now()) AND l.name NOT LIKE 'discovery:%')
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
        });
        result.unwrap_or(Ok(Vec::new()))
    }

    /// Ask the instance `to` to poll `repo_id` now (PostgreSQL `NOTIFY`: every instance hears it, `to`
    /// acts). False with SQLite: there is no other instance.
    pub(crate) fn notify_nudge(&self, to: &str, repo_id: &str) -> Result<bool, StoreError> {
        // Instance names hold no spaces.
        let payload = format!("{to} {repo_id}");
        let result = self.on_lease_conn(|conn| {
            conn.query_one(
                "SELECT pg_notify('modelmirror_nudge', ?1)::text",
                params![payload],
                |r| r.get::<String>(0),
            )
            .doing("passing a webhook nudge on")
            .map(|_| true)
        });
        result.unwrap_or(Ok(false))
    }

    /// Hear the nudges other instances pass on (`notify_nudge`), calling `heard` with the instance each is
    /// for (`None` from a modelmirror that did not name it) and the repository id, until `stop` is set:
    /// blocking, on a connection of its own, made again when lost (then `again` is called: nudges sent
    /// meanwhile were heard by nobody). Returns at once with SQLite.
    pub(crate) fn listen_nudges(
        &self,
        stop: &std::sync::atomic::AtomicBool,
        again: impl FnMut(),
        mut heard: impl FnMut(Option<&str>, &str),
    ) {
        if let Database::Postgres(target) = &self.database {
            pg::listen(
                target,
                "modelmirror_nudge",
                stop,
                again,
                |payload| match payload.split_once(' ') {
                    Some((to, repo_id)) => heard(Some(to), repo_id),
                    None => heard(None, payload),
                },
            );
        }
    }
}
