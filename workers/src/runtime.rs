//! The worker: claims step messages for its namespaces (never more than it has
//! free handler slots), runs each attempt with its timeout, catches panics,
//! makes the outcome durable, then notifies the orchestration and acks.

use crate::handler::HandlerRegistry;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stepgraph_engine::queue::poison::{self, ProcessError};
use stepgraph_engine::queue::{
    encode_all, handler_queue, worker_queue, Credits, Delivery, Outbox, Slot, Slots,
    ORCHESTRATION_QUEUE,
};
use stepgraph_engine::store::Snapshot;
use stepgraph_engine::{
    Claimed, Eager, OrchestrationMessage, Orchestrator, Queue, Shutdown, StartOutcome, StepMessage,
    StepOutcome, StepWork, Store, StoreError, SubmitOutcome,
};
use tokio::sync::{Notify, Semaphore};

mod execute;
mod observe;
mod registry;
mod spans;

pub use execute::execute;

/// How soon a message whose processing failed on a backend error comes back.
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// How soon a step for a handler this worker lacks is visible again.
const NOT_MINE_DELAY: Duration = Duration::from_millis(250);
/// Attempts at making one outcome durable (about half a minute in all).
const SUBMIT_TRIES: u32 = 20;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub namespaces: Vec<String>,
    /// Steps run at once.
    pub concurrency: usize,
    pub visibility_timeout: Duration,
    /// For steps whose template sets no `timeout_seconds`.
    pub default_step_timeout: Duration,
    pub receive_wait: Duration,
    /// How long shutdown waits for running steps.
    pub shutdown_grace: Duration,
    /// With inline orchestration, a step running this long is marked
    /// InProgress while it runs; a shorter one gets the mark (with its start
    /// time) in the commit that records its outcome.
    pub lazy_start: Duration,
    /// With inline orchestration: take the steps a commit makes ready, while
    /// there are free slots, without a trip through the queue ([`Eager`]).
    pub eager_dispatch: bool,
    /// Deliveries of a step message that failed the same way before it is
    /// dead-lettered and its task failed ([`poison`]).
    pub max_deliveries: u32,
    /// What this worker's handlers are written in, for the registry.
    pub language: String,
    /// How often it tells the registry it is alive.
    pub heartbeat: Duration,
    /// Serve Prometheus `/metrics` here (what this worker's inline
    /// orchestration counted); none: no metrics endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Other workers serve these namespaces (a deployment): a step whose
    /// handler this worker lacks, should one reach it (from a namespace's
    /// queue of before the queues per handler), goes back for them
    /// untouched. Off (an engine whose one worker is in-process), such a
    /// step fails at once (`handler_not_found`): nobody else could run it.
    pub shared_queues: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            namespaces: Vec::new(),
            concurrency: 16,
            visibility_timeout: Duration::from_secs(330),
            default_step_timeout: Duration::from_secs(300),
            receive_wait: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(30),
            lazy_start: Duration::from_millis(100),
            eager_dispatch: true,
            max_deliveries: poison::DEFAULT_MAX_DELIVERIES,
            language: "rust".into(),
            heartbeat: Duration::from_secs(5),
            metrics_listen: None,
            shared_queues: false,
        }
    }
}

