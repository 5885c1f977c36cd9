//! Write batches grouped for PostgreSQL's `sg_commit`: the rows of one or
//! more tasks' batches by kind, each naming its task; each step's
//! transitions (and each task's) collapsed into one compare-and-swap from
//! the state before its first to the state after its last, and the audit
//! rows numbered per entity so the function needs no window queries. A row
//! the same batch inserts is inserted as its moves leave it.
//!
//! Every step and task row counts its audit rows (`transitions`): each
//! insert or move carries how many this batch adds, and the function gives
//! the k-th of an entity's n rows the sort_key count - n + k, reading no
//! audit table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use stepgraph_engine::*;

#[derive(Debug, Default, Serialize)]
pub(crate) struct Change<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    new_tasks: Vec<Counted<Cow<'a, Task>>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    new_steps: Vec<Counted<Cow<'a, Step>>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    new_edges: Vec<TaskEdge<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    steps: Vec<StepMove<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    step_transitions: Vec<Numbered<&'a StepTransition>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tasks: Vec<TaskMove<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    task_transitions: Vec<Numbered<&'a TaskTransition>>,
}

/// An inserted row with its audit rows in this batch (0 when it also has a
/// move, which counts them).
#[derive(Debug, Serialize)]
struct Counted<T> {
    #[serde(flatten)]
    row: T,
    transitions: u32,
}

#[derive(Debug, Serialize)]
struct TaskEdge<'a> {
    task_id: TaskId,
    #[serde(flatten)]
    edge: &'a Edge,
}

/// One step's net change: applied only if it is still in `from` (None:
/// unchecked). A step the same batch inserts gets its move in its insert.
#[derive(Debug, Serialize)]
struct StepMove<'a> {
    id: StepId,
    task_id: TaskId,
    from: Option<StepState>,
    to: StepState,
    attempts: u32,
    backoff_until: Option<DateTime<Utc>>,
    outcome: Option<&'a StepOutcome>,
    /// Only when changed (an operator's retry): the column is left as it is otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    /// Its audit rows in this batch.
    #[serde(rename = "n")]
    transitions: u32,
}

/// A task's optimistic lock (None: no version check) and its net change,
/// if any; `result` and `error` are the last ones set.
#[derive(Debug, Serialize)]
struct TaskMove<'a> {
    id: TaskId,
    lock: Option<i64>,
    from: Option<TaskState>,
    to: Option<TaskState>,
    at: Option<DateTime<Utc>>,
    result: Option<&'a Value>,
    error: Option<&'a Value>,
    /// Its audit rows in this batch.
    n: u32,
}

/// One task's write batch, applied if the task's lock version is still `lock`.
pub(crate) struct Batch<'a> {
    pub task_id: TaskId,
    pub lock: Option<i64>,
    pub ops: &'a [WriteOp],
}

/// An audit row: the `seq`th of its entity's `n` in this batch, `last` the
/// `n`th.
#[derive(Debug, Serialize)]
struct Numbered<T> {
    #[serde(flatten)]
    transition: T,
    seq: u32,
    n: u32,
    last: bool,
}

pub(crate) fn group<'a>(batches: impl IntoIterator<Item = Batch<'a>>) -> Change<'a> {
    let mut c = Change::default();
    for b in batches {
        add(&mut c, b);
    }
    c
}

