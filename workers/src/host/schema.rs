//! What crosses the language boundary, the same for every binding: a
//! [`StepEvent`] in, a [`StepResult`] out. The bindings only convert them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use stepgraph_engine::{BatchCursor, StepId, StepOutcome, TaskId};

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
/// a failure (retryable or permanent), a decision, or a batch outcome.
pub type StepResult = StepOutcome;
