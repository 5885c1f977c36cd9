//! Random DAGs of up to 50 steps always finish with every step run exactly
//! once, and never before all of its parents.

mod common;

use common::Recorder;
use proptest::prelude::*;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Duration;
use stepgraph_engine::template::StepTemplate;
use stepgraph_engine::{StepState, TaskRequest, TaskState, TaskTemplate, TemplateRegistry};
use stepgraph_worker::{Engine, EngineConfig, HandlerRegistry, StepOutput};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn dag_template(parents: &[Vec<usize>]) -> TaskTemplate {
    let steps = parents
        .iter()
        .enumerate()
        .map(|(i, ps)| {
            let mut deps: Vec<String> = ps.iter().map(|p| format!("s{p}")).collect();
            deps.sort();
            deps.dedup();
            StepTemplate::standard(&format!("s{i}"), "record", deps)
        })
        .collect();
    TaskTemplate::new("prop", "dag", "1", steps).expect("generated DAG is valid")
}

/// For step j, parent indexes drawn below j.
fn dags() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..=50).prop_flat_map(|n| {
        (0..n)
            .map(|j| {
                if j == 0 {
                    Just(Vec::new()).boxed()
                } else {
                    prop::collection::vec(0..j, 0..4).boxed()
                }
            })
            .collect::<Vec<_>>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_run_each_step_once_after_its_parents(parents in dags()) {
        let template = dag_template(&parents);
        let recorder = Recorder::default();
        let mut handlers = HandlerRegistry::new();
        let r = recorder.clone();
        handlers.register_fn("record", move |ctx| {
            let r = r.clone();
            async move {
                let start = r.start();
                tokio::task::yield_now().await;
                r.finish(ctx.step_name.clone(), start);
                Ok(StepOutput::Success(json!(ctx.dependency_results.len())))
            }
        });
        let mut templates = TemplateRegistry::new();
        templates.register(template).unwrap();
        let report = runtime().block_on(async {
            let engine = Engine::embedded(templates, handlers, EngineConfig::default());
            let created = engine.submit(TaskRequest::new("prop", "dag", json!({}))).await.unwrap();
            let report = engine.wait(created.task_id, Duration::from_secs(30)).await.unwrap();
            engine.shutdown().await;
            report
        });
        prop_assert_eq!(report.state(), TaskState::Complete);
        prop_assert_eq!(report.steps.len(), parents.len());
        let log = recorder.runs();
        for (j, ps) in parents.iter().enumerate() {
            let name = format!("s{j}");
            let step = report.step(&name).unwrap();
            prop_assert_eq!(step.state, StepState::Complete);
            prop_assert_eq!(log[&name].len(), 1, "{} ran {} times", name, log[&name].len());
            let mut unique = ps.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(step.result_value(), Some(json!(unique.len())));
            for p in unique {
                let parent_end = log[&format!("s{p}")][0].1;
                prop_assert!(parent_end < log[&name][0].0, "s{} started before its parent s{} ended", j, p);
            }
        }
    }
}
