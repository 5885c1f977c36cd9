//! Handlers for the fixture workflows (`tests/fixtures/templates`): the seed's
//! math shapes, conditional approval, and CSV batch processing.

pub mod approval;
pub mod csv;
pub mod math;

use crate::handler::HandlerRegistry;

/// Every example handler under the name the fixture templates use.
pub fn registry() -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register("math.square", math::Square)
        .register("math.multiply_and_square", math::MultiplyAndSquare)
        .register("approval.validate_request", approval::ValidateRequest)
        .register("approval.routing_decision", approval::RoutingDecision)
        .register("approval.approve", approval::Approve)
        .register("approval.finalize", approval::Finalize)
        .register("csv.analyze", csv::Analyze)
        .register("csv.process_batch", csv::ProcessBatch)
        .register("csv.aggregate", csv::Aggregate)
        .register("util.sleep", util::Sleep)
        .register("util.require_file", util::RequireFile)
        .register("util.fail_first_attempts", util::FailFirstAttempts)
        .register("util.echo_dependencies", util::EchoDependencies);
    r
}

pub mod util {
    //! General-purpose handlers.

    use crate::handler::{HandlerResult, StepContext, StepHandler, StepOutput};
    use async_trait::async_trait;
    use serde_json::{json, Value};
    use std::time::Duration;

    /// Sleeps `input.sleep_ms` (or `config.ms`) milliseconds: a stand-in for slow I/O.
    pub struct Sleep;

    #[async_trait]
    impl StepHandler for Sleep {
        async fn call(&self, ctx: &StepContext) -> HandlerResult {
            let ms = ctx
                .input
                .get("sleep_ms")
                .or_else(|| ctx.config.get("ms"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(StepOutput::Success(json!({ "slept_ms": ms })))
        }
    }

    /// Fails permanently unless the file `input.required_file` exists: a
    /// stand-in for an outage an operator fixes, then retries the task.
    pub struct RequireFile;

    #[async_trait]
    impl StepHandler for RequireFile {
        async fn call(&self, ctx: &StepContext) -> HandlerResult {
            let path = ctx
                .input
                .get("required_file")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !std::path::Path::new(path).exists() {
                return Err(crate::HandlerError::permanent(format!(
                    "required file {path:?} does not exist"
                )));
            }
            Ok(StepOutput::Success(json!({ "found": path })))
        }
    }

    /// Fails its first `failures` attempts (config or context; default 1)
    /// with a retryable error, then succeeds: a flaky dependency.
    pub struct FailFirstAttempts;

    #[async_trait]
    impl StepHandler for FailFirstAttempts {
        async fn call(&self, ctx: &StepContext) -> HandlerResult {
            let failures = ctx
                .config
                .get("failures")
                .or_else(|| ctx.input.get("failures"))
                .and_then(Value::as_u64)
                .unwrap_or(1);
            if u64::from(ctx.attempt) <= failures {
                return Err(crate::HandlerError::retryable(format!(
                    "attempt {} of the first {failures} fails",
                    ctx.attempt
                )));
            }
            Ok(StepOutput::Success(json!({ "attempt": ctx.attempt })))
        }
    }

    /// Returns the results of its dependencies by step name: what a step
    /// after a repaired one was given.
    pub struct EchoDependencies;

    #[async_trait]
    impl StepHandler for EchoDependencies {
        async fn call(&self, ctx: &StepContext) -> HandlerResult {
            Ok(StepOutput::Success(Value::Object(
                ctx.dependency_results.clone(),
            )))
        }
    }
}
