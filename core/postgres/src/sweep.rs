//! What the orchestrators' sweep looks for in PostgreSQL: steps whose
//! eager-dispatch leases ran out (leased again, so one sweep at a time sends
//! them), and, with a queue outside the database, steps and retry timers
//! whose messages a crash between commit and send may have lost.

use crate::errors::{backend_error, retrying};
use crate::PgStore;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::time::Duration;
use stepgraph_engine::trace::TaskTrace;
use stepgraph_engine::{StepId, StepMessage, StoreError, Stranded, StrandedStep, TaskId};

impl PgStore {
    pub(crate) async fn find_stranded(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Stranded, StoreError> {
        type Row = (
            StepId,
            TaskId,
            String,
            String,
            i32,
            String,
            String,
            String,
            String,
            Option<DateTime<Utc>>,
            Option<Json<TaskTrace>>,
        );
        let ms = older_than.as_millis() as f64;
        // Leases first: a step they return is leased again, so the second
        // query does not return it too.
        let mut rows: Vec<Row> = retrying!(self, pool => sqlx::query_as::<_, Row>(
            "WITH lapsed AS (
                 SELECT id FROM sg_steps
                  WHERE state IN ('enqueued', 'in_progress') AND claimed_until < now()
                  ORDER BY claimed_until
                  LIMIT $2
                    FOR UPDATE SKIP LOCKED)
             UPDATE sg_steps s SET claimed_until = now() + make_interval(secs => $1 / 1000.0)
               FROM lapsed, sg_tasks t
              WHERE s.id = lapsed.id AND t.id = s.task_id
             RETURNING s.id, s.task_id, s.name, s.handler, s.attempts, s.state, t.namespace, t.name, t.version,
                       s.claimed_until, t.trace",
        )
        .bind(ms)
        .bind(limit)
        .fetch_all(pool))
        .map_err(backend_error)?;
        if !self.queue_in_db {
            let lost: Vec<Row> = retrying!(self, pool => sqlx::query_as::<_, Row>(
                "SELECT s.id, s.task_id, s.name, s.handler, s.attempts, s.state, t.namespace, t.name, t.version,
                        NULL::timestamptz, t.trace
                   FROM sg_steps s
                   JOIN sg_step_transitions tr ON tr.task_id = s.task_id AND tr.step_id = s.id AND tr.sort_key = s.transitions
                   JOIN sg_tasks t ON t.id = s.task_id
                  WHERE s.state IN ('enqueued', 'enqueued_for_orchestration')
                    AND tr.created_at < now() - make_interval(secs => $1 / 1000.0)
                    AND (s.claimed_until IS NULL OR s.claimed_until < now())
                  ORDER BY tr.created_at
                  LIMIT $2",
            )
            .bind(ms)
            .bind(limit)
            .fetch_all(pool))
            .map_err(backend_error)?;
            rows.extend(lost);
        }
        let steps = rows
            .into_iter()
            .map(
                |(
                    step_id,
                    task_id,
                    step_name,
                    handler,
                    attempt,
                    state,
                    namespace,
                    task_name,
                    version,
                    lease,
                    trace,
                )| {
                    StrandedStep {
                        message: StepMessage {
                            task_id,
                            step_id,
                            attempt: attempt.max(0) as u32,
                            step_name,
                            handler,
                            ready_at_us: None,
                            traceparent: trace.and_then(|t| t.0.parent()).map(|p| p.to_string()),
                        },
                        for_orchestration: state == "enqueued_for_orchestration",
                        namespace,
                        task_name,
                        version,
                        lease,
                    }
                },
            )
            .collect();
        if self.queue_in_db {
            return Ok(Stranded {
                steps,
                tasks: Vec::new(),
            });
        }
        let tasks: Vec<TaskId> = retrying!(self, pool => sqlx::query_scalar::<_, TaskId>(
            "SELECT t.id FROM sg_tasks t
              WHERE t.state = 'waiting_for_retry'
                AND t.updated_at < now() - make_interval(secs => $1 / 1000.0)
                AND NOT EXISTS (SELECT 1 FROM sg_steps s WHERE s.task_id = t.id AND s.backoff_until > now())
              ORDER BY t.updated_at
              LIMIT $2",
        )
        .bind(ms)
        .bind(limit)
        .fetch_all(pool))
        .map_err(backend_error)?;
        Ok(Stranded { steps, tasks })
    }

    pub(crate) async fn release_leases(
        &self,
        leases: &[(StepId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let (steps, until): (Vec<StepId>, Vec<DateTime<Utc>>) = leases.iter().copied().unzip();
        retrying!(self, pool => sqlx::query(
            "UPDATE sg_steps s SET claimed_until = NULL
               FROM unnest($1::uuid[], $2::timestamptz[]) AS l (id, until)
              WHERE s.id = l.id AND s.claimed_until = l.until",
        )
        .bind(&steps)
        .bind(&until)
        .execute(pool))
        .map_err(backend_error)?;
        Ok(())
    }
}

impl PgStore {
    /// Steps Enqueued for longer than `older_than` (see `Store::enqueued_for`).
    pub(crate) async fn find_enqueued_for(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<StepMessage>, StoreError> {
        let ms = older_than.as_millis() as f64;
        let rows: Vec<(StepId, TaskId, String, String, i32)> =
            retrying!(self, pool => sqlx::query_as(
            "SELECT s.id, s.task_id, s.name, s.handler, s.attempts
               FROM sg_steps s
               JOIN sg_step_transitions tr ON tr.task_id = s.task_id AND tr.step_id = s.id AND tr.sort_key = s.transitions
              WHERE s.state = 'enqueued'
                AND tr.created_at < now() - make_interval(secs => $1 / 1000.0)
              ORDER BY tr.created_at
              LIMIT $2",
        )
        .bind(ms)
        .bind(limit)
        .fetch_all(pool))
            .map_err(backend_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(step_id, task_id, step_name, handler, attempt)| StepMessage {
                    task_id,
                    step_id,
                    attempt: attempt.max(0) as u32,
                    step_name,
                    handler,
                    ready_at_us: None,
                    traceparent: None,
                },
            )
            .collect())
    }
}
