//! An operator's repairs (see [`crate::repair`]) applied and committed like
//! any orchestration: re-read on a compare-and-swap conflict, what became
//! ready enqueued in the same commit.

use super::dispatch::dispatch_eager;
use super::{Orchestrator, OrchestratorError};
use crate::evaluate::{self, Trigger};
use crate::model::TaskId;
use crate::repair::{self, Refused, Repair, Requested};
use crate::state::TaskState;
use crate::store::StoreError;
use crate::txn::TaskTxn;

impl Orchestrator {
    /// Applies `repair` to the task; its state after the commit.
    pub async fn repair(
        &self,
        task_id: TaskId,
        repair: &Repair,
        requested: &Requested,
    ) -> Result<TaskState, OrchestratorError> {
        for _ in 0..=self.config.conflict_retries {
            let mut txn = TaskTxn::open(self.store.as_ref(), task_id).await?;
            let template = self.template_for(txn.task())?;
            repair::apply(&mut txn, &template, repair, requested).map_err(|refused| {
                let action = repair.action();
                let step = || match repair {
                    Repair::RetryStep(s) | Repair::Resolve { step: s, .. } => s.clone(),
                    Repair::RetryTask => String::new(),
                };
                match refused {
                    Refused::Task(state) => OrchestratorError::WrongState {
                        task_id,
                        state,
                        action,
                    },
                    Refused::NoSuchStep => OrchestratorError::NoSuchStep {
                        task_id,
                        step: step(),
                    },
                    Refused::Step(state) => OrchestratorError::WrongStepState {
                        task_id,
                        step: step(),
                        state,
                        action,
                    },
                }
            })?;
            let messages = evaluate::evaluate(&mut txn, &template, Trigger::Result)?;
            let (outbox, _) = dispatch_eager(&template, messages, None)?;
            let state = txn.task().state;
            match self.finish(txn, outbox, Vec::new()).await {
                Err(OrchestratorError::Store(StoreError::Conflict(_))) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(state),
            }
        }
        Err(OrchestratorError::Contention { task_id })
    }
}
