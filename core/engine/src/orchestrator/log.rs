//! What an operator reads in the logs, at info: tasks created, completed,
//! failed or cancelled; steps failed, retried (with the backoff) or timed
//! out, each with the task's id, the step, its handler and the attempt.
//! Read from a commit's changes before it is made, written once it is: a
//! commit lost to a conflict and made again logs once.

use crate::model::{StepOutcome, WriteOp};
use crate::state::{StepState, TaskState};
use crate::txn::TaskTxn;
use serde_json::Value;

pub(super) enum Notable {
    TaskCreated {
        task: String,
        template: String,
    },
    TaskEnded {
        task: String,
        template: String,
        state: TaskState,
        error: Option<Value>,
    },
    Step {
        task: String,
        step: String,
        handler: String,
        attempt: u32,
        to: StepState,
        error: String,
        code: Option<String>,
        backoff_ms: Option<u64>,
    },
}

impl Notable {
    /// The notable changes of `txn`'s write batch.
    /// Nothing (and no work on the hot path) when info is not logged.
    pub(super) fn of(txn: &TaskTxn) -> Vec<Notable> {
        let mut out = Vec::new();
        if !tracing::enabled!(tracing::Level::INFO) {
            return out;
        }
        let task = txn.task();
        let template = || format!("{}/{}@{}", task.namespace, task.name, task.version);
        for op in txn.ops() {
            match op {
                WriteOp::InsertTask(t) => out.push(Notable::TaskCreated {
                    task: t.id.to_string(),
                    template: template(),
                }),
                WriteOp::Task {
                    transition, error, ..
                } if matches!(
                    transition.to,
                    TaskState::Complete | TaskState::Error | TaskState::Cancelled
                ) =>
                {
                    out.push(Notable::TaskEnded {
                        task: transition.task_id.to_string(),
                        template: template(),
                        state: transition.to,
                        error: error.clone(),
                    })
                }
                WriteOp::Step {
                    transition,
                    outcome,
                    ..
                } if matches!(transition.to, StepState::Error | StepState::WaitingForRetry) => {
                    let failure = match outcome {
                        Some(StepOutcome::Failure { error }) => Some(error),
                        _ => None,
                    };
                    let handler = txn
                        .step_index(transition.step_id)
                        .map(|i| txn.step(i).handler.clone())
                        .unwrap_or_default();
                    out.push(Notable::Step {
                        task: transition.task_id.to_string(),
                        step: transition.step_name.clone(),
                        handler,
                        attempt: transition.attempt,
                        to: transition.to,
                        error: failure.map(|e| e.message.clone()).unwrap_or_default(),
                        code: failure.and_then(|e| e.code.clone()),
                        backoff_ms: transition.metadata["backoff_ms"].as_u64(),
                    })
                }
                _ => {}
            }
        }
        out
    }

    pub(super) fn log(&self) {
        match self {
            Notable::TaskCreated { task, template } => {
                tracing::info!(task, template, "task created")
            }
            Notable::TaskEnded {
                task,
                template,
                state,
                error,
            } => match state {
                TaskState::Error => {
                    let error = error.as_ref().map(Value::to_string).unwrap_or_default();
                    tracing::info!(task, template, error, "task failed")
                }
                TaskState::Complete => tracing::info!(task, template, "task completed"),
                _ => tracing::info!(task, template, "task cancelled"),
            },
            Notable::Step {
                task,
                step,
                handler,
                attempt,
                to,
                error,
                code,
                backoff_ms,
            } => {
                let timed_out = code.as_deref() == Some("timeout");
                match (to, timed_out) {
                    (StepState::WaitingForRetry, true) => {
                        tracing::info!(
                            task,
                            step,
                            handler,
                            attempt,
                            backoff_ms,
                            error,
                            "step timed out; retrying"
                        )
                    }
                    (StepState::WaitingForRetry, false) => {
                        tracing::info!(
                            task,
                            step,
                            handler,
                            attempt,
                            backoff_ms,
                            error,
                            code,
                            "step failed; retrying"
                        )
                    }
                    (_, true) => {
                        tracing::info!(
                            task,
                            step,
                            handler,
                            attempt,
                            error,
                            "step timed out; no attempts left"
                        )
                    }
                    _ => tracing::info!(task, step, handler, attempt, error, code, "step failed"),
                }
            }
        }
    }
}
