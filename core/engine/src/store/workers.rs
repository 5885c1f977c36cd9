//! The worker registry: every worker process says who it is when it
//! starts and heartbeats while it runs, so an operator sees which are live,
//! which languages and handlers they serve, and which went away.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// What a worker says of itself when it starts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    pub id: Uuid,
    pub host: String,
    pub pid: u32,
    /// `rust`, `python`, `ruby` or `typescript`.
    pub language: String,
    pub namespaces: Vec<String>,
    pub handlers: Vec<String>,
    pub concurrency: usize,
    /// How often it heartbeats: three missed heartbeats make it gone.
    pub heartbeat_ms: u64,
    pub started_at: DateTime<Utc>,
}

/// A registered worker as last seen.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRecord {
    #[serde(flatten)]
    pub info: WorkerInfo,
    pub heartbeat_at: DateTime<Utc>,
    /// When it stopped cleanly (null: running, or died).
    pub stopped_at: Option<DateTime<Utc>>,
    pub state: WorkerState,
    /// Its circuit breakers that are not closed, as its last heartbeat told.
    pub open_circuits: Vec<Circuit>,
}

/// A worker's circuit breaker that is not closed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Circuit {
    pub handler: String,
    /// `open` (its steps are refused) or `half_open` (a probe may run).
    pub state: String,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Live,
    /// Stopped cleanly.
    Stopped,
    /// Missed three heartbeats: killed, hung, or cut off.
    Gone,
}

/// Heartbeats a worker may miss before it counts as gone.
pub const MISSED_HEARTBEATS: u32 = 3;

impl WorkerRecord {
    pub fn new(
        info: WorkerInfo,
        heartbeat_at: DateTime<Utc>,
        stopped_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        open_circuits: Vec<Circuit>,
    ) -> Self {
        let late =
            chrono::Duration::milliseconds((info.heartbeat_ms * MISSED_HEARTBEATS as u64) as i64);
        let state = if stopped_at.is_some() {
            WorkerState::Stopped
        } else if now - heartbeat_at > late {
            WorkerState::Gone
        } else {
            WorkerState::Live
        };
        WorkerRecord {
            info,
            heartbeat_at,
            stopped_at,
            state,
            open_circuits,
        }
    }
}

/// The handlers the live workers of `store`'s registry serve (what a step
/// waiting for its handler is checked against).
pub async fn live_handlers(
    store: &dyn super::Store,
) -> Result<std::collections::HashSet<String>, super::StoreError> {
    let since = Utc::now() - chrono::Duration::days(1);
    Ok(store
        .workers(since)
        .await?
        .into_iter()
        .filter(|w| w.state == WorkerState::Live)
        .flat_map(|w| w.info.handlers)
        .collect())
}
