//! Finding tasks (`GET /v1/tasks`: filters, newest first, keyset pages)
//! and the counts of `GET /v1/stats`.

use crate::error::{task_id, ApiError};
use crate::ApiState;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use stepgraph_engine::store::{Stats, TaskFilter, DEFAULT_PAGE, MAX_PAGE};
use stepgraph_engine::TaskState;

fn bad(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

fn time(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad(format!("{field} must be an RFC 3339 time ({value:?}: {e})")))
}

/// The filter a query string asks for; every parameter it does not know,
/// or cannot read, is a 400 naming it. `state` may repeat or list states
/// separated by commas.
pub(crate) fn filter(query: Option<&str>) -> Result<TaskFilter, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| bad(format!("malformed query string: {e}")))?;
    let mut f = TaskFilter {
        limit: DEFAULT_PAGE,
        ..TaskFilter::default()
    };
    for (key, value) in pairs {
        let text = || Some(value.clone());
        match key.as_str() {
            "state" => {
                for s in value.split(',').filter(|s| !s.is_empty()) {
                    let state: TaskState = s.parse().map_err(bad)?;
                    if !f.states.contains(&state) {
                        f.states.push(state);
                    }
                }
            }
            "namespace" => f.namespace = text(),
            "name" => f.name = text(),
            "version" => f.version = text(),
            "idempotency_key" => f.idempotency_key = text(),
            "created_after" => f.created_after = Some(time(&key, &value)?),
            "created_before" => f.created_before = Some(time(&key, &value)?),
            "has_failed_step" => {
                f.has_failed_step = Some(value.parse().map_err(|_| {
                    bad(format!("has_failed_step must be true or false, not {value:?}"))
                })?)
            }
            "cursor" => {
                f.older_than = Some(
                    task_id(&value).map_err(|_| bad(format!("not a cursor: {value:?}")))?,
                )
            }
            "limit" => {
                f.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        bad(format!("limit must be a whole number from 1 to {MAX_PAGE}, not {value:?}"))
                    })?
            }
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?} (state, namespace, name, version, created_after, \
                     created_before, idempotency_key, has_failed_step, cursor, limit)"
                )))
            }
        }
    }
    Ok(f)
}

/// `{"tasks": [...], "next_cursor": ...}`: the cursor (the page's last id)
/// asks for the page after it; null when this page was not full.
pub(crate) async fn list_tasks(
    State(s): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let f = filter(query.as_deref())?;
    let tasks = s.store.list_tasks(&f).await?;
    let next = (tasks.len() == f.limit)
        .then(|| tasks.last().map(|t| t.id.to_string()))
        .flatten();
    Ok(Json(json!({ "tasks": tasks, "next_cursor": next })))
}

/// Tasks and steps by template and state; failures and retries in the last hour.
pub(crate) async fn stats(State(s): State<ApiState>) -> Result<Json<Stats>, ApiError> {
    let since = Utc::now() - chrono::Duration::hours(1);
    Ok(Json(s.store.stats(since).await?))
}
