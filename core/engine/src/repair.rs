//! An operator's repairs of a task, as transitions: retry its failed steps
//! (each with fresh attempts), or resolve a step by hand with a result its
//! dependents then run with. Each is a compare-and-swap like every other
//! change, its audit rows carrying who asked and why. What completed is not
//! run again; the steps the task's failure cancelled become Pending again.

use crate::model::*;
use crate::state::{StepState, TaskState};
use crate::template::TaskTemplate;
use crate::txn::TaskTxn;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Repair {
    /// Every step in Error.
    RetryTask,
    /// One step in Error.
    RetryStep(String),
    /// One step not yet complete (and not running) ends ResolvedManually
    /// with `result`.
    Resolve { step: String, result: Value },
}

impl Repair {
    /// What is done, for messages ("it cannot be retried").
    pub fn action(&self) -> &'static str {
        match self {
            Repair::RetryTask | Repair::RetryStep(_) => "retried",
            Repair::Resolve { .. } => "resolved",
        }
    }

    fn step(&self) -> Option<&str> {
        match self {
            Repair::RetryTask => None,
            Repair::RetryStep(step) | Repair::Resolve { step, .. } => Some(step),
        }
    }
}

/// Who asked for a repair and why: recorded in each audit row it writes.
#[derive(Debug, Clone)]
pub struct Requested {
    pub by: String,
    pub reason: String,
}

/// Why a repair was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    Task(TaskState),
    NoSuchStep,
    Step(StepState),
}

/// Applies `repair` to the task of `txn`; the caller then evaluates the
/// task as after a result, which enqueues what became ready.
pub fn apply(
    txn: &mut TaskTxn,
    template: &TaskTemplate,
    repair: &Repair,
    requested: &Requested,
) -> Result<(), Refused> {
    let task_state = txn.task().state;
    let task_ok = match repair {
        Repair::RetryTask | Repair::RetryStep(_) => {
            matches!(task_state, TaskState::Error | TaskState::BlockedByFailures)
        }
        Repair::Resolve { .. } => !matches!(
            task_state,
            TaskState::Complete | TaskState::Cancelled | TaskState::ResolvedManually
        ),
    };
    if !task_ok {
        return Err(Refused::Task(task_state));
    }
    let target = match repair.step() {
        None => None,
        Some(name) => {
            let idx = (0..txn.graph().steps.len())
                .find(|&i| txn.step(i).name == name)
                .ok_or(Refused::NoSuchStep)?;
            let state = txn.step(idx).state;
            let step_ok = match repair {
                Repair::RetryStep(_) => state == StepState::Error,
                _ => matches!(
                    state,
                    StepState::Pending
                        | StepState::Enqueued
                        | StepState::WaitingForRetry
                        | StepState::Error
                        | StepState::Cancelled
                ),
            };
            if !step_ok {
                return Err(Refused::Step(state));
            }
            Some(idx)
        }
    };
    let meta = json!({
        "action": repair.action(),
        "by": requested.by,
        "reason": requested.reason,
    });
    if task_state.can_transition_to(TaskState::EvaluatingResults) {
        txn.task_to(TaskState::EvaluatingResults, meta.clone())
            .expect("checked");
    }
    for i in 0..txn.graph().steps.len() {
        let step = txn.step(i);
        let retried = match repair {
            Repair::RetryTask => step.state == StepState::Error,
            _ => Some(i) == target && matches!(repair, Repair::RetryStep(_)),
        };
        if retried {
            // Fresh attempts on top of those used: attempt numbers keep
            // growing, so a late result of an old attempt is still refused.
            let fresh = template
                .step(&step.template_step)
                .map_or(step.max_attempts, |t| t.retry.max_attempts)
                .max(1);
            let limit = step.attempts + fresh;
            txn.step_to(i, StepState::Pending, meta.clone(), |s| {
                s.max_attempts = limit;
                s.outcome = None;
                s.backoff_until = None;
            })
            .expect("Error -> Pending");
        } else if Some(i) == target {
            let Repair::Resolve { result, .. } = repair else {
                unreachable!("a retried target was handled above")
            };
            let outcome = StepOutcome::Success {
                result: result.clone(),
            };
            txn.step_to(i, StepState::ResolvedManually, meta.clone(), |s| {
                s.outcome = Some(outcome);
                s.backoff_until = None;
            })
            .expect("checked");
        } else if step.state == StepState::Cancelled {
            // Cancelled by the task's failure (a cancelled task is refused
            // above): it runs once what it waits for is done.
            txn.step_to(i, StepState::Pending, meta.clone(), |_| {})
                .expect("Cancelled -> Pending");
        }
    }
    Ok(())
}
