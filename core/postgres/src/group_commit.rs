//! Group commit for the PostgreSQL store: each task's write batch, with
//! its leases, sends and ack, goes to `sg_commit`. A commit starts at once
//! while fewer than [`FLUSHERS`] are in flight; the changes that arrive
//! meanwhile wait and go together in the next statement, so under load many
//! tasks share one round trip, one transaction and one WAL flush, and an
//! idle store commits each change alone, as soon as it comes.

use crate::change::{group, Batch};
use crate::errors::{backend_error, retrying};
use crate::notify::Notifier;
use parking_lot::Mutex;
use sqlx::postgres::PgPool;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use stepgraph_engine::queue::Outbox;
use stepgraph_engine::{StepId, StoreError, TaskId, WriteOp};
use tokio::sync::oneshot;

/// Commits in flight at once. Two keep both of this machine's cores busy
/// with commits while the batches grow; more would only shrink them.
const FLUSHERS: usize = 2;

/// The most task changes in one statement.
const MAX_BATCH: usize = 64;

/// An outbox as the SQL function takes it: parallel arrays, the steps to
/// lease, and the ack.
#[derive(Default)]
pub(crate) struct Flat {
    pub(crate) queues: Vec<String>,
    pub(crate) payloads: Vec<Vec<u8>>,
    pub(crate) delays: Vec<i64>,
    /// Leased (for `lease_ms`) to the committing process.
    leases: Vec<StepId>,
    lease_ms: i64,
    pub(crate) ack: Option<(String, i64)>,
}

impl Flat {
    /// The outbox's claims as leases, and its sends and ack when the queue
    /// lives in the database; what the caller must still deliver.
    pub(crate) fn from_outbox(mut outbox: Outbox, queue_in_db: bool) -> (Flat, Outbox) {
        let mut f = Flat {
            lease_ms: outbox.claim_for.as_millis() as i64,
            leases: std::mem::take(&mut outbox.claims)
                .into_iter()
                .map(|c| c.step_id)
                .collect(),
            ..Flat::default()
        };
        if !queue_in_db {
            return (f, outbox);
        }
        for (queue, messages) in std::mem::take(&mut outbox.sends) {
            for m in messages {
                f.queues.push(queue.clone());
                f.payloads.push(m.payload);
                f.delays.push(m.delay.as_millis() as i64);
            }
        }
        f.ack = outbox.ack.take().map(|(q, id)| (q, id as i64));
        (f, outbox)
    }

    pub(crate) fn leases(&self) -> bool {
        !self.leases.is_empty()
    }
}

/// One task's change: applied if the task's lock version is still `lock`
/// (None: no version check).
pub(crate) struct Change {
    pub task_id: TaskId,
    pub lock: Option<i64>,
    pub ops: Vec<WriteOp>,
    pub flat: Flat,
}

struct Waiting {
    change: Change,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    flushing: usize,
}

impl Queue {
    /// The next batch: the oldest changes, at most one per task (a task's
    /// second change must see its first one's version).
    fn next_batch(&mut self) -> Vec<Waiting> {
        let mut tasks = HashSet::new();
        let mut batch = Vec::new();
        let mut later = VecDeque::new();
        while let Some(w) = self.waiting.pop_front() {
            if batch.len() == MAX_BATCH {
                self.waiting.push_front(w);
                break;
            }
            if tasks.insert(w.change.task_id) {
                batch.push(w);
            } else {
                later.push_back(w);
            }
        }
        later.append(&mut self.waiting);
        self.waiting = later;
        batch
    }
}

pub(crate) struct GroupCommit {
    pool: PgPool,
    notifier: Arc<Notifier>,
    queue: Mutex<Queue>,
}

impl GroupCommit {
    pub(crate) fn new(pool: PgPool, notifier: Arc<Notifier>) -> Arc<GroupCommit> {
        Arc::new(GroupCommit {
            pool,
            notifier,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// The pool, counting the statement about to run on it.
    fn pool(&self) -> &PgPool {
        self.notifier.count_statement();
        &self.pool
    }

    /// Commits the change, alone or with others; Conflict if its task moved on.
    pub(crate) async fn commit(self: &Arc<Self>, change: Change) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock();
            q.waiting.push_back(Waiting { change, done });
            let start = q.flushing < FLUSHERS;
            q.flushing += usize::from(start);
            start
        };
        if start {
            tokio::spawn(self.clone().flush());
        }
        result
            .await
            .map_err(|_| StoreError::Backend("the commit was abandoned (shutting down)".into()))?
    }

    /// Commits batches until none is waiting.
    async fn flush(self: Arc<Self>) {
        loop {
            let batch = {
                let mut q = self.queue.lock();
                let batch = q.next_batch();
                if batch.is_empty() {
                    q.flushing -= 1;
                    return;
                }
                batch
            };
            match self.run(&batch).await {
                Ok(()) => {
                    for w in batch {
                        let _ = w.done.send(Ok(()));
                    }
                }
                Err(e) if batch.len() == 1 => {
                    let _ = batch.into_iter().next().map(|w| w.done.send(Err(e)));
                }
                // All or nothing: one change's conflict (or duplicate key)
                // failed them all; alone, each gets its own outcome.
                Err(_) => {
                    for w in batch {
                        let result = self.run(std::slice::from_ref(&w)).await;
                        let _ = w.done.send(result);
                    }
                }
            }
        }
    }

    async fn run(&self, batch: &[Waiting]) -> Result<(), StoreError> {
        let change = group(batch.iter().map(|w| Batch {
            task_id: w.change.task_id,
            lock: w.change.lock,
            ops: &w.change.ops,
        }));
        let change =
            serde_json::to_value(change).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut queues: Vec<&str> = Vec::new();
        let mut payloads: Vec<&[u8]> = Vec::new();
        let mut delays: Vec<i64> = Vec::new();
        let mut leases: Vec<StepId> = Vec::new();
        let mut lease_ms: Vec<i64> = Vec::new();
        let mut ack_queues: Vec<&str> = Vec::new();
        let mut ack_ids: Vec<i64> = Vec::new();
        for f in batch.iter().map(|w| &w.change.flat) {
            queues.extend(f.queues.iter().map(String::as_str));
            payloads.extend(f.payloads.iter().map(Vec::as_slice));
            delays.extend(&f.delays);
            leases.extend(&f.leases);
            lease_ms.extend(f.leases.iter().map(|_| f.lease_ms));
            if let Some((q, id)) = &f.ack {
                ack_queues.push(q);
                ack_ids.push(*id);
            }
        }
        retrying!(self, pool => sqlx::query("SELECT sg_commit($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&change)
            .bind(&queues)
            .bind(&payloads)
            .bind(&delays)
            .bind(&leases)
            .bind(&lease_ms)
            .bind(&ack_queues)
            .bind(&ack_ids)
            .execute(pool))
        .map_err(backend_error)?;
        Ok(())
    }
}
