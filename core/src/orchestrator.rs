//! The orchestrator: creates tasks, consumes step results and timers from the
//! orchestration queue, and drives each task through its state machine.

use crate::evaluate::{self, Trigger};
use crate::model::*;
use crate::queue::{
    self, encode_all, worker_queue, Claim, Delivery, Outbox, Queue, QueueError, Slot, Slots,
    ORCHESTRATION_QUEUE,
};
use crate::shutdown::Shutdown;
use crate::state::{StepState, TaskState};
use crate::store::{Snapshot, Store, StoreError, TaskLock};
use crate::template::{TaskTemplate, TemplateRegistry};
use crate::txn::TaskTxn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("no template {namespace}/{name}{}", version.as_ref().map(|v| format!("@{v}")).unwrap_or_default())]
    TemplateNotFound {
        namespace: String,
        name: String,
        version: Option<String>,
    },
    #[error("context does not match the input_schema of {template}: {message}")]
    InvalidContext { template: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Illegal(#[from] crate::state::IllegalTransition),
    #[error("task {task_id} keeps conflicting with concurrent updates")]
    Contention { task_id: TaskId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRequest {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub context: Value,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub priority: i32,
}

impl TaskRequest {
    pub fn new(namespace: &str, name: &str, context: Value) -> Self {
        TaskRequest {
            namespace: namespace.into(),
            name: name.into(),
            version: None,
            context,
            idempotency_key: None,
            priority: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCreated {
    pub task_id: TaskId,
    /// False when the idempotency key named an existing task.
    pub created: bool,
}

#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Result messages processed at once.
    pub concurrency: usize,
    pub visibility_timeout: Duration,
    /// How long one receive waits before checking for shutdown.
    pub receive_wait: Duration,
    /// Re-reads of a task after a compare-and-swap conflict.
    pub conflict_retries: u32,
    /// Every half of this, re-send the messages of what is stranded (see
    /// [`Store::stranded`]): steps whose leases ran out, and, with a queue
    /// that commits apart from the store (RabbitMQ), steps and tasks
    /// stranded this long. A copy that was not lost is dropped as stale.
    pub resend_stranded_after: Option<Duration>,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            concurrency: 64,
            visibility_timeout: Duration::from_secs(30),
            receive_wait: Duration::from_secs(1),
            conflict_retries: 20,
            resend_stranded_after: Some(Duration::from_secs(60)),
        }
    }
}

pub struct Orchestrator {
    metrics: crate::metrics::Metrics,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    templates: Arc<TemplateRegistry>,
    config: OrchestratorConfig,
}

impl Orchestrator {
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        templates: Arc<TemplateRegistry>,
        config: OrchestratorConfig,
    ) -> Self {
        Orchestrator {
            metrics: Default::default(),
            store,
            queue,
            templates,
            config,
        }
    }

    pub fn templates(&self) -> &TemplateRegistry {
        &self.templates
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Validates the context, creates the task with its initial steps and
    /// dispatches the first ready steps, all before returning.
    pub async fn create_task(&self, req: TaskRequest) -> Result<TaskCreated, OrchestratorError> {
        Ok(self.create_task_eager(req, None).await?.0)
    }

    /// [`Self::create_task`] for a process with a worker: with `eager`, the
    /// first steps come back claimed for it (see [`Eager`]).
    pub async fn create_task_eager(
        &self,
        req: TaskRequest,
        eager: Option<&Eager>,
    ) -> Result<(TaskCreated, Vec<Claimed>), OrchestratorError> {
        let template = self
            .templates
            .get(&req.namespace, &req.name, req.version.as_deref())
            .ok_or_else(|| OrchestratorError::TemplateNotFound {
                namespace: req.namespace.clone(),
                name: req.name.clone(),
                version: req.version.clone(),
            })?;
        template.validate_context(&req.context).map_err(|message| {
            OrchestratorError::InvalidContext {
                template: template.key(),
                message,
            }
        })?;
        if let Some(key) = &req.idempotency_key {
            if let Some(task_id) = self.store.find_by_idempotency_key(key).await? {
                let created = TaskCreated {
                    task_id,
                    created: false,
                };
                return Ok((created, Vec::new()));
            }
        }
        let task = Task {
            idempotency_key: req.idempotency_key,
            priority: req.priority,
            ..Task::pending(
                &template.namespace,
                &template.name,
                &template.version,
                req.context,
            )
        };
        let task_id = task.id;
        let mut txn = TaskTxn::create(task);
        txn.task_to(TaskState::Initializing, json!({}))?;
        let messages = evaluate::evaluate(&mut txn, &template, Trigger::Init)?;
        let (outbox, taken) = dispatch_eager(&template, messages, self.eager(eager))?;
        match self.finish(txn, outbox, taken).await {
            Ok(claimed) => {
                let created = TaskCreated {
                    task_id,
                    created: true,
                };
                Ok((created, claimed))
            }
            Err(OrchestratorError::Store(StoreError::DuplicateIdempotencyKey {
                existing, ..
            })) => {
                let created = TaskCreated {
                    task_id: existing,
                    created: false,
                };
                Ok((created, Vec::new()))
            }
            Err(e) => Err(e),
        }
    }

    /// `eager` when the store can lease steps in its commits (else there
    /// is nothing to take slots for).
    fn eager<'a>(&self, eager: Option<&'a Eager>) -> Option<&'a Eager> {
        eager.filter(|_| self.store.leases_steps())
    }

    fn template_for(&self, task: &Task) -> Result<Arc<TaskTemplate>, OrchestratorError> {
        self.templates
            .get(&task.namespace, &task.name, Some(&task.version))
            .ok_or_else(|| OrchestratorError::TemplateNotFound {
                namespace: task.namespace.clone(),
                name: task.name.clone(),
                version: Some(task.version.clone()),
            })
    }

    /// Processes one orchestration message (acknowledging `receipt` on the
    /// orchestration queue with the state change); safe to repeat.
    pub async fn handle(
        &self,
        message: &OrchestrationMessage,
        receipt: Option<u64>,
    ) -> Result<(), OrchestratorError> {
        let ack = receipt.map(|r| (ORCHESTRATION_QUEUE.to_string(), r));
        let (task_id, work) = match message {
            OrchestrationMessage::StepResult {
                task_id,
                step_id,
                attempt,
                elapsed_us,
            } => (
                *task_id,
                Work::Result {
                    step_id: *step_id,
                    attempt: *attempt,
                    elapsed: Duration::from_micros(*elapsed_us),
                    outcome: None,
                },
            ),
            OrchestrationMessage::Wake { task_id } => (*task_id, Work::Wake),
        };
        self.orchestrate(task_id, &work, ack, None, None)
            .await
            .map(|_| ())
    }

    /// The worker's fast path: records the outcome of a step attempt (the
    /// step must be InProgress with `attempt`) and orchestrates its task in the
    /// same commit, which also acknowledges the step message `ack`. Not
    /// `current`, changing nothing but the ack, when the attempt is no
    /// longer current (a late or repeated result). With `eager`, the steps
    /// this makes ready for the worker's queues come back claimed, as many
    /// as it has free slots (when the store can claim in its commit).
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_inline(
        &self,
        task_id: TaskId,
        step_id: StepId,
        attempt: u32,
        outcome: StepOutcome,
        started_at: DateTime<Utc>,
        elapsed: Duration,
        ack: Option<(String, u64)>,
        snapshot: Option<Box<Snapshot>>,
        eager: Option<&Eager>,
    ) -> Result<Orchestrated, OrchestratorError> {
        let work = Work::Result {
            step_id,
            attempt,
            elapsed,
            outcome: Some((outcome, started_at)),
        };
        self.orchestrate(task_id, &work, ack, snapshot, eager).await
    }

    /// Orchestrates, starting from `snapshot` when given (a conflict means
    /// it was stale: the next try reads the task afresh).
    async fn orchestrate(
        &self,
        task_id: TaskId,
        work: &Work,
        ack: Option<(String, u64)>,
        mut snapshot: Option<Box<Snapshot>>,
        eager: Option<&Eager>,
    ) -> Result<Orchestrated, OrchestratorError> {
        for _ in 0..=self.config.conflict_retries {
            let txn = match snapshot.take() {
                Some(s) => TaskTxn::from_snapshot(*s),
                None => TaskTxn::open(self.store.as_ref(), task_id).await?,
            };
            match self.try_orchestrate(txn, work, ack.clone(), eager).await {
                Err(OrchestratorError::Store(StoreError::Conflict(why))) => {
                    tracing::debug!(%task_id, %why, "compare-and-swap conflict, re-evaluating");
                    tokio::task::yield_now().await;
                }
                other => return other,
            }
        }
        Err(OrchestratorError::Contention { task_id })
    }

    async fn try_orchestrate(
        &self,
        mut txn: TaskTxn,
        work: &Work,
        ack: Option<(String, u64)>,
        eager: Option<&Eager>,
    ) -> Result<Orchestrated, OrchestratorError> {
        let task_id = txn.task().id;
        let template = self.template_for(txn.task())?;
        let mut wake_at = None;
        let mut observed = None;
        let trigger = match work {
            Work::Result {
                step_id,
                attempt,
                elapsed,
                outcome,
            } => {
                let Some(idx) = txn.step_index(*step_id) else {
                    return Err(StoreError::StepNotFound(*step_id).into());
                };
                let step = txn.step(idx);
                let current = match outcome {
                    // A step not marked InProgress while it ran is marked now, as of its start.
                    Some(_) => matches!(step.state, StepState::InProgress | StepState::Enqueued),
                    None => step.state == StepState::EnqueuedForOrchestration,
                };
                if !current || step.attempts != *attempt {
                    tracing::debug!(step = %step.name, state = %step.state, attempt, "stale result dropped");
                    self.finish(txn, Outbox::default().acking(ack), Vec::new())
                        .await?;
                    return Ok(Orchestrated::default());
                }
                if let Some((outcome, started_at)) = outcome {
                    if step.state == StepState::Enqueued {
                        txn.step_to_at(idx, StepState::InProgress, *started_at, json!({}), |_| {})?;
                    }
                    let meta = json!({ "outcome": outcome.status() });
                    txn.step_to(idx, StepState::EnqueuedForOrchestration, meta, |s| {
                        s.outcome = Some(outcome.clone())
                    })?;
                }
                if txn.task().state.is_terminal() {
                    let meta = json!({ "reason": "task is terminal" });
                    txn.step_to(idx, StepState::Cancelled, meta, |_| {})?;
                    self.finish(txn, Outbox::default().acking(ack), Vec::new())
                        .await?;
                    return Ok(Orchestrated::current());
                }
                wake_at = evaluate::apply_result(&mut txn, &template, idx)?;
                observed = Some((txn.step(idx).handler.clone(), *elapsed));
                Trigger::Result
            }
            Work::Wake => Trigger::Wake,
        };
        let messages = evaluate::evaluate(&mut txn, &template, trigger)?;
        let (outbox, taken) = dispatch_eager(&template, messages, self.eager(eager))?;
        let mut outbox = outbox.acking(ack);
        if let Some(at) = wake_at {
            let delay = (at - Utc::now()).to_std().unwrap_or_default();
            let wake = OrchestrationMessage::Wake { task_id };
            outbox.send(ORCHESTRATION_QUEUE, encode_all(&[wake], delay)?);
        }
        let finished = (txn.task().state == TaskState::Complete).then(|| {
            (Utc::now() - txn.task().created_at)
                .to_std()
                .unwrap_or_default()
        });
        let claimed = self.finish(txn, outbox, taken).await?;
        if let Some((handler, took)) = observed {
            self.metrics.observe_step(&handler, took);
        }
        if let Some(took) = finished {
            self.metrics.observe_task(&template.key(), took);
        }
        Ok(Orchestrated {
            current: true,
            claimed,
        })
    }

    /// Commits, then delivers what the store did not send with the commit;
    /// the steps of `taken` that the commit claimed, ready to run.
    async fn finish(
        &self,
        txn: TaskTxn,
        outbox: Outbox,
        taken: Vec<Taken>,
    ) -> Result<Vec<Claimed>, OrchestratorError> {
        let graph = (!taken.is_empty()).then(|| txn.graph().clone());
        let mut committed = txn.commit(self.store.as_ref(), outbox).await?;
        std::mem::take(&mut committed.rest)
            .deliver(self.queue.as_ref())
            .await?;
        Ok(match graph {
            Some(graph) if committed.claimed => claimed_steps(graph, committed.lock, taken),
            // Sent as ordinary messages: the slots go back.
            _ => Vec::new(),
        })
    }

    /// Cancels a task: steps not yet started never run. Returns its new state.
    pub async fn cancel(
        &self,
        task_id: TaskId,
        reason: &str,
    ) -> Result<TaskState, OrchestratorError> {
        for _ in 0..=self.config.conflict_retries {
            let mut txn = TaskTxn::open(self.store.as_ref(), task_id).await?;
            evaluate::cancel(&mut txn, reason)?;
            let state = txn.task().state;
            match self.finish(txn, Outbox::default(), Vec::new()).await {
                Err(OrchestratorError::Store(StoreError::Conflict(_))) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(state),
            }
        }
        Err(OrchestratorError::Contention { task_id })
    }

    /// Re-sends the messages of what [`Store::stranded`] finds stranded
    /// for longer than `older_than`; how many it re-sent.
    pub async fn resend_stranded(&self, older_than: Duration) -> Result<usize, OrchestratorError> {
        let stranded = self.store.stranded(older_than, 1000).await?;
        let mut outbox = Outbox::default();
        for s in &stranded.steps {
            if s.for_orchestration {
                let result = OrchestrationMessage::StepResult {
                    task_id: s.message.task_id,
                    step_id: s.message.step_id,
                    attempt: s.message.attempt,
                    elapsed_us: 0,
                };
                outbox.send(ORCHESTRATION_QUEUE, encode_all(&[result], Duration::ZERO)?);
                continue;
            }
            let Some(template) = self
                .templates
                .get(&s.namespace, &s.task_name, Some(&s.version))
            else {
                tracing::error!(task = %s.message.task_id, step = %s.message.step_name, "stranded step of an unknown template");
                continue;
            };
            for (queue, messages) in dispatch(&template, std::slice::from_ref(&s.message))?.sends {
                outbox.send(&queue, messages);
            }
        }
        let wakes: Vec<_> = stranded
            .tasks
            .iter()
            .map(|&task_id| OrchestrationMessage::Wake { task_id })
            .collect();
        outbox.send(ORCHESTRATION_QUEUE, encode_all(&wakes, Duration::ZERO)?);
        let count = stranded.steps.len() + stranded.tasks.len();
        if count > 0 {
            tracing::warn!(
                steps = stranded.steps.len(),
                tasks = stranded.tasks.len(),
                "re-sent the messages of stranded steps and tasks"
            );
        }
        outbox.deliver(self.queue.as_ref()).await?;
        let leases: Vec<_> = stranded
            .steps
            .iter()
            .filter_map(|s| Some((s.message.step_id, s.lease?)))
            .collect();
        self.store.end_leases(&leases).await?;
        Ok(count)
    }

    /// Every half of `after`, re-sends what is stranded (see [`Self::resend_stranded`]).
    async fn sweep(&self, after: Duration, mut shutdown: Shutdown) {
        let every = (after / 2).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.resend_stranded(after).await {
                tracing::warn!(error = %e, "looking for stranded steps failed; will look again");
            }
        }
    }

    /// Consumes the orchestration queue until shutdown, then lets the
    /// results being processed finish. With `resend_stranded_after`, also
    /// re-sends what a crash between a commit and its send left stranded.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let sweeper = self.config.resend_stranded_after.map(|after| {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.sweep(after, shutdown).await })
        });
        let size = self.config.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(size));
        let this = self.clone();
        queue::consume(
            self.queue.clone(),
            ORCHESTRATION_QUEUE,
            queue::Slots::Concurrency(slots.clone()),
            self.config.visibility_timeout,
            self.config.receive_wait,
            shutdown,
            move |d, _| {
                let this = this.clone();
                async move { this.process(d).await }
            },
        )
        .await;
        let _ = slots.acquire_many(size as u32).await;
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
    }

    /// A poison message: out of the way, with why.
    async fn dead_letter(&self, receipt: u64, reason: &str) {
        tracing::error!(%reason, "orchestration message moved to the dead letters");
        let _ = self
            .queue
            .dead_letter(ORCHESTRATION_QUEUE, receipt, reason)
            .await;
    }

    async fn process(&self, delivery: Delivery) {
        let message: OrchestrationMessage = match delivery.decode() {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable orchestration message: {e}");
                return self.dead_letter(delivery.receipt, &reason).await;
            }
        };
        match self.handle(&message, Some(delivery.receipt)).await {
            Ok(()) => return,
            Err(OrchestratorError::Store(
                StoreError::TaskNotFound(_) | StoreError::StepNotFound(_),
            )) => {
                let reason = format!("message for an unknown task or step: {message:?}");
                return self.dead_letter(delivery.receipt, &reason).await;
            }
            Err(OrchestratorError::Store(StoreError::Backend(_)) | OrchestratorError::Queue(_)) => {
                // Transient: the message comes back after its visibility timeout.
                tracing::warn!(?message, "orchestration failed; will retry");
                let _ = self
                    .queue
                    .release(
                        ORCHESTRATION_QUEUE,
                        delivery.receipt,
                        Duration::from_millis(100),
                    )
                    .await;
                return;
            }
            Err(e) => tracing::error!(?message, error = %e, "orchestration failed"),
        }
        if let Err(e) = self
            .queue
            .ack(ORCHESTRATION_QUEUE, &[delivery.receipt])
            .await
        {
            tracing::warn!(error = %e, "ack failed; message will be redelivered");
        }
    }
}

