//! An operator's repairs: retry a failed task or one of its steps, resolve
//! a step by hand. Each is a compare-and-swap transition whose audit rows
//! record who asked (the token's name; `anonymous` on an open API) and why
//! (the body's `reason`).

use crate::error::{task_id, ApiError};
use crate::{ApiState, Caller};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use stepgraph_engine::repair::{Repair, Requested};

/// The body of a retry: why (optional, recorded).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The body of a resolve: the step's result (required) and why.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    result: Value,
    #[serde(default)]
    reason: Option<String>,
}

fn body<T: for<'de> Deserialize<'de>>(raw: &Bytes, empty: Option<T>) -> Result<T, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        if let Some(default) = empty {
            return Ok(default);
        }
    }
    serde_json::from_slice(raw).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}"),
        )
    })
}

async fn run(
    s: &ApiState,
    caller: Option<Extension<Caller>>,
    id: &str,
    repair: Repair,
    reason: Option<String>,
) -> Result<Json<Value>, ApiError> {
    let id = task_id(id)?;
    let requested = Requested {
        by: caller.map_or_else(|| "anonymous".into(), |Extension(c)| c.name),
        reason: reason.unwrap_or_default(),
    };
    let state = s.orchestrator.repair(id, &repair, &requested).await?;
    Ok(Json(json!({ "task_id": id, "state": state })))
}

/// `POST /v1/tasks/{id}/retry`: every step in error, with fresh attempts.
pub(crate) async fn retry_task(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: RetryBody = body(&raw, Some(RetryBody::default()))?;
    run(&s, caller, &id, Repair::RetryTask, b.reason).await
}

/// `POST /v1/tasks/{id}/steps/{step}/retry`.
pub(crate) async fn retry_step(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((id, step)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: RetryBody = body(&raw, Some(RetryBody::default()))?;
    run(&s, caller, &id, Repair::RetryStep(step), b.reason).await
}

/// `POST /v1/tasks/{id}/steps/{step}/resolve` with `{"result": ...}`.
pub(crate) async fn resolve_step(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((id, step)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: ResolveBody = body(&raw, None)?;
    let repair = Repair::Resolve {
        step,
        result: b.result,
    };
    run(&s, caller, &id, repair, b.reason).await
}
