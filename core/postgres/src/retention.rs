//! Retention on PostgreSQL: one statement removes a batch of expired tasks
//! (archiving them first when asked). It runs under a transaction-level
//! advisory lock taken with `try`, so of several `serve` processes one does
//! the work and the others return at once; the rows it removes are taken
//! with SKIP LOCKED, so it never waits for (or holds up) a live commit.
//!
//! Steps and edges go with the task row (ON DELETE CASCADE). The audit
//! tables have no foreign keys (migration 0002) and are partitioned by
//! task id (0017): when their partitions are dropped by age
//! ([`crate::partitions`]), a removed task's audit rows go with its
//! partition, and only those in the default partition (tasks that outlived
//! theirs, or whose ids no partition covers) are deleted here; when nothing
//! is dropped (tasks that end well are kept for ever), all are deleted here.

use crate::errors::{backend_error, retrying};
use crate::store::PgStore;
use chrono::{DateTime, Utc};
use stepgraph_engine::retention::{Expiry, Keep};
use stepgraph_engine::{StoreError, TaskId};

/// Any stable number: one retention pass at a time across processes.
pub const RETENTION_LOCK: i64 = 0x5354_4550_5245_544e;

/// Forever, in the statement's seconds.
const FOREVER: f64 = -1.0;

/// The statement, deleting audit rows from the tables named `{audit}`.
const EXPIRE: &str = "
WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock($1) AS got),
rules AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[])
        AS r(namespace, name, version, ended, failed)
),
doomed AS MATERIALIZED (
    SELECT t.id FROM sg_tasks t
    LEFT JOIN rules r ON r.namespace = t.namespace AND r.name = t.name AND r.version = t.version
    CROSS JOIN LATERAL (
        SELECT CASE WHEN t.state = 'error' THEN coalesce(r.failed, $7)
                    ELSE coalesce(r.ended, $8) END AS keep
    ) k
    WHERE (SELECT got FROM lock)
      AND t.completed_at IS NOT NULL
      -- No task ended later than this can have expired: bounds the index scan.
      AND t.completed_at < now() - make_interval(secs => $9)
      AND t.state IN ('complete', 'error', 'cancelled', 'resolved_manually')
      AND k.keep >= 0
      AND t.completed_at < now() - make_interval(secs => k.keep)
    ORDER BY t.completed_at
    LIMIT $10
    FOR UPDATE OF t SKIP LOCKED
),
archived AS (
    INSERT INTO sg_archived_tasks (id, namespace, name, version, state, created_at, completed_at, record)
    SELECT t.id, t.namespace, t.name, t.version, t.state, t.created_at, t.completed_at,
           jsonb_build_object(
               'task', to_jsonb(t),
               'steps', (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.created_at, s.name), '[]')
                           FROM sg_steps s WHERE s.task_id = t.id),
               'edges', (SELECT coalesce(jsonb_agg(jsonb_build_object('from', e.from_step, 'to', e.to_step)), '[]')
                           FROM sg_edges e WHERE e.task_id = t.id),
               'task_transitions', (SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.sort_key), '[]')
                           FROM sg_task_transitions x WHERE x.task_id = t.id),
               'step_transitions', (SELECT coalesce(jsonb_agg(to_jsonb(x) ORDER BY x.step_name, x.sort_key), '[]')
                           FROM sg_step_transitions x WHERE x.task_id = t.id))
    FROM sg_tasks t
    WHERE $11 AND t.id IN (SELECT id FROM doomed)
),
step_audit AS (DELETE FROM sg_step_transitions{audit} WHERE task_id IN (SELECT id FROM doomed)),
task_audit AS (DELETE FROM sg_task_transitions{audit} WHERE task_id IN (SELECT id FROM doomed)),
removed AS (DELETE FROM sg_tasks WHERE id IN (SELECT id FROM doomed) RETURNING 1)
SELECT count(*) FROM removed";

fn seconds(keep: Keep) -> f64 {
    keep.seconds().unwrap_or(FOREVER)
}

impl PgStore {
    pub(crate) async fn remove_expired(
        &self,
        expiry: &Expiry,
        limit: i64,
    ) -> Result<u64, StoreError> {
        let Some(shortest) = expiry.shortest() else {
            return Ok(0);
        };
        let t = &expiry.templates;
        let namespaces: Vec<&str> = t.iter().map(|r| r.namespace.as_str()).collect();
        let names: Vec<&str> = t.iter().map(|r| r.name.as_str()).collect();
        let versions: Vec<&str> = t.iter().map(|r| r.version.as_str()).collect();
        let ended: Vec<f64> = t.iter().map(|r| seconds(r.keep.ended)).collect();
        let failed: Vec<f64> = t.iter().map(|r| seconds(r.keep.failed)).collect();
        // Partitions are dropped by the same retention (`Orchestrator::rotate`).
        let audit = match expiry.default.ended {
            Keep::For(_) => "_default",
            Keep::Forever => "",
        };
        let sql = EXPIRE.replace("{audit}", audit);
        let removed: i64 = retrying!(self, pool => sqlx::query_scalar(&sql)
            .bind(RETENTION_LOCK)
            .bind(&namespaces)
            .bind(&names)
            .bind(&versions)
            .bind(&ended)
            .bind(&failed)
            .bind(seconds(expiry.default.failed))
            .bind(seconds(expiry.default.ended))
            .bind(shortest.as_secs_f64())
            .bind(limit)
            .bind(expiry.archive)
            .fetch_one(pool))
        .map_err(backend_error)?;
        Ok(removed as u64)
    }

    /// VACUUM of the tables whose rows the engine deletes: their space is
    /// reused from now on, autovacuum or not. It blocks no reader or writer
    /// (SHARE UPDATE EXCLUSIVE), and SKIP_LOCKED passes over a table that
    /// another VACUUM holds.
    pub(crate) async fn vacuum(&self) -> Result<(), StoreError> {
        retrying!(self, pool => sqlx::raw_sql(
            "VACUUM (SKIP_LOCKED) sg_tasks, sg_steps, sg_edges, sg_task_transitions, sg_step_transitions, sg_queue"
        )
        .execute(pool))
        .map_err(backend_error)?;
        Ok(())
    }

    pub(crate) async fn archived_at(
        &self,
        task_id: TaskId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        retrying!(self, pool => sqlx::query_scalar(
            "SELECT archived_at FROM sg_archived_tasks WHERE id = $1"
        )
        .bind(task_id)
        .fetch_optional(pool))
        .map_err(backend_error)
    }
}