/// The step messages for the workers, as an outbox: each to its handler's
/// queue (the task's namespace unless the template names another).
fn dispatch(template: &TaskTemplate, messages: &[StepMessage]) -> Result<Outbox, QueueError> {
    let mut outbox = Outbox::default();
    for m in messages {
        outbox.send(
            &worker_queue(template.queue_of(&m.handler)),
            encode_all(std::slice::from_ref(m), Duration::ZERO)?,
        );
    }
    Ok(outbox)
}

/// A step message put in an outbox's claims, and the slot taken for it.
type Taken = (StepMessage, OwnedSemaphorePermit);

/// Like [`dispatch`], but the messages for `eager`'s queues go into the
/// outbox's claims while it has free slots; returns the slots taken, with
/// the message each is for, in the order of the claims.
fn dispatch_eager(
    template: &TaskTemplate,
    messages: Vec<StepMessage>,
    eager: Option<&Eager>,
) -> Result<(Outbox, Vec<Taken>), QueueError> {
    let Some(eager) = eager else {
        return Ok((dispatch(template, &messages)?, Vec::new()));
    };
    let mut outbox = Outbox {
        claim_for: eager.visibility,
        ..Outbox::default()
    };
    let mut taken = Vec::new();
    for m in messages {
        let queue = worker_queue(template.queue_of(&m.handler));
        let encoded = encode_all(std::slice::from_ref(&m), Duration::ZERO)?;
        let permit = eager
            .queues
            .contains(&queue)
            .then(|| eager.handoff.take().or_else(|| eager.slots.try_take()))
            .flatten();
        match permit {
            Some(permit) => {
                outbox
                    .claims
                    .extend(encoded.into_iter().map(|message| Claim {
                        queue: queue.clone(),
                        step_id: m.step_id,
                        message,
                    }));
                taken.push((m, permit));
            }
            None => {
                outbox.send(&queue, encoded);
            }
        }
    }
    Ok((outbox, taken))
}

