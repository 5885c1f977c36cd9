//! Task templates: the YAML a user writes ([`TaskTemplate`], its steps and
//! their policies), how it is parsed ([`parse`]) and validated
//! ([`validate`], with cycle finding), and the registry that holds every
//! loaded version ([`registry`]).

mod error;
mod parse;
mod registry;
mod validate;

pub use error::{TemplateError, TemplateErrorKind, TemplateErrors};
pub use registry::TemplateRegistry;

use crate::retention::Keep;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepType {
    #[default]
    Standard,
    Decision,
    Batchable,
    BatchWorker,
    DeferredConvergence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    #[default]
    Exponential,
    Linear,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub retryable: bool,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub backoff_base_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retryable: true,
            max_attempts: 3,
            backoff: Backoff::Exponential,
            backoff_base_ms: 1000,
            max_backoff_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// Delay before the attempt that follows failed attempt number `attempt` (1-based).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        let base = self.backoff_base_ms;
        let ms = match self.backoff {
            Backoff::None => 0,
            Backoff::Linear => base.saturating_mul(u64::from(attempt.max(1))),
            Backoff::Exponential => {
                let shift = attempt.saturating_sub(1).min(32);
                base.saturating_mul(1u64 << shift)
            }
        };
        Duration::from_millis(ms.min(self.max_backoff_ms))
    }

    /// Attempts a step may use: one when it is not retryable.
    pub fn effective_max_attempts(&self) -> u32 {
        if self.retryable {
            self.max_attempts
        } else {
            1
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    pub callable: String,
    #[serde(default = "empty_object")]
    pub config: Value,
    /// The worker queue this handler's steps go to, instead of the task's
    /// namespace: how one task mixes handlers served by different workers
    /// (a Ruby worker and a Python one, say, each serving its own queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    pub batch_size: u64,
    pub worker_template: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTemplate {
    pub name: String,
    #[serde(rename = "type", default)]
    pub step_type: StepType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub handler: HandlerSpec,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

impl StepTemplate {
    /// A standard step with default retry settings, for templates built in code.
    pub fn standard(name: &str, callable: &str, dependencies: Vec<String>) -> StepTemplate {
        StepTemplate {
            name: name.into(),
            step_type: StepType::Standard,
            description: None,
            handler: HandlerSpec {
                callable: callable.into(),
                config: empty_object(),
                queue: None,
            },
            dependencies,
            retry: RetryPolicy::default(),
            timeout_seconds: None,
            batch: None,
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_seconds.map(Duration::from_secs_f64)
    }
}

/// A schedule a template declares: `schedules: [{cron: "*/5 * * * *",
/// timezone: Europe/Berlin, context: {...}}]`; its name defaults to
/// `<namespace>.<name>.<index>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSchedule {
    #[serde(default)]
    pub name: Option<String>,
    pub cron: String,
    #[serde(default = "crate::schedule::utc")]
    pub timezone: String,
    #[serde(default)]
    pub context: Value,
    #[serde(default)]
    pub catch_up: crate::schedule::CatchUp,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    pub namespace: String,
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    pub steps: Vec<StepTemplate>,
    /// Cron schedules that create this template's tasks (see `schedule`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<TemplateSchedule>,
    /// How long its tasks are kept once they end (but in Error); the
    /// process's default when absent. See [`crate::retention`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// How long its tasks that ended in Error are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_retention: Option<String>,
    #[serde(skip)]
    compiled: Option<Arc<jsonschema::Validator>>,
    #[serde(skip)]
    index: HashMap<String, usize>,
    /// Step indexes, every dependency before its dependents.
    #[serde(skip)]
    topo: Vec<usize>,
}

impl fmt::Debug for TaskTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskTemplate")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl TaskTemplate {
    /// Its own `retention` and `failed_retention` (checked when it was
    /// validated), each None where it follows the default.
    pub fn own_retention(&self) -> (Option<Keep>, Option<Keep>) {
        let keep = |text: &Option<String>| text.as_deref().and_then(|t| t.parse().ok());
        (keep(&self.retention), keep(&self.failed_retention))
    }

    /// Steps in an order where every dependency comes before its dependents.
    pub fn steps_in_order(&self) -> impl Iterator<Item = &StepTemplate> {
        self.topo.iter().map(|&i| &self.steps[i])
    }

    /// Direct dependents of a decision step that it may choose between.
    pub fn branches_of(&self, decision: &str) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| {
                s.step_type != StepType::DeferredConvergence
                    && s.dependencies.iter().any(|d| d == decision)
            })
            .map(|s| s.name.as_str())
            .collect()
    }

    /// `namespace/name@version`.
    pub fn key(&self) -> String {
        format!("{}/{}@{}", self.namespace, self.name, self.version)
    }

    pub fn step(&self, name: &str) -> Option<&StepTemplate> {
        self.index.get(name).map(|&i| &self.steps[i])
    }

    /// Where the steps of `handler` go: the queue its template step names,
    /// or the task's namespace (batch workers share their template step's handler).
    pub fn queue_of<'a>(&'a self, handler: &str) -> &'a str {
        self.steps
            .iter()
            .find(|s| s.handler.callable == handler && s.handler.queue.is_some())
            .and_then(|s| s.handler.queue.as_deref())
            .unwrap_or(&self.namespace)
    }

    /// Every worker queue this template's steps use.
    pub fn queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = std::iter::once(self.namespace.clone())
            .chain(self.steps.iter().filter_map(|s| s.handler.queue.clone()))
            .collect();
        queues.sort();
        queues.dedup();
        queues
    }

    /// The queue of each handler its steps name (see
    /// [`crate::queue::handler_queue`]).
    pub fn handler_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                let h = s.handler.callable.as_str();
                crate::queue::handler_queue(self.queue_of(h), h)
            })
            .collect();
        queues.sort();
        queues.dedup();
        queues
    }

    /// Checks a task context against `input_schema`; the error lists every violation.
    pub fn validate_context(&self, context: &Value) -> Result<(), String> {
        let Some(validator) = &self.compiled else {
            return Ok(());
        };
        let problems: Vec<String> = validator
            .iter_errors(context)
            .map(|e| {
                let path = e.instance_path.to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The batchable step whose worker template is `worker`.
    pub fn batch_parent_of(&self, worker: &str) -> Option<&StepTemplate> {
        self.steps.iter().find(|s| {
            s.step_type == StepType::Batchable
                && s.batch
                    .as_ref()
                    .is_some_and(|b| b.worker_template == worker)
        })
    }
}
