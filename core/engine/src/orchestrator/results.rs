//! A step attempt's outcome (from the queue, or inline from the worker that
//! ran it) and retry timers: compare-and-swap against the task's graph,
//! re-read and re-decided on a conflict. And cancellation.

use super::dispatch::{dispatch_eager, Claimed, Eager};
use super::{Orchestrator, OrchestratorError};
use crate::evaluate::{self, Trigger};
use crate::model::*;
use crate::queue::{encode_all, Outbox, ORCHESTRATION_QUEUE};
use crate::state::{StepState, TaskState};
use crate::store::{Snapshot, StoreError};
use crate::txn::TaskTxn;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::time::Duration;

impl Orchestrator {
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
            self.metrics.observe_step(
                &format!("{}/{}", template.namespace, template.name),
                &handler,
                took,
            );
        }
        if let Some(took) = finished {
            self.metrics
                .observe_task(&format!("{}/{}", template.namespace, template.name), took);
        }
        Ok(Orchestrated {
            current: true,
            claimed,
        })
    }

    /// Cancels a task: steps not yet started never run. Its audit rows say
    /// who asked and why, as a repair's do. Returns its new state.
    pub async fn cancel(
        &self,
        task_id: TaskId,
        requested: &crate::repair::Requested,
    ) -> Result<TaskState, OrchestratorError> {
        let metadata =
            json!({ "action": "cancelled", "by": requested.by, "reason": requested.reason });
        for _ in 0..=self.config.conflict_retries {
            let mut txn = TaskTxn::open(self.store.as_ref(), task_id).await?;
            // Cancelling twice is no error; cancelling what finished is.
            match txn.task().state {
                TaskState::Cancelled => return Ok(TaskState::Cancelled),
                state if state.is_terminal() => {
                    return Err(OrchestratorError::WrongState {
                        task_id,
                        state,
                        action: "cancelled",
                    })
                }
                _ => {}
            }
            evaluate::cancel(&mut txn, &metadata)?;
            let state = txn.task().state;
            match self.finish(txn, Outbox::default(), Vec::new()).await {
                Err(OrchestratorError::Store(StoreError::Conflict(_))) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(state),
            }
        }
        Err(OrchestratorError::Contention { task_id })
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
