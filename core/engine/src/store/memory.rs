//! In-memory store for the embedded mode. One mutex guards the data; a
//! per-task async mutex is the orchestrator's exclusive task lock.

use super::{
    Circuit, Committed, StateCounts, Stats, Store, StoreError, TaskFilter, TaskLock, TaskSummary,
    WorkerInfo, WorkerRecord,
};
use crate::model::*;
use crate::queue::Outbox;
use crate::retention::Expiry;
use crate::schedule::Schedule;
use crate::state::{StepState, TaskState};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedMutexGuard};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) tasks: HashMap<TaskId, TaskEntry>,
    pub(super) workers: HashMap<uuid::Uuid, Registered>,
    pub(super) step_index: HashMap<StepId, (TaskId, usize)>,
    pub(super) idempotency: HashMap<String, TaskId>,
    schedules: super::memory_schedules::Schedules,
    /// Tasks removed by retention with `archive` set, and when.
    pub(super) archived: HashMap<TaskId, DateTime<Utc>>,
}

/// A registered worker: what it said, its last heartbeat, when it stopped.
/// A worker, its last heartbeat, when it stopped, and its breakers not closed.
pub(super) type Registered = (
    WorkerInfo,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Vec<Circuit>,
);

pub(super) struct TaskEntry {
    pub(super) task: Task,
    pub(super) steps: Vec<Step>,
    edges: Vec<Edge>,
    pub(super) transitions: Transitions,
    lock: Arc<tokio::sync::Mutex<()>>,
    state_tx: watch::Sender<TaskState>,
}

struct MemoryLock {
    task_id: TaskId,
    _guard: OwnedMutexGuard<()>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn task_count(&self) -> usize {
        self.inner.lock().tasks.len()
    }

    fn submit(
        &self,
        step_id: StepId,
        attempt: u32,
        outcome: StepOutcome,
    ) -> Result<SubmitOutcome, StoreError> {
        let mut inner = self.inner.lock();
        let (entry, idx) = inner.locate(step_id)?;
        let s = &mut entry.steps[idx];
        if s.attempts != attempt {
            return Ok(SubmitOutcome::Refused {
                state: s.state,
                attempts: s.attempts,
            });
        }
        match s.state {
            StepState::InProgress => {
                let status = outcome.status();
                s.outcome = Some(outcome);
                entry.step_transition(
                    idx,
                    StepState::EnqueuedForOrchestration,
                    json!({ "outcome": status }),
                );
                Ok(SubmitOutcome::Accepted)
            }
            StepState::EnqueuedForOrchestration
            | StepState::Complete
            | StepState::Error
            | StepState::WaitingForRetry => Ok(SubmitOutcome::Duplicate),
            state => Ok(SubmitOutcome::Refused {
                state,
                attempts: s.attempts,
            }),
        }
    }
}

fn conflict(msg: String) -> StoreError {
    StoreError::Conflict(msg)
}

/// Checks every compare-and-swap of `ops` in order against `entry` (None when
/// the batch creates the task), without changing anything.
fn check_ops(entry: Option<&TaskEntry>, ops: &[WriteOp]) -> Result<(), StoreError> {
    let mut task_state = entry.map(|e| e.task.state);
    let mut steps: HashMap<StepId, StepState> = HashMap::new();
    let current = |steps: &HashMap<StepId, StepState>, id: &StepId| {
        steps
            .get(id)
            .copied()
            .or_else(|| entry.and_then(|e| e.steps.iter().find(|s| s.id == *id).map(|s| s.state)))
    };
    for op in ops {
        match op {
            WriteOp::InsertTask(t) => {
                if entry.is_some() || task_state.is_some() {
                    return Err(conflict(format!("task {} exists", t.id)));
                }
                task_state = Some(t.state);
            }
            WriteOp::InsertStep(s) => {
                let dup = entry.is_some_and(|e| e.steps.iter().any(|x| x.name == s.name));
                if dup || current(&steps, &s.id).is_some() {
                    return Err(conflict(format!("step {} exists", s.name)));
                }
                steps.insert(s.id, s.state);
            }
            WriteOp::InsertEdge(_) => {}
            WriteOp::Task { transition, .. } => {
                if let Some(from) = transition.from {
                    if task_state != Some(from) {
                        return Err(conflict(format!(
                            "task is {:?}, expected {from}",
                            task_state.map(|s| s.to_string())
                        )));
                    }
                }
                task_state = Some(transition.to);
            }
            WriteOp::Step { transition, .. } => {
                let cur = current(&steps, &transition.step_id);
                if let Some(from) = transition.from {
                    if cur != Some(from) {
                        return Err(conflict(format!(
                            "step {} is {:?}, expected {from}",
                            transition.step_name,
                            cur.map(|s| s.to_string())
                        )));
                    }
                }
                steps.insert(transition.step_id, transition.to);
            }
        }
    }
    Ok(())
}

