//! Durable state behind one trait. The orchestrator reads a task's whole graph
//! under an exclusive per-task lock, decides, and hands back a batch of
//! [`WriteOp`]s applied atomically, so a backend needs few round trips per step.

mod list;
mod memory;
mod memory_retention;
mod memory_schedules;
mod memory_views;
mod workers;

pub use list::{
    FailingTemplate, MinuteCounts, Recent, Stats, TaskFilter, TaskSummary, TemplateStats,
    DEFAULT_PAGE, FAILING_TEMPLATES, MAX_PAGE,
};
pub use workers::{
    live_handlers, Circuit, WorkerInfo, WorkerRecord, WorkerState, MISSED_HEARTBEATS,
};

pub use memory::MemoryStore;

use crate::model::*;
use crate::queue::Outbox;
use crate::retention::Expiry;
use crate::schedule::Schedule;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::any::Any;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    #[error("step {0} not found")]
    StepNotFound(StepId),
    #[error("a task with idempotency key {key:?} already exists: {existing}")]
    DuplicateIdempotencyKey { key: String, existing: TaskId },
    /// A compare-and-swap found another state than expected; re-read and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A unique key is taken (PostgreSQL: SQLSTATE 23505 on `constraint`).
    #[error("duplicate key ({constraint}): {message}")]
    KeyTaken { constraint: String, message: String },
    /// The backend cannot be reached now (connection refused or lost, pool
    /// exhausted); a later try may work.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    /// A stored row the engine cannot decode (written by another version,
    /// or changed by hand): every try fails the same way.
    #[error("stored data cannot be read: {0}")]
    Unreadable(String),
    #[error("storage backend: {0}")]
    Backend(String),
}

