#![allow(dead_code)]

pub mod cluster;
pub mod host;
pub mod ops;
pub mod proxy;
pub mod rabbit;
pub mod shapes;

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use stepgraph_engine::{TaskTemplate, TemplateRegistry, Transitions};
use stepgraph_worker::{examples, Engine, EngineConfig, HandlerRegistry, StepOutput, TaskReport};

pub const SIX_16: u64 = 2821109907456;
pub const SIX_64: &str = "63340286662973277706162286946811886609896461828096";

/// A step retried with linear backoff (`flaky`) and one after it (`echo`).
pub const RETRY_YAML: &str = r#"
namespace: t
name: retry
version: "1"
steps:
  - name: flaky
    handler: { callable: flaky }
    retry: { max_attempts: 3, backoff: linear, backoff_base_ms: 60, max_backoff_ms: 1000 }
  - name: after
    dependencies: [flaky]
    handler: { callable: echo }
"#;

/// Runs `f` on a runtime of two threads, as a process would.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture_templates() -> TemplateRegistry {
    TemplateRegistry::load_dir(&fixtures_dir().join("templates"))
        .expect("fixture templates are valid")
}

pub fn products_csv() -> String {
    fixtures_dir().join("products.csv").display().to_string()
}

pub fn engine_with(templates: TemplateRegistry, handlers: HandlerRegistry) -> Engine {
    let config = EngineConfig {
        run_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    Engine::embedded(templates, handlers, config)
}

pub fn fixture_engine() -> Engine {
    engine_with(fixture_templates(), examples::registry())
}

/// A registry holding one template written in YAML.
pub fn templates_from(yaml: &str) -> TemplateRegistry {
    let mut reg = TemplateRegistry::new();
    reg.register(TaskTemplate::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}")))
        .unwrap();
    reg
}

/// Every audit chain is continuous: each transition starts where the previous one of its entity ended.
pub fn assert_audit_chains(t: &Transitions) {
    let mut prev = None;
    for tr in &t.task {
        assert_eq!(tr.from, prev, "task transition {:?} breaks the chain", tr);
        prev = Some(tr.to);
    }
    let mut last: std::collections::HashMap<_, _> = Default::default();
    for tr in &t.steps {
        let p = last.insert(tr.step_id, tr.to);
        assert_eq!(
            tr.from, p,
            "step {} transition {:?} breaks the chain",
            tr.step_name, tr
        );
    }
    for w in t.task.windows(2) {
        assert!(w[0].at <= w[1].at);
    }
}

pub fn step_states(report: &TaskReport) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.state.to_string()))
        .collect();
    v.sort();
    v
}

pub fn result(report: &TaskReport) -> &Value {
    report.result().expect("task has a result")
}

/// Task `name` completed with `expected`, its audit trail unbroken.
pub fn assert_completed_with(report: &TaskReport, name: &str, expected: &Value) {
    assert_eq!(
        report.state(),
        stepgraph_engine::TaskState::Complete,
        "{name}: {:?}",
        report.task.error
    );
    assert_eq!(result(report), expected, "{name}");
    assert_audit_chains(&report.transitions);
}

type Runs = std::collections::HashMap<String, Vec<(u64, u64)>>;

/// Records when handlers ran, on one global sequence, by a key per run.
#[derive(Clone, Default)]
pub struct Recorder {
    log: std::sync::Arc<parking_lot::Mutex<Runs>>,
    seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Recorder {
    pub fn start(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    pub fn finish(&self, key: String, start: u64) {
        let end = self.start();
        self.log.lock().entry(key).or_default().push((start, end));
    }

    /// (start, end) of every run, by key.
    pub fn runs(&self) -> Runs {
        self.log.lock().clone()
    }
}

/// A handler `echo` that answers with its step's name.
pub fn echo(reg: &mut HandlerRegistry) {
    reg.register_fn("echo", |ctx| async move {
        Ok(StepOutput::Success(json!({"step": ctx.step_name})))
    });
}
