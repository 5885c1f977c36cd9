//! A write batch grouped for PostgreSQL's `sg_apply`: inserts by kind, each
//! step's transitions (and the task's) collapsed into one compare-and-swap
//! from the state before its first to the state after its last, and the
//! audit rows numbered per entity so the function needs no window queries.

use crate::model::*;
use crate::state::{StepState, TaskState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Debug, Default, Serialize)]
pub(super) struct Change<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    new_tasks: Vec<&'a Task>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    new_steps: Vec<&'a Step>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    new_edges: Vec<&'a Edge>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    steps: Vec<StepMove<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    step_transitions: Vec<Numbered<&'a StepTransition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<TaskMove<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    task_transitions: Vec<Numbered<&'a TaskTransition>>,
}

/// One step's net change: applied only if it is still in `from` (None: a
/// step inserted by the same batch).
#[derive(Debug, Serialize)]
struct StepMove<'a> {
    id: StepId,
    from: Option<StepState>,
    to: StepState,
    attempts: u32,
    backoff_until: Option<DateTime<Utc>>,
    outcome: Option<&'a StepOutcome>,
    #[serde(skip)]
    transitions: u32,
}

/// The task's net change; `result` and `error` are the last ones set.
#[derive(Debug, Serialize)]
struct TaskMove<'a> {
    from: Option<TaskState>,
    to: TaskState,
    at: DateTime<Utc>,
    result: Option<&'a Value>,
    error: Option<&'a Value>,
}

/// An audit row: the `seq`th of its entity in this batch, `last` the one
/// that becomes `most_recent`.
#[derive(Debug, Serialize)]
struct Numbered<T> {
    #[serde(flatten)]
    transition: T,
    seq: u32,
    last: bool,
}

pub(super) fn group(ops: &[WriteOp]) -> Change<'_> {
    let mut c = Change::default();
    let mut moves: HashMap<StepId, usize> = HashMap::new();
    for op in ops {
        match op {
            WriteOp::InsertTask(t) => c.new_tasks.push(t),
            WriteOp::InsertStep(s) => c.new_steps.push(s),
            WriteOp::InsertEdge(e) => c.new_edges.push(e),
            WriteOp::Step {
                transition,
                attempts,
                backoff_until,
                outcome,
            } => {
                let i = *moves.entry(transition.step_id).or_insert_with(|| {
                    c.steps.push(StepMove {
                        id: transition.step_id,
                        from: transition.from,
                        to: transition.to,
                        attempts: *attempts,
                        backoff_until: None,
                        outcome: None,
                        transitions: 0,
                    });
                    c.steps.len() - 1
                });
                let m = &mut c.steps[i];
                m.to = transition.to;
                m.attempts = *attempts;
                m.backoff_until = *backoff_until;
                m.outcome = outcome.as_ref();
                m.transitions += 1;
                c.step_transitions.push(Numbered {
                    transition,
                    seq: m.transitions,
                    last: false,
                });
            }
            WriteOp::Task {
                transition,
                result,
                error,
            } => {
                let m = c.task.get_or_insert(TaskMove {
                    from: transition.from,
                    to: transition.to,
                    at: transition.at,
                    result: None,
                    error: None,
                });
                m.to = transition.to;
                m.at = transition.at;
                m.result = result.as_ref().or(m.result);
                m.error = error.as_ref().or(m.error);
                c.task_transitions.push(Numbered {
                    transition,
                    seq: c.task_transitions.len() as u32 + 1,
                    last: false,
                });
            }
        }
    }
    for t in &mut c.step_transitions {
        t.last = t.seq == c.steps[moves[&t.transition.step_id]].transitions;
    }
    if let Some(t) = c.task_transitions.last_mut() {
        t.last = true;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step_op(step: StepId, from: Option<StepState>, to: StepState, attempts: u32) -> WriteOp {
        WriteOp::Step {
            transition: StepTransition {
                task_id: StepId::nil(),
                step_id: step,
                step_name: "s".into(),
                from,
                to,
                attempt: attempts,
                at: Utc::now(),
                metadata: json!({}),
            },
            attempts,
            backoff_until: None,
            outcome: None,
        }
    }

    #[test]
    fn transitions_collapse_per_step_and_are_numbered() {
        let (a, b) = (new_id(), new_id());
        let ops = vec![
            step_op(a, Some(StepState::Enqueued), StepState::InProgress, 1),
            step_op(b, Some(StepState::Pending), StepState::Enqueued, 1),
            step_op(
                a,
                Some(StepState::InProgress),
                StepState::EnqueuedForOrchestration,
                1,
            ),
            step_op(
                a,
                Some(StepState::EnqueuedForOrchestration),
                StepState::Complete,
                1,
            ),
        ];
        let c = group(&ops);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["steps"][0]["from"], "enqueued");
        assert_eq!(v["steps"][0]["to"], "complete");
        assert_eq!(v["steps"][1]["from"], "pending");
        assert_eq!(v["steps"][1]["to"], "enqueued");
        let numbered: Vec<(String, u64, bool)> = v["step_transitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["to"].as_str().unwrap().to_string(),
                    t["seq"].as_u64().unwrap(),
                    t["last"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            numbered,
            vec![
                ("in_progress".into(), 1, false),
                ("enqueued".into(), 1, true),
                ("enqueued_for_orchestration".into(), 2, false),
                ("complete".into(), 3, true),
            ]
        );
        assert!(v.get("task").is_none() && v.get("new_tasks").is_none());
    }
}
