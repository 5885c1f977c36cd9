//! Finding tasks (`GET /v1/tasks`: filters, newest first, keyset pages)
//! and the counts of `GET /v1/stats`.

use crate::error::{task_id, ApiError, ErrorBody};
use crate::ApiState;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use stepgraph_engine::store::{Stats, TaskFilter, TaskSummary, DEFAULT_PAGE, MAX_PAGE};
use stepgraph_engine::TaskState;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

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
pub fn filter(query: Option<&str>) -> Result<TaskFilter, ApiError> {
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

/// The query `filter` reads, as the OpenAPI document shows it (`filter`
/// parses by hand: `state` may repeat, and each error names its parameter).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ListQuery {
    /// Any of these states; repeat the parameter or separate them with commas.
    #[param(style = Form, explode)]
    state: Option<Vec<TaskState>>,
    namespace: Option<String>,
    name: Option<String>,
    version: Option<String>,
    /// Created at or after (RFC 3339).
    created_after: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    created_before: Option<DateTime<Utc>>,
    idempotency_key: Option<String>,
    /// With (true) or without (false) a step in error.
    has_failed_step: Option<bool>,
    /// The `next_cursor` of the page before.
    cursor: Option<Uuid>,
    /// Tasks per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
}

/// A page of tasks, newest first.
#[derive(Serialize, ToSchema, PartialEq)]
pub struct TaskPage {
    tasks: Vec<TaskSummary>,
    /// Asks for the page after this one; null when this page was not full.
    next_cursor: Option<Uuid>,
}

/// Finds tasks: every filter given must match; newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of tasks, without their context and result", body = TaskPage),
        (status = 400, description = "An unknown or malformed query parameter (named)", body = ErrorBody),
    ),
)]
pub(crate) async fn list_tasks(
    State(s): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Json<TaskPage>, ApiError> {
    Ok(Json(page(&s, &filter(query.as_deref())?).await?))
}

/// The page of tasks `f` asks for.
pub async fn page(s: &ApiState, f: &TaskFilter) -> Result<TaskPage, ApiError> {
    let tasks = s.store.list_tasks(f).await?;
    let next_cursor = (tasks.len() == f.limit)
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    Ok(TaskPage { tasks, next_cursor })
}

/// Tasks and steps by template and state; failures and retries in the last hour.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "system",
    responses((status = 200, description = "Counts by template and state, and the last hour's failures", body = Stats)),
)]
pub(crate) async fn stats(State(s): State<ApiState>) -> Result<Json<Stats>, ApiError> {
    let since = Utc::now() - chrono::Duration::hours(1);
    Ok(Json(s.store.stats(since).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented parameters are the ones `filter` reads.
    #[test]
    fn documented_parameters_are_the_accepted_ones() {
        let documented = ListQuery::into_params(|| None);
        assert_eq!(documented.len(), 10);
        for p in documented {
            let e = filter(Some(&format!("{}=", p.name)));
            if let Err(ApiError(_, message)) = e {
                assert!(
                    !message.starts_with("unknown query parameter"),
                    "{} is documented but refused",
                    p.name
                );
            }
        }
        let e = filter(Some("run_at=now")).unwrap_err();
        assert!(e.1.contains("\"run_at\""), "{}", e.1);
    }
}