pub struct Worker {
    /// Orchestrates a step's task in the commit that records its outcome.
    inline: Option<Arc<Orchestrator>>,
    /// With `inline`: takes the steps its commits make ready, while it has
    /// free slots and is not stopping.
    eager: Eager,
    stopping: AtomicBool,
    /// What it claims from: its handlers' queues in its namespaces, and
    /// the namespaces' own queues (see [`worker_queue`]).
    queues: Vec<String>,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    handlers: Arc<HandlerRegistry>,
    config: WorkerConfig,
    slots: Slots,
    /// Steps being processed, and a wake-up when none are: what shutdown waits for.
    running: Arc<(AtomicUsize, Notify)>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        handlers: Arc<HandlerRegistry>,
        config: WorkerConfig,
    ) -> Worker {
        let slots = Slots::Concurrency(Arc::new(Semaphore::new(config.concurrency.max(1))));
        let own: Vec<String> = config
            .namespaces
            .iter()
            .flat_map(|ns| handlers.names().into_iter().map(|h| handler_queue(ns, h)))
            .collect();
        let queues = config
            .namespaces
            .iter()
            .map(|ns| worker_queue(ns))
            .chain(own.iter().cloned())
            .collect();
        Worker {
            inline: None,
            eager: Eager {
                queues: Arc::new(own.into_iter().collect()),
                slots: slots.clone(),
                visibility: config.visibility_timeout,
                handoff: Slot::default(),
            },
            stopping: AtomicBool::new(false),
            queues,
            store,
            queue,
            handlers,
            config,
            slots,
            running: Default::default(),
        }
    }

    /// Each outcome is recorded and its task orchestrated in one commit by
    /// `orchestrator` (which needs the templates), instead of going through
    /// the orchestration queue: one durable write and several round trips
    /// fewer per step. A task whose template it lacks falls back to the queue.
    /// With `eager_dispatch`, the steps such a commit makes ready for this
    /// worker's namespaces are taken by it while it has free slots
    /// ([`Eager`]): leased to it in that commit, they start without a trip
    /// through the queue.
    pub fn with_inline_orchestration(mut self, orchestrator: Arc<Orchestrator>) -> Worker {
        self.inline = Some(orchestrator);
        self
    }

    /// Claims only as many messages as `credits` has permits, instead of
    /// `concurrency`: a foreign handler host grants them as its language side
    /// asks for work.
    pub fn with_credits(mut self, credits: Credits) -> Worker {
        self.slots = Slots::Credits(credits);
        self.eager.slots = self.slots.clone();
        self
    }

    /// Also claims from `queues`: an engine whose one worker is in-process
    /// gives it the queues of the handlers its templates name and it lacks,
    /// so that their steps fail at once (`handler_not_found`) rather than
    /// wait for a worker that will never come.
    pub fn also_consuming(mut self, queues: impl IntoIterator<Item = String>) -> Worker {
        for q in queues {
            if !self.queues.contains(&q) {
                self.queues.push(q);
            }
        }
        self
    }

    /// Whose handlers these are (`python`, `ruby`, `typescript`; `rust`
    /// by default), as the registry shows it.
    pub fn in_language(mut self, language: &str) -> Worker {
        self.config.language = language.to_string();
        self
    }

    /// The namespaces whose steps this worker runs.
    pub fn namespaces(&self) -> &[String] {
        &self.config.namespaces
    }

    /// Serves every configured namespace until shutdown, then waits (up to the
    /// grace period) for running steps; unfinished ones are redelivered later.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let id = uuid::Uuid::now_v7();
        let beating = tokio::spawn(self.clone().heartbeat(id, shutdown.clone()));
        self.serve_metrics(&shutdown);
        self.clone().consume(shutdown.clone()).await;
        self.stopping.store(true, Ordering::SeqCst);
        let drained = async {
            loop {
                let idle = self.running.1.notified();
                if self.running.0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(self.config.shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; unfinished steps will be redelivered");
        }
        let _ = beating.await;
        if let Err(e) = self.store.heartbeat(id, true, &[]).await {
            tracing::warn!(error = %e, "telling the registry this worker stopped failed");
        }
    }

    async fn consume(self: Arc<Self>, shutdown: Shutdown) {
        let this = self.clone();
        stepgraph_engine::queue::consume(
            self.queue.clone(),
            &self.queues,
            self.slots.clone(),
            self.config.visibility_timeout,
            self.config.receive_wait,
            shutdown,
            move |d, slot| {
                let this = this.clone();
                this.running.0.fetch_add(1, Ordering::SeqCst);
                async move {
                    if let Err(e) = this.process(&d, slot).await {
                        this.failed(&d, e).await;
                    }
                    this.done_one();
                }
            },
        )
        .await;
    }

    /// The message of a step whose processing failed comes back shortly,
    /// unless it has failed so on every delivery: a poison message.
    async fn failed(&self, delivery: &Delivery, e: ProcessError) {
        let msg = delivery.decode::<StepMessage>().ok();
        poison::failed(
            self.store.as_ref(),
            self.queue.as_ref(),
            &delivery.queue,
            delivery,
            msg.as_ref()
                .map(|m| (m.task_id, Some(m.step_name.as_str()))),
            &e,
            self.config.max_deliveries,
            RETRY_DELAY,
        )
        .await;
    }

    fn done_one(&self) {
        if self.running.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.running.1.notify_waiters();
        }
    }

    /// What eager dispatch may take for this worker now: nothing when it is
    /// off, without inline orchestration, or once the worker is stopping.
    pub fn eager(&self) -> Option<&Eager> {
        (self.config.eager_dispatch
            && self.inline.is_some()
            && !self.stopping.load(Ordering::SeqCst))
        .then_some(&self.eager)
    }

    /// Starts steps claimed for this worker, each on its own task in its slot.
    pub fn start_claimed(self: &Arc<Self>, claimed: Vec<Claimed>) {
        for c in claimed {
            self.spawn_claimed(c);
        }
    }

    fn spawn_claimed(self: &Arc<Self>, claimed: Claimed) {
        self.running.0.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        let Claimed {
            message,
            work,
            snapshot,
            permit,
        } = claimed;
        self.slots.spawn_holding(permit, move |slot| async move {
            if let Err(e) = this.run_inline(None, &message, work, snapshot, slot).await {
                tracing::warn!(step = %message.step_name, error = %e, "step processing failed; the step is sent again when its lease runs out");
            }
            this.done_one();
        });
    }

    /// The outbox that tells the orchestration a step's result is durable,
    /// acknowledging its message (queue, receipt) if it came with one.
    fn result_outbox(
        ack: Option<(String, u64)>,
        msg: &StepMessage,
        elapsed: Duration,
    ) -> Result<Outbox, ProcessError> {
        let result = OrchestrationMessage::StepResult {
            task_id: msg.task_id,
            step_id: msg.step_id,
            attempt: msg.attempt,
            elapsed_us: elapsed.as_micros() as u64,
        };
        let mut outbox = Outbox::default().acking(ack);
        outbox.send(ORCHESTRATION_QUEUE, encode_all(&[result], Duration::ZERO)?);
        Ok(outbox)
    }

    async fn process(
        self: &Arc<Self>,
        delivery: &Delivery,
        slot: Slot,
    ) -> Result<(), ProcessError> {
        let queue = delivery.queue.as_str();
        let ack = Outbox::default().acking(Some((queue.to_string(), delivery.receipt)));
        let msg: StepMessage = match delivery.decode() {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable step message: {e}");
                tracing::error!(%queue, %reason, "step message moved to the dead letters");
                self.queue
                    .dead_letter(queue, delivery.receipt, &reason)
                    .await?;
                stepgraph_engine::metrics::dead_lettered(queue);
                return Ok(());
            }
        };
        if self.config.shared_queues && self.handlers.get(&msg.handler).is_none() {
            // Another worker of this queue serves it: the step goes back
            // untouched (no attempt used, nothing failed), a little later,
            // so that this worker does not take it again at once.
            tracing::debug!(step = %msg.step_name, handler = %msg.handler, "no such handler here; message released");
            self.queue
                .release(queue, delivery.receipt, NOT_MINE_DELAY)
                .await?;
            return Ok(());
        }
        // With inline orchestration the InProgress mark is written lazily
        // (see `run_marking`): a short step then costs one durable commit.
        let mark = self.inline.is_none();
        let started = match self.store.start_step(msg.step_id, msg.attempt, mark).await {
            Ok(s) => s,
            Err(StoreError::StepNotFound(_)) => {
                let reason = format!("message for an unknown step {}", msg.step_id);
                tracing::error!(%queue, %reason, "step message moved to the dead letters");
                self.queue
                    .dead_letter(queue, delivery.receipt, &reason)
                    .await?;
                stepgraph_engine::metrics::dead_lettered(queue);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let receipt = Some((queue.to_string(), delivery.receipt));
        let rest = match started {
            StartOutcome::Started(work, snapshot) => {
                self.observe_queue_wait(&msg, &work);
                if self.inline.is_some() {
                    return self.run_inline(receipt, &msg, *work, snapshot, slot).await;
                }
                let mut work = *work;
                let mut span = spans::StepSpan::begin(&msg, &mut work);
                let (began, started_at) = (std::time::Instant::now(), SystemTime::now());
                let outcome = self.execute(work).await;
                if let Some(s) = &mut span {
                    s.ran(started_at, &outcome);
                }
                let notify = Self::result_outbox(receipt, &msg, began.elapsed())?;
                let rest = self.submit_notifying(&msg, outcome, notify).await?;
                if let Some(s) = span {
                    s.end(false);
                }
                rest
            }
            // Durable already; the notification may have been lost.
            StartOutcome::AlreadySubmitted => Self::result_outbox(receipt, &msg, Duration::ZERO)?,
            StartOutcome::Stale { state, attempts } => {
                tracing::debug!(step = %msg.step_name, %state, attempts, "stale step message dropped");
                ack
            }
        };
        rest.deliver(self.queue.as_ref()).await?;
        Ok(())
    }

    /// Runs a started step and records its outcome in the commit that
    /// orchestrates its task, acknowledging its message (queue, receipt)
    /// if it came with one (falling back to the orchestration queue when
    /// that fails); the steps the commit leases to this worker start at once,
    /// the first in the step's own `slot`.
    async fn run_inline(
        self: &Arc<Self>,
        receipt: Option<(String, u64)>,
        msg: &StepMessage,
        work: StepWork,
        snapshot: Option<Box<Snapshot>>,
        slot: Slot,
    ) -> Result<(), ProcessError> {
        let orchestrator = self
            .inline
            .as_ref()
            .expect("run_inline needs inline orchestration");
        let mut work = work;
        let mut span = spans::StepSpan::begin(msg, &mut work);
        let (began, wall) = (std::time::Instant::now(), SystemTime::now());
        let started_at = chrono::Utc::now();
        let outcome = self.run_marking(msg, work).await;
        if let Some(s) = &mut span {
            s.ran(wall, &outcome);
        }
        let done = orchestrator
            .complete_inline(
                msg.task_id,
                msg.step_id,
                msg.attempt,
                outcome.clone(),
                started_at,
                began.elapsed(),
                receipt.clone(),
                snapshot,
                self.eager().map(|e| e.handing_off(slot)).as_ref(),
            )
            .await;
        match done {
            Ok(done) => {
                if let Some(s) = span {
                    s.end(true);
                }
                self.start_claimed(done.claimed);
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(step = %msg.step_name, error = %e, "inline orchestration failed; using the queue")
            }
        }
        // The classic path needs the step InProgress before its result.
        self.store
            .start_step(msg.step_id, msg.attempt, true)
            .await?;
        let notify = Self::result_outbox(receipt, msg, began.elapsed())?;
        let rest = self.submit_notifying(msg, outcome, notify).await?;
        if let Some(s) = span {
            s.end(false);
        }
        rest.deliver(self.queue.as_ref()).await?;
        Ok(())
    }

    /// [`Self::submit`], warning of a refused (late) result; what is left to deliver.
    async fn submit_notifying(
        &self,
        msg: &StepMessage,
        outcome: StepOutcome,
        notify: Outbox,
    ) -> Result<Outbox, ProcessError> {
        let (submitted, rest) = self.submit(msg, outcome, notify).await?;
        if let SubmitOutcome::Refused { state, attempts } = submitted {
            tracing::warn!(step = %msg.step_name, %state, attempts, attempt = msg.attempt, "late result refused");
        }
        Ok(rest)
    }

    /// Runs the attempt; if it is still running after `lazy_start`, marks the
    /// step InProgress so that observers see it running.
    async fn run_marking(&self, msg: &StepMessage, work: StepWork) -> StepOutcome {
        let run = self.execute(work);
        tokio::pin!(run);
        tokio::select! {
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(self.config.lazy_start) => {
                if let Err(e) = self.store.start_step(msg.step_id, msg.attempt, true).await {
                    tracing::warn!(step = %msg.step_name, error = %e, "marking the step in progress failed");
                }
                run.await
            }
        }
    }

    /// Makes an outcome durable. A backend error is retried for a while: the
    /// handler's work is done and should not be lost to a dropped connection.
    async fn submit(
        &self,
        msg: &StepMessage,
        outcome: StepOutcome,
        notify: Outbox,
    ) -> Result<(SubmitOutcome, Outbox), StoreError> {
        let mut delay = RETRY_DELAY;
        let mut tries = 0;
        loop {
            match self
                .store
                .submit_result(msg.step_id, msg.attempt, outcome.clone(), notify.clone())
                .await
            {
                Err(StoreError::Backend(e)) if tries < SUBMIT_TRIES => {
                    tracing::warn!(step = %msg.step_name, error = %e, "submitting the result failed; retrying");
                    tries += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Runs one attempt; every way it can go wrong becomes a failure outcome.
    pub async fn execute(&self, work: StepWork) -> StepOutcome {
        execute(&self.handlers, work, self.config.default_step_timeout).await
    }
}
