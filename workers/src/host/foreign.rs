//! The Rust-side handler of a name the language side serves: a step becomes
//! a [`StepEvent`] for `next_events`, and its completion the step's outcome.

use super::pending::Pending;
use super::{Host, Inner, StepEvent};
use crate::handler::{HandlerError, HandlerResult, StepContext, StepHandler, StepOutput};
use async_trait::async_trait;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepgraph_engine::StepOutcome;
use tokio::sync::oneshot;

/// Dispatches one handler's steps to the language side.
pub struct ForeignHandler {
    pub(super) host: Arc<Host>,
    pub(super) name: String,
}

/// Withdraws the event if the step stops waiting before its result arrives.
struct Dispatched<'a> {
    inner: &'a Inner,
    event_id: u64,
    done: bool,
}

impl Drop for Dispatched<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.withdraw(self.event_id);
        }
    }
}

#[async_trait]
impl StepHandler for ForeignHandler {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let inner = &self.host.inner;
        if let Err(e) = self.host.check() {
            return Err(HandlerError::retryable(e.to_string()).with_code("host_unavailable"));
        }
        let timeout = ctx.timeout.unwrap_or(inner.config.default_timeout);
        let event_id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, result) = oneshot::channel();
        inner.pending.lock().insert(
            event_id,
            Pending {
                handler: self.name.clone(),
                deadline: Instant::now() + timeout,
                reply,
            },
        );
        let mut dispatched = Dispatched {
            inner,
            event_id,
            done: false,
        };
        let event = StepEvent {
            event_id,
            task_id: ctx.task_id,
            step_id: ctx.step_id,
            namespace: ctx.namespace.clone(),
            task_name: ctx.task_name.clone(),
            step_name: ctx.step_name.clone(),
            handler: ctx.handler.clone(),
            attempt: ctx.attempt,
            max_attempts: ctx.max_attempts,
            input: ctx.input.clone(),
            config: ctx.config.clone(),
            dependency_results: ctx.dependency_results.clone(),
            batch_size: ctx.batch_size,
            cursor: ctx.cursor.clone().map(Into::into),
            timeout_ms: timeout.as_millis() as u64,
            traceparent: ctx.traceparent.clone(),
        };
        {
            // Under the lock `drain` takes: an event is either handed back by
            // it or never queued.
            let mut ready = inner.ready.lock();
            if inner.draining.load(Ordering::SeqCst) {
                return Err(HandlerError::retryable("the worker is shutting down")
                    .with_code("host_unavailable"));
            }
            inner.queue(&mut ready, event);
        }
        let outcome = result.await;
        dispatched.done = true;
        match outcome {
            Ok(StepOutcome::Success { result }) => Ok(StepOutput::Success(result)),
            Ok(StepOutcome::Decision { branches }) => Ok(StepOutput::Decision(branches)),
            Ok(StepOutcome::Batch { batch }) => Ok(StepOutput::Batch(batch)),
            Ok(StepOutcome::Failure { error }) => Err(HandlerError {
                kind: error.kind,
                message: error.message,
                retry_after: error.retry_after_ms.map(Duration::from_millis),
                code: error.code,
                error_type: error.error_type,
                backtrace: error.backtrace,
            }),
            Err(_) => Err(HandlerError::retryable(
                "the stepgraph host shut down before the step finished",
            )
            .with_code("host_unavailable")),
        }
    }
}
