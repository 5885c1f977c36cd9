//! What crosses the language boundary, the same for every binding: a
//! [`StepEvent`] in, a [`StepResult`] out. The bindings only convert them.
//! These are the boundary's own types, not the engine's: each language's
//! declarations of them are generated from their schema (`boundary.rs`), so
//! the engine's types can change without the languages seeing it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stepgraph_engine::{BatchCursor, BatchOutcome, StepError, StepId, StepOutcome, TaskId};

/// A step handed to the language side: everything its handler needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct StepEvent {
    pub event_id: u64,
    pub task_id: TaskId,
    pub step_id: StepId,
    pub namespace: String,
    pub task_name: String,
    pub step_name: String,
    pub handler: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The task context.
    pub input: Value,
    pub config: Value,
    pub dependency_results: Map<String, Value>,
    pub batch_size: Option<u64>,
    pub cursor: Option<EventCursor>,
    /// How long the language side has before the host times the event out.
    pub timeout_ms: u64,
    /// The W3C trace context of the step's handler span when the task is
    /// traced (spans the handler makes join it); else null.
    pub traceparent: Option<String>,
}

/// The slice of a batch a batch worker step processes: items `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct EventCursor {
    pub batch_no: u32,
    pub start: u64,
    pub end: u64,
}

impl From<BatchCursor> for EventCursor {
    fn from(c: BatchCursor) -> Self {
        EventCursor {
            batch_no: c.batch_no,
            start: c.start,
            end: c.end,
        }
    }
}

/// What the language side reports for an event: success with a JSON result,
/// a failure (retryable or permanent), a decision, or a batch to cut. Its
/// own type, not the engine's `StepOutcome`: a batch crosses as what the
/// handler asked for, and its cursors are cut here, once for every language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepResult {
    Success { result: Value },
    Decision { branches: Vec<String> },
    Batch { batch: BatchRequest },
    Failure { error: StepFailure },
}

/// A batchable step's answer: `total_items` cut into slices of `batch_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub total_items: u64,
    pub batch_size: u64,
}

/// Whether a failed step may run again (its retries permitting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    Retryable,
    Permanent,
}

/// Why a handler failed, as its language reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StepFailure {
    pub kind: FailureKind,
    pub message: String,
    /// A machine-readable reason (`invalid_output`, ...).
    #[serde(default)]
    pub code: Option<String>,
    /// The exception's class in the handler's language.
    #[serde(default)]
    pub error_type: Option<String>,
    #[serde(default)]
    pub backtrace: Option<String>,
    /// A retryable failure's wish: not before this many milliseconds.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

impl From<StepFailure> for StepError {
    fn from(f: StepFailure) -> StepError {
        let mut e = match f.kind {
            FailureKind::Retryable => StepError::retryable(f.message),
            FailureKind::Permanent => StepError::permanent(f.message),
        };
        e.code = f.code;
        e.error_type = f.error_type;
        e.backtrace = f.backtrace;
        e.retry_after_ms = f.retry_after_ms;
        e
    }
}

impl From<StepResult> for StepOutcome {
    fn from(r: StepResult) -> StepOutcome {
        match r {
            StepResult::Success { result } => StepOutcome::Success { result },
            StepResult::Decision { branches } => StepOutcome::Decision { branches },
            StepResult::Batch { batch } => StepOutcome::Batch {
                batch: BatchOutcome::even(batch.total_items, batch.batch_size),
            },
            StepResult::Failure { error } => StepOutcome::Failure {
                error: error.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_batch_crosses_as_its_request_and_is_cut_here() {
        let r: StepResult = serde_json::from_value(
            json!({"status": "batch", "batch": {"total_items": 5, "batch_size": 2}}),
        )
        .unwrap();
        let StepOutcome::Batch { batch } = StepOutcome::from(r) else {
            panic!("not a batch")
        };
        assert_eq!(batch.worker_count, 3);
        let cuts: Vec<(u64, u64)> = batch.cursors.iter().map(|c| (c.start, c.end)).collect();
        assert_eq!(cuts, [(0, 2), (2, 4), (4, 5)]);
        // The cursors are not the language side's to send.
        let err = serde_json::from_value::<StepResult>(json!({"status": "batch", "batch": {
            "total_items": 5, "batch_size": 2, "worker_count": 3}}))
        .unwrap_err();
        assert!(err.to_string().contains("worker_count"), "{err}");
    }
}
