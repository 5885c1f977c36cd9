//! The native Rust handler contract: a [`StepHandler`] receives a
//! [`StepContext`] and returns a [`StepOutput`] or a [`HandlerError`].

use crate::breaker::{BreakerConfig, Breakers};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{
    BatchCursor, BatchOutcome, ErrorKind, StepError, StepId, StepOutcome, StepWork, TaskId,
};

/// What a handler sees of its step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepContext {
    pub task_id: TaskId,
    pub step_id: StepId,
    pub namespace: String,
    pub task_name: String,
    pub step_name: String,
    pub handler: String,
    /// The task context (validated against the template's input_schema).
    pub input: Value,
    /// `handler.config` from the template.
    pub config: Value,
    /// Results of the steps this one depends on, by step name.
    pub dependency_results: Map<String, Value>,
    /// 1 on the first attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    /// For batchable steps: the template's `batch.batch_size`.
    pub batch_size: Option<u64>,
    /// For batch workers: the slice of the work this step owns.
    pub cursor: Option<BatchCursor>,
    /// The step's `timeout_seconds`, when the template sets one.
    pub timeout: Option<Duration>,
    /// The W3C trace context of this attempt's handler span, when the task
    /// is traced: spans the handler makes with it as parent join the step.
    pub traceparent: Option<String>,
}

impl StepContext {
    pub fn dependency(&self, step_name: &str) -> Option<&Value> {
        self.dependency_results.get(step_name)
    }

    /// The trace's id (32 hex digits), when the task is traced.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|tp| tp.get(3..35))
    }
}

impl From<StepWork> for StepContext {
    fn from(w: StepWork) -> Self {
        StepContext {
            task_id: w.task_id,
            step_id: w.step_id,
            namespace: w.namespace,
            task_name: w.task_name,
            step_name: w.step_name,
            handler: w.handler,
            input: w.context,
            config: w.config,
            dependency_results: w.dependency_results,
            attempt: w.attempt,
            max_attempts: w.max_attempts,
            batch_size: w.batch_size,
            cursor: w.cursor.and_then(|c| serde_json::from_value(c).ok()),
            timeout: w.timeout_seconds.map(Duration::from_secs_f64),
            traceparent: w.traceparent,
        }
    }
}

/// A successful attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutput {
    /// The step's JSON result.
    Success(Value),
    /// A decision step's chosen branches (step names).
    Decision(Vec<String>),
    /// A batchable step's split of the work.
    Batch(BatchOutcome),
}

impl From<Value> for StepOutput {
    fn from(v: Value) -> Self {
        StepOutput::Success(v)
    }
}

impl From<StepOutput> for StepOutcome {
    fn from(o: StepOutput) -> Self {
        match o {
            StepOutput::Success(result) => StepOutcome::Success { result },
            StepOutput::Decision(branches) => StepOutcome::Decision { branches },
            StepOutput::Batch(batch) => StepOutcome::Batch { batch },
        }
    }
}

/// A failed attempt: retryable (the default for unexpected errors) or permanent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub kind: ErrorKind,
    pub message: String,
    /// Overrides the template's backoff for the next attempt.
    pub retry_after: Option<Duration>,
    /// A machine-readable reason (`timeout`, `circuit_open`, ...).
    pub code: Option<String>,
    /// The exception class, for handlers in other languages.
    pub error_type: Option<String>,
    pub backtrace: Option<String>,
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::new(ErrorKind::Retryable, message.into())
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::new(ErrorKind::Permanent, message.into())
    }

    fn new(kind: ErrorKind, message: String) -> Self {
        HandlerError {
            kind,
            message,
            retry_after: None,
            code: None,
            error_type: None,
            backtrace: None,
        }
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

impl From<HandlerError> for StepError {
    fn from(e: HandlerError) -> Self {
        StepError {
            kind: e.kind,
            message: e.message,
            code: e.code,
            error_type: e.error_type,
            backtrace: e.backtrace,
            retry_after_ms: e.retry_after.map(|d| d.as_millis() as u64),
        }
    }
}

pub type HandlerResult = Result<StepOutput, HandlerError>;

#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    async fn call(&self, ctx: &StepContext) -> HandlerResult;
}

