//! The handler-wait timeout (`handler_wait_timeout`, off by default): a step
//! Enqueued longer than it whose handler no live worker serves fails as if
//! a worker had found no handler for it (`handler_unavailable`, permanent),
//! through the path every result takes: started, its outcome recorded with
//! its attempt, its task orchestrated from the orchestration queue.

use super::{Orchestrator, OrchestratorError};
use crate::model::*;
use crate::queue::{encode_all, Outbox, ORCHESTRATION_QUEUE};
use crate::shutdown::Shutdown;
use crate::store::live_handlers;
use std::time::Duration;

impl Orchestrator {
    /// Fails the steps Enqueued longer than `after` whose handler no live
    /// worker serves; how many it failed.
    pub async fn fail_unserved(&self, after: Duration) -> Result<usize, OrchestratorError> {
        let waiting = self.store.enqueued_for(after, 1000).await?;
        if waiting.is_empty() {
            return Ok(0);
        }
        let served = live_handlers(self.store.as_ref()).await?;
        let mut failed = 0;
        for m in waiting.iter().filter(|m| !served.contains(&m.handler)) {
            // A worker that took it meanwhile wins the start.
            if !matches!(
                self.store.start_step(m.step_id, m.attempt, true).await?,
                StartOutcome::Started(..)
            ) {
                continue;
            }
            let error = StepError::permanent(format!(
                "no live worker serves handler `{}`: step `{}` waited for one longer than {} ms",
                m.handler,
                m.step_name,
                after.as_millis()
            ))
            .with_code("handler_unavailable");
            let result = OrchestrationMessage::StepResult {
                task_id: m.task_id,
                step_id: m.step_id,
                attempt: m.attempt,
                elapsed_us: 0,
            };
            let mut notify = Outbox::default();
            notify.send(ORCHESTRATION_QUEUE, encode_all(&[result], Duration::ZERO)?);
            let (_, rest) = self
                .store
                .submit_result(m.step_id, m.attempt, StepOutcome::Failure { error }, notify)
                .await?;
            rest.deliver(self.queue.as_ref()).await?;
            tracing::warn!(task = %m.task_id, step = %m.step_name, handler = %m.handler, "no live worker serves the step's handler: failed");
            failed += 1;
        }
        Ok(failed)
    }

    /// Every quarter of `after` (at least every 200 ms), fails what waited
    /// longer (see [`Self::fail_unserved`]).
    pub(super) async fn handler_wait(&self, after: Duration, mut shutdown: Shutdown) {
        let every = (after / 4).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.fail_unserved(after).await {
                tracing::warn!(error = %e, "looking for steps no worker serves failed; will look again");
            }
        }
    }
}
