//! Orchestration cost without I/O: readiness evaluation and task
//! initialization for a 1,000-step task, and one embedded linear task end to end.

use chrono::Utc;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::json;
use stepgraph_engine::evaluate::{evaluate, readiness, Trigger};
use stepgraph_engine::template::StepTemplate;
use stepgraph_engine::txn::TaskTxn;
use stepgraph_engine::{StepState, Task, TaskRequest, TaskState, TaskTemplate, TemplateRegistry};
use stepgraph_worker::{examples, Engine, EngineConfig};

/// 10 layers of 100 steps; each step depends on two steps of the layer above.
fn wide_template() -> TaskTemplate {
    let mut steps = Vec::new();
    for layer in 0..10 {
        for i in 0..100 {
            let dependencies = if layer == 0 {
                Vec::new()
            } else {
                vec![
                    format!("s{}_{}", layer - 1, i),
                    format!("s{}_{}", layer - 1, (i + 1) % 100),
                ]
            };
            steps.push(StepTemplate::standard(
                &format!("s{layer}_{i}"),
                "noop",
                dependencies,
            ));
        }
    }
    TaskTemplate::new("bench", "wide", "1", steps).unwrap()
}

fn new_task() -> Task {
    Task::pending("bench", "wide", "1", json!({}))
}

fn initialized(template: &TaskTemplate) -> TaskTxn {
    let mut txn = TaskTxn::create(new_task());
    txn.task_to(TaskState::Initializing, json!({})).unwrap();
    evaluate(&mut txn, template, Trigger::Init).unwrap();
    txn
}

fn benches(c: &mut Criterion) {
    let template = wide_template();
    let txn = initialized(&template);
    let mut graph = txn.graph().clone();
    assert_eq!(graph.steps.len(), 1000);
    // Half-way through: the first five layers are complete.
    for s in graph.steps.iter_mut().take(500) {
        s.state = StepState::Complete;
    }
    let now = Utc::now();
    assert_eq!(readiness(&graph, now).ready.len(), 100);
    c.bench_function("readiness, 1000-step task", |b| {
        b.iter(|| readiness(black_box(&graph), now))
    });
    c.bench_function(
        "initialize 1000-step task (create, evaluate, enqueue roots)",
        |b| b.iter(|| initialized(black_box(&template))),
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = rt.block_on(async {
        let mut templates = TemplateRegistry::new();
        let linear = include_str!("../tests/fixtures/templates/linear.yaml");
        templates
            .register(TaskTemplate::from_yaml(linear, "linear.yaml").unwrap())
            .unwrap();
        Engine::embedded(templates, examples::registry(), EngineConfig::default())
    });
    c.bench_function("embedded linear task, 4 steps, end to end", |b| {
        b.iter(|| {
            rt.block_on(async {
                let created = engine
                    .submit(TaskRequest::new("e2e", "linear", json!({"even_number": 6})))
                    .await
                    .unwrap();
                let task = engine
                    .wait_task(created.task_id, std::time::Duration::from_secs(10))
                    .await
                    .unwrap();
                assert_eq!(task.state, TaskState::Complete);
                assert_eq!(task.result, Some(json!(2821109907456u64)), "6^16");
            })
        })
    });
    rt.block_on(engine.shutdown());
}

criterion_group!(group, benches);
criterion_main!(group);
