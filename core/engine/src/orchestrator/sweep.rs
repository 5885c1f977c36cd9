//! The stranded-step sweep: steps whose eager-dispatch leases ran out (their
//! worker died) and, with a queue that commits apart from the store, steps
//! and tasks whose messages a crash may have lost get them sent again.

use super::dispatch::dispatch;
use super::{Orchestrator, OrchestratorError};
use crate::model::*;
use crate::queue::{encode_all, Outbox, ORCHESTRATION_QUEUE};
use crate::shutdown::Shutdown;
use std::time::Duration;

impl Orchestrator {
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
    pub(super) async fn sweep(&self, after: Duration, mut shutdown: Shutdown) {
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
}
