//! PostgreSQL store. Each call is one statement (a server-side function), so
//! one round trip: reading a graph, committing an orchestration decision with
//! its sends and ack (commits made at once share theirs, see `group_commit`),
//! starting a step, submitting its result.

use crate::errors::{backend_error, retrying};
use crate::group_commit::{Change, Flat, GroupCommit};
use crate::notify::{ClaimedStarts, Notifier};
use crate::rows::{committed, GraphRow, PgLock, WorkRow};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::postgres::PgPool;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::queue::Outbox;
use stepgraph_engine::retention::Expiry;
use stepgraph_engine::schedule::Schedule;
use stepgraph_engine::store::{
    Circuit, Committed, StateCounts, Stats, Store, StoreError, Stranded, TaskFilter, TaskLock,
    TaskSummary, WorkerInfo, WorkerRecord,
};
use stepgraph_engine::*;
use tokio::time::Instant;

/// The unique constraint on `sg_tasks.idempotency_key`.
const IDEMPOTENCY_KEY: &str = "sg_tasks_idempotency_key_key";

pub struct PgStore {
    pool: PgPool,
    notifier: Arc<Notifier>,
    pub(crate) queue_in_db: bool,
    commits: Arc<GroupCommit>,
    starts: Arc<ClaimedStarts>,
}

impl PgStore {
    /// The pool, counting the statement about to run on it.
    pub(crate) fn pool(&self) -> &PgPool {
        self.notifier.count_statement();
        &self.pool
    }

    pub(crate) fn new(
        pool: PgPool,
        notifier: Arc<Notifier>,
        queue_in_db: bool,
        starts: Arc<ClaimedStarts>,
    ) -> Self {
        PgStore {
            commits: GroupCommit::new(pool.clone(), notifier.clone()),
            pool,
            notifier,
            queue_in_db,
            starts,
        }
    }

    /// Commits a write batch with its leases, sends and ack (see
    /// [`GroupCommit`]); whether it leased any steps.
    async fn apply(
        &self,
        task_id: TaskId,
        lock: Option<i64>,
        ops: Vec<WriteOp>,
        flat: Flat,
    ) -> Result<bool, StoreError> {
        let leased = flat.leases();
        self.commits
            .commit(Change {
                task_id,
                lock,
                ops,
                flat,
            })
            .await?;
        Ok(leased)
    }

    async fn read_graph(&self, task_id: TaskId) -> Result<GraphRow, StoreError> {
        let row: Option<Value> = retrying!(self, pool => sqlx::query_scalar("SELECT sg_graph($1)")
            .bind(task_id)
            .fetch_one(pool))
        .map_err(backend_error)?;
        let row = row.ok_or(StoreError::TaskNotFound(task_id))?;
        serde_json::from_value(row)
            .map_err(|e| StoreError::Unreadable(format!("task {task_id} graph: {e}")))
    }

    /// Read by clients waiting for a task (counted with every other statement).
    async fn task(&self, task_id: TaskId) -> Result<Task, StoreError> {
        let row: Option<Value> = retrying!(self, pool => sqlx::query_scalar(
            "SELECT to_jsonb(t) FROM sg_tasks t WHERE id = $1"
        )
        .bind(task_id)
        .fetch_optional(pool))
        .map_err(backend_error)?;
        let row = row.ok_or(StoreError::TaskNotFound(task_id))?;
        serde_json::from_value(row)
            .map_err(|e| StoreError::Unreadable(format!("task {task_id}: {e}")))
    }
}