fn add<'a>(c: &mut Change<'a>, batch: Batch<'a>) {
    let Batch { task_id, lock, ops } = batch;
    let first_transition = c.step_transitions.len();
    let first_task_transition = c.task_transitions.len();
    // Rows this batch inserts, by id: their moves become their inserted values.
    let mut new_steps: HashMap<StepId, usize> = HashMap::new();
    let mut new_task = None;
    let mut moves: Vec<StepMove<'a>> = Vec::new();
    let mut moved: HashMap<StepId, usize> = HashMap::new();
    let mut task: Option<TaskMove<'a>> = None;
    for op in ops {
        match op {
            WriteOp::InsertTask(t) => {
                new_task = (t.id == task_id).then_some(c.new_tasks.len());
                c.new_tasks.push(Counted {
                    row: Cow::Borrowed(t),
                    transitions: 0,
                });
            }
            WriteOp::InsertStep(s) => {
                new_steps.insert(s.id, c.new_steps.len());
                c.new_steps.push(Counted {
                    row: Cow::Borrowed(s),
                    transitions: 0,
                });
            }
            WriteOp::InsertEdge(edge) => c.new_edges.push(TaskEdge { task_id, edge }),
            WriteOp::Step {
                transition,
                attempts,
                backoff_until,
                outcome,
                max_attempts,
            } => {
                let i = *moved.entry(transition.step_id).or_insert_with(|| {
                    moves.push(StepMove {
                        id: transition.step_id,
                        task_id,
                        from: transition.from,
                        to: transition.to,
                        attempts: *attempts,
                        backoff_until: None,
                        outcome: None,
                        max_attempts: None,
                        transitions: 0,
                    });
                    moves.len() - 1
                });
                let m = &mut moves[i];
                m.to = transition.to;
                m.attempts = *attempts;
                m.backoff_until = *backoff_until;
                m.outcome = outcome.as_ref();
                m.max_attempts = max_attempts.or(m.max_attempts);
                m.transitions += 1;
                c.step_transitions.push(Numbered {
                    transition,
                    seq: m.transitions,
                    n: 0,
                    last: false,
                });
            }
            WriteOp::Task {
                transition,
                result,
                error,
            } => {
                let m = task.get_or_insert(TaskMove {
                    id: task_id,
                    lock,
                    from: transition.from,
                    to: None,
                    at: None,
                    result: None,
                    error: None,
                    n: 0,
                });
                m.to = Some(transition.to);
                m.at = Some(transition.at);
                m.result = result.as_ref().or(m.result);
                m.error = error.as_ref().or(m.error);
                m.n += 1;
                c.task_transitions.push(Numbered {
                    transition,
                    seq: m.n,
                    n: 0,
                    last: false,
                });
            }
        }
    }
    for t in &mut c.step_transitions[first_transition..] {
        t.n = moves[moved[&t.transition.step_id]].transitions;
        t.last = t.seq == t.n;
    }
    let task_n = task.as_ref().map_or(0, |m| m.n);
    for t in &mut c.task_transitions[first_task_transition..] {
        t.n = task_n;
        t.last = t.seq == t.n;
    }
    for m in moves {
        match new_steps.get(&m.id) {
            Some(&i) => {
                let new = &mut c.new_steps[i];
                new.transitions = m.transitions;
                m.fold_into(new.row.to_mut());
            }
            None => c.steps.push(m),
        }
    }
    match (task, new_task) {
        // A task created by this batch is inserted as it ends up; nothing
        // to compare it with.
        (Some(m), Some(i)) if lock.is_none() => {
            let new = &mut c.new_tasks[i];
            new.transitions = m.n;
            m.fold_into(new.row.to_mut());
        }
        (Some(m), _) => c.tasks.push(m),
        (None, _) => c.tasks.extend(lock.map(|lock| TaskMove {
            id: task_id,
            lock: Some(lock),
            from: None,
            to: None,
            at: None,
            result: None,
            error: None,
            n: 0,
        })),
    }
}

impl StepMove<'_> {
    /// This move applied to the row it moves.
    fn fold_into(self, step: &mut Step) {
        step.state = self.to;
        step.attempts = self.attempts;
        step.backoff_until = self.backoff_until;
        step.outcome = self.outcome.cloned();
        if let Some(limit) = self.max_attempts {
            step.max_attempts = limit;
        }
    }
}

