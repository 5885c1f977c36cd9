//! Message transport behind one trait: claim with a visibility timeout, ack,
//! release, and a receive that sleeps until a message arrives (no fixed polling).

mod memory;
pub mod poison;

pub use memory::MemoryQueue;

use crate::model::StepId;
use crate::shutdown::Shutdown;
use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The queue the orchestrators consume: step results and timers.
pub const ORCHESTRATION_QUEUE: &str = "orchestration";

/// The queue of one namespace's steps for `handler`: a worker consumes the
/// queues of the handlers it has, so it claims only steps it can run.
pub fn handler_queue(namespace: &str, handler: &str) -> String {
    format!("{WORKER_QUEUE_PREFIX}{namespace}/{handler}")
}

/// The queue one namespace's steps went to before they had a queue per
/// handler; workers still consume it, so that steps sent there before an
/// upgrade are run.
pub fn worker_queue(namespace: &str) -> String {
    format!("{WORKER_QUEUE_PREFIX}{namespace}")
}

const WORKER_QUEUE_PREFIX: &str = "worker.";

/// Whether a queue is a worker queue (its messages are [`StepMessage`]s).
///
/// [`StepMessage`]: crate::model::StepMessage
pub fn is_worker_queue(queue: &str) -> bool {
    queue.starts_with(WORKER_QUEUE_PREFIX)
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue backend: {0}")]
    Backend(String),
    #[error("cannot encode message: {0}")]
    Encode(String),
}

#[derive(Debug, Clone)]
pub struct Outgoing {
    pub payload: Vec<u8>,
    /// Invisible to consumers until this has passed.
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    /// The queue it came from, to acknowledge or release it there.
    pub queue: String,
    pub receipt: u64,
    pub payload: Vec<u8>,
    /// 1 on first delivery; more after visibility timeouts or releases.
    pub delivery_count: u32,
}

impl Delivery {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    async fn send(&self, queue: &str, messages: Vec<Outgoing>) -> Result<(), QueueError>;

    /// Claims up to `max` messages from any of `queues`, each invisible to
    /// others for `visibility` (a delivery names its queue). Waits up to
    /// `wait` for the first one; returns empty when none came. A worker
    /// takes its steps from one queue per handler it has, so it never
    /// claims a step it cannot run.
    async fn receive_any(
        &self,
        queues: &[String],
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// [`Queue::receive_any`] from one queue.
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.receive_any(&[queue.to_string()], max, visibility, wait)
            .await
    }

    /// Deletes claimed messages.
    async fn ack(&self, queue: &str, receipts: &[u64]) -> Result<(), QueueError>;

    /// Gives a claimed message back, visible again after `delay`.
    async fn release(&self, queue: &str, receipt: u64, delay: Duration) -> Result<(), QueueError>;

    /// Messages waiting or claimed.
    async fn depth(&self, queue: &str) -> Result<u64, QueueError>;

    /// Takes a poison message (undecodable, for a step that does not
    /// exist, or failing on every delivery: see [`poison`]) out of the way,
    /// saying why. Where the backend keeps dead letters (a table, a
    /// `<queue>.dead` queue) it goes there; otherwise it is deleted (the
    /// reason is logged by the caller).
    async fn dead_letter(
        &self,
        queue: &str,
        receipt: u64,
        _reason: &str,
    ) -> Result<(), QueueError> {
        self.ack(queue, &[receipt]).await
    }
}

/// The messages a state change sends and the delivery it consumes. A store
/// that shares a database with its queue applies them in the same atomic
/// write; otherwise it hands them back and the caller [`Outbox::deliver`]s them
/// through the queue once the state is durable.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    pub sends: Vec<(String, Vec<Outgoing>)>,
    /// Steps the committing process will run itself (eager dispatch), for
    /// `claim_for`: a store that can lease steps leases them to it in the
    /// commit and sends nothing; any other store sends their messages like
    /// the rest.
    pub claims: Vec<Claim>,
    pub claim_for: Duration,
    /// A claimed message (queue, receipt) to acknowledge.
    pub ack: Option<(String, u64)>,
}

/// A step taken by eager dispatch, and its message should it go to the queue after all.
#[derive(Debug, Clone)]
pub struct Claim {
    pub queue: String,
    pub step_id: StepId,
    pub message: Outgoing,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.sends.iter().all(|(_, m)| m.is_empty()) && self.claims.is_empty() && self.ack.is_none()
    }

    /// The claims as ordinary sends (for a store that cannot claim).
    pub fn unclaimed(mut self) -> Self {
        for claim in std::mem::take(&mut self.claims) {
            self.send(&claim.queue, vec![claim.message]);
        }
        self
    }

    /// Adds `messages` for `queue` (to the messages already there for it).
    pub fn send(&mut self, queue: &str, messages: Vec<Outgoing>) -> &mut Self {
        if messages.is_empty() {
            return self;
        }
        match self.sends.iter_mut().find(|(q, _)| q == queue) {
            Some((_, pending)) => pending.extend(messages),
            None => self.sends.push((queue.to_string(), messages)),
        }
        self
    }

    pub fn acking(mut self, ack: Option<(String, u64)>) -> Self {
        self.ack = ack;
        self
    }

    /// Sends (claims too, as ordinary messages), then acknowledges.
    pub async fn deliver(self, queue: &dyn Queue) -> Result<(), QueueError> {
        let this = self.unclaimed();
        for (name, messages) in this.sends {
            queue.send(&name, messages).await?;
        }
        if let Some((name, receipt)) = this.ack {
            queue.ack(&name, &[receipt]).await?;
        }
        Ok(())
    }
}

