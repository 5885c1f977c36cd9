//! Delayed tasks' due times and cron schedules (migration 0013). A
//! schedule is stored as its JSON record; `next_run_at` beside it is what
//! the compare-and-swap of [`PgStore::put_schedule`] checks.

use crate::errors::{backend_error, retrying};
use crate::store::PgStore;
use chrono::{DateTime, Utc};
use stepgraph_engine::schedule::Schedule;
use stepgraph_engine::{StoreError, TaskId};

fn body(s: &Schedule) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(s).map_err(|e| StoreError::Backend(format!("schedule {}: {e}", s.name)))
}

impl PgStore {
    pub(crate) async fn due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<TaskId>, StoreError> {
        retrying!(self, pool => sqlx::query_scalar(
            "SELECT id FROM sg_tasks WHERE state = 'scheduled' AND run_at <= $1 ORDER BY run_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(pool))
        .map_err(backend_error)
    }

    pub(crate) async fn earliest_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        retrying!(self, pool => sqlx::query_scalar(
            "SELECT min(run_at) FROM sg_tasks WHERE state = 'scheduled'",
        )
        .fetch_one(pool))
        .map_err(backend_error)
    }

    pub(crate) async fn read_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows: Vec<(String, serde_json::Value)> = retrying!(self, pool => sqlx::query_as(
            "SELECT name, body FROM sg_schedules ORDER BY name",
        )
        .fetch_all(pool))
        .map_err(backend_error)?;
        rows.into_iter()
            .map(|(name, body)| {
                serde_json::from_value(body)
                    .map_err(|e| StoreError::Unreadable(format!("schedule {name:?}: {e}")))
            })
            .collect()
    }

    pub(crate) async fn add_schedule(&self, s: &Schedule) -> Result<bool, StoreError> {
        let body = body(s)?;
        let done = retrying!(self, pool => sqlx::query(
            "INSERT INTO sg_schedules (name, body, next_run_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&s.name)
        .bind(&body)
        .bind(s.next_run_at)
        .execute(pool))
        .map_err(backend_error)?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn put_schedule(
        &self,
        s: &Schedule,
        expected: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let body = body(s)?;
        let done = retrying!(self, pool => sqlx::query(
            "UPDATE sg_schedules SET body = $2, next_run_at = $3
              WHERE name = $1 AND next_run_at IS NOT DISTINCT FROM $4",
        )
        .bind(&s.name)
        .bind(&body)
        .bind(s.next_run_at)
        .bind(expected)
        .execute(pool))
        .map_err(backend_error)?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let done = retrying!(self, pool => sqlx::query("DELETE FROM sg_schedules WHERE name = $1")
            .bind(name)
            .execute(pool))
        .map_err(backend_error)?;
        Ok(done.rows_affected() == 1)
    }
}
