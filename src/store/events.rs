//! What happened: polls, webhook deliveries, and the service's own state (start, reloads), kept for
//! `events_retention_days`.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::db::params;
use super::{Counts, Doing, Store, StoreError, now_rfc3339};

/// A finished poll, for the `polls` table.
pub(crate) struct PollRecord<'a> {
    pub(crate) repo_id: &'a str,
    /// The instance that polled (`instance_name`).
    pub(crate) instance: &'a str,
    pub(crate) trigger: &'a str,
    pub(crate) started_at: &'a str,
    pub(crate) duration: Duration,
    pub(crate) result: &'a str,
    pub(crate) commits: u32,
    pub(crate) counts: Counts,
    pub(crate) error: Option<&'a str>,
}

/// One webhook delivery to record.
pub(crate) struct DeliveryRecord<'a> {
    pub(crate) received_at: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) event: &'a str,
    pub(crate) delivery_id: Option<&'a str>,
    pub(crate) repo_id: Option<&'a str>,
    pub(crate) ref_name: Option<&'a str>,
    /// polled | ignored | rejected
    pub(crate) outcome: &'a str,
    pub(crate) reason: Option<&'a str>,
}

/// A commit status, posted or given up on, for the `statuses` table.
pub(crate) struct StatusRecord<'a> {
    pub(crate) repo_id: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) commit: &'a str,
    /// success | failure
    pub(crate) state: &'a str,
    pub(crate) description: &'a str,
    pub(crate) target_url: Option<&'a str>,
    /// posted | unchanged | failed
    pub(crate) outcome: &'a str,
    pub(crate) attempts: u32,
    pub(crate) error: Option<&'a str>,
}

/// One line of `modelmirror events`: a delivery, a poll or a commit status.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EventRow {
    /// delivery | poll | status
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) time: String,
    pub(crate) repo: Option<String>,
    pub(crate) provider: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) delivery_id: Option<String>,
    #[serde(rename = "ref")]
    pub(crate) ref_name: Option<String>,
    /// polled | ignored | rejected (deliveries); posted | unchanged | failed (statuses)
    pub(crate) outcome: Option<String>,
    pub(crate) reason: Option<String>,
    /// The poll a delivery caused.
    pub(crate) poll_id: Option<i64>,
    /// schedule | webhook | manual | startup | takeover (polls)
    pub(crate) trigger: Option<String>,
    pub(crate) duration_ms: Option<i64>,
    /// unchanged | updated | empty | error (polls)
    pub(crate) result: Option<String>,
    pub(crate) commits: Option<i64>,
    pub(crate) models_added: Option<i64>,
    pub(crate) models_modified: Option<i64>,
    pub(crate) models_deleted: Option<i64>,
    pub(crate) error: Option<String>,
    /// The commit a status was posted on (statuses).
    pub(crate) commit: Option<String>,
    /// success | failure (statuses)
    pub(crate) state: Option<String>,
    /// What a status said (statuses).
    pub(crate) description: Option<String>,
    /// How many times a status was sent (statuses).
    pub(crate) attempts: Option<i64>,
    /// The row id (a poll's id is what deliveries' `poll_id` points at).
    pub(crate) id: i64,
}

