//! Conditional approval: a decision routes by amount; the finalizer is a
//! deferred convergence over whichever approvals were created.

use crate::handler::{HandlerError, HandlerResult, StepContext, StepHandler, StepOutput};
use async_trait::async_trait;
use serde_json::{json, Value};

fn amount(ctx: &StepContext) -> Result<f64, HandlerError> {
    match ctx.input.get("amount").and_then(Value::as_f64) {
        Some(a) if a >= 0.0 && a.is_finite() => Ok(a),
        _ => Err(HandlerError::permanent(
            "`amount` must be a non-negative number",
        )),
    }
}

pub struct ValidateRequest;

#[async_trait]
impl StepHandler for ValidateRequest {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let amount = amount(ctx)?;
        let requester = ctx
            .input
            .get("requester")
            .and_then(Value::as_str)
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| HandlerError::permanent("`requester` must be a non-empty string"))?;
        Ok(StepOutput::Success(
            json!({ "amount": amount, "requester": requester, "valid": true }),
        ))
    }
}

/// Under 1000: auto; under 5000: a manager; otherwise a manager and finance.
pub struct RoutingDecision;

#[async_trait]
impl StepHandler for RoutingDecision {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let amount = amount(ctx)?;
        let branches: &[&str] = if amount < 1000.0 {
            &["auto_approve"]
        } else if amount < 5000.0 {
            &["manager_approval"]
        } else {
            &["manager_approval", "finance_review"]
        };
        Ok(StepOutput::Decision(
            branches.iter().map(|b| b.to_string()).collect(),
        ))
    }
}

/// Approves as `config.approver`.
pub struct Approve;

#[async_trait]
impl StepHandler for Approve {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let approver = ctx
            .config
            .get("approver")
            .and_then(Value::as_str)
            .unwrap_or("system");
        Ok(StepOutput::Success(
            json!({ "approved": true, "approver": approver }),
        ))
    }
}

/// Approved when every created approval approved; lists them by step name.
pub struct Finalize;

#[async_trait]
impl StepHandler for Finalize {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let approvals: Vec<&String> = ctx.dependency_results.keys().collect();
        let approved = !approvals.is_empty()
            && ctx
                .dependency_results
                .values()
                .all(|v| v.get("approved").and_then(Value::as_bool) == Some(true));
        Ok(StepOutput::Success(
            json!({ "approved": approved, "approvals": approvals }),
        ))
    }
}
