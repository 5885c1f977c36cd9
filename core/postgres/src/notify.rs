//! One LISTEN connection per backend that wakes waiters on queue sends and
//! on tasks reaching a terminal state, and the step starts a queue claim
//! reads for the store's next `start_step`.

use parking_lot::Mutex;
use sqlx::postgres::{PgListener, PgPool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use uuid::Uuid;

/// Wakes waiters: per queue on a send, per task when it ends. A lost
/// connection wakes everyone, since notifications may have been missed.
#[derive(Default)]
pub(crate) struct Notifier {
    queues: Mutex<HashMap<String, Arc<QueueWake>>>,
    tasks: Mutex<HashMap<Uuid, Weak<Notify>>>,
    /// Statements (each one round trip) the store and queue have run.
    statements: AtomicU64,
    pub(crate) polls: FallbackPolls,
}

/// How long a sleeping receiver (`queue`) or a `wait` for a task's end
/// (`wait`) trusts NOTIFY before it looks by itself: a notification sent
/// while the LISTEN connection was reconnecting is lost, and these bound
/// how late that makes anyone. Nothing polls faster than these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FallbackPolls {
    pub queue: Duration,
    pub wait: Duration,
}

impl Default for FallbackPolls {
    fn default() -> Self {
        FallbackPolls {
            queue: Duration::from_secs(5),
            wait: Duration::from_secs(2),
        }
    }
}

impl Notifier {
    pub(crate) fn new(polls: FallbackPolls) -> Notifier {
        Notifier {
            polls,
            ..Default::default()
        }
    }

    pub(crate) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    pub(crate) fn count_statement(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn queue(&self, name: &str) -> Arc<QueueWake> {
        self.queues
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn task(&self, id: Uuid) -> Arc<Notify> {
        let mut tasks = self.tasks.lock();
        if let Some(n) = tasks.get(&id).and_then(Weak::upgrade) {
            return n;
        }
        tasks.retain(|_, w| w.strong_count() > 0);
        let n = Arc::new(Notify::new());
        tasks.insert(id, Arc::downgrade(&n));
        n
    }

    fn wake_all(&self) {
        for n in self.queues.lock().values() {
            n.wake();
        }
        for n in self.tasks.lock().values().filter_map(Weak::upgrade) {
            n.notify_waiters();
        }
    }

    fn dispatch(&self, channel: &str, payload: &str) {
        if channel == "stepgraph_queue" {
            if let Some(q) = self.queues.lock().get(payload) {
                q.wake();
            }
        } else if let Some(t) = payload
            .parse::<Uuid>()
            .ok()
            .and_then(|t| self.tasks.lock().get(&t).and_then(Weak::upgrade))
        {
            t.notify_waiters();
        }
    }
}

/// Step starts read with the claims of their messages (`sg_receive_started`),
/// kept for the worker's [`stepgraph_engine::Store::start_step`] that follows each
/// claim: the queue and the store of one backend share it, and the start
/// then costs no round trip of its own. Each is taken once; what is never
/// taken (a message released unprocessed) is dropped once a minute old.
#[derive(Default)]
pub(crate) struct ClaimedStarts {
    starts: Mutex<HashMap<(Uuid, u32), (Instant, serde_json::Value)>>,
}

impl ClaimedStarts {
    const KEEP: Duration = Duration::from_secs(60);

    pub(crate) fn put(&self, step_id: Uuid, attempt: u32, start: serde_json::Value) {
        let mut starts = self.starts.lock();
        if starts.len() >= 256 {
            starts.retain(|_, (at, _)| at.elapsed() < Self::KEEP);
        }
        starts.insert((step_id, attempt), (Instant::now(), start));
    }

    pub(crate) fn take(&self, step_id: Uuid, attempt: u32) -> Option<serde_json::Value> {
        self.starts
            .lock()
            .remove(&(step_id, attempt))
            .map(|(_, start)| start)
    }
}

/// Wakes a queue's receivers, counting the wake-ups: a receiver that found
/// the queue drained at one count need not look again until the next.
#[derive(Default)]
pub(crate) struct QueueWake {
    pub(crate) notify: Notify,
    generation: AtomicU64,
}

impl QueueWake {
    fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Wake-ups so far.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Runs while anything still holds the notifier (a store or a queue).
pub(crate) async fn listen(notifier: Weak<Notifier>, pool: PgPool) {
    let alive = || notifier.upgrade();
    while alive().is_some() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all(["stepgraph_queue", "stepgraph_task"])
            .await
        {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        // Anything sent before LISTEN took effect was not announced.
        match alive() {
            Some(n) => n.wake_all(),
            None => return,
        }
        loop {
            let received = tokio::time::timeout(Duration::from_secs(10), listener.try_recv()).await;
            let Some(n) = alive() else { return };
            match received {
                Err(_) => continue,
                Ok(Ok(Some(msg))) => n.dispatch(msg.channel(), msg.payload()),
                // The connection dropped; it reconnects on the next call.
                Ok(Ok(None)) => n.wake_all(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    n.wake_all();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}