impl Store {
    /// Record a finished poll; returns its id. Old polls and deliveries are pruned here too.
    pub(crate) fn record_poll(&self, p: &PollRecord<'_>) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        let id = conn
            .insert(
                "INSERT INTO polls (repo_id, trigger, started_at, duration_ms, result, commits,
                     models_added, models_modified, models_deleted, error, instance)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    p.error,
                    p.instance
                ],
            )
            .doing("recording the poll")?;
        let cutoff = self.retention_cutoff();
        conn.execute("DELETE FROM polls WHERE started_at < ?1", params![cutoff])
            .doing("pruning old polls")?;
        conn.execute(
            "DELETE FROM deliveries WHERE received_at < ?1",
            params![cutoff],
        )
        .doing("pruning old deliveries")?;
        Ok(id)
    }

    /// Record a commit status and what came of it (pruning old ones).
    pub(crate) fn record_status(&self, st: &StatusRecord<'_>) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        conn.execute(
            "DELETE FROM statuses WHERE posted_at < ?1",
            params![self.retention_cutoff()],
        )
        .doing("pruning old commit statuses")?;
        conn.insert(
            "INSERT INTO statuses (repo_id, provider, commit_id, posted_at, state, description, target_url,
                 outcome, attempts, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                st.repo_id,
                st.provider,
                st.commit,
                now_rfc3339(),
                st.state,
                st.description,
                st.target_url,
                st.outcome,
                st.attempts,
                st.error
            ],
        )
        .doing("recording the commit status")
    }

    /// Record a webhook delivery and what came of it (pruning old ones now and then).
    pub(crate) fn record_delivery(&self, d: &DeliveryRecord<'_>) -> Result<i64, StoreError> {
        let mut conn = self.lock();
        let id: i64 = conn
            .query_one(
                "SELECT COALESCE(MAX(id), 0) FROM deliveries",
                params![],
                |r| r.get(0),
            )
            .doing("recording the delivery")?;
        if id % 100 == 0 {
            conn.execute(
                "DELETE FROM deliveries WHERE received_at < ?1",
                params![self.retention_cutoff()],
            )
            .doing("pruning old deliveries")?;
        }
        conn.insert(
            "INSERT INTO deliveries (received_at, provider, event, delivery_id, repo_id, ref, outcome, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![d.received_at, d.provider, d.event, d.delivery_id, d.repo_id, d.ref_name, d.outcome, d.reason],
        )
        .doing("recording the delivery")
    }

    /// Link the deliveries that asked for a poll of `repo_id`, received before the poll started and not yet
    /// linked, to the poll that ran (whatever triggered it: it served them).
    pub(crate) fn link_deliveries(
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

    /// Whether a delivery with this id was already polled (by this instance or another on the database).
    pub(crate) fn delivery_seen(
        &self,
        provider: &str,
        delivery_id: &str,
    ) -> Result<bool, StoreError> {
        self.read_aside(|conn| {
            conn.query_opt(
                "SELECT 1 FROM deliveries WHERE provider = ?1 AND delivery_id = ?2 AND outcome = 'polled'",
                params![provider, delivery_id],
                |_| Ok(()),
            )
            .doing("looking for an earlier delivery")
            .map(|r| r.is_some())
        })
    }

    /// Delivery ids seen within the retention period, newest first (to refuse replays after a restart).
    pub(crate) fn recent_delivery_ids(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.lock()
            .query(
                "SELECT provider, delivery_id FROM deliveries WHERE delivery_id IS NOT NULL AND outcome = 'polled'
                 ORDER BY id DESC LIMIT ?1",
                params![limit],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .doing("reading recent deliveries")
    }

    /// Deliveries and polls, newest first.
    pub(crate) fn events(
        &self,
        repo: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        self.lock()
            .query(
                // The first SELECT names the types of the columns it has none for (PostgreSQL would take text).
                "SELECT 'delivery', received_at, repo_id, provider, event, delivery_id, ref, outcome, reason, poll_id,
                        NULL, CAST(NULL AS BIGINT), NULL, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT),
                        CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), NULL, id, NULL, NULL, NULL, CAST(NULL AS BIGINT)
                 FROM deliveries WHERE (CAST(?1 AS TEXT) IS NULL OR repo_id = ?1)
                 UNION ALL
                 SELECT 'poll', started_at, repo_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        trigger, duration_ms, result, commits, models_added, models_modified, models_deleted, error, id,
                        NULL, NULL, NULL, NULL
                 FROM polls WHERE (CAST(?1 AS TEXT) IS NULL OR repo_id = ?1)
                 UNION ALL
                 SELECT 'status', posted_at, repo_id, provider, NULL, NULL, NULL, outcome, NULL, NULL,
                        NULL, NULL, NULL, NULL, NULL, NULL, NULL, error, id, commit_id, state, description, attempts
                 FROM statuses WHERE (CAST(?1 AS TEXT) IS NULL OR repo_id = ?1)
                 ORDER BY 2 DESC, 19 DESC LIMIT ?2",
                params![repo, limit],
                |r| {
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
                        commit: r.get(19)?,
                        state: r.get(20)?,
                        description: r.get(21)?,
                        attempts: r.get(22)?,
                    })
                },
            )
            .doing("reading events")
    }

    /// Record the outcome of a configuration reload (`None`: applied; `Some(reason)`: rejected).
    pub(crate) fn record_reload(&self, rejected: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.lock();
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
    pub(crate) fn record_start(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        conn.execute(
            "DELETE FROM service WHERE key IN ('last_reload_at', 'last_reload_error')",
            params![],
        )
        .doing("recording the start")?;
        conn.execute(
            "INSERT INTO service (key, value) VALUES ('started_at', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![now_rfc3339()],
        )
        .doing("recording the start")?;
        Ok(())
    }

    /// The service's recorded state (`started_at`, `last_reload_at`, `last_reload_error`).
    pub(crate) fn service_state(&self) -> Result<HashMap<String, Option<String>>, StoreError> {
        let rows: Vec<(String, Option<String>)> = self
            .lock()
            .query("SELECT key, value FROM service", params![], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .doing("reading the service state")?;
        Ok(rows.into_iter().collect())
    }
}
