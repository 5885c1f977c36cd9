//! The host round trip, measured from the Rust side: a step handed to a
//! handler, run, and its result back in Rust. The benches use it for a
//! native handler and, through each binding, for a foreign one (a no-op
//! handler on the language side), so every language is timed by the same
//! code over the same step.

use crate::handler::{StepContext, StepHandler};
use serde_json::{json, Map};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepgraph_engine::new_id;

/// The step every round trip carries: the second step of the linear
/// fixture (its context, config and one dependency result).
pub fn sample_context(handler: &str) -> StepContext {
    let mut dependency_results = Map::new();
    dependency_results.insert("linear_step_1".into(), json!(36));
    StepContext {
        task_id: new_id(),
        step_id: new_id(),
        namespace: "bench".into(),
        task_name: "roundtrip".into(),
        step_name: "linear_step_2".into(),
        handler: handler.into(),
        input: json!({ "even_number": 6 }),
        config: json!({}),
        dependency_results,
        attempt: 1,
        max_attempts: 3,
        batch_size: None,
        cursor: None,
        timeout: Some(Duration::from_secs(30)),
        traceparent: None,
    }
}

/// Runs `n` steps through `handler` (serving handler name `name`), one
/// after another, as a task on `runtime` (a foreign handler's host runtime,
/// driven by the language side as an engine's steps are), and returns the
/// total time; fails on the first step that does not succeed. Call it from
/// a thread outside any runtime: it waits for the task.
pub fn roundtrip(
    runtime: &tokio::runtime::Handle,
    handler: Arc<dyn StepHandler>,
    name: &str,
    n: u64,
) -> Result<Duration, String> {
    let ctx = sample_context(name);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move { tx.send(steps(&*handler, &ctx, n).await) });
    rx.recv()
        .map_err(|_| "the runtime shut down during the round trips".to_string())?
}

/// [`roundtrip`] on a runtime of its own on this thread: for a handler
/// that needs no one else to drive it (a native one).
pub fn roundtrip_here(handler: &dyn StepHandler, name: &str, n: u64) -> Result<Duration, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(steps(handler, &sample_context(name), n))
}

async fn steps(handler: &dyn StepHandler, ctx: &StepContext, n: u64) -> Result<Duration, String> {
    let start = Instant::now();
    for _ in 0..n {
        if let Err(e) = handler.call(ctx).await {
            return Err(format!("round-trip step failed: {e}"));
        }
    }
    Ok(start.elapsed())
}
