//! The orchestrator: creates tasks ([`create`]), applies step results and
//! timers ([`results`]), hands the steps a commit makes ready to a worker
//! that orchestrates inline or to the queue ([`dispatch`]), consumes the
//! orchestration queue ([`consumer`]) and re-sends what a crash stranded
//! ([`sweep`]).

mod consumer;
mod create;
mod dispatch;
mod log;
mod repair;
mod results;
mod retention;
mod schedule;
mod spans;
mod sweep;
mod unserved;

pub use schedule::LATE_TOLERANCE;

pub use dispatch::{Claimed, Eager};
pub use results::Orchestrated;

use crate::model::*;
use crate::queue::{Outbox, Queue, QueueError};
use crate::store::{Store, StoreError};
use crate::template::{TaskTemplate, TemplateRegistry};
use crate::txn::TaskTxn;
use chrono::{DateTime, Utc};
use dispatch::{claimed_steps, Taken};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

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
    /// A context or idempotency key no store can keep (see [`crate::limits`]).
    #[error("{0}")]
    InvalidRequest(String),
    /// The key names a task created from another template, version or context.
    #[error("idempotency key {key:?} is taken by task {task_id}, created with another template, version or context")]
    IdempotencyKeyReused { key: String, task_id: TaskId },
    /// The request makes no sense in the task's state.
    #[error("task {task_id} is {state}: it cannot be {action}")]
    WrongState {
        task_id: TaskId,
        state: crate::TaskState,
        action: &'static str,
    },
    /// The request makes no sense in the step's state.
    #[error("step `{step}` of task {task_id} is {state}: it cannot be {action}")]
    WrongStepState {
        task_id: TaskId,
        step: String,
        state: crate::StepState,
        action: &'static str,
    },
    #[error("task {task_id} has no step `{step}`")]
    NoSuchStep { task_id: TaskId, step: String },
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// Start at this time (RFC 3339) instead of at once: the task is stored
    /// now, `scheduled`, and its first steps become ready then.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Start this many milliseconds from now (instead of `run_at`).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// The W3C trace context of the caller's span: the task's span (and
    /// its steps') join that trace under it. Over HTTP the `traceparent`
    /// header gives it too.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
    )]
    pub traceparent: Option<String>,
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
            run_at: None,
            delay_ms: None,
            traceparent: None,
        }
    }

    /// When the task should start, if later than `now`; `run_at` a little
    /// in the past (within [`RUN_AT_TOLERANCE`]: clocks differ) means now.
    pub fn start_at(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
        let at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err("give run_at or delay_ms, not both".into());
            }
            (Some(at), None) => {
                if at < now - RUN_AT_TOLERANCE {
                    return Err(format!(
                        "run_at {} is in the past (now is {}; at most {} s earlier is taken as now)",
                        at.to_rfc3339(),
                        now.to_rfc3339(),
                        RUN_AT_TOLERANCE.num_seconds()
                    ));
                }
                at
            }
            (None, Some(ms)) => {
                let ms = i64::try_from(ms)
                    .ok()
                    .filter(|ms| *ms <= MAX_DELAY.num_milliseconds())
                    .ok_or_else(|| {
                        format!("delay_ms {ms} is more than {} days", MAX_DELAY.num_days())
                    })?;
                now + chrono::Duration::milliseconds(ms)
            }
            (None, None) => return Ok(None),
        };
        if at - now > MAX_DELAY {
            return Err(format!(
                "run_at {} is more than {} days ahead",
                at.to_rfc3339(),
                MAX_DELAY.num_days()
            ));
        }
        Ok((at > now).then_some(at))
    }
}

