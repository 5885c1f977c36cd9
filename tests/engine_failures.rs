//! The embedded engine when things go wrong: permanent and exhausted
//! failures, unknown handlers, panics and timeouts, output that does not
//! fit its step, contexts refused by the schema, idempotency keys,
//! cancellation and overflowing example data. (`engine.rs` has the shapes,
//! `retries.rs` the retries, backoffs and breakers.)

mod common;

use common::*;
use parking_lot::Mutex;
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{ErrorKind, OrchestratorError, StepState, TaskRequest, TaskState};
use stepgraph_worker::{EngineError, HandlerError, HandlerRegistry, StepOutput};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_error_fails_the_task_after_one_attempt() {
    let mut handlers = HandlerRegistry::new();
    echo(&mut handlers);
    handlers.register_fn("flaky", |_| async move {
        Err(HandlerError::permanent("card declined"))
    });
    let engine = engine_with(templates_from(RETRY_YAML), handlers);
    let report = engine.run("t", "retry", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Error);
    let flaky = report.step("flaky").unwrap();
    assert_eq!(flaky.attempts, 1);
    assert_eq!(flaky.state, StepState::Error);
    assert_eq!(flaky.error().unwrap().kind, ErrorKind::Permanent);
    assert_eq!(report.task.error.as_ref().unwrap()["step"], json!("flaky"));
    assert_eq!(
        report.task.error.as_ref().unwrap()["error"]["message"],
        json!("card declined")
    );
    // The dependent step never started, and ended with the task, saying why.
    let after = report.step("after").unwrap();
    assert_eq!((after.state, after.attempts), (StepState::Cancelled, 0));
    let last = report
        .transitions
        .steps
        .iter()
        .rfind(|t| t.step_name == "after")
        .unwrap();
    assert_eq!(
        (last.from, last.to),
        (Some(StepState::Pending), StepState::Cancelled)
    );
    assert_eq!(
        last.metadata["reason"],
        json!("the task failed: step `flaky` failed")
    );
    assert_audit_chains(&report.transitions);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_fail_the_task_with_the_last_error() {
    let calls = Arc::new(AtomicU32::new(0));
    let mut handlers = HandlerRegistry::new();
    echo(&mut handlers);
    let c = calls.clone();
    handlers.register_fn("flaky", move |ctx| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            Err(HandlerError::retryable(format!(
                "down on attempt {}",
                ctx.attempt
            )))
        }
    });
    let yaml = RETRY_YAML.replace(
        "backoff: linear, backoff_base_ms: 60",
        "backoff: none, backoff_base_ms: 0",
    );
    let engine = engine_with(templates_from(&yaml), handlers);
    let report = engine.run("t", "retry", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Error);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let flaky = report.step("flaky").unwrap();
    assert_eq!(flaky.attempts, 3);
    assert_eq!(flaky.error().unwrap().message, "down on attempt 3");
    let last = report
        .transitions
        .steps
        .iter()
        .rfind(|t| t.step_name == "flaky")
        .unwrap();
    assert_eq!(last.to, StepState::Error);
    assert_eq!(last.metadata["reason"], json!("attempts exhausted"));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handler_fails_the_step_permanently_naming_it() {
    let mut handlers = HandlerRegistry::new();
    echo(&mut handlers);
    let engine = engine_with(templates_from(RETRY_YAML), handlers);
    let report = engine.run("t", "retry", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Error);
    let err = report.step("flaky").unwrap().error().unwrap().clone();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert_eq!(err.code.as_deref(), Some("handler_not_found"));
    assert!(err.message.contains("`flaky`"), "{}", err.message);
    assert_eq!(report.step("flaky").unwrap().attempts, 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_and_timeouts_become_failures() {
    let yaml = r#"
namespace: t
name: bad
version: "1"
steps:
  - name: boom
    handler: { callable: boom }
    retry: { retryable: false, max_attempts: 1 }
"#;
    let hang = r#"
namespace: t
name: hang
version: "1"
steps:
  - name: sleepy
    handler: { callable: sleepy }
    timeout_seconds: 0.1
    retry: { max_attempts: 2, backoff: none }
"#;
    let mut templates = templates_from(yaml);
    templates
        .register(stepgraph_engine::TaskTemplate::from_yaml(hang, "hang.yaml").unwrap())
        .unwrap();
    let mut handlers = HandlerRegistry::new();
    handlers.register_fn("boom", |_| async move {
        let v: Vec<u8> = Vec::new();
        let _ = v[3];
        Ok(StepOutput::Success(json!(null)))
    });
    handlers.register_fn("sleepy", |_| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(StepOutput::Success(json!(null)))
    });
    let engine = engine_with(templates, handlers);

    let report = engine.run("t", "bad", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Error);
    let err = report.step("boom").unwrap().error().unwrap().clone();
    assert_eq!(err.code.as_deref(), Some("panic"));
    assert!(
        err.message.contains("index out of bounds"),
        "{}",
        err.message
    );
    assert!(err.message.contains("`boom`"), "{}", err.message);

    let report = engine.run("t", "hang", json!({})).await.unwrap();
    assert_eq!(report.state(), TaskState::Error);
    let sleepy = report.step("sleepy").unwrap();
    assert_eq!(sleepy.attempts, 2, "a timeout is retryable");
    let err = sleepy.error().unwrap();
    assert_eq!(err.code.as_deref(), Some("timeout"));
    assert!(err.message.contains("timed out"), "{}", err.message);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_does_not_fit_the_step_is_a_failure_naming_it() {
    let yaml = r#"
namespace: t
name: shapes
version: "1"
steps:
  - name: pick
    type: decision
    handler: { callable: pick }
  - name: yes
    dependencies: [pick]
    handler: { callable: echo }
  - name: "no"
    dependencies: [pick]
    handler: { callable: echo }
"#;
    let run = |decision: StepOutput| {
        let mut handlers = HandlerRegistry::new();
        echo(&mut handlers);
        handlers.register_fn("pick", move |_| {
            let d = decision.clone();
            async move { Ok(d) }
        });
        engine_with(templates_from(yaml), handlers)
    };
    let cases = [
        (
            StepOutput::Success(json!(1)),
            "a decision step must return a decision",
        ),
        (
            StepOutput::Decision(vec!["maybe".into()]),
            "unknown branch `maybe`; branches are: yes, no",
        ),
        (
            StepOutput::Batch(stepgraph_engine::BatchOutcome::even(10, 5)),
            "a decision step must return a decision",
        ),
    ];
    for (output, message) in cases {
        let engine = run(output);
        let report = engine.run("t", "shapes", json!({})).await.unwrap();
        assert_eq!(report.state(), TaskState::Error);
        let err = report.step("pick").unwrap().error().unwrap().clone();
        assert_eq!(err.code.as_deref(), Some("invalid_output"));
        assert!(err.message.starts_with("step `pick`"), "{}", err.message);
        assert!(err.message.contains(message), "{}", err.message);
        engine.shutdown().await;
    }
    // A plain step returning a decision is refused too.
    let mut handlers = HandlerRegistry::new();
    handlers.register_fn("flaky", |_| async move {
        Ok(StepOutput::Decision(vec!["x".into()]))
    });
    echo(&mut handlers);
    let engine = engine_with(templates_from(RETRY_YAML), handlers);
    let report = engine.run("t", "retry", json!({})).await.unwrap();
    let err = report.step("flaky").unwrap().error().unwrap().clone();
    assert_eq!(
        err.message,
        "step `flaky`: returned a decision but is not a decision step"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_failing_the_input_schema_is_refused_at_creation() {
    let engine = fixture_engine();
    let err = engine
        .submit(TaskRequest::new(
            "e2e",
            "linear",
            json!({"even_number": "six"}),
        ))
        .await
        .unwrap_err();
    match err {
        EngineError::Orchestrator(OrchestratorError::InvalidContext { template, message }) => {
            assert_eq!(template, "e2e/linear@1.0.0");
            assert!(message.contains("/even_number"), "{message}");
            assert!(message.contains("integer"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = engine
        .submit(TaskRequest::new(
            "e2e",
            "conditional_approval",
            json!({"amount": 5}),
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("requester"), "{err}");
    let err = engine
        .submit(TaskRequest::new("e2e", "nope", json!({})))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no template e2e/nope");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_existing_task() {
    let engine = fixture_engine();
    let mut req = TaskRequest::new("e2e", "linear", json!({"even_number": 6}));
    req.idempotency_key = Some("order-42".into());
    let first = engine.submit(req.clone()).await.unwrap();
    let second = engine.submit(req.clone()).await.unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.task_id, second.task_id);
    // The same key for another request names the key and its task.
    req.context = json!({"even_number": 8});
    match engine.submit(req).await {
        Err(EngineError::Orchestrator(OrchestratorError::IdempotencyKeyReused {
            key,
            task_id,
        })) => {
            assert_eq!((key.as_str(), task_id), ("order-42", first.task_id));
        }
        other => panic!("{other:?}"),
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_task_never_starts_its_pending_steps() {
    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut handlers = HandlerRegistry::new();
    let r = ran.clone();
    handlers.register_fn("flaky", move |ctx| {
        r.lock().push(ctx.step_name.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(StepOutput::Success(json!(1)))
        }
    });
    let r = ran.clone();
    handlers.register_fn("echo", move |ctx| {
        r.lock().push(ctx.step_name.clone());
        async move { Ok(StepOutput::Success(json!(2))) }
    });
    let engine = engine_with(templates_from(RETRY_YAML), handlers);
    let created = engine
        .submit(TaskRequest::new("t", "retry", json!({})))
        .await
        .unwrap();
    while ran.lock().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        engine.cancel(created.task_id).await.unwrap(),
        TaskState::Cancelled
    );
    // The running step finishes on its own; wait until its result was processed.
    let mut report = engine.report(created.task_id).await.unwrap();
    for _ in 0..1000 {
        if report.step("flaky").unwrap().state == StepState::Cancelled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        report = engine.report(created.task_id).await.unwrap();
    }
    assert_eq!(report.state(), TaskState::Cancelled);
    assert_eq!(report.step("after").unwrap().state, StepState::Cancelled);
    // The running step finished, and its result was discarded.
    assert_eq!(report.step("flaky").unwrap().state, StepState::Cancelled);
    assert_eq!(*ran.lock(), vec!["flaky".to_string()]);
    assert_audit_chains(&report.transitions);
    engine.shutdown().await;
}

/// A value too big for 64 bits fails the batch step permanently, naming the
/// row, instead of wrapping into a wrong total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_csv_row_fails_permanently_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("huge.csv");
    std::fs::write(
        &csv,
        "product_id,name,category,price,stock,rating\n1,Fine,toys,1.00,1,1.0\n2,Huge,toys,92233720368547758.07,2,1.0\n",
    )
    .unwrap();
    let engine = fixture_engine();
    let report = engine
        .run(
            "e2e",
            "csv_batch",
            json!({ "csv_file_path": csv.display().to_string() }),
        )
        .await
        .unwrap();
    assert_eq!(report.state(), TaskState::Error);
    let failed: Vec<_> = report
        .steps
        .iter()
        .filter(|s| s.state == StepState::Error)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", report.steps);
    let error = failed[0].error().unwrap();
    assert_eq!(error.kind, ErrorKind::Permanent);
    assert_eq!(failed[0].attempts, 1);
    assert!(
        error
            .message
            .ends_with("data row 2: the inventory value overflows 64 bits"),
        "{}",
        error.message
    );
    engine.shutdown().await;
}

/// What a poison message's consumer does to its task, in the in-memory
/// store (the Store trait's own fail_task, through the task's graph).
#[tokio::test]
async fn a_task_failed_for_a_poison_message_ends_every_live_step_and_keeps_its_audit_chain() {
    use stepgraph_engine::{MemoryQueue, MemoryStore, Orchestrator, OrchestratorConfig, Store};
    let store = Arc::new(MemoryStore::new());
    let orchestrator = Orchestrator::new(
        store.clone(),
        Arc::new(MemoryQueue::new()),
        Arc::new(fixture_templates()),
        OrchestratorConfig::default(),
    );
    let created = orchestrator
        .create_task(TaskRequest::new(
            "e2e",
            "diamond",
            json!({ "even_number": 6 }),
        ))
        .await
        .unwrap();
    let id = created.task_id;
    let error = json!({ "code": "poison_message", "message": "failed on each of 5 deliveries" });
    assert!(store
        .fail_task(id, error.clone(), "dead-lettered")
        .await
        .unwrap());
    let (graph, trail) = store.graph_and_transitions(id).await.unwrap();
    assert_eq!(graph.task.state, TaskState::Error);
    assert_eq!(graph.task.error, Some(error.clone()));
    assert!(graph.steps.iter().all(|s| s.state == StepState::Cancelled));
    // Each transition starts where the one before it ended, the task's
    // along the state machine to Error.
    let mut at = None;
    for t in &trail.task {
        assert_eq!(t.from, at);
        at = Some(t.to);
    }
    assert_eq!(at, Some(TaskState::Error));
    for s in &graph.steps {
        let steps: Vec<_> = trail.steps.iter().filter(|t| t.step_id == s.id).collect();
        let mut at = None;
        for t in &steps {
            assert_eq!(t.from, at);
            at = Some(t.to);
        }
        assert_eq!(
            steps.last().unwrap().metadata,
            json!({ "reason": "dead-lettered" })
        );
    }
    // Once ended, it stays as it is.
    assert!(!store.fail_task(id, error, "again").await.unwrap());
}