impl Inner {
    fn apply(&mut self, task_id: TaskId, ops: Vec<WriteOp>) {
        for op in ops {
            if let WriteOp::InsertTask(task) = op {
                let (state_tx, _) = watch::channel(task.state);
                if let Some(key) = &task.idempotency_key {
                    self.idempotency.insert(key.clone(), task.id);
                }
                self.tasks.insert(
                    task.id,
                    TaskEntry {
                        task,
                        steps: Vec::new(),
                        edges: Vec::new(),
                        transitions: Transitions::default(),
                        lock: Arc::new(tokio::sync::Mutex::new(())),
                        state_tx,
                    },
                );
                continue;
            }
            let entry = self.tasks.get_mut(&task_id).expect("checked");
            match op {
                WriteOp::InsertTask(_) => unreachable!(),
                WriteOp::InsertStep(step) => {
                    self.step_index
                        .insert(step.id, (task_id, entry.steps.len()));
                    entry.steps.push(step);
                }
                WriteOp::InsertEdge(edge) => entry.edges.push(edge),
                WriteOp::Task {
                    transition,
                    result,
                    error,
                } => {
                    let t = &mut entry.task;
                    if t.state.is_terminal() && !transition.to.is_terminal() {
                        t.error = None;
                        t.completed_at = None;
                    }
                    t.state = transition.to;
                    t.updated_at = transition.at;
                    if result.is_some() {
                        t.result = result;
                    }
                    if error.is_some() {
                        t.error = error;
                    }
                    if transition.to.is_terminal() {
                        t.completed_at = Some(transition.at);
                    }
                    entry.state_tx.send_replace(transition.to);
                    entry.transitions.task.push(transition);
                }
                WriteOp::Step {
                    transition,
                    attempts,
                    backoff_until,
                    outcome,
                    max_attempts,
                } => {
                    let (_, idx) = self.step_index[&transition.step_id];
                    let s = &mut entry.steps[idx];
                    if let Some(limit) = max_attempts {
                        s.max_attempts = limit;
                    }
                    s.state = transition.to;
                    s.attempts = attempts;
                    s.backoff_until = backoff_until;
                    s.outcome = outcome;
                    entry.transitions.steps.push(transition);
                }
            }
        }
    }

    fn locate(&mut self, step_id: StepId) -> Result<(&mut TaskEntry, usize), StoreError> {
        let (task_id, idx) = *self
            .step_index
            .get(&step_id)
            .ok_or(StoreError::StepNotFound(step_id))?;
        let entry = self
            .tasks
            .get_mut(&task_id)
            .ok_or(StoreError::TaskNotFound(task_id))?;
        Ok((entry, idx))
    }
}

impl TaskEntry {
    fn graph(&self) -> TaskGraph {
        TaskGraph {
            task: self.task.clone(),
            steps: self.steps.clone(),
            edges: self.edges.clone(),
        }
    }

    fn step_transition(&mut self, idx: usize, to: StepState, metadata: serde_json::Value) {
        let s = &mut self.steps[idx];
        let from = s.state;
        s.state = to;
        self.transitions.steps.push(StepTransition {
            task_id: s.task_id,
            step_id: s.id,
            step_name: s.name.clone(),
            from: Some(from),
            to,
            attempt: s.attempts,
            at: Utc::now(),
            metadata,
        });
    }

