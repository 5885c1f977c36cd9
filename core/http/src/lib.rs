//! The HTTP API served by `stepgraph serve`: create, inspect, wait for and
//! cancel tasks; list templates; health and Prometheus metrics. Errors are
//! JSON `{"error": message}` with the status that fits.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::{worker_queue, Queue, ORCHESTRATION_QUEUE};
use stepgraph_engine::{
    Orchestrator, OrchestratorError, Shutdown, Step, Store, StoreError, Task, TaskGraph, TaskId,
    TaskRequest, Transitions,
};

mod server;
pub use server::Limits;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// The longest a wait request may hold the connection; a longer
/// `timeout_ms` is cut to it.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct ApiState {
    pub orchestrator: Arc<Orchestrator>,
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    /// `wait` requests holding their connection now (a gauge in `/metrics`).
    waiting: Arc<AtomicUsize>,
}

impl ApiState {
    pub fn new(
        orchestrator: Arc<Orchestrator>,
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
    ) -> Self {
        ApiState {
            orchestrator,
            store,
            queue,
            waiting: Arc::default(),
        }
    }
}

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

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e {
            StoreError::TaskNotFound(_) | StoreError::StepNotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) | StoreError::DuplicateIdempotencyKey { .. } => {
                StatusCode::CONFLICT
            }
            StoreError::KeyTaken { .. } => StatusCode::CONFLICT,
            StoreError::Backend(_) | StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Not the client's mistake, and no retry will help: the server's
            // own stored rows (changed by hand, or by another version).
            StoreError::Unreadable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl From<OrchestratorError> for ApiError {
    fn from(e: OrchestratorError) -> Self {
        match e {
            OrchestratorError::Store(s) => s.into(),
            OrchestratorError::TemplateNotFound { .. }
            | OrchestratorError::InvalidContext { .. } => {
                ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            OrchestratorError::InvalidRequest(_) => {
                ApiError(StatusCode::BAD_REQUEST, e.to_string())
            }
            OrchestratorError::Contention { .. }
            | OrchestratorError::WrongState { .. }
            | OrchestratorError::IdempotencyKeyReused { .. } => {
                ApiError(StatusCode::CONFLICT, e.to_string())
            }
            OrchestratorError::Queue(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            OrchestratorError::Illegal(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        }
    }
}

fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("not a task id: {raw:?}")))
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/tasks", post(create_task))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/tasks/{id}/wait", get(wait_task))
        .route("/v1/tasks/{id}/cancel", post(cancel_task))
        .route("/v1/templates", get(templates))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves until shutdown, within `limits`; requests in flight finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: Shutdown,
    limits: Limits,
) -> std::io::Result<()> {
    server::run(listener, router(state), shutdown, limits).await
}

async fn create_task(
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
struct StepView {
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
struct TaskView {
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

async fn get_task(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let view = s.store.graph_and_transitions(task_id(&id)?).await?;
    Ok(Json(TaskView::new(view)))
}

#[derive(Deserialize)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

async fn wait_task(
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

async fn cancel_task(
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

async fn templates(State(s): State<ApiState>) -> Json<Value> {
    let all: Vec<Value> = s
        .orchestrator
        .templates()
        .all()
        .iter()
        .map(|t| {
            json!({
                "namespace": t.namespace,
                "name": t.name,
                "version": t.version,
                "description": t.description,
                "input_schema": t.input_schema,
                "steps": t.steps.iter().map(|st| json!({
                    "name": st.name,
                    "type": st.step_type,
                    "handler": st.handler.callable,
                    "dependencies": st.dependencies,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "templates": all }))
}

async fn health(State(s): State<ApiState>) -> Response {
    let database = match s.store.counts().await {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let queue = match s.queue.depth(ORCHESTRATION_QUEUE).await {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let healthy = database == "ok" && queue == "ok";
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if healthy { "ok" } else { "unhealthy" }, "database": database, "queue": queue });
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let counts = s.store.counts().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP stepgraph_tasks Tasks by state.\n# TYPE stepgraph_tasks gauge"
    );
    for (state, n) in &counts.tasks {
        let _ = writeln!(out, "stepgraph_tasks{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP stepgraph_steps Steps by state.\n# TYPE stepgraph_steps gauge"
    );
    for (state, n) in &counts.steps {
        let _ = writeln!(out, "stepgraph_steps{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP stepgraph_queue_depth Messages waiting or claimed.\n# TYPE stepgraph_queue_depth gauge");
    let mut queues = vec![ORCHESTRATION_QUEUE.to_string()];
    queues.extend(
        s.orchestrator
            .templates()
            .queues()
            .iter()
            .map(|n| worker_queue(n)),
    );
    for q in queues {
        let depth = s
            .queue
            .depth(&q)
            .await
            .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let _ = writeln!(out, "stepgraph_queue_depth{{queue=\"{q}\"}} {depth}");
    }
    let _ = writeln!(
        out,
        "# HELP stepgraph_http_waiting_requests Wait requests holding their connection.\n# TYPE stepgraph_http_waiting_requests gauge\nstepgraph_http_waiting_requests {}",
        s.waiting.load(Ordering::SeqCst)
    );
    out.push_str(&s.orchestrator.metrics().render());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
