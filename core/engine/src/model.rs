//! The records the orchestrator and the stores share: tasks, steps, edges,
//! outcomes, audit entries, and the write operations a store applies.

use crate::state::{StepState, TaskState};
use crate::template::StepType;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub type TaskId = Uuid;
pub type StepId = Uuid;

pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub id: TaskId,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub context: Value,
    pub state: TaskState,
    pub idempotency_key: Option<String>,
    pub priority: i32,
    /// Result of the sink step, or an object of the sink steps' results by name.
    pub result: Option<Value>,
    /// Why the task failed: `{"step": name, "error": StepError}` or `{"message": ...}`.
    pub error: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When a delayed task starts: its first steps become ready then.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// The task's trace: set when it was created with a `traceparent` or
    /// where spans are recorded.
    #[serde(default)]
    pub trace: Option<crate::trace::TaskTrace>,
}

impl Task {
    /// A new task, Pending, with a fresh id, no idempotency key and priority 0.
    pub fn pending(namespace: &str, name: &str, version: &str, context: Value) -> Task {
        let now = Utc::now();
        Task {
            id: new_id(),
            namespace: namespace.into(),
            name: name.into(),
            version: version.into(),
            context,
            state: TaskState::Pending,
            idempotency_key: None,
            priority: 0,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            run_at: None,
            trace: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: StepId,
    pub task_id: TaskId,
    pub name: String,
    /// The template step it was made from (differs from `name` for batch workers).
    pub template_step: String,
    pub step_type: StepType,
    pub handler: String,
    pub config: Value,
    pub state: StepState,
    /// Attempts started so far; the current attempt's number while in flight.
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_seconds: Option<f64>,
    pub batch_size: Option<u64>,
    pub backoff_until: Option<DateTime<Utc>>,
    /// A batch worker's slice of the work.
    pub cursor: Option<Value>,
    /// The latest attempt's outcome.
    pub outcome: Option<StepOutcome>,
    pub created_at: DateTime<Utc>,
}

impl Step {
    /// What a dependent step sees as this step's result.
    pub fn result_value(&self) -> Option<Value> {
        self.outcome.as_ref()?.result_value()
    }

    pub fn error(&self) -> Option<&StepError> {
        match self.outcome.as_ref()? {
            StepOutcome::Failure { error } => Some(error),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Edge {
    pub from: StepId,
    pub to: StepId,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Retryable,
    Permanent,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
    /// A machine-readable reason: `timeout`, `panic`, `handler_not_found`, `invalid_output`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The exception class in the handler's language, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backtrace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl StepError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, message)
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StepError {
            kind,
            message: message.into(),
            code: None,
            error_type: None,
            backtrace: None,
            retry_after_ms: None,
        }
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }
}

/// The per-worker slice of a batch: items `start..end` (0-based, end exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCursor {
    pub batch_no: u32,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub worker_count: u32,
    pub total_items: u64,
    pub cursors: Vec<BatchCursor>,
}

impl BatchOutcome {
    /// `total_items` cut into consecutive slices of `batch_size`.
    pub fn even(total_items: u64, batch_size: u64) -> BatchOutcome {
        let size = batch_size.max(1);
        let cursors: Vec<BatchCursor> = (0..total_items.div_ceil(size))
            .map(|i| BatchCursor {
                batch_no: i as u32 + 1,
                start: i * size,
                end: ((i + 1) * size).min(total_items),
            })
            .collect();
        BatchOutcome {
            worker_count: cursors.len() as u32,
            total_items,
            cursors,
        }
    }
}

/// What one attempt of a step produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepOutcome {
    Success { result: Value },
    Decision { branches: Vec<String> },
    Batch { batch: BatchOutcome },
    Failure { error: StepError },
}

impl StepOutcome {
    /// What a dependent step sees: the result, the chosen branches, or the batch split.
    pub fn result_value(&self) -> Option<Value> {
        match self {
            StepOutcome::Success { result } => Some(result.clone()),
            StepOutcome::Decision { branches } => Some(serde_json::json!({ "branches": branches })),
            StepOutcome::Batch { batch } => serde_json::to_value(batch).ok(),
            StepOutcome::Failure { .. } => None,
        }
    }

    pub fn status(&self) -> &'static str {
        match self {
            StepOutcome::Success { .. } => "success",
            StepOutcome::Decision { .. } => "decision",
            StepOutcome::Batch { .. } => "batch",
            StepOutcome::Failure { .. } => "failure",
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskTransition {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub task_id: TaskId,
    pub from: Option<TaskState>,
    pub to: TaskState,
    pub at: DateTime<Utc>,
    pub metadata: Value,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTransition {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub task_id: TaskId,
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub step_id: StepId,
    pub step_name: String,
    pub from: Option<StepState>,
    pub to: StepState,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub metadata: Value,
}

/// The audit trail of one task, each list in the order the transitions happened.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transitions {
    pub task: Vec<TaskTransition>,
    pub steps: Vec<StepTransition>,
}

/// A task with all its steps and edges, as read at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskGraph {
    pub task: Task,
    pub steps: Vec<Step>,
    pub edges: Vec<Edge>,
}

impl TaskGraph {
    pub fn step(&self, id: StepId) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    pub fn step_by_name(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub fn parents_of(&self, id: StepId) -> impl Iterator<Item = StepId> + '_ {
        self.edges
            .iter()
            .filter(move |e| e.to == id)
            .map(|e| e.from)
    }

    /// What the handler of the step at `idx` needs (its current attempt).
    pub fn work(&self, idx: usize) -> StepWork {
        step_work(&self.task, &self.steps, &self.edges, idx)
    }
}

/// What the handler of `steps[idx]` needs: its task's context, its config,
/// and the results of the steps it depends on.
pub fn step_work(task: &Task, steps: &[Step], edges: &[Edge], idx: usize) -> StepWork {
    let s = &steps[idx];
    let dependency_results = edges
        .iter()
        .filter(|e| e.to == s.id)
        .filter_map(|e| steps.iter().find(|p| p.id == e.from))
        .map(|p| (p.name.clone(), p.result_value().unwrap_or_default()))
        .collect();
    StepWork {
        task_id: s.task_id,
        step_id: s.id,
        namespace: task.namespace.clone(),
        task_name: task.name.clone(),
        step_name: s.name.clone(),
        handler: s.handler.clone(),
        config: s.config.clone(),
        context: task.context.clone(),
        dependency_results,
        attempt: s.attempts,
        max_attempts: s.max_attempts,
        timeout_seconds: s.timeout_seconds,
        batch_size: s.batch_size,
        cursor: s.cursor.clone(),
        traceparent: None,
    }
}

/// One change a store must apply atomically with the others of its batch.
/// Transitions are compare-and-swap on `from`: a batch whose `from` does not
/// match the stored state is refused whole with [`crate::StoreError::Conflict`].
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    InsertTask(Task),
    InsertStep(Step),
    InsertEdge(Edge),
    Task {
        transition: TaskTransition,
        result: Option<Value>,
        error: Option<Value>,
    },
    Step {
        transition: StepTransition,
        attempts: u32,
        backoff_until: Option<DateTime<Utc>>,
        outcome: Option<StepOutcome>,
        /// A new attempt limit (an operator's retry gives fresh attempts);
        /// None: unchanged.
        max_attempts: Option<u32>,
    },
}

/// Step dispatch: orchestration -> worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMessage {
    pub task_id: TaskId,
    pub step_id: StepId,
    pub attempt: u32,
    pub step_name: String,
    pub handler: String,
    /// When the step became ready, in microseconds since the Unix epoch
    /// (its queue wait starts then; an integer costs less to write and read
    /// than a formatted time, on every message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at_us: Option<i64>,
    /// The task span's W3C context, when the task is traced: the step's
    /// attempt spans are its children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Worker -> orchestration, and the orchestrator's own timers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrchestrationMessage {
    StepResult {
        task_id: TaskId,
        step_id: StepId,
        attempt: u32,
        /// How long the handler ran, as the worker measured it.
        #[serde(default)]
        elapsed_us: u64,
    },
    Wake {
        task_id: TaskId,
    },
}

impl OrchestrationMessage {
    pub fn task_id(&self) -> TaskId {
        match self {
            OrchestrationMessage::StepResult { task_id, .. }
            | OrchestrationMessage::Wake { task_id } => *task_id,
        }
    }
}

/// Everything a worker needs to run one attempt of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepWork {
    pub task_id: TaskId,
    pub step_id: StepId,
    pub namespace: String,
    pub task_name: String,
    pub step_name: String,
    pub handler: String,
    pub config: Value,
    pub context: Value,
    pub dependency_results: Map<String, Value>,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_seconds: Option<f64>,
    pub batch_size: Option<u64>,
    pub cursor: Option<Value>,
    /// The attempt's span context for the handler (set by the worker that
    /// runs it when the task is traced; stores leave it empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug)]
pub enum StartOutcome {
    /// The attempt may run (Enqueued -> InProgress applied if asked, or a
    /// redelivery of the attempt in progress). A store whose task lock is
    /// optimistic may add the task's graph as read now, to commit the
    /// outcome against without reading it again.
    Started(Box<StepWork>, Option<Box<crate::store::Snapshot>>),
    /// The attempt's result is already durable; only the notification may be missing.
    AlreadySubmitted,
    /// The step moved on (another attempt, cancelled, complete): drop the message.
    Stale { state: StepState, attempts: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    Accepted,
    /// Same attempt submitted before: nothing changed.
    Duplicate,
    /// The step is no longer in progress with this attempt.
    Refused {
        state: StepState,
        attempts: u32,
    },
}
