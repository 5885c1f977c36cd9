//! What an operator reads about the whole system: the templates, the
//! workers, health, and Prometheus metrics.

use crate::error::{ApiError, ErrorBody};
use crate::ApiState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use stepgraph_engine::queue::{worker_queue, ORCHESTRATION_QUEUE};
use stepgraph_engine::store::WorkerRecord;
use stepgraph_engine::template::{StepType, TaskTemplate};
use utoipa::ToSchema;

/// A template as the API shows it.
#[derive(Serialize, ToSchema)]
pub(crate) struct TemplateView {
    namespace: String,
    name: String,
    version: String,
    description: Option<String>,
    /// The JSON Schema a task's context must meet.
    input_schema: Option<Value>,
    steps: Vec<TemplateStepView>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TemplateStepView {
    name: String,
    #[serde(rename = "type")]
    step_type: StepType,
    handler: String,
    dependencies: Vec<String>,
}

impl From<&TaskTemplate> for TemplateView {
    fn from(t: &TaskTemplate) -> Self {
        TemplateView {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            version: t.version.clone(),
            description: t.description.clone(),
            input_schema: t.input_schema.clone(),
            steps: t
                .steps
                .iter()
                .map(|st| TemplateStepView {
                    name: st.name.clone(),
                    step_type: st.step_type,
                    handler: st.handler.callable.clone(),
                    dependencies: st.dependencies.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TemplateList {
    templates: Vec<TemplateView>,
}

/// The templates this server knows, every version.
#[utoipa::path(
    get,
    path = "/v1/templates",
    tag = "system",
    responses((status = 200, description = "The templates", body = TemplateList)),
)]
pub(crate) async fn templates(State(s): State<ApiState>) -> Json<TemplateList> {
    let templates = s
        .orchestrator
        .templates()
        .all()
        .iter()
        .map(|t| TemplateView::from(t.as_ref()))
        .collect();
    Json(TemplateList { templates })
}

#[derive(Serialize, ToSchema)]
pub(crate) struct WorkerList {
    workers: Vec<WorkerRecord>,
}

/// The workers seen in the last day: live ones first (`live`, `gone` after
/// three missed heartbeats, `stopped` when they shut down cleanly).
#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "system",
    responses((status = 200, description = "Workers seen in the last day, live ones first", body = WorkerList)),
)]
pub(crate) async fn workers(State(s): State<ApiState>) -> Result<Json<WorkerList>, ApiError> {
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let workers = s.store.workers(since).await?;
    Ok(Json(WorkerList { workers }))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` or `unhealthy`.
    status: String,
    /// `ok`, or why the database cannot be reached.
    database: String,
    /// `ok`, or why the queue cannot be reached.
    queue: String,
}

/// Whether this server reaches its database and queue. Needs no token when
/// the server leaves its probes open.
#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database or the queue cannot be reached", body = Health),
    ),
)]
pub(crate) async fn health(State(s): State<ApiState>) -> Response {
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
    let body = Health {
        status: if healthy { "ok" } else { "unhealthy" }.into(),
        database,
        queue,
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics: tasks and steps by state, queue depths, the
/// orchestrator's histograms and counters. Needs no token when the server
/// leaves its probes open.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 503, description = "The database or queue cannot be reached", body = ErrorBody),
    ),
)]
pub(crate) async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
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
    // The namespaces' own queues (steps sent before the queues per
    // handler) and each handler's.
    let templates = s.orchestrator.templates();
    let mut queues = vec![ORCHESTRATION_QUEUE.to_string()];
    queues.extend(templates.queues().iter().map(|n| worker_queue(n)));
    queues.extend(templates.handler_queues());
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
