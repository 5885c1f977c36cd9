//! A unit of orchestration work on one task: a snapshot of its graph, kept
//! current as decisions are made, and the write batch a store commits atomically.

use crate::model::*;
use crate::queue::Outbox;
use crate::state::{IllegalTransition, StepState, TaskState};
use crate::store::{Committed, Snapshot, Store, StoreError, TaskLock};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;

pub struct TaskTxn {
    graph: TaskGraph,
    index: HashMap<StepId, usize>,
    ops: Vec<WriteOp>,
    lock: Option<TaskLock>,
    pub now: DateTime<Utc>,
}

impl TaskTxn {
    /// A txn that creates `task` (in `Pending`).
    pub fn create(task: Task) -> TaskTxn {
        let now = task.created_at;
        let initial = TaskTransition {
            task_id: task.id,
            from: None,
            to: task.state,
            at: now,
            metadata: json!({}),
        };
        let ops = vec![
            WriteOp::InsertTask(task.clone()),
            WriteOp::Task {
                transition: initial,
                result: None,
                error: None,
            },
        ];
        TaskTxn {
            graph: TaskGraph {
                task,
                steps: Vec::new(),
                edges: Vec::new(),
            },
            index: HashMap::new(),
            ops,
            lock: None,
            now,
        }
    }

    /// Locks an existing task and reads its graph.
    pub async fn open<S: Store + ?Sized>(
        store: &S,
        task_id: TaskId,
    ) -> Result<TaskTxn, StoreError> {
        let (graph, lock) = store.lock_task(task_id).await?;
        let index = graph
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        Ok(TaskTxn {
            graph,
            index,
            ops: Vec::new(),
            lock: Some(lock),
            now: Utc::now(),
        })
    }

    /// A txn over a graph read earlier under `lock`.
    pub fn from_snapshot(snapshot: Snapshot) -> TaskTxn {
        let graph = snapshot.graph;
        let index = graph
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        TaskTxn {
            graph,
            index,
            ops: Vec::new(),
            lock: Some(snapshot.lock),
            now: Utc::now(),
        }
    }

    pub fn graph(&self) -> &TaskGraph {
        &self.graph
    }

    pub fn task(&self) -> &Task {
        &self.graph.task
    }

    pub fn step_index(&self, id: StepId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    pub fn step(&self, idx: usize) -> &Step {
        &self.graph.steps[idx]
    }

    /// See [`Store::fail_task`]: every step not yet ended (but an Error
    /// one) Cancelled with `reason`, the task along its path to Error with
    /// `error`. False (and nothing changed) when the task had ended.
    pub fn fail(&mut self, error: Value, reason: &str) -> bool {
        let path = self.task().state.path_to_error();
        if path.is_empty() {
            return false;
        }
        let meta = json!({ "reason": reason });
        for i in 0..self.graph.steps.len() {
            let state = self.step(i).state;
            if !state.is_terminal() && state != StepState::Error {
                self.step_to(i, StepState::Cancelled, meta.clone(), |_| {})
                    .expect("every live step state can be cancelled");
            }
        }
        let last = path.len() - 1;
        for (i, to) in path.into_iter().enumerate() {
            let (meta, error) = match i == last {
                true => (meta.clone(), Some(error.clone())),
                false => (json!({}), None),
            };
            self.finish_task(to, meta, None, error)
                .expect("path_to_error follows the state machine");
        }
        true
    }

    /// The write batch so far.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    pub fn has_changes(&self) -> bool {
        !self.ops.is_empty()
    }

    pub fn task_to(&mut self, to: TaskState, metadata: Value) -> Result<(), IllegalTransition> {
        self.finish_task(to, metadata, None, None)
    }

    /// A task transition that also records the task's result or error.
    pub fn finish_task(
        &mut self,
        to: TaskState,
        metadata: Value,
        result: Option<Value>,
        error: Option<Value>,
    ) -> Result<(), IllegalTransition> {
        let task = &mut self.graph.task;
        task.state.check(to)?;
        // A task that leaves an end (an operator's repair) goes on without
        // the error it ended with; the stores drop it likewise.
        if task.state.is_terminal() && !to.is_terminal() {
            task.error = None;
            task.completed_at = None;
        }
        let transition = TaskTransition {
            task_id: task.id,
            from: Some(task.state),
            to,
            at: self.now,
            metadata,
        };
        task.state = to;
        task.updated_at = self.now;
        if result.is_some() {
            task.result = result.clone();
        }
        if error.is_some() {
            task.error = error.clone();
        }
        self.ops.push(WriteOp::Task {
            transition,
            result,
            error,
        });
        Ok(())
    }

    /// Moves a step; `change` may set its attempts, backoff and outcome.
    pub fn step_to(
        &mut self,
        idx: usize,
        to: StepState,
        metadata: Value,
        change: impl FnOnce(&mut Step),
    ) -> Result<(), IllegalTransition> {
        self.step_to_at(idx, to, self.now, metadata, change)
    }

    /// [`TaskTxn::step_to`] for a transition that happened at `at`.
    pub fn step_to_at(
        &mut self,
        idx: usize,
        to: StepState,
        at: DateTime<Utc>,
        metadata: Value,
        change: impl FnOnce(&mut Step),
    ) -> Result<(), IllegalTransition> {
        let step = &mut self.graph.steps[idx];
        step.state.check(to)?;
        let from = step.state;
        let limit = step.max_attempts;
        change(step);
        step.state = to;
        let max_attempts = (step.max_attempts != limit).then_some(step.max_attempts);
        self.ops.push(WriteOp::Step {
            transition: StepTransition {
                task_id: step.task_id,
                step_id: step.id,
                step_name: step.name.clone(),
                from: Some(from),
                to,
                attempt: step.attempts,
                at,
                metadata,
            },
            attempts: step.attempts,
            backoff_until: step.backoff_until,
            outcome: step.outcome.clone(),
            max_attempts,
        });
        Ok(())
    }

    /// Adds a new (Pending) step with edges from `parents`.
    pub fn add_step(&mut self, step: Step, parents: &[StepId]) {
        let initial = StepTransition {
            task_id: step.task_id,
            step_id: step.id,
            step_name: step.name.clone(),
            from: None,
            to: step.state,
            attempt: 0,
            at: self.now,
            metadata: json!({}),
        };
        self.index.insert(step.id, self.graph.steps.len());
        self.ops.push(WriteOp::InsertStep(step.clone()));
        self.ops.push(WriteOp::Step {
            transition: initial,
            attempts: 0,
            backoff_until: None,
            outcome: None,
            max_attempts: None,
        });
        for &from in parents {
            let edge = Edge { from, to: step.id };
            self.ops.push(WriteOp::InsertEdge(edge));
            self.graph.edges.push(edge);
        }
        self.graph.steps.push(step);
    }

    /// Writes everything (creating the task when this txn made it) and
    /// releases the lock; see [`Committed`].
    pub async fn commit<S: Store + ?Sized>(
        self,
        store: &S,
        outbox: Outbox,
    ) -> Result<Committed, StoreError> {
        match self.lock {
            Some(lock) => store.commit(lock, self.ops, outbox).await,
            None => store.create_task(self.ops, outbox).await,
        }
    }
}