#[async_trait]
impl Store for PgStore {
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
        let (task_id, key) = (task.id, task.idempotency_key.clone());
        let (flat, rest) = Flat::from_outbox(outbox, self.queue_in_db);
        match self.apply(task_id, None, ops, flat).await {
            Err(StoreError::KeyTaken {
                constraint,
                message,
            }) if key.is_some() && constraint == IDEMPOTENCY_KEY => {
                let key = key.unwrap_or_default();
                match self.find_by_idempotency_key(&key).await? {
                    Some(existing) => Err(StoreError::DuplicateIdempotencyKey { key, existing }),
                    None => Err(StoreError::Conflict(message)),
                }
            }
            Err(e) => Err(e),
            // A new task's lock version is 0.
            Ok(claimed) => Ok(committed(task_id, 0, rest, claimed)),
        }
    }

    fn leases_steps(&self) -> bool {
        true
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<TaskId>, StoreError> {
        retrying!(self, pool => sqlx::query_scalar("SELECT id FROM sg_tasks WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(pool))
            .map_err(backend_error)
    }

    async fn lock_task(&self, task_id: TaskId) -> Result<(TaskGraph, TaskLock), StoreError> {
        let snapshot = self.read_graph(task_id).await?.into_snapshot();
        Ok((snapshot.graph, snapshot.lock))
    }

    async fn commit(
        &self,
        lock: TaskLock,
        ops: Vec<WriteOp>,
        outbox: Outbox,
    ) -> Result<Committed, StoreError> {
        let lock = lock.into_inner::<PgLock>()?;
        if ops.is_empty() && outbox.is_empty() {
            return Ok(Committed::unclaimed(outbox));
        }
        let (flat, rest) = Flat::from_outbox(outbox, self.queue_in_db);
        // Without state changes there is nothing to guard: no version check.
        let version = (!ops.is_empty()).then_some(lock.version);
        let claimed = self.apply(lock.task_id, version, ops, flat).await?;
        // A commit with state changes bumps the version.
        let after = version.map_or(lock.version, |v| v + 1);
        Ok(committed(lock.task_id, after, rest, claimed))
    }

    async fn start_step(
        &self,
        step_id: StepId,
        attempt: u32,
        mark: bool,
    ) -> Result<StartOutcome, StoreError> {
        // Read with the message's claim, unless the step is to be marked.
        let read = self.starts.take(step_id, attempt).filter(|_| !mark);
        let row: Value = match read {
            Some(row) => row,
            None => retrying!(self, pool => sqlx::query_scalar("SELECT sg_start_step($1, $2, $3)")
                .bind(step_id)
                .bind(attempt as i32)
                .bind(mark)
                .fetch_one(pool))
            .map_err(backend_error)?,
        };
        let bad = |e: serde_json::Error| StoreError::Unreadable(format!("start_step: {e}"));
        match row["status"].as_str() {
            Some("started") => {
                if let Some(g) = row.get("graph").filter(|g| !g.is_null()) {
                    let g: GraphRow = serde_json::from_value(g.clone()).map_err(bad)?;
                    let snapshot = g.into_snapshot();
                    let idx = snapshot
                        .graph
                        .steps
                        .iter()
                        .position(|s| s.id == step_id)
                        .ok_or(StoreError::StepNotFound(step_id))?;
                    let work = snapshot.graph.work(idx);
                    return Ok(StartOutcome::Started(
                        Box::new(work),
                        Some(Box::new(snapshot)),
                    ));
                }
                let w: WorkRow = serde_json::from_value(row["work"].clone()).map_err(bad)?;
                Ok(StartOutcome::Started(Box::new(w.into_work()), None))
            }
            Some("already_submitted") => Ok(StartOutcome::AlreadySubmitted),
            Some("not_found") => Err(StoreError::StepNotFound(step_id)),
            _ => Ok(StartOutcome::Stale {
                state: serde_json::from_value(row["state"].clone()).map_err(bad)?,
                attempts: row["attempts"].as_u64().unwrap_or_default() as u32,
            }),
        }
    }

    async fn submit_result(
        &self,
        step_id: StepId,
        attempt: u32,
        outcome: StepOutcome,
        outbox: Outbox,
    ) -> Result<(SubmitOutcome, Outbox), StoreError> {
        // Nothing to lease here: a result makes no step ready.
        let (flat, mut rest) = Flat::from_outbox(outbox.unclaimed(), self.queue_in_db);
        let outcome =
            serde_json::to_value(&outcome).map_err(|e| StoreError::Backend(e.to_string()))?;
        let row: Value =
            retrying!(self, pool => sqlx::query_scalar("SELECT sg_submit_result($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(step_id)
                .bind(attempt as i32)
                .bind(&outcome)
                .bind(&flat.queues)
                .bind(&flat.payloads)
                .bind(&flat.delays)
                .bind(flat.ack.as_ref().map(|(q, _)| q))
                .bind(flat.ack.as_ref().map(|(_, id)| *id))
                .fetch_one(pool))
                .map_err(backend_error)?;
        let result = match row["status"].as_str() {
            Some("accepted") => SubmitOutcome::Accepted,
            Some("duplicate") => SubmitOutcome::Duplicate,
            Some("not_found") => return Err(StoreError::StepNotFound(step_id)),
            _ => SubmitOutcome::Refused {
                state: serde_json::from_value(row["state"].clone())
                    .map_err(|e| StoreError::Unreadable(format!("submit_result: {e}")))?,
                attempts: row["attempts"].as_u64().unwrap_or_default() as u32,
            },
        };
        if matches!(result, SubmitOutcome::Refused { .. }) {
            rest.sends.clear();
        }
        Ok((result, rest))
    }

    async fn graph(&self, task_id: TaskId) -> Result<TaskGraph, StoreError> {
        Ok(self.read_graph(task_id).await?.into_graph())
    }

    async fn graph_and_transitions(
        &self,
        task_id: TaskId,
    ) -> Result<(TaskGraph, Transitions), StoreError> {
        #[derive(Deserialize)]
        struct Row {
            graph: Option<GraphRow>,
            task: Vec<TaskTransition>,
            steps: Vec<StepTransition>,
        }
        let row: Value = retrying!(self, pool => sqlx::query_scalar("SELECT sg_view($1)")
            .bind(task_id)
            .fetch_one(pool))
        .map_err(backend_error)?;
        let row: Row = serde_json::from_value(row)
            .map_err(|e| StoreError::Unreadable(format!("task {task_id} view: {e}")))?;
        let graph = row.graph.ok_or(StoreError::TaskNotFound(task_id))?;
        let transitions = Transitions {
            task: row.task,
            steps: row.steps,
        };
        Ok((graph.into_graph(), transitions))
    }

    async fn wait_terminal(&self, task_id: TaskId, timeout: Duration) -> Result<Task, StoreError> {
        let deadline = Instant::now() + timeout;
        let wake = self.notifier.task(task_id);
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let task = self.task(task_id).await?;
            if task.state.is_terminal() || Instant::now() >= deadline {
                return Ok(task);
            }
            until_notified(notified, deadline, self.notifier.polls.wait).await;
        }
    }

    /// A notification that the task ended is taken at its word: the view
    /// is read at once, not after reading the task again.
    async fn wait_terminal_view(
        &self,
        task_id: TaskId,
        timeout: Duration,
    ) -> Result<(TaskGraph, Transitions), StoreError> {
        let deadline = Instant::now() + timeout;
        let wake = self.notifier.task(task_id);
        let mut ended = false;
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if ended || self.task(task_id).await?.state.is_terminal() || Instant::now() >= deadline
            {
                let view = self.graph_and_transitions(task_id).await?;
                if view.0.task.state.is_terminal() || Instant::now() >= deadline {
                    return Ok(view);
                }
            }
            ended = until_notified(notified, deadline, self.notifier.polls.wait).await;
        }
    }

    /// Reads only the task's state (its other rows may be what cannot be
    /// read), then ends it in one statement (`sg_fail_task`).
    async fn fail_task(
        &self,
        task_id: TaskId,
        error: Value,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let state: Option<String> =
            retrying!(self, pool => sqlx::query_scalar("SELECT state FROM sg_tasks WHERE id = $1")
            .bind(task_id)
            .fetch_optional(pool))
            .map_err(backend_error)?;
        let state = state.ok_or(StoreError::TaskNotFound(task_id))?;
        let from: TaskState = state
            .parse()
            .map_err(|e| StoreError::Unreadable(format!("task {task_id}: {e}")))?;
        let path: Vec<&str> = from
            .path_to_error()
            .into_iter()
            .map(|s| s.as_str())
            .collect();
        if path.is_empty() {
            return Ok(false);
        }
        let meta = serde_json::json!({ "reason": reason });
        retrying!(self, pool => sqlx::query_scalar("SELECT sg_fail_task($1, $2, $3, $4, $5)")
            .bind(task_id)
            .bind(from.as_str())
            .bind(&path)
            .bind(&error)
            .bind(&meta)
            .fetch_one(pool))
        .map_err(backend_error)
    }

    async fn enqueued_for(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<StepMessage>, StoreError> {
        self.find_enqueued_for(older_than, limit).await
    }

    async fn stranded(&self, older_than: Duration, limit: i64) -> Result<Stranded, StoreError> {
        self.find_stranded(older_than, limit).await
    }

    async fn end_leases(&self, leases: &[(StepId, DateTime<Utc>)]) -> Result<(), StoreError> {
        self.release_leases(leases).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>, StoreError> {
        self.find_tasks(filter).await
    }

    async fn stats(&self, since: DateTime<Utc>) -> Result<Stats, StoreError> {
        self.count_stats(since).await
    }

    async fn register_worker(&self, worker: &WorkerInfo) -> Result<(), StoreError> {
        self.put_worker(worker).await
    }

    async fn heartbeat(
        &self,
        worker: uuid::Uuid,
        stopped: bool,
        circuits: &[Circuit],
    ) -> Result<(), StoreError> {
        self.beat(worker, stopped, circuits).await
    }

    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerRecord>, StoreError> {
        self.read_workers(since).await
    }

    async fn expire(&self, expiry: &Expiry, limit: i64) -> Result<u64, StoreError> {
        self.remove_expired(expiry, limit).await
    }

    async fn reclaim(&self) -> Result<(), StoreError> {
        self.vacuum().await
    }

    async fn rotate(
        &self,
        width: std::time::Duration,
        keep: stepgraph_engine::retention::Keep,
    ) -> Result<stepgraph_engine::retention::Rotation, StoreError> {
        self.rotate_partitions(width, keep).await
    }

    async fn archived(&self, task_id: TaskId) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.archived_at(task_id).await
    }

    async fn due_tasks(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<TaskId>, StoreError> {
        self.due(now, limit).await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.earliest_due().await
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        self.read_schedules().await
    }

    async fn insert_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError> {
        self.add_schedule(schedule).await
    }

    async fn replace_schedule(
        &self,
        schedule: &Schedule,
        expected: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        self.put_schedule(schedule, expected).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        self.remove_schedule(name).await
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        let count = |sql: &'static str| async move {
            retrying!(self, pool => sqlx::query_as::<_, (String, i64)>(sql)
                .fetch_all(pool))
            .map_err(backend_error)
        };
        Ok(StateCounts {
            tasks: count("SELECT state, count(*) FROM sg_tasks GROUP BY state ORDER BY state")
                .await?,
            steps: count("SELECT state, count(*) FROM sg_steps GROUP BY state ORDER BY state")
                .await?,
        })
    }
}

/// Sleeps until `notified` fires (true) or, since a notification can be
/// lost, the slow `poll` or `deadline` comes (false).
async fn until_notified(
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    deadline: Instant,
    poll: Duration,
) -> bool {
    let poll = Instant::now() + poll;
    tokio::select! {
        _ = notified => true,
        _ = tokio::time::sleep_until(poll.min(deadline)) => false,
    }
}