    fn work(&self, idx: usize) -> StepWork {
        step_work(&self.task, &self.steps, &self.edges, idx)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_task(
        &self,
        ops: Vec<WriteOp>,
        outbox: Outbox,
    ) -> Result<Committed, StoreError> {
        let Some(WriteOp::InsertTask(task)) = ops.first() else {
            return Err(StoreError::Backend(
                "create_task must start with InsertTask".into(),
            ));
        };
        let task_id = task.id;
        let mut inner = self.inner.lock();
        if let Some(key) = &task.idempotency_key {
            if let Some(existing) = inner.idempotency.get(key) {
                return Err(StoreError::DuplicateIdempotencyKey {
                    key: key.clone(),
                    existing: *existing,
                });
            }
        }
        check_ops(None, &ops)?;
        inner.apply(task_id, ops);
        Ok(Committed::unclaimed(outbox))
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<TaskId>, StoreError> {
        Ok(self.inner.lock().idempotency.get(key).copied())
    }

    async fn lock_task(&self, task_id: TaskId) -> Result<(TaskGraph, TaskLock), StoreError> {
        let lock = {
            let inner = self.inner.lock();
            inner
                .tasks
                .get(&task_id)
                .ok_or(StoreError::TaskNotFound(task_id))?
                .lock
                .clone()
        };
        let guard = lock.lock_owned().await;
        let graph = self.inner.lock().tasks[&task_id].graph();
        Ok((
            graph,
            TaskLock(Box::new(MemoryLock {
                task_id,
                _guard: guard,
            })),
        ))
    }

    async fn commit(
        &self,
        lock: TaskLock,
        ops: Vec<WriteOp>,
        outbox: Outbox,
    ) -> Result<Committed, StoreError> {
        let lock = lock.into_inner::<MemoryLock>()?;
        let mut inner = self.inner.lock();
        let entry = inner
            .tasks
            .get(&lock.task_id)
            .ok_or(StoreError::TaskNotFound(lock.task_id))?;
        check_ops(Some(entry), &ops)?;
        inner.apply(lock.task_id, ops);
        Ok(Committed::unclaimed(outbox))
    }

    async fn start_step(
        &self,
        step_id: StepId,
        attempt: u32,
        mark: bool,
    ) -> Result<StartOutcome, StoreError> {
        let mut inner = self.inner.lock();
        let (entry, idx) = inner.locate(step_id)?;
        let s = &entry.steps[idx];
        let (state, attempts) = (s.state, s.attempts);
        if entry.task.state.is_terminal() || attempts != attempt {
            return Ok(StartOutcome::Stale { state, attempts });
        }
        match state {
            StepState::Enqueued => {
                if mark {
                    entry.step_transition(idx, StepState::InProgress, json!({}));
                }
                Ok(StartOutcome::Started(Box::new(entry.work(idx)), None))
            }
            // The worker that held this attempt died: run it again.
            StepState::InProgress => Ok(StartOutcome::Started(Box::new(entry.work(idx)), None)),
            StepState::EnqueuedForOrchestration => Ok(StartOutcome::AlreadySubmitted),
            _ => Ok(StartOutcome::Stale { state, attempts }),
        }
    }

    async fn submit_result(
        &self,
        step_id: StepId,
        attempt: u32,
        outcome: StepOutcome,
        mut outbox: Outbox,
    ) -> Result<(SubmitOutcome, Outbox), StoreError> {
        let result = self.submit(step_id, attempt, outcome)?;
        if matches!(result, SubmitOutcome::Refused { .. }) {
            outbox.sends.clear();
        }
        Ok((result, outbox))
    }

    async fn graph(&self, task_id: TaskId) -> Result<TaskGraph, StoreError> {
        let inner = self.inner.lock();
        Ok(inner
            .tasks
            .get(&task_id)
            .ok_or(StoreError::TaskNotFound(task_id))?
            .graph())
    }

    async fn graph_and_transitions(
        &self,
        task_id: TaskId,
    ) -> Result<(TaskGraph, Transitions), StoreError> {
        let inner = self.inner.lock();
        let entry = inner
            .tasks
            .get(&task_id)
            .ok_or(StoreError::TaskNotFound(task_id))?;
        Ok((entry.graph(), entry.transitions.clone()))
    }

    async fn wait_terminal(&self, task_id: TaskId, timeout: Duration) -> Result<Task, StoreError> {
        let mut rx = {
            let inner = self.inner.lock();
            inner
                .tasks
                .get(&task_id)
                .ok_or(StoreError::TaskNotFound(task_id))?
                .state_tx
                .subscribe()
        };
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_terminal())).await;
        let inner = self.inner.lock();
        Ok(inner.tasks[&task_id].task.clone())
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        Ok(self.inner.lock().counts())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>, StoreError> {
        Ok(self.inner.lock().list(filter))
    }

    async fn register_worker(&self, worker: &WorkerInfo) -> Result<(), StoreError> {
        let now = Utc::now();
        self.inner
            .lock()
            .workers
            .insert(worker.id, (worker.clone(), now, None, Vec::new()));
        Ok(())
    }

    async fn heartbeat(
        &self,
        worker: uuid::Uuid,
        stopped: bool,
        circuits: &[Circuit],
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        if let Some(w) = self.inner.lock().workers.get_mut(&worker) {
            w.1 = now;
            if stopped {
                w.2 = Some(now);
            }
            w.3 = circuits.to_vec();
        }
        Ok(())
    }

    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerRecord>, StoreError> {
        Ok(self.inner.lock().workers_since(since))
    }

    async fn enqueued_for(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<StepMessage>, StoreError> {
        Ok(self.inner.lock().enqueued_for(older_than, limit))
    }

    async fn due_tasks(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<TaskId>, StoreError> {
        Ok(self.inner.lock().due(now, limit))
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.inner.lock().next_due())
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        Ok(self.inner.lock().schedules.all())
    }

    async fn insert_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError> {
        Ok(self.inner.lock().schedules.insert(schedule))
    }

    async fn replace_schedule(
        &self,
        schedule: &Schedule,
        expected: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        Ok(self.inner.lock().schedules.replace(schedule, expected))
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner.lock().schedules.delete(name))
    }

    async fn stats(&self, since: DateTime<Utc>) -> Result<Stats, StoreError> {
        Ok(self.inner.lock().stats(since))
    }

    async fn expire(&self, expiry: &Expiry, limit: i64) -> Result<u64, StoreError> {
        Ok(self.inner.lock().expire(expiry, Utc::now(), limit))
    }

    async fn archived(&self, task_id: TaskId) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.inner.lock().archived.get(&task_id).copied())
    }
}
