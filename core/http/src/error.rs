//! Every answer that is not a success: a status and `{"error": message}`,
//! the status chosen by what went wrong (a client's mistake is a 4xx).

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stepgraph_engine::{OrchestratorError, StoreError, TaskId};
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

/// The body of every error.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, naming the field, id or state at fault.
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
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
            OrchestratorError::NoSuchStep { .. } => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            OrchestratorError::Contention { .. }
            | OrchestratorError::WrongState { .. }
            | OrchestratorError::WrongStepState { .. }
            | OrchestratorError::IdempotencyKeyReused { .. } => {
                ApiError(StatusCode::CONFLICT, e.to_string())
            }
            OrchestratorError::Queue(_) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            OrchestratorError::Illegal(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        }
    }
}

pub fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("not a task id: {raw:?}")))
}

/// A JSON request body, or a 400 that names the field at fault.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    let malformed = |m: String| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {m}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => malformed(e.into_inner().to_string()),
            _ => malformed(format!("{path}: {}", e.into_inner())),
        }
    })?;
    de.end().map_err(|e| malformed(e.to_string()))?;
    Ok(value)
}

/// A body that may be left out: empty, or JSON `null`, is its default.
pub(crate) fn optional_body<T: DeserializeOwned + Default>(raw: &Bytes) -> Result<T, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    json_body::<Option<T>>(raw).map(Option::unwrap_or_default)
}
