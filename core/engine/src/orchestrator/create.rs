//! Creating a task: the context checked against the template's schema, the
//! idempotency key honoured, the first steps dispatched in the same commit.

use super::dispatch::{dispatch_eager, Claimed};
use super::{Eager, Orchestrator, OrchestratorError, TaskCreated, TaskRequest};
use crate::evaluate::{self, Trigger};
use crate::model::*;
use crate::queue::Outbox;
use crate::state::TaskState;
use crate::store::StoreError;
use crate::txn::TaskTxn;
use serde_json::json;

impl Orchestrator {
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
        crate::limits::check(&req.context, req.idempotency_key.as_deref())
            .map_err(OrchestratorError::InvalidRequest)?;
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
        let start_at = req
            .start_at(chrono::Utc::now())
            .map_err(OrchestratorError::InvalidRequest)?;
        let trace = crate::trace::TaskTrace::for_new_task(req.traceparent.as_deref())
            .map_err(OrchestratorError::InvalidRequest)?;
        if let Some(key) = &req.idempotency_key {
            if let Some(task_id) = self.store.find_by_idempotency_key(key).await? {
                return Ok((self.same_request(task_id, key, &req).await?, Vec::new()));
            }
        }
        // For a creation that loses the race for its key, to compare with the winner.
        let keyed = req.idempotency_key.is_some().then(|| req.clone());
        let task = Task {
            idempotency_key: req.idempotency_key,
            priority: req.priority,
            trace,
            ..Task::pending(
                &template.namespace,
                &template.name,
                &template.version,
                req.context,
            )
        };
        let task_id = task.id;
        let result = match start_at {
            // Stored now, started by the scheduler at `start_at`.
            Some(at) => {
                let txn = TaskTxn::create(Task {
                    state: TaskState::Scheduled,
                    run_at: Some(at),
                    ..task
                });
                let done = self.finish(txn, Outbox::default(), Vec::new()).await;
                self.wake.notify_one();
                done
            }
            None => {
                let mut txn = TaskTxn::create(task);
                txn.task_to(TaskState::Initializing, json!({}))?;
                let messages = evaluate::evaluate(&mut txn, &template, Trigger::Init)?;
                let (outbox, taken) = dispatch_eager(&template, messages, self.eager(eager))?;
                self.finish(txn, outbox, taken).await
            }
        };
        match result {
            Ok(claimed) => {
                let created = TaskCreated {
                    task_id,
                    created: true,
                };
                Ok((created, claimed))
            }
            Err(OrchestratorError::Store(StoreError::DuplicateIdempotencyKey {
                existing,
                key,
            })) => {
                let created = match &keyed {
                    Some(req) => self.same_request(existing, &key, req).await?,
                    None => TaskCreated {
                        task_id: existing,
                        created: false,
                    },
                };
                Ok((created, Vec::new()))
            }
            Err(e) => Err(e),
        }
    }

    /// The task `key` already names, if it was created from the same
    /// request (template, the version if one is asked for, and context):
    /// a retried creation gets the task it made.
    async fn same_request(
        &self,
        task_id: TaskId,
        key: &str,
        req: &TaskRequest,
    ) -> Result<TaskCreated, OrchestratorError> {
        let task = self.store.graph(task_id).await?.task;
        let same = task.namespace == req.namespace
            && task.name == req.name
            && req.version.as_ref().is_none_or(|v| *v == task.version)
            && task.context == req.context;
        if !same {
            return Err(OrchestratorError::IdempotencyKeyReused {
                key: key.to_string(),
                task_id,
            });
        }
        Ok(TaskCreated {
            task_id,
            created: false,
        })
    }
}

impl Orchestrator {
    /// Starts a delayed task whose time has come, as creation would have:
    /// its first steps dispatched in the same commit. False when it is no
    /// longer scheduled (cancelled, or started by another process).
    pub async fn start_scheduled(&self, task_id: TaskId) -> Result<bool, OrchestratorError> {
        let mut txn = TaskTxn::open(self.store.as_ref(), task_id).await?;
        let task = txn.task().clone();
        if task.state != TaskState::Scheduled {
            return Ok(false);
        }
        let template = self.template_for(&task)?;
        txn.task_to(
            TaskState::Initializing,
            json!({ "action": "start", "run_at": task.run_at }),
        )?;
        let messages = evaluate::evaluate(&mut txn, &template, Trigger::Init)?;
        let (outbox, taken) = dispatch_eager(&template, messages, None)?;
        match self.finish(txn, outbox, taken).await {
            Ok(_) => Ok(true),
            // Another process started (or cancelled) it first.
            Err(OrchestratorError::Store(StoreError::Conflict(_))) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