/// A handler made from an async closure.
pub struct FnHandler<F>(F);

#[async_trait]
impl<F, Fut> StepHandler for FnHandler<F>
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        (self.0)(ctx.clone()).await
    }
}

/// Handlers by the name templates use in `handler.callable`, with one
/// circuit breaker per handler (see [`crate::breaker`]). Clones share the
/// breakers.
#[derive(Clone)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn StepHandler>>,
    breakers: Arc<Breakers>,
}

impl Default for HandlerRegistry {
    fn default() -> Self {
        HandlerRegistry {
            handlers: HashMap::new(),
            breakers: Arc::new(Breakers::new(BreakerConfig::default())),
        }
    }
}

impl HandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Breakers of `config` instead of the default ones (5 failures, 30 s).
    pub fn with_breakers(mut self, config: BreakerConfig) -> Self {
        self.breakers = Arc::new(Breakers::new(config));
        self
    }

    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.breakers
    }

    pub fn register(&mut self, name: &str, handler: impl StepHandler) -> &mut Self {
        self.handlers.insert(name.to_string(), Arc::new(handler));
        self
    }

    pub fn register_arc(&mut self, name: &str, handler: Arc<dyn StepHandler>) -> &mut Self {
        self.handlers.insert(name.to_string(), handler);
        self
    }

    pub fn register_fn<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(StepContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.register(name, FnHandler(f))
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn StepHandler>> {
        self.handlers.get(name).cloned()
    }

    /// The handlers `templates`' steps name that this registry lacks, each
    /// with where it is used (`e2e/linear@1 step s`); only the steps routed to
    /// `queues` (a worker's namespaces and queues) when given.
    pub fn missing_for(
        &self,
        templates: &stepgraph_engine::TemplateRegistry,
        queues: Option<&[String]>,
    ) -> Vec<String> {
        let mut missing: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        self.each_missing(templates, queues, |t, step, _| {
            missing
                .entry(step.handler.callable.clone())
                .or_default()
                .push(format!("{} step {}", t.key(), step.name));
        });
        missing
            .into_iter()
            .map(|(handler, uses)| format!("`{handler}` ({})", uses.join(", ")))
            .collect()
    }

    /// The handler queues (see [`stepgraph_engine::queue::handler_queue`])
    /// of the handlers [`HandlerRegistry::missing_for`] names.
    pub fn missing_queues(
        &self,
        templates: &stepgraph_engine::TemplateRegistry,
        queues: Option<&[String]>,
    ) -> Vec<String> {
        let mut missing = std::collections::BTreeSet::new();
        self.each_missing(templates, queues, |_, step, queue| {
            missing.insert(stepgraph_engine::queue::handler_queue(
                queue,
                &step.handler.callable,
            ));
        });
        missing.into_iter().collect()
    }

    /// Calls `f` with each template step (and the queue it is routed to)
    /// whose handler this registry lacks, among those routed to `queues`.
    fn each_missing(
        &self,
        templates: &stepgraph_engine::TemplateRegistry,
        queues: Option<&[String]>,
        mut f: impl FnMut(
            &stepgraph_engine::TaskTemplate,
            &stepgraph_engine::template::StepTemplate,
            &str,
        ),
    ) {
        for t in &templates.all() {
            for step in &t.steps {
                let handler = step.handler.callable.as_str();
                let queue = t.queue_of(handler);
                let routed = queues.is_none_or(|q| q.iter().any(|q| q == queue));
                if routed && !self.handlers.contains_key(handler) {
                    f(t, step, queue);
                }
            }
        }
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        names.sort();
        names
    }

    /// Adds every handler of `other`, replacing same-named ones.
    pub fn extend(&mut self, other: &HandlerRegistry) -> &mut Self {
        for (k, v) in &other.handlers {
            self.handlers.insert(k.clone(), v.clone());
        }
        self
    }
}
