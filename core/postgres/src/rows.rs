//! What the server-side functions return, decoded: a task's graph with its
//! lock version, and the work of a step being started.

use serde::Deserialize;
use serde_json::{Map, Value};
use stepgraph_engine::queue::Outbox;
use stepgraph_engine::store::{Committed, Snapshot, TaskLock};
use stepgraph_engine::*;

pub(crate) struct PgLock {
    pub(crate) task_id: TaskId,
    pub(crate) version: i64,
}

#[derive(Deserialize)]
pub(crate) struct GraphRow {
    lock_version: i64,
    task: Task,
    steps: Vec<Step>,
    edges: Vec<Edge>,
}

/// A commit's outcome; with claims, the task's lock as of it.
pub(crate) fn committed(task_id: TaskId, version: i64, rest: Outbox, claimed: bool) -> Committed {
    let lock = claimed.then(|| TaskLock(Box::new(PgLock { task_id, version })));
    Committed {
        rest,
        claimed,
        lock,
    }
}

impl GraphRow {
    /// The graph with its lock: its version as read.
    pub(crate) fn into_snapshot(self) -> Snapshot {
        Snapshot {
            lock: TaskLock(Box::new(PgLock {
                task_id: self.task.id,
                version: self.lock_version,
            })),
            graph: self.into_graph(),
        }
    }

    pub(crate) fn into_graph(self) -> TaskGraph {
        TaskGraph {
            task: self.task,
            steps: self.steps,
            edges: self.edges,
        }
    }
}

#[derive(Deserialize)]
struct Dependency {
    name: String,
    outcome: Option<StepOutcome>,
}

#[derive(Deserialize)]
pub(crate) struct WorkRow {
    task_id: TaskId,
    step_id: StepId,
    namespace: String,
    task_name: String,
    step_name: String,
    handler: String,
    config: Value,
    context: Value,
    attempt: u32,
    max_attempts: u32,
    timeout_seconds: Option<f64>,
    batch_size: Option<u64>,
    cursor: Option<Value>,
    dependencies: Vec<Dependency>,
}

impl WorkRow {
    pub(crate) fn into_work(self) -> StepWork {
        let w = self;
        let dependency_results: Map<String, Value> = w
            .dependencies
            .into_iter()
            .map(|d| {
                (
                    d.name,
                    d.outcome.and_then(|o| o.result_value()).unwrap_or_default(),
                )
            })
            .collect();
        StepWork {
            task_id: w.task_id,
            step_id: w.step_id,
            namespace: w.namespace,
            task_name: w.task_name,
            step_name: w.step_name,
            handler: w.handler,
            config: w.config,
            context: w.context,
            dependency_results,
            attempt: w.attempt,
            max_attempts: w.max_attempts,
            timeout_seconds: w.timeout_seconds,
            batch_size: w.batch_size,
            cursor: w.cursor,
            traceparent: None,
        }
    }
}