/// The steps a commit claimed, each with what its handler needs; the first
/// also gets the task's graph as of the commit, to commit its outcome
/// against (the others read it afresh: the first will have changed it).
fn claimed_steps(graph: TaskGraph, mut lock: Option<TaskLock>, taken: Vec<Taken>) -> Vec<Claimed> {
    let mut out = Vec::with_capacity(taken.len());
    for (message, permit) in taken {
        let Some(idx) = graph.steps.iter().position(|s| s.id == message.step_id) else {
            // Cannot happen (the message was made from this graph); its
            // lease runs out and another worker gets it.
            tracing::error!(step = %message.step_name, "a claimed step is not in its task's graph");
            continue;
        };
        let work = graph.work(idx);
        let snapshot = lock.take().map(|lock| {
            Box::new(Snapshot {
                graph: graph.clone(),
                lock,
            })
        });
        out.push(Claimed {
            message,
            work,
            snapshot,
            permit,
        });
    }
    out
}

/// Eager dispatch: a worker that orchestrates its own results takes the
/// steps its commit makes ready for its queues, as long as it has free
/// slots, instead of sending them through the queue to be claimed back.
/// The same commit leases them to it for `visibility`: when a worker dies,
/// the orchestrators' sweep sends the messages of the steps whose leases ran
/// out (see [`Store::stranded`]), as a queue redelivers after its
/// visibility timeout.
#[derive(Clone)]
pub struct Eager {
    pub queues: Vec<String>,
    pub slots: Slots,
    pub visibility: Duration,
    /// The slot of the step whose commit this is: the first step it makes
    /// ready for these queues takes it before any free one.
    pub handoff: Slot,
}

