//! Cron schedules through the API: list, read, create, pause, resume and
//! delete. The scheduler of every `serve` fires them (see the engine's
//! `orchestrator::schedule`); a change made here wakes this process's.

use crate::error::{json_body, ApiError, ErrorBody};
use crate::ApiState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Serialize;
use stepgraph_engine::schedule::{Schedule, ScheduleSource, ScheduleSpec};
use stepgraph_engine::OrchestratorError;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub(crate) struct ScheduleList {
    schedules: Vec<Schedule>,
}

/// Every schedule, by name: those made through the API and those templates declare.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "schedules",
    responses((status = 200, description = "The schedules", body = ScheduleList)),
)]
pub(crate) async fn list(State(s): State<ApiState>) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = s.store.schedules().await?;
    Ok(Json(ScheduleList { schedules }))
}

async fn find(s: &ApiState, name: &str) -> Result<Schedule, ApiError> {
    s.store
        .schedules()
        .await?
        .into_iter()
        .find(|x| x.name == name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no schedule named {name:?}")))
}

#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "The schedule", body = Schedule),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
)]
pub(crate) async fn get(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(find(&s, &name).await?))
}

/// Creates a schedule: a task of the template at each tick of `cron` in `timezone`.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    tag = "schedules",
    request_body = ScheduleSpec,
    responses(
        (status = 201, description = "Created; `next_run_at` is its first tick", body = Schedule),
        (status = 400, description = "A malformed body, or a field that cannot be used (named: cron, timezone, name, ...)", body = ErrorBody),
        (status = 409, description = "A schedule has this name", body = ErrorBody),
        (status = 422, description = "No such template, or the context breaks its input schema", body = ErrorBody),
    ),
)]
pub(crate) async fn create(State(s): State<ApiState>, raw: Bytes) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let spec: ScheduleSpec = json_body(&raw)?;
    let schedule = spec
        .into_schedule(ScheduleSource::Api, Utc::now())
        .map_err(|e| bad(e.to_string()))?;
    let template = s
        .orchestrator
        .templates()
        .get(
            &schedule.namespace,
            &schedule.template,
            schedule.version.as_deref(),
        )
        .ok_or_else(|| OrchestratorError::TemplateNotFound {
            namespace: schedule.namespace.clone(),
            name: schedule.template.clone(),
            version: schedule.version.clone(),
        })?;
    template
        .validate_context(&schedule.context)
        .map_err(|message| OrchestratorError::InvalidContext {
            template: template.key(),
            message,
        })?;
    if !s.store.insert_schedule(&schedule).await? {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("a schedule named {:?} exists", schedule.name),
        ));
    }
    s.orchestrator.wake_scheduler();
    Ok((StatusCode::CREATED, Json(schedule)).into_response())
}

/// Applies `change` to the schedule as it is now, as a compare-and-swap
/// (the scheduler may move it on meanwhile: then again, on what it made).
async fn change(
    s: &ApiState,
    name: &str,
    change: impl Fn(&mut Schedule) -> Result<(), ApiError>,
) -> Result<Json<Schedule>, ApiError> {
    for _ in 0..20 {
        let old = find(s, name).await?;
        let mut new = old.clone();
        change(&mut new)?;
        new.updated_at = Utc::now();
        if s.store.replace_schedule(&new, old.next_run_at).await? {
            s.orchestrator.wake_scheduler();
            return Ok(Json(new));
        }
    }
    Err(ApiError(
        StatusCode::CONFLICT,
        format!("schedule {name:?} kept changing; try again"),
    ))
}

/// Stops the schedule's ticks until it is resumed (kept across restarts).
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Paused (or already paused)", body = Schedule),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
)]
pub(crate) async fn pause(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    change(&s, &name, |x| {
        x.paused = true;
        x.next_run_at = None;
        Ok(())
    })
    .await
}

/// Resumes a paused schedule from its next tick (what it missed is not made up).
#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Resumed (or already running)", body = Schedule),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ),
)]
pub(crate) async fn resume(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    change(&s, &name, |x| {
        if x.paused {
            x.paused = false;
            let next = x
                .next_after(Utc::now())
                .map_err(|e| ApiError(StatusCode::CONFLICT, e.to_string()))?;
            x.next_run_at = Some(next);
        }
        Ok(())
    })
    .await
}

/// Deletes a schedule made through the API (one a template declares is
/// removed from the template, or paused).
#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 204, description = "Deleted: it creates nothing more"),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 409, description = "A template declares it", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let old = find(&s, &name).await?;
    if old.source == ScheduleSource::Template {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "schedule {name:?} is declared in template {}/{}: remove it there, or pause it",
                old.namespace, old.template
            ),
        ));
    }
    if !s.store.delete_schedule(&name).await? {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no schedule named {name:?}"),
        ));
    }
    s.orchestrator.wake_scheduler();
    Ok(StatusCode::NO_CONTENT)
}