impl TaskMove<'_> {
    /// This move applied to the row it moves.
    fn fold_into(self, task: &mut Task) {
        if let (Some(to), Some(at)) = (self.to, self.at) {
            task.state = to;
            task.updated_at = at;
            if to.is_terminal() {
                task.completed_at = Some(at);
            }
        }
        if let Some(r) = self.result.filter(|r| !r.is_null()) {
            task.result = Some(r.clone());
        }
        if let Some(e) = self.error.filter(|e| !e.is_null()) {
            task.error = Some(e.clone());
        }
    }
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
            max_attempts: None,
        }
    }

    /// Each audit row's `key`, number and whether it is the last.
    fn numbered(rows: &Value, key: &str) -> Vec<(String, u64, bool)> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t[key].as_str().unwrap().to_string(),
                    t["seq"].as_u64().unwrap(),
                    t["last"].as_bool().unwrap(),
                )
            })
            .collect()
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
        let c = group([Batch {
            task_id: TaskId::nil(),
            lock: None,
            ops: &ops,
        }]);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["steps"][0]["from"], "enqueued");
        assert_eq!(v["steps"][0]["to"], "complete");
        assert_eq!(v["steps"][1]["from"], "pending");
        assert_eq!(v["steps"][1]["to"], "enqueued");
        assert_eq!(
            numbered(&v["step_transitions"], "to"),
            vec![
                ("in_progress".into(), 1, false),
                ("enqueued".into(), 1, true),
                ("enqueued_for_orchestration".into(), 2, false),
                ("complete".into(), 3, true),
            ]
        );
        assert!(v.get("tasks").is_none() && v.get("new_tasks").is_none());
    }

    fn task_op(task: TaskId, from: TaskState, to: TaskState) -> WriteOp {
        WriteOp::Task {
            transition: TaskTransition {
                task_id: task,
                from: Some(from),
                to,
                at: Utc::now(),
                metadata: json!({}),
            },
            result: None,
            error: None,
        }
    }

    #[test]
    fn each_task_of_a_group_keeps_its_lock_and_its_own_numbering() {
        let (t1, t2, t3) = (new_id(), new_id(), new_id());
        let first = vec![
            task_op(t1, TaskState::StepsInProcess, TaskState::EvaluatingResults),
            task_op(t1, TaskState::EvaluatingResults, TaskState::Complete),
        ];
        let second = vec![task_op(
            t2,
            TaskState::StepsInProcess,
            TaskState::EvaluatingResults,
        )];
        let c = group([
            Batch {
                task_id: t1,
                lock: Some(3),
                ops: &first,
            },
            Batch {
                task_id: t2,
                lock: Some(7),
                ops: &second,
            },
            // Only the lock: a version check and bump, no move.
            Batch {
                task_id: t3,
                lock: Some(1),
                ops: &[],
            },
        ]);
        let v = serde_json::to_value(&c).unwrap();
        let tasks: Vec<(String, i64, Value)> = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    t["lock"].as_i64().unwrap(),
                    t["to"].clone(),
                )
            })
            .collect();
        assert_eq!(
            tasks,
            vec![
                (t1.to_string(), 3, json!("complete")),
                (t2.to_string(), 7, json!("evaluating_results")),
                (t3.to_string(), 1, Value::Null),
            ]
        );
        assert_eq!(
            numbered(&v["task_transitions"], "task_id"),
            vec![
                (t1.to_string(), 1, false),
                (t1.to_string(), 2, true),
                (t2.to_string(), 1, true),
            ]
        );
    }

    #[test]
    fn rows_the_batch_inserts_are_inserted_as_their_moves_leave_them() {
        let now = Utc::now();
        let task = Task::pending("ns", "t", "1", json!({}));
        let step = Step {
            id: new_id(),
            task_id: task.id,
            name: "s".into(),
            template_step: "s".into(),
            step_type: stepgraph_engine::template::StepType::Standard,
            handler: "h".into(),
            config: json!({}),
            state: StepState::Pending,
            attempts: 0,
            max_attempts: 3,
            timeout_seconds: None,
            batch_size: None,
            backoff_until: None,
            cursor: None,
            outcome: None,
            created_at: now,
        };
        let (task_id, step_id) = (task.id, step.id);
        let ops = vec![
            WriteOp::InsertTask(task),
            WriteOp::InsertStep(step),
            task_op(task_id, TaskState::Pending, TaskState::Initializing),
            task_op(task_id, TaskState::Initializing, TaskState::StepsInProcess),
            step_op(step_id, Some(StepState::Pending), StepState::Enqueued, 1),
        ];
        let c = group([Batch {
            task_id,
            lock: None,
            ops: &ops,
        }]);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["new_tasks"][0]["state"], "steps_in_process");
        assert_eq!(v["new_steps"][0]["state"], "enqueued");
        assert_eq!(v["new_steps"][0]["attempts"], 1);
        // Nothing left to compare and swap; the audit rows are all there.
        assert!(v.get("tasks").is_none() && v.get("steps").is_none());
        assert_eq!(v["task_transitions"].as_array().unwrap().len(), 2);
        assert_eq!(v["task_transitions"][1]["last"], true);
        assert_eq!(v["step_transitions"][0]["last"], true);
    }
}
