//! Exact integer arithmetic for the math shapes. Integers beyond 64 bits
//! travel as decimal strings.

use crate::handler::{HandlerError, HandlerResult, StepContext, StepHandler, StepOutput};
use async_trait::async_trait;
use num_bigint::BigInt;
use serde_json::Value;

/// Reads a JSON integer, or a decimal string holding one.
pub fn parse_int(v: &Value) -> Option<BigInt> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(BigInt::from)
            .or_else(|| n.as_u64().map(BigInt::from)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A JSON number when it fits in 64 bits, else a decimal string.
pub fn int_to_json(n: &BigInt) -> Value {
    if let Ok(i) = i64::try_from(n) {
        Value::from(i)
    } else if let Ok(u) = u64::try_from(n) {
        Value::from(u)
    } else {
        Value::String(n.to_string())
    }
}

fn input_int(ctx: &StepContext) -> Result<BigInt, HandlerError> {
    let field = ctx
        .config
        .get("input_field")
        .and_then(Value::as_str)
        .unwrap_or("even_number");
    let v = ctx
        .input
        .get(field)
        .ok_or_else(|| HandlerError::permanent(format!("task context has no `{field}`")))?;
    parse_int(v).ok_or_else(|| HandlerError::permanent(format!("`{field}` is not an integer: {v}")))
}

fn dependency_ints(ctx: &StepContext) -> Result<Vec<BigInt>, HandlerError> {
    ctx.dependency_results
        .iter()
        .map(|(name, v)| {
            parse_int(v).ok_or_else(|| {
                HandlerError::permanent(format!("result of `{name}` is not an integer: {v}"))
            })
        })
        .collect()
}

/// Squares its only dependency's result, or the input number when it has none.
pub struct Square;

#[async_trait]
impl StepHandler for Square {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let x = match dependency_ints(ctx)?.as_slice() {
            [] => input_int(ctx)?,
            [one] => one.clone(),
            many => {
                return Err(HandlerError::permanent(format!(
                    "square takes one dependency; step `{}` has {}",
                    ctx.step_name,
                    many.len()
                )))
            }
        };
        Ok(StepOutput::Success(int_to_json(&(&x * &x))))
    }
}

/// Multiplies all dependency results and squares the product.
pub struct MultiplyAndSquare;

#[async_trait]
impl StepHandler for MultiplyAndSquare {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let deps = dependency_ints(ctx)?;
        if deps.is_empty() {
            return Err(HandlerError::permanent(format!(
                "multiply_and_square needs dependencies; step `{}` has none",
                ctx.step_name
            )));
        }
        let product: BigInt = deps.iter().product();
        Ok(StepOutput::Success(int_to_json(&(&product * &product))))
    }
}