/// How far in the past a `run_at` may be and still be taken as "now".
pub const RUN_AT_TOLERANCE: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// The furthest ahead a task can be delayed.
pub const MAX_DELAY: chrono::TimeDelta = chrono::TimeDelta::days(3660);

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCreated {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
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
    /// Deliveries of an orchestration message that failed the same way
    /// before it is dead-lettered and its task failed ([`crate::queue::poison`]).
    pub max_deliveries: u32,
    /// The scheduler looks for delayed tasks and schedules other processes
    /// stored at least this often (it sleeps until the next one it knows of).
    pub schedule_poll: Duration,
    /// A step Enqueued this long whose handler no live worker serves fails
    /// (`handler_unavailable`); none: it waits for one however long.
    pub handler_wait_timeout: Option<Duration>,
    /// What ended tasks are kept, and how often the rest is removed; none:
    /// everything is kept.
    pub retention: Option<RetentionConfig>,
}

/// See [`OrchestratorConfig::retention`] and [`crate::retention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionConfig {
    /// For tasks of templates without a retention of their own.
    pub default: crate::retention::Retention,
    /// Copy each task (steps and audit trail included) to the archive before removing it.
    pub archive: bool,
    /// How often to look for expired tasks.
    pub every: Duration,
    /// Tasks removed per transaction: small enough that no lock is held for long.
    pub batch: i64,
    /// The creation-time window of one history partition, where the store
    /// partitions its audit trails ([`crate::Store::rotate`]).
    pub partition: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            default: Default::default(),
            archive: false,
            every: Duration::from_secs(60),
            batch: 500,
            partition: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            concurrency: 64,
            visibility_timeout: Duration::from_secs(30),
            receive_wait: Duration::from_secs(1),
            conflict_retries: 20,
            resend_stranded_after: Some(Duration::from_secs(60)),
            max_deliveries: crate::queue::poison::DEFAULT_MAX_DELIVERIES,
            schedule_poll: Duration::from_secs(1),
            handler_wait_timeout: None,
            retention: None,
        }
    }
}

pub struct Orchestrator {
    metrics: crate::metrics::Metrics,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    templates: Arc<TemplateRegistry>,
    config: OrchestratorConfig,
    /// Wakes the scheduler: a task was delayed or a schedule changed here.
    wake: tokio::sync::Notify,
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
            wake: tokio::sync::Notify::new(),
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

    /// `eager` when the store can lease steps in its commits (else there
    /// is nothing to take slots for).
    pub(super) fn eager<'a>(&self, eager: Option<&'a Eager>) -> Option<&'a Eager> {
        eager.filter(|_| self.store.leases_steps())
    }

    pub(super) fn template_for(&self, task: &Task) -> Result<Arc<TaskTemplate>, OrchestratorError> {
        self.templates
            .get(&task.namespace, &task.name, Some(&task.version))
            .ok_or_else(|| OrchestratorError::TemplateNotFound {
                namespace: task.namespace.clone(),
                name: task.name.clone(),
                version: Some(task.version.clone()),
            })
    }

    /// Commits, then delivers what the store did not send with the commit;
    /// the steps of `taken` that the commit claimed, ready to run.
    pub(super) async fn finish(
        &self,
        txn: TaskTxn,
        outbox: Outbox,
        taken: Vec<Taken>,
    ) -> Result<Vec<Claimed>, OrchestratorError> {
        let graph = (!taken.is_empty()).then(|| txn.graph().clone());
        let notable = log::Notable::of(&txn);
        let tallies = crate::metrics::Tally::of(&txn);
        let span = spans::task_ended(&txn);
        let mut committed = txn.commit(self.store.as_ref(), outbox).await?;
        for n in &notable {
            n.log();
        }
        if let Some(span) = span {
            crate::trace::export(span);
        }
        self.metrics.count(tallies);
        std::mem::take(&mut committed.rest)
            .deliver(self.queue.as_ref())
            .await?;
        Ok(match graph {
            Some(graph) if committed.claimed => claimed_steps(graph, committed.lock, taken),
            // Sent as ordinary messages: the slots go back.
            _ => Vec::new(),
        })
    }
}
