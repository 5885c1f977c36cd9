//! An operator's repairs: retry a failed task or one of its steps, resolve
//! a step by hand. Each is a compare-and-swap transition whose audit rows
//! record who asked (the token's name; `anonymous` on an open API) and why
//! (the body's `reason`).

use crate::error::{json_body, optional_body, task_id, ApiError, ErrorBody};
use crate::tasks::StateChange;
use crate::{ApiState, Caller};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use stepgraph_engine::repair::{Repair, Requested};
use utoipa::ToSchema;

/// The body of a retry (may be empty): why, recorded in the audit trail.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryBody {
    #[serde(default)]
    reason: Option<String>,
}

/// The body of a resolve: the step's result (required) and why.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveBody {
    /// What the step's dependents will see as its result.
    result: Value,
    #[serde(default)]
    reason: Option<String>,
}

async fn run(
    s: &ApiState,
    caller: Option<Extension<Caller>>,
    id: &str,
    repair: Repair,
    reason: Option<String>,
) -> Result<Json<StateChange>, ApiError> {
    let task_id = task_id(id)?;
    let requested = Requested {
        by: caller.map_or_else(|| "anonymous".into(), |Extension(c)| c.name),
        reason: reason.unwrap_or_default(),
    };
    let state = s.orchestrator.repair(task_id, &repair, &requested).await?;
    Ok(Json(StateChange { task_id, state }))
}

/// Retries every step in error, with fresh attempts; what completed is not
/// run again.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/retry",
    tag = "repair",
    params(("id" = Uuid, Path, description = "The task's id")),
    request_body(content = Option<RetryBody>, description = "Optional"),
    responses(
        (status = 200, description = "The task goes on from its failed steps", body = StateChange),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task is not in a state to retry (named)", body = ErrorBody),
    ),
)]
pub(crate) async fn retry_task(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<StateChange>, ApiError> {
    let b: RetryBody = optional_body(&raw)?;
    run(&s, caller, &id, Repair::RetryTask, b.reason).await
}

/// Retries one step in error (or cancelled), with fresh attempts.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/steps/{step}/retry",
    tag = "repair",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("step" = String, Path, description = "The step's name"),
    ),
    request_body(content = Option<RetryBody>, description = "Optional"),
    responses(
        (status = 200, description = "The step runs again", body = StateChange),
        (status = 404, description = "No such task or step", body = ErrorBody),
        (status = 409, description = "The task or step is not in a state to retry (named)", body = ErrorBody),
    ),
)]
pub(crate) async fn retry_step(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((id, step)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<StateChange>, ApiError> {
    let b: RetryBody = optional_body(&raw)?;
    run(&s, caller, &id, Repair::RetryStep(step), b.reason).await
}

/// Resolves a step by hand with the given result: its dependents run with it.
#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/steps/{step}/resolve",
    tag = "repair",
    params(
        ("id" = Uuid, Path, description = "The task's id"),
        ("step" = String, Path, description = "The step's name"),
    ),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "The step is resolved_manually; the task goes on", body = StateChange),
        (status = 404, description = "No such task or step", body = ErrorBody),
        (status = 409, description = "The task or step is not in a state to resolve (named)", body = ErrorBody),
    ),
)]
pub(crate) async fn resolve_step(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
    Path((id, step)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<StateChange>, ApiError> {
    let b: ResolveBody = json_body(&raw)?;
    let repair = Repair::Resolve {
        step,
        result: b.result,
    };
    run(&s, caller, &id, repair, b.reason).await
}
