//! What an operator reads about the whole system: the templates, the
//! workers, health, and Prometheus metrics.

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::fmt::Write;
use std::sync::atomic::Ordering;
use stepgraph_engine::queue::{worker_queue, ORCHESTRATION_QUEUE};

pub(crate) async fn templates(State(s): State<ApiState>) -> Json<Value> {
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

/// The workers seen in the last day: live ones first (`live`, `gone` after
/// three missed heartbeats, `stopped` when they shut down cleanly).
pub(crate) async fn workers(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let since = chrono::Utc::now() - chrono::Duration::days(1);
    let workers = s.store.workers(since).await?;
    Ok(Json(json!({ "workers": workers })))
}

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
    let body = json!({ "status": if healthy { "ok" } else { "unhealthy" }, "database": database, "queue": queue });
    (status, Json(body)).into_response()
}

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