impl Eager {
    /// For the commit of a step that runs in `slot`.
    pub fn handing_off(&self, slot: Slot) -> Eager {
        Eager {
            handoff: slot,
            ..self.clone()
        }
    }
}

/// What [`Orchestrator::complete_inline`] did.
#[derive(Default)]
pub struct Orchestrated {
    /// The result was for the step's current attempt (else it was dropped).
    pub current: bool,
    /// Steps made ready and claimed for the caller (see [`Eager`]).
    pub claimed: Vec<Claimed>,
}

impl Orchestrated {
    fn current() -> Self {
        Orchestrated {
            current: true,
            claimed: Vec::new(),
        }
    }
}

/// A step leased by eager dispatch: what its handler needs, and the slot it holds.
pub struct Claimed {
    pub message: StepMessage,
    pub work: StepWork,
    pub snapshot: Option<Box<Snapshot>>,
    pub permit: OwnedSemaphorePermit,
}

/// What the orchestrator is asked to look at.
enum Work {
    /// A step attempt's outcome: already durable (EnqueuedForOrchestration)
    /// when `outcome` is None, else recorded by this same commit (with when
    /// the handler started).
    Result {
        step_id: StepId,
        attempt: u32,
        elapsed: Duration,
        outcome: Option<(StepOutcome, DateTime<Utc>)>,
    },
    /// A timer: a retry's backoff has run out.
    Wake,
}
