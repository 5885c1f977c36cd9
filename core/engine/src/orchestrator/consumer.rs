//! The orchestration queue's consumer: results and timers processed with a
//! concurrency limit; poison messages dead-lettered (at once when they
//! cannot be decoded or name nothing, else after failing on every one of
//! `max_deliveries` deliveries), other failures released to come back.

use super::{Orchestrator, OrchestratorError};
use crate::model::*;
use crate::queue::poison::{self, ProcessError};
use crate::queue::{self, Delivery, ORCHESTRATION_QUEUE};
use crate::shutdown::Shutdown;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// How soon a result that gave way to concurrent changes of its task is
/// orchestrated again.
const CONTENTION_BACKOFF: Duration = Duration::from_millis(20);

impl Orchestrator {
    /// Consumes the orchestration queue until shutdown, then lets the
    /// results being processed finish. With `resend_stranded_after`, also
    /// re-sends what a crash between a commit and its send left stranded.
    /// Runs the scheduler (delayed tasks, cron schedules) and, with
    /// `retention`, the removal of expired tasks meanwhile.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let scheduler = {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.scheduler(shutdown).await })
        };
        let sweeper = self.config.resend_stranded_after.map(|after| {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.sweep(after, shutdown).await })
        });
        let unserved = self.config.handler_wait_timeout.map(|after| {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.handler_wait(after, shutdown).await })
        });
        let retention = self.config.retention.map(|r| {
            let this = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { this.retain(r.every, shutdown).await })
        });
        let size = self.config.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(size));
        let this = self.clone();
        queue::consume(
            self.queue.clone(),
            &[ORCHESTRATION_QUEUE.to_string()],
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
        for task in sweeper.into_iter().chain(unserved).chain(retention) {
            let _ = task.await;
        }
        let _ = scheduler.await;
    }

    /// A poison message: out of the way, with why.
    async fn dead_letter(&self, receipt: u64, reason: &str) {
        tracing::error!(%reason, "orchestration message moved to the dead letters");
        if self
            .queue
            .dead_letter(ORCHESTRATION_QUEUE, receipt, reason)
            .await
            .is_ok()
        {
            crate::metrics::dead_lettered(ORCHESTRATION_QUEUE);
        }
    }

    async fn process(&self, delivery: Delivery) {
        let message: OrchestrationMessage = match delivery.decode() {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("undecodable orchestration message: {e}");
                return self.dead_letter(delivery.receipt, &reason).await;
            }
        };
        let failure = match self.handle(&message, Some(delivery.receipt)).await {
            Ok(()) => return,
            Err(OrchestratorError::Store(
                StoreError::TaskNotFound(_) | StoreError::StepNotFound(_),
            )) => {
                let reason = format!("message for an unknown task or step: {message:?}");
                return self.dead_letter(delivery.receipt, &reason).await;
            }
            Err(OrchestratorError::Contention { task_id }) => {
                // Not the message's fault: others kept changing its task.
                // It comes back shortly to be orchestrated again; acked,
                // nothing would send it again (the PostgreSQL queue's
                // messages are never lost, so the sweep does not look).
                tracing::warn!(%task_id, "orchestration gave way to concurrent changes of the task; its message comes back");
                if let Err(e) = self
                    .queue
                    .release(ORCHESTRATION_QUEUE, delivery.receipt, CONTENTION_BACKOFF)
                    .await
                {
                    tracing::warn!(error = %e, "release failed; the message comes back after its visibility timeout");
                }
                return;
            }
            Err(OrchestratorError::Store(e)) => Some(ProcessError::Store(e)),
            Err(OrchestratorError::Queue(e)) => Some(ProcessError::Queue(e)),
            Err(e) => {
                tracing::error!(?message, error = %e, "orchestration failed");
                None
            }
        };
        if let Some(error) = failure {
            return poison::failed(
                self.store.as_ref(),
                self.queue.as_ref(),
                ORCHESTRATION_QUEUE,
                &delivery,
                Some((message.task_id(), None)),
                &error,
                self.config.max_deliveries,
                Duration::from_millis(100),
            )
            .await;
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
