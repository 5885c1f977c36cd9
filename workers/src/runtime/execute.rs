//! One attempt of a step: its handler found and called within its timeout,
//! its circuit breaker asked and told, and every way it can go wrong (no
//! handler, an open circuit, a timeout, a panic, an error) made a failure.

use crate::handler::{HandlerRegistry, HandlerResult, StepContext};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::time::Duration;
use stepgraph_engine::{StepError, StepOutcome, StepWork};

pub async fn execute(
    handlers: &HandlerRegistry,
    work: StepWork,
    default_timeout: Duration,
) -> StepOutcome {
    let failure = |error: StepError| StepOutcome::Failure { error };
    let Some(handler) = handlers.get(&work.handler) else {
        return failure(
            StepError::permanent(format!(
                "no handler registered for `{}` (step `{}`)",
                work.handler, work.step_name
            ))
            .with_code("handler_not_found"),
        );
    };
    let breakers = handlers.breakers();
    if let Err(remaining) = breakers.allow(&work.handler) {
        // Rounded up to the next millisecond, so the retry never comes a
        // hair before the cool-down ends (and burns an attempt).
        let remaining = Duration::from_millis(remaining.as_millis() as u64 + 1);
        let mut error = StepError::retryable(format!(
            "circuit open for handler `{}` after repeated failures; retrying in {remaining:?}",
            work.handler
        ))
        .with_code("circuit_open");
        error.retry_after_ms = Some(remaining.as_millis() as u64);
        return failure(error);
    }
    let timeout = work
        .timeout_seconds
        .map(Duration::from_secs_f64)
        .unwrap_or(default_timeout);
    let ctx = StepContext::from(work);
    let run = AssertUnwindSafe(handler.call(&ctx)).catch_unwind();
    let outcome = run_within(timeout, run, &ctx).await;
    // Timeouts and panics count against the handler like raised errors.
    breakers.record(
        &ctx.handler,
        !matches!(outcome, StepOutcome::Failure { .. }),
    );
    outcome
}

async fn run_within(
    timeout: Duration,
    run: impl std::future::Future<Output = std::thread::Result<HandlerResult>>,
    ctx: &StepContext,
) -> StepOutcome {
    let failure = |error: StepError| StepOutcome::Failure { error };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => failure(
            StepError::retryable(format!(
                "step `{}` timed out after {:?}",
                ctx.step_name, timeout
            ))
            .with_code("timeout"),
        ),
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            failure(
                StepError::retryable(format!(
                    "handler `{}` panicked in step `{}`: {what}",
                    ctx.handler, ctx.step_name
                ))
                .with_code("panic"),
            )
        }
        Ok(Ok(Ok(output))) => output.into(),
        Ok(Ok(Err(e))) => failure(e.into()),
    }
}
