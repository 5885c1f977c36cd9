//! Retries in the embedded engine: the audit trail of a retried step, the
//! wait each backoff policy and `retry_after` give, and the breaker that
//! timeouts open. (`engine_failures.rs` has the failures that end a step.)

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{StepState, TaskState};
use stepgraph_worker::{HandlerError, HandlerRegistry, StepOutput};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_retry_with_backoff_then_succeed() {
    let mut handlers = HandlerRegistry::new();
    echo(&mut handlers);
    handlers.register_fn("flaky", |ctx| async move {
        if ctx.attempt < 3 {
            Err(HandlerError::retryable(format!(
                "try {} failed",
                ctx.attempt
            )))
        } else {
            Ok(StepOutput::Success(json!({"attempt": ctx.attempt})))
        }
    });
    let engine = engine_with(templates_from(RETRY_YAML), handlers);
    let report = engine.run("t", "retry", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Complete);
    let flaky = report.step("flaky").unwrap();
    assert_eq!(flaky.attempts, 3);
    assert_eq!(flaky.result_value(), Some(json!({"attempt": 3})));
    assert_audit_chains(&report.transitions);

    use StepState::*;
    let trail: Vec<(Option<StepState>, StepState, u32)> = report
        .transitions
        .steps
        .iter()
        .filter(|t| t.step_name == "flaky")
        .map(|t| (t.from, t.to, t.attempt))
        .collect();
    let mut expected = vec![(None, Pending, 0), (Some(Pending), Enqueued, 1)];
    for attempt in 1..=2 {
        expected.extend([
            (Some(Enqueued), InProgress, attempt),
            (Some(InProgress), EnqueuedForOrchestration, attempt),
            (Some(EnqueuedForOrchestration), WaitingForRetry, attempt),
            (Some(WaitingForRetry), Enqueued, attempt + 1),
        ]);
    }
    expected.extend([
        (Some(Enqueued), InProgress, 3),
        (Some(InProgress), EnqueuedForOrchestration, 3),
        (Some(EnqueuedForOrchestration), Complete, 3),
    ]);
    assert_eq!(trail, expected);

    // Linear backoff: 60 ms after attempt 1, 120 ms after attempt 2.
    let steps: Vec<_> = report
        .transitions
        .steps
        .iter()
        .filter(|t| t.step_name == "flaky")
        .collect();
    let waits: Vec<_> = steps
        .windows(2)
        .filter(|w| w[0].to == WaitingForRetry)
        .map(|w| w[1].at - w[0].at)
        .collect();
    assert_eq!(waits.len(), 2);
    assert!(
        waits[0] >= chrono::Duration::milliseconds(60),
        "{:?}",
        waits
    );
    assert!(
        waits[1] >= chrono::Duration::milliseconds(120),
        "{:?}",
        waits
    );
    let task_states: Vec<TaskState> = report.transitions.task.iter().map(|t| t.to).collect();
    assert!(task_states.contains(&TaskState::WaitingForRetry));
    engine.shutdown().await;
}

/// Each retry waits what its step's policy says, inside a window around
/// it narrow enough that no other policy would fit: linear, exponential,
/// exponential capped by `max_backoff_ms`, and a handler's `retry_after`
/// over the step's (5 s) backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_waits_what_its_policy_says() {
    let yaml = r#"
namespace: t
name: backoffs
version: "1"
steps:
  - name: linear
    handler: { callable: fails_thrice }
    retry: { max_attempts: 4, backoff: linear, backoff_base_ms: 300, max_backoff_ms: 5000 }
  - name: exponential
    handler: { callable: fails_thrice }
    retry: { max_attempts: 4, backoff: exponential, backoff_base_ms: 300, max_backoff_ms: 5000 }
  - name: capped
    handler: { callable: fails_thrice }
    retry: { max_attempts: 4, backoff: exponential, backoff_base_ms: 300, max_backoff_ms: 750 }
  - name: told
    handler: { callable: says_when }
    retry: { max_attempts: 3, backoff: exponential, backoff_base_ms: 5000, max_backoff_ms: 30000 }
"#;
    // Nine failures in a row of one handler: its breaker must not open here.
    let mut handlers = HandlerRegistry::new().with_breakers(stepgraph_worker::BreakerConfig {
        failure_threshold: 100,
        ..Default::default()
    });
    handlers.register_fn("fails_thrice", |ctx| async move {
        match ctx.attempt {
            1..=3 => Err(HandlerError::retryable("not yet")),
            n => Ok(StepOutput::Success(json!(n))),
        }
    });
    handlers.register_fn("says_when", |ctx| async move {
        match ctx.attempt {
            1..=2 => Err(HandlerError::retryable("busy").retry_after(Duration::from_millis(400))),
            n => Ok(StepOutput::Success(json!(n))),
        }
    });
    let engine = engine_with(templates_from(yaml), handlers);
    let report = engine.run("t", "backoffs", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Complete);
    for (step, expected) in [
        ("linear", vec![300, 600, 900]),
        ("exponential", vec![300, 600, 1200]),
        ("capped", vec![300, 600, 750]),
        ("told", vec![400, 400]),
    ] {
        let trail: Vec<_> = report
            .transitions
            .steps
            .iter()
            .filter(|t| t.step_name == step)
            .collect();
        let waits: Vec<(u64, i64)> = trail
            .windows(2)
            .filter(|w| w[0].to == StepState::WaitingForRetry)
            .map(|w| {
                let planned = w[0].metadata["backoff_ms"].as_u64().unwrap();
                (planned, (w[1].at - w[0].at).num_milliseconds())
            })
            .collect();
        let planned: Vec<u64> = waits.iter().map(|w| w.0).collect();
        assert_eq!(planned, expected, "{step}: the backoffs recorded");
        for (&(planned, waited), n) in waits.iter().zip(1..) {
            // Never early; late by less than any other policy would differ.
            assert!(
                (planned as i64..planned as i64 + 250).contains(&waited),
                "{step}: retry {n} waited {waited} ms, planned {planned} ms"
            );
        }
    }
    engine.shutdown().await;
}

/// A handler that hangs past its step's timeout trips its breaker like one
/// that raises: after two timed-out attempts the third is refused without
/// calling it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_timeouts_open_a_rust_handlers_breaker() {
    let yaml = r#"
namespace: t
name: hangs
version: "1"
steps:
  - name: call
    handler: { callable: hang }
    timeout_seconds: 0.1
    retry: { max_attempts: 3, backoff: none }
"#;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut handlers = HandlerRegistry::new().with_breakers(stepgraph_worker::BreakerConfig {
        failure_threshold: 2,
        cool_down: Duration::from_secs(60),
    });
    handlers.register_fn("hang", move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(StepOutput::Success(json!(1)))
        }
    });
    let breakers = handlers.breakers().clone();
    let engine = engine_with(templates_from(yaml), handlers);
    let report = engine.run("t", "hangs", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Error);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the third attempt never reached it"
    );
    let step = report.step("call").unwrap();
    assert_eq!(step.attempts, 3);
    assert_eq!(step.error().unwrap().code.as_deref(), Some("circuit_open"));
    let codes: Vec<_> = report
        .transitions
        .steps
        .iter()
        .filter(|t| t.to == StepState::WaitingForRetry)
        .map(|t| t.metadata["error"].as_str().unwrap().to_string())
        .collect();
    assert!(codes.iter().all(|e| e.contains("timed out")), "{codes:?}");
    assert_eq!(breakers.state("hang"), stepgraph_worker::BreakerState::Open);
    engine.shutdown().await;
}
