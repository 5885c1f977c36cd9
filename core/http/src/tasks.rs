//! The task endpoints: create, read, wait for, cancel.

use crate::error::{json_body, optional_body, task_id, ApiError, ErrorBody};
use crate::{ApiState, Caller, BODY_LIMIT, MAX_WAIT};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::repair::Requested;
use stepgraph_engine::store::live_handlers;
use stepgraph_engine::{
    OrchestratorError, StepState, StoreError, TaskCreated, TaskGraph, TaskRequest, TaskState,
    TaskView, Transitions,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Counts a `wait` request for as long as it waits.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(n: &Arc<AtomicUsize>) -> Waiting {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Creates a task from a template, or returns the task an idempotency key
/// already names. With `run_at` or `delay_ms` it is stored `scheduled` and
/// starts then.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    request_body = TaskRequest,
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context of the caller's span: the task's trace continues it (the body's `traceparent` wins; an invalid header is ignored, as W3C Trace Context asks)"),
    ),
    responses(
        (status = 201, description = "Created", body = TaskCreated),
        (status = 200, description = "The idempotency key names this existing task", body = TaskCreated),
        (status = 400, description = "A malformed body, an unknown field, run_at in the past, or both run_at and delay_ms (named)", body = ErrorBody),
        (status = 409, description = "The idempotency key names a task of another template", body = ErrorBody),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "No such template, or the context breaks its input schema", body = ErrorBody),
    ),
)]
pub(crate) async fn create_task(
    State(s): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        ApiError(
            e.status(),
            format!(
                "request body refused (limit {BODY_LIMIT} bytes): {}",
                e.body_text()
            ),
        )
    })?;
    let mut req: TaskRequest = json_body(&body)?;
    if req.traceparent.is_none() {
        req.traceparent = caller_trace(&headers);
    }
    let created = s.orchestrator.create_task(req).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created)).into_response())
}

/// The `traceparent` header, when it is a valid one: a malformed header is
/// dropped (W3C Trace Context asks receivers to start a new trace then).
fn caller_trace(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    match stepgraph_engine::trace::TraceParent::parse(value) {
        Ok(_) => Some(value.trim().to_string()),
        Err(e) => {
            tracing::debug!(error = %e, "traceparent header ignored");
            None
        }
    }
}

/// The view of a task with its audit trail; an enqueued step whose handler
/// no live worker serves is marked as waiting for it (the registry is read
/// only then).
async fn task_view(
    s: &ApiState,
    (graph, transitions): (TaskGraph, Transitions),
) -> Result<TaskView, ApiError> {
    let mut view = TaskView::new(graph, Some(transitions));
    if view.steps.iter().any(|v| v.state == StepState::Enqueued) {
        let served = live_handlers(s.store.as_ref()).await?;
        for step in view.steps.iter_mut() {
            if step.state == StepState::Enqueued && !served.contains(&step.handler) {
                step.waiting_for_handler = Some(step.handler.clone());
            }
        }
    }
    Ok(view)
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, its steps and its audit trail", body = TaskView),
        (status = 404, description = "No such task, or removed by retention (the error says which)", body = ErrorBody),
    ),
)]
pub(crate) async fn get_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(view(&s, task_id(&id)?).await?))
}

/// The task as `GET /v1/tasks/{id}` shows it.
pub async fn view(s: &ApiState, id: Uuid) -> Result<TaskView, ApiError> {
    let graph = match s.store.graph_and_transitions(id).await {
        Ok(graph) => graph,
        Err(e) => return Err(missing(s, e).await),
    };
    task_view(s, graph).await
}

/// A task that is not found is a 404 that says why when it can: removed
/// by retention (archived, or older than retention keeps anything), or not
/// found at all. Other errors as they are.
pub(crate) async fn missing(s: &ApiState, e: StoreError) -> ApiError {
    match e {
        StoreError::TaskNotFound(id) => {
            ApiError(StatusCode::NOT_FOUND, s.orchestrator.why_missing(id).await)
        }
        e => e.into(),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// How long to wait for the task to end (default 30000; at most 300000, a longer wait is cut).
    #[param(minimum = 0)]
    timeout_ms: Option<u64>,
}

/// Waits (long-polls) until the task ends or the timeout passes, then
/// answers the task as it is.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/wait",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id"), WaitQuery),
    responses(
        (status = 200, description = "The task (ended, or as it was when the wait ran out)", body = TaskView),
        (status = 404, description = "No such task, or removed by retention (the error says which)", body = ErrorBody),
    ),
)]
pub(crate) async fn wait_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "timeout_ms must be a whole number of milliseconds (at most {}): {}",
                MAX_WAIT.as_millis(),
                e.body_text()
            ),
        )
    })?;
    let id = task_id(&id)?;
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(30_000)).min(MAX_WAIT);
    let _waiting = Waiting::new(&s.waiting);
    let view = match s.store.wait_terminal_view(id, timeout).await {
        Ok(view) => view,
        Err(e) => return Err(missing(&s, e).await),
    };
    Ok(Json(task_view(&s, view).await?))
}

/// A task's state after a change asked through the API.
#[derive(Serialize, ToSchema)]
pub(crate) struct StateChange {
    pub task_id: Uuid,
    pub state: TaskState,
}

/// The body of a cancel (may be empty): why, recorded in the audit trail.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Cancels the task and its live steps.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    request_body(content = Option<CancelBody>, description = "Optional"),
    responses(
        (status = 200, description = "Cancelled (or already ended: its state)", body = StateChange),
        (status = 400, description = "A malformed body or an unknown field (named)", body = ErrorBody),
        (status = 404, description = "No such task, or removed by retention (the error says which)", body = ErrorBody),
        (status = 409, description = "A concurrent change won; retry", body = ErrorBody),
    ),
)]
pub(crate) async fn cancel_task(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<StateChange>, ApiError> {
    let task_id = task_id(&id)?;
    let body: CancelBody = optional_body(&raw)?;
    let requested = Requested {
        by: caller.map_or_else(|| "anonymous".into(), |Extension(c)| c.name),
        reason: body.reason.unwrap_or_default(),
    };
    let state = match s.orchestrator.cancel(task_id, &requested).await {
        Ok(state) => state,
        Err(OrchestratorError::Store(e)) => return Err(missing(&s, e).await),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(StateChange { task_id, state }))
}