impl StoreError {
    /// The backend is unreachable now, or another process changed the task
    /// first: a later try may well succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict(_))
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StateCounts {
    pub tasks: Vec<(String, i64)>,
    pub steps: Vec<(String, i64)>,
}

/// Proof that the caller holds a task's exclusive lock; given back on commit.
pub struct TaskLock(pub Box<dyn Any + Send>);

impl TaskLock {
    /// The store's own lock type back; another store's lock is an error.
    pub fn into_inner<T: Any>(self) -> Result<Box<T>, StoreError> {
        self.0
            .downcast::<T>()
            .map_err(|_| StoreError::Backend("lock from another store".into()))
    }
}

/// A task's graph with the lock it was read under.
pub struct Snapshot {
    pub graph: TaskGraph,
    pub lock: TaskLock,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("task", &self.graph.task.id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a task: `ops` starts with [`WriteOp::InsertTask`]; all or
    /// nothing. See [`Committed`] for what it did with `outbox`.
    async fn create_task(&self, ops: Vec<WriteOp>, outbox: Outbox)
        -> Result<Committed, StoreError>;

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<TaskId>, StoreError>;

    /// Takes the task's exclusive lock (waiting for it) and reads its graph.
    async fn lock_task(&self, task_id: TaskId) -> Result<(TaskGraph, TaskLock), StoreError>;

    /// Whether a commit can lease the steps of its outbox's claims to the
    /// committing process, whatever the queue: eager dispatch.
    fn leases_steps(&self) -> bool {
        false
    }

    /// Applies `ops` atomically and releases the lock; see [`Committed`].
    async fn commit(
        &self,
        lock: TaskLock,
        ops: Vec<WriteOp>,
        outbox: Outbox,
    ) -> Result<Committed, StoreError>;

    /// Worker: what the handler of `attempt` needs; with `mark`, also the
    /// Enqueued -> InProgress transition (without it, the transition is left
    /// to the commit that records the outcome).
    async fn start_step(
        &self,
        step_id: StepId,
        attempt: u32,
        mark: bool,
    ) -> Result<StartOutcome, StoreError>;

    /// Worker: InProgress -> EnqueuedForOrchestration with the attempt's
    /// outcome. `outbox` sends go out only when the result is Accepted or a
    /// Duplicate; its ack always. Returns what the caller must still deliver.
    async fn submit_result(
        &self,
        step_id: StepId,
        attempt: u32,
        outcome: StepOutcome,
        outbox: Outbox,
    ) -> Result<(SubmitOutcome, Outbox), StoreError>;

    /// A consistent read without taking the lock.
    async fn graph(&self, task_id: TaskId) -> Result<TaskGraph, StoreError>;

    /// The task's graph with its audit trail, read together.
    async fn graph_and_transitions(
        &self,
        task_id: TaskId,
    ) -> Result<(TaskGraph, Transitions), StoreError>;

    /// Waits until the task is in a terminal state or `timeout` passes; returns it either way.
    async fn wait_terminal(&self, task_id: TaskId, timeout: Duration) -> Result<Task, StoreError>;

    /// [`Store::wait_terminal`], then [`Store::graph_and_transitions`].
    async fn wait_terminal_view(
        &self,
        task_id: TaskId,
        timeout: Duration,
    ) -> Result<(TaskGraph, Transitions), StoreError> {
        self.wait_terminal(task_id, timeout).await?;
        self.graph_and_transitions(task_id).await
    }

    /// How many tasks and steps are in each state (for metrics).
    async fn counts(&self) -> Result<StateCounts, StoreError>;

    /// The tasks `filter` matches, newest first, at most `filter.limit`.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>, StoreError>;

    /// Tasks and steps by template and state; failures and retries since `since`.
    async fn stats(&self, since: DateTime<Utc>) -> Result<Stats, StoreError>;

    /// Records a worker that starts (or says so again).
    async fn register_worker(&self, worker: &WorkerInfo) -> Result<(), StoreError>;

    /// The worker is alive now; with `stopped`, it stopped cleanly.
    async fn heartbeat(
        &self,
        worker: uuid::Uuid,
        stopped: bool,
        circuits: &[Circuit],
    ) -> Result<(), StoreError>;

    /// The workers seen since `since`, newest first, live ones first.
    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerRecord>, StoreError>;

    /// Steps Enqueued for longer than `older_than` (since their last
    /// transition), oldest first, at most `limit`, as their messages: what
    /// the handler-wait timeout looks at.
    async fn enqueued_for(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<StepMessage>, StoreError>;

    /// What may have lost its message. Steps whose lease ran out while
    /// Enqueued or InProgress (the worker they were leased to died); they
    /// are leased for `older_than` more, so that one sweep at a time sends
    /// them. And, with a queue that commits apart from the store (a crash
    /// between the commit and the send loses messages), steps Enqueued or
    /// EnqueuedForOrchestration for longer than `older_than`, and tasks
    /// WaitingForRetry that long with every backoff over.
    async fn stranded(&self, _older_than: Duration, _limit: i64) -> Result<Stranded, StoreError> {
        Ok(Stranded::default())
    }

    /// Ends a task that cannot go on (a poison message: one that failed the
    /// same way on every delivery) in Error, with `error` as its error and
    /// `reason` in the audit trail; each of its steps not yet ended (but an
    /// Error one) is Cancelled with the reason, so nothing of it runs or is
    /// sent again. A store that can read the task goes through its graph
    /// (this default); one whose rows may be what cannot be read overrides
    /// it without decoding them. False when the task had ended already.
    async fn fail_task(
        &self,
        task_id: TaskId,
        error: serde_json::Value,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut txn = crate::txn::TaskTxn::open(self, task_id).await?;
        if !txn.fail(error, reason) {
            return Ok(false);
        }
        txn.commit(self, Outbox::default()).await?;
        Ok(true)
    }

    /// Delayed tasks whose `run_at` has come (at most `limit`, earliest first).
    async fn due_tasks(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<TaskId>, StoreError>;

    /// The earliest `run_at` of a task still scheduled.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError>;

    /// Adds a schedule; false when one has its name.
    async fn insert_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError>;

    /// Replaces the schedule of that name if its `next_run_at` is still
    /// `expected` (a compare-and-swap: of two processes firing a tick, or
    /// pausing while it fires, one wins); false otherwise or when gone.
    async fn replace_schedule(
        &self,
        schedule: &Schedule,
        expected: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;

    /// Removes a schedule; false when there was none.
    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError>;

    /// Removes (with `expiry.archive`, archives first) at most `limit` ended
    /// tasks that have outlived their retention, oldest first, with their
    /// steps, edges and audit trails; how many. Several processes may call
    /// it at once: one removes, the others find nothing to do.
    async fn expire(&self, expiry: &Expiry, limit: i64) -> Result<u64, StoreError>;

    /// Makes the space of removed rows (expired tasks, acknowledged
    /// messages) reusable now rather than when the backend gets to it.
    async fn reclaim(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Where the store partitions its history by creation time (the audit
    /// trails on PostgreSQL): makes the partitions `width` wide up to a few
    /// widths ahead, and drops those whose tasks were all created more than
    /// `keep` ago (with what they hold: a day of history goes at once rather
    /// than row by row), keeping the rows of tasks still there. Several
    /// processes may call it at once: one does the work.
    async fn rotate(
        &self,
        _width: std::time::Duration,
        _keep: crate::retention::Keep,
    ) -> Result<crate::retention::Rotation, StoreError> {
        Ok(Default::default())
    }

    /// When the task was removed by retention, if it was archived then.
    async fn archived(&self, _task_id: TaskId) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(None)
    }

    /// Ends the leases that [`Self::stranded`] took, once the steps'
    /// messages are sent (the queue redelivers them from now on); a lease a
    /// later commit gave the step stays.
    async fn end_leases(&self, _leases: &[(StepId, DateTime<Utc>)]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What a [`Store::commit`] did with its outbox.
pub struct Committed {
    /// What the caller must still deliver.
    pub rest: Outbox,
    /// Whether the outbox's claims were leased to the committing process
    /// (else their messages are in `rest`).
    pub claimed: bool,
    /// With claims, and a store whose task locks are versions: the lock as
    /// of this commit. A commit against it succeeds if nothing has changed
    /// the task since.
    pub lock: Option<TaskLock>,
}

impl Committed {
    /// Nothing claimed: the claims go out with the rest.
    pub fn unclaimed(rest: Outbox) -> Committed {
        Committed {
            rest: rest.unclaimed(),
            claimed: false,
            lock: None,
        }
    }
}

/// See [`Store::stranded`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stranded {
    pub steps: Vec<StrandedStep>,
    /// Tasks to wake (their retry timer's message may be lost).
    pub tasks: Vec<TaskId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StrandedStep {
    pub message: StepMessage,
    /// Waiting for the orchestrator (its result is recorded), not a worker.
    pub for_orchestration: bool,
    pub namespace: String,
    pub task_name: String,
    pub version: String,
    /// For a step whose lease ran out: the lease the sweep took on it.
    pub lease: Option<DateTime<Utc>>,
}