/// Encodes each message as JSON.
pub fn encode_all<T: Serialize>(
    messages: &[T],
    delay: Duration,
) -> Result<Vec<Outgoing>, QueueError> {
    messages
        .iter()
        .map(|m| {
            serde_json::to_vec(m)
                .map(|payload| Outgoing { payload, delay })
                .map_err(|e| QueueError::Encode(e.to_string()))
        })
        .collect()
}

/// What limits a consumer's claims.
#[derive(Clone)]
pub enum Slots {
    /// At most this many steps at once: a permit per running step.
    Concurrency(Arc<Semaphore>),
    /// Claims granted by a foreign handler host, one per waiting handler slot.
    Credits(Credits),
}

/// Claim permits granted by someone else (a foreign handler host): a permit
/// is spent by a claim, and when its step is done `settle` lets the grantor
/// set the permits to what it still wants (it never has to take back a
/// permit that came home while nobody asked for work).
#[derive(Clone)]
pub struct Credits {
    pub permits: Arc<Semaphore>,
    pub settle: Arc<dyn Fn() + Send + Sync>,
}

impl Slots {
    fn semaphore(&self) -> &Arc<Semaphore> {
        match self {
            Slots::Concurrency(s) => s,
            Slots::Credits(c) => &c.permits,
        }
    }

    /// A free slot now, if there is one.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.semaphore().clone().try_acquire_owned().ok()
    }

    /// Runs `work` on its own task holding `permit`, then gives the slot
    /// back (a credit is settled by its grantor instead). A concurrency slot
    /// can be passed on by `work` (see [`Slot`]); a credit cannot.
    pub fn spawn_holding<F, Fut>(&self, permit: OwnedSemaphorePermit, work: F)
    where
        F: FnOnce(Slot) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self {
            Slots::Concurrency(_) => {
                let slot = Slot(Some(Arc::new(parking_lot::Mutex::new(Some(permit)))));
                // Boxed: a step's future is several KB, and tokio would
                // copy it whole into the task and again at each stage.
                let run = Box::pin(work(slot.clone()));
                tokio::spawn(async move {
                    run.await;
                    drop(slot.take());
                });
            }
            Slots::Credits(c) => {
                let settle = c.settle.clone();
                let run = Box::pin(work(Slot(None)));
                tokio::spawn(async move {
                    run.await;
                    permit.forget();
                    settle();
                });
            }
        }
    }
}

/// The slot a running step holds. When the step's own commit makes another
/// step ready for this worker, the finished step passes its slot on (see
/// `Eager`): a chain keeps running here even when every slot is busy,
/// instead of going through the queue. Else the slot is given back when the
/// step's run ends.
#[derive(Clone, Default)]
pub struct Slot(Option<Arc<parking_lot::Mutex<Option<OwnedSemaphorePermit>>>>);

impl Slot {
    /// The permit, once: None if it was passed on already (or is a credit).
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.as_ref().and_then(|p| p.lock().take())
    }
}

impl std::fmt::Debug for Credits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credits")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// Consumes `queues` until shutdown. Claims no more messages than `slots`
/// has free permits (credits), so nothing waits in a local buffer, and runs
/// `process` on its own task for each, holding one permit. A message whose
/// permit another consumer of the same slots took meanwhile goes back at once.
/// [`Slots::Concurrency`] permits come back when the step is done;
/// [`Slots::Credits`] are not given back but settled by their grantor, who
/// knows how many are still wanted.
pub async fn consume<F, Fut>(
    queue: Arc<dyn Queue>,
    queues: &[String],
    slots: Slots,
    visibility: Duration,
    wait: Duration,
    mut shutdown: Shutdown,
    process: F,
) where
    F: Fn(Delivery, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let semaphore = slots.semaphore().clone();
    loop {
        let first = tokio::select! {
            _ = shutdown.wait() => return,
            p = semaphore.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let credits = 1 + semaphore.available_permits();
        let received = tokio::select! {
            _ = shutdown.wait() => return,
            r = queue.receive_any(queues, credits, visibility, wait) => r,
        };
        let deliveries = match received {
            Ok(d) => d,
            Err(e) => {
                // A worker's queues are many (one per handler): the first names them.
                let first = queues.first().map(String::as_str).unwrap_or_default();
                tracing::warn!(queue = first, queues = queues.len(), error = %e, "receive failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut first = Some(first);
        for d in deliveries {
            let Some(permit) = first.take().or_else(|| slots.try_take()) else {
                let _ = queue.release(&d.queue, d.receipt, Duration::ZERO).await;
                continue;
            };
            slots.spawn_holding(permit, |slot| process(d, slot));
        }
    }
}
