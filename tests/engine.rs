//! End-to-end behaviour of the embedded engine: the seed's shapes with exact
//! results, parallel branches, template versions, concurrency and queue
//! routing. Failures, retries and refusals are in `engine_failures.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{
    StepOutcome, StepState, TaskRequest, TaskState, TaskTemplate, TemplateRegistry,
};
use stepgraph_worker::{examples, Engine, EngineConfig, HandlerRegistry, StepHandler, StepOutput};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn math_shapes_give_exact_results() {
    let engine = fixture_engine();
    let cases = [
        ("linear", json!(SIX_16), 4),
        ("diamond", json!(SIX_16), 4),
        ("complex_dag", json!(SIX_64), 7),
        ("tree", json!(SIX_64), 8),
    ];
    for (name, expected, steps) in cases {
        let report = engine
            .run("e2e", name, json!({"even_number": 6}))
            .await
            .unwrap();
        assert_eq!(
            report.state(),
            TaskState::Complete,
            "{name}: {:?}",
            report.task.error
        );
        assert_eq!(result(&report), &expected, "{name}");
        assert_eq!(report.steps.len(), steps, "{name}");
        for s in &report.steps {
            assert_eq!(s.state, StepState::Complete, "{name}/{}", s.name);
            assert_eq!(s.attempts, 1, "{name}/{}", s.name);
        }
        assert_audit_chains(&report.transitions);
        // Pending, Enqueued, InProgress, EnqueuedForOrchestration, Complete.
        assert_eq!(report.transitions.steps.len(), steps * 5, "{name}");
    }
    let linear = engine
        .run("e2e", "linear", json!({"even_number": 6}))
        .await
        .unwrap();
    assert_eq!(
        linear.step("step_1").unwrap().result_value(),
        Some(json!(36))
    );
    assert_eq!(
        linear.step("step_2").unwrap().result_value(),
        Some(json!(1296))
    );
    assert_eq!(
        linear.step("step_3").unwrap().result_value(),
        Some(json!(1679616))
    );
    // The seed's 6 task transitions: the task stays in StepsInProcess between steps.
    let states: Vec<TaskState> = linear.transitions.task.iter().map(|t| t.to).collect();
    use TaskState::*;
    assert_eq!(
        states,
        [
            Pending,
            Initializing,
            EnqueuingSteps,
            StepsInProcess,
            EvaluatingResults,
            Complete
        ]
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_through_the_orchestration_queue_give_the_same_values() {
    let config = stepgraph_worker::EngineConfig {
        inline_orchestration: false,
        ..Default::default()
    };
    let engine =
        stepgraph_worker::Engine::embedded(fixture_templates(), examples::registry(), config);
    let tree = engine
        .run("e2e", "tree", json!({"even_number": 6}))
        .await
        .unwrap();
    assert_eq!(result(&tree), &json!(SIX_64));
    assert_audit_chains(&tree.transitions);
    let cond = engine
        .run(
            "e2e",
            "conditional_approval",
            json!({"amount": 7500, "requester": "q"}),
        )
        .await
        .unwrap();
    assert_eq!(
        result(&cond)["approvals"],
        json!(["finance_review", "manager_approval"])
    );
    let csv = engine
        .run("e2e", "csv_batch", json!({"csv_file_path": products_csv()}))
        .await
        .unwrap();
    assert_eq!(
        result(&csv)["total_inventory_value_cents"],
        json!(12745576047u64)
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_approval_creates_exactly_the_chosen_branches() {
    let engine = fixture_engine();
    let cases: [(u64, &[&str]); 3] = [
        (500, &["auto_approve"]),
        (2500, &["manager_approval"]),
        (7500, &["finance_review", "manager_approval"]),
    ];
    for (amount, branches) in cases {
        let report = engine
            .run(
                "e2e",
                "conditional_approval",
                json!({"amount": amount, "requester": "test"}),
            )
            .await
            .unwrap();
        assert_eq!(report.state(), TaskState::Complete, "{amount}");
        let mut expected: Vec<&str> =
            vec!["finalize_approval", "routing_decision", "validate_request"];
        expected.extend(branches);
        expected.sort();
        assert_eq!(report.step_names(), expected, "amount {amount}");
        assert_eq!(
            result(&report),
            &json!({"approved": true, "approvals": branches}),
            "{amount}"
        );
        let Some(StepOutcome::Decision {
            branches: mut chosen,
        }) = report.step("routing_decision").unwrap().outcome.clone()
        else {
            panic!("routing_decision did not decide")
        };
        chosen.sort();
        assert_eq!(chosen, branches.to_vec());
        // finalize waits for exactly the created branches.
        let finalize = report.step("finalize_approval").unwrap();
        let parents: Vec<&str> = report
            .edges
            .iter()
            .filter(|e| e.to == finalize.id)
            .map(|e| {
                report
                    .steps
                    .iter()
                    .find(|s| s.id == e.from)
                    .unwrap()
                    .name
                    .as_str()
            })
            .collect();
        assert_eq!(parents.len(), branches.len());
        for b in branches {
            assert!(parents.contains(b));
        }
        assert_audit_chains(&report.transitions);
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_batch_creates_five_workers_and_exact_aggregates() {
    let engine = fixture_engine();
    let report = engine
        .run("e2e", "csv_batch", json!({"csv_file_path": products_csv()}))
        .await
        .unwrap();
    assert_eq!(
        report.state(),
        TaskState::Complete,
        "{:?}",
        report.task.error
    );
    assert_eq!(
        report.step_names(),
        vec![
            "aggregate_csv_results",
            "analyze_csv",
            "process_csv_batch_001",
            "process_csv_batch_002",
            "process_csv_batch_003",
            "process_csv_batch_004",
            "process_csv_batch_005",
        ]
    );
    let r = result(&report);
    assert_eq!(r["total_processed"], json!(1000));
    assert_eq!(r["worker_count"], json!(5));
    assert_eq!(r["total_inventory_value_cents"], json!(12745576047u64));
    assert_eq!(r["max_price_cents"], json!(99840));
    assert_eq!(r["total_stock"], json!(242577));
    assert_eq!(r["rating_sum_tenths"], json!(29806));
    assert_eq!(
        r["per_batch_inventory_value_cents"],
        json!([
            2689657180u64,
            2659996406u64,
            2490667723u64,
            2438397631u64,
            2466857107u64
        ])
    );
    let third = report.step("process_csv_batch_003").unwrap();
    assert_eq!(
        third.cursor,
        Some(json!({"batch_no": 3, "start": 400, "end": 600}))
    );
    assert_eq!(third.template_step, "process_csv_batch");
    engine.shutdown().await;
}

/// The math handlers, recording when each step of each task ran.
fn recording(handlers: &mut HandlerRegistry, sleep: Duration) -> Recorder {
    let recorder = Recorder::default();
    let inner: [(&str, Arc<dyn StepHandler>); 2] = [
        ("math.square", Arc::new(examples::math::Square)),
        (
            "math.multiply_and_square",
            Arc::new(examples::math::MultiplyAndSquare),
        ),
    ];
    for (name, handler) in inner {
        let r = recorder.clone();
        handlers.register_fn(name, move |ctx| {
            let (r, handler) = (r.clone(), handler.clone());
            async move {
                let start = r.start();
                tokio::time::sleep(sleep).await;
                let out = handler.call(&ctx).await;
                r.finish(format!("{}/{}", ctx.task_id, ctx.step_name), start);
                out
            }
        });
    }
    recorder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_branches_overlap_and_convergence_waits_for_all_parents() {
    let mut handlers = HandlerRegistry::new();
    recording(&mut handlers, Duration::from_millis(200));
    let engine = engine_with(fixture_templates(), handlers);
    let report = engine
        .run("e2e", "diamond", json!({"even_number": 6}))
        .await
        .unwrap();
    assert_eq!(result(&report), &json!(SIX_16));
    let timeline = report.timeline();
    let row = |n: &str| timeline.iter().find(|r| r.step == n).unwrap().clone();
    let (b, c, end) = (
        row("diamond_branch_b"),
        row("diamond_branch_c"),
        row("diamond_end"),
    );
    assert!(
        b.started < c.finished && c.started < b.finished,
        "branches did not overlap: {b:?} {c:?}"
    );
    assert!(end.started > b.finished && end.started > c.finished);
    let tree = engine
        .run("e2e", "tree", json!({"even_number": 6}))
        .await
        .unwrap();
    let tl = tree.timeline();
    let leaves: Vec<_> = tl
        .iter()
        .filter(|r| r.step.starts_with("tree_leaf"))
        .collect();
    let latest_start = leaves.iter().map(|r| r.started.unwrap()).max().unwrap();
    let earliest_end = leaves.iter().map(|r| r.finished.unwrap()).min().unwrap();
    assert!(
        latest_start < earliest_end,
        "the four leaves did not all run at once"
    );
    engine.shutdown().await;

    // Many runs without sleeping: a step never starts before its parents end.
    let mut handlers = HandlerRegistry::new();
    let recorder = recording(&mut handlers, Duration::ZERO);
    let engine = engine_with(fixture_templates(), handlers);
    let mut ids = Vec::new();
    for _ in 0..100 {
        for name in ["diamond", "tree", "complex_dag"] {
            let created = engine
                .submit(TaskRequest::new("e2e", name, json!({"even_number": 6})))
                .await
                .unwrap();
            ids.push(created.task_id);
        }
    }
    let mut reports = Vec::new();
    for id in ids {
        reports.push(engine.wait(id, Duration::from_secs(30)).await.unwrap());
    }
    let log = recorder.runs();
    for report in reports {
        let id = report.task.id;
        assert_eq!(report.state(), TaskState::Complete);
        let runs = |name: &str| log[&format!("{id}/{name}")].clone();
        for e in &report.edges {
            let parent = report.steps.iter().find(|s| s.id == e.from).unwrap();
            let child = report.steps.iter().find(|s| s.id == e.to).unwrap();
            let (p, c) = (runs(&parent.name), runs(&child.name));
            assert_eq!((p.len(), c.len()), (1, 1));
            assert!(
                p[0].1 < c[0].0,
                "{} started before {} ended",
                child.name,
                parent.name
            );
        }
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_versions_coexist() {
    let v1 = "namespace: t\nname: v\nversion: 1.2.0\nsteps:\n  - name: a\n    handler: { callable: echo }\n";
    let v2 = "namespace: t\nname: v\nversion: 1.10.0\nsteps:\n  - name: a\n    handler: { callable: echo }\n  - name: b\n    dependencies: [a]\n    handler: { callable: echo }\n";
    let mut templates = templates_from(v1);
    templates
        .register(stepgraph_engine::TaskTemplate::from_yaml(v2, "v2").unwrap())
        .unwrap();
    let mut handlers = HandlerRegistry::new();
    echo(&mut handlers);
    let engine = engine_with(templates, handlers);
    let latest = engine.run("t", "v", json!({})).await.unwrap();
    assert_eq!(latest.task.version, "1.10.0");
    assert_eq!(latest.steps.len(), 2);
    let mut req = TaskRequest::new("t", "v", json!({}));
    req.version = Some("1.2.0".into());
    let created = engine.submit(req).await.unwrap();
    let old = engine
        .wait(created.task_id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(old.steps.len(), 1);
    assert_eq!(result(&old), &json!({"step": "a"}));
    engine.shutdown().await;
}

#[test]
fn handlers_returning_values_are_exact_for_big_integers() {
    let v: Value =
        examples::math::int_to_json(&"340282366920938463463374607431768211456".parse().unwrap());
    assert_eq!(v, json!("340282366920938463463374607431768211456"));
    assert_eq!(
        examples::math::parse_int(&v).unwrap().to_string(),
        "340282366920938463463374607431768211456"
    );
    assert_eq!(examples::math::int_to_json(&36.into()), json!(36));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_never_runs_more_steps_than_its_concurrency() {
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let mut handlers = HandlerRegistry::new();
    for name in ["math.square", "math.multiply_and_square"] {
        let (running, peak) = (running.clone(), peak.clone());
        handlers.register_fn(name, move |_| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(StepOutput::Success(json!(4)))
            }
        });
    }
    let mut config = stepgraph_worker::EngineConfig::default();
    config.worker.concurrency = 3;
    let engine = stepgraph_worker::Engine::embedded(fixture_templates(), handlers, config);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let req = TaskRequest::new("e2e", "tree", json!({"even_number": 6}));
        ids.push(engine.submit(req).await.unwrap().task_id);
    }
    for id in ids {
        let report = engine.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(report.state(), TaskState::Complete);
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "20 trees of 8 steps keep all 3 slots busy, never more"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_engine_serves_queue_routed_handlers_too() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/polyglot/mixed.yaml"
    ))
    .unwrap();
    let mut templates = TemplateRegistry::new();
    templates
        .register(TaskTemplate::from_yaml(&text, "mixed.yaml").unwrap())
        .unwrap();
    let mut handlers = examples::registry();
    handlers.register_fn("py.double", |ctx| async move {
        Ok(json!({ "value": ctx.dependency("square").and_then(|v| v.as_i64()).unwrap() * 2, "by": "rust" }).into())
    });
    handlers.register_fn("rb.add_one", |ctx| async move {
        Ok(json!(ctx.dependency("double").unwrap()["value"].as_i64().unwrap() + 1).into())
    });
    let engine = Engine::embedded(templates, handlers, EngineConfig::default());
    let report = engine
        .run("polyglot", "mixed", json!({ "even_number": 6 }))
        .await
        .unwrap();
    assert_eq!(
        report.state(),
        TaskState::Complete,
        "{:?}",
        report.task.error
    );
    assert_eq!(report.task.result, Some(json!(73)));
    engine.shutdown().await;
}
