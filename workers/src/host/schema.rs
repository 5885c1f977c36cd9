//! What crosses the language boundary, the same for every binding: a
//! [`StepEvent`] in, a [`StepResult`] out. The bindings only convert them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stepgraph_engine::{BatchCursor, BatchOutcome, StepError, StepId, StepOutcome, TaskId};

/// A step handed to the language side: everything its handler needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub cursor: Option<BatchCursor>,
    /// How long the language side has before the host times the event out.
    pub timeout_ms: u64,
    /// The W3C trace context of the step's handler span when the task is
    /// traced (spans the handler makes join it); else null.
    pub traceparent: Option<String>,
}

/// What the language side reports for an event: success with a JSON result,
/// a failure (retryable or permanent), a decision, or a batch to cut. Its
/// own type, not the engine's `StepOutcome`: a batch crosses as what the
/// handler asked for, and its cursors are cut here, once for every language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepResult {
    Success { result: Value },
    Decision { branches: Vec<String> },
    Batch { batch: BatchRequest },
    Failure { error: StepError },
}

/// A batchable step's answer: `total_items` cut into slices of `batch_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub total_items: u64,
    pub batch_size: u64,
}

impl From<StepResult> for StepOutcome {
    fn from(r: StepResult) -> StepOutcome {
        match r {
            StepResult::Success { result } => StepOutcome::Success { result },
            StepResult::Decision { branches } => StepOutcome::Decision { branches },
            StepResult::Batch { batch } => StepOutcome::Batch {
                batch: BatchOutcome::even(batch.total_items, batch.batch_size),
            },
            StepResult::Failure { error } => StepOutcome::Failure { error },
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
