//! The worker registry in `sg_workers` (migration 0012). Heartbeats and
//! liveness are judged by the database's clock, so that workers on hosts
//! whose clocks differ are judged alike.

use crate::errors::{backend_error, retrying};
use crate::store::PgStore;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use stepgraph_engine::store::{Circuit, WorkerInfo, WorkerRecord};
use stepgraph_engine::StoreError;
use uuid::Uuid;

type Row = (
    Uuid,
    String,
    i32,
    String,
    Vec<String>,
    Vec<String>,
    i32,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    Json<Vec<Circuit>>,
);

impl PgStore {
    pub(crate) async fn put_worker(&self, w: &WorkerInfo) -> Result<(), StoreError> {
        retrying!(self, pool => sqlx::query(
            "WITH old AS (DELETE FROM sg_workers WHERE heartbeat_at < now() - interval '7 days')
             INSERT INTO sg_workers (id, host, pid, language, namespaces, handlers, concurrency, heartbeat_ms,
                                     started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
        )
        .bind(w.id)
        .bind(&w.host)
        .bind(w.pid as i32)
        .bind(&w.language)
        .bind(&w.namespaces)
        .bind(&w.handlers)
        .bind(w.concurrency as i32)
        .bind(w.heartbeat_ms as i64)
        .bind(w.started_at)
        .execute(pool))
        .map_err(backend_error)?;
        Ok(())
    }

    pub(crate) async fn beat(
        &self,
        id: Uuid,
        stopped: bool,
        circuits: &[Circuit],
    ) -> Result<(), StoreError> {
        retrying!(self, pool => sqlx::query(
            "UPDATE sg_workers SET heartbeat_at = now(), stopped_at = CASE WHEN $2 THEN now() END, circuits = $3
              WHERE id = $1",
        )
        .bind(id)
        .bind(stopped)
        .bind(Json(circuits))
        .execute(pool))
        .map_err(backend_error)?;
        Ok(())
    }

    pub(crate) async fn read_workers(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<WorkerRecord>, StoreError> {
        let rows: Vec<Row> = retrying!(self, pool => sqlx::query_as(
            "SELECT id, host, pid, language, namespaces, handlers, concurrency, heartbeat_ms, started_at,
                    heartbeat_at, stopped_at, now(), circuits
               FROM sg_workers WHERE heartbeat_at >= $1 ORDER BY started_at DESC",
        )
        .bind(since)
        .fetch_all(pool))
        .map_err(backend_error)?;
        let mut all: Vec<WorkerRecord> = rows
            .into_iter()
            .map(|r| {
                let info = WorkerInfo {
                    id: r.0,
                    host: r.1,
                    pid: r.2 as u32,
                    language: r.3,
                    namespaces: r.4,
                    handlers: r.5,
                    concurrency: r.6 as usize,
                    heartbeat_ms: r.7 as u64,
                    started_at: r.8,
                };
                WorkerRecord::new(info, r.9, r.10, r.11, r.12 .0)
            })
            .collect();
        // Live ones first, each group newest first (the sort is stable).
        all.sort_by_key(|w| w.state != stepgraph_engine::store::WorkerState::Live);
        Ok(all)
    }
}
