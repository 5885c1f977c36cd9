//! The task endpoints: create, read, wait for, cancel.

use crate::error::{task_id, ApiError};
use crate::{ApiState, BODY_LIMIT, MAX_WAIT};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{Step, Task, TaskGraph, TaskRequest, Transitions};

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

pub(crate) async fn create_task(
    State(s): State<ApiState>,
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
    let req: TaskRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}"),
        )
    })?;
    let created = s.orchestrator.create_task(req).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created)).into_response())
}

#[derive(Serialize)]
pub(crate) struct StepView {
    name: String,
    state: String,
    attempts: u32,
    max_attempts: u32,
    result: Option<Value>,
    error: Option<Value>,
    cursor: Option<Value>,
}

impl From<&Step> for StepView {
    fn from(s: &Step) -> Self {
        StepView {
            name: s.name.clone(),
            state: s.state.to_string(),
            attempts: s.attempts,
            max_attempts: s.max_attempts,
            result: s.result_value(),
            error: s.error().and_then(|e| serde_json::to_value(e).ok()),
            cursor: s.cursor.clone(),
        }
    }
}

#[derive(Serialize)]
pub(crate) struct TaskView {
    #[serde(flatten)]
    task: Task,
    steps: Vec<StepView>,
    transitions: Transitions,
}

impl TaskView {
    fn new((graph, transitions): (TaskGraph, Transitions)) -> TaskView {
        TaskView {
            steps: graph.steps.iter().map(StepView::from).collect(),
            task: graph.task,
            transitions,
        }
    }
}

pub(crate) async fn get_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let view = s.store.graph_and_transitions(task_id(&id)?).await?;
    Ok(Json(TaskView::new(view)))
}

#[derive(Deserialize)]
pub(crate) struct WaitQuery {
    timeout_ms: Option<u64>,
}

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
    let view = s.store.wait_terminal_view(id, timeout).await?;
    Ok(Json(TaskView::new(view)))
}

pub(crate) async fn cancel_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = task_id(&id)?;
    let state = s
        .orchestrator
        .cancel(id, "cancelled through the API")
        .await?;
    Ok(Json(json!({ "task_id": id, "state": state })))
}
