//! A simulated language side for the foreign handler host: the math
//! handlers as a binding's handler would write them, and an embedded
//! engine whose handlers the host serves.

use num_bigint::BigInt;
use serde_json::Value;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{StepOutcome, TemplateRegistry};
use stepgraph_worker::{
    Engine, EngineConfig, EngineError, HandlerRegistry, Host, StepEvent, TaskReport,
};

pub const MATH: &[&str] = &["math.square", "math.multiply_and_square"];

pub fn int(v: &Value) -> BigInt {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.as_i64().unwrap().into(),
    }
}

pub fn int_json(n: BigInt) -> Value {
    i64::try_from(&n)
        .map(Value::from)
        .unwrap_or_else(|_| Value::String(n.to_string()))
}

/// The math handlers as a language side would write them.
pub fn math(e: &StepEvent) -> StepOutcome {
    let deps: Vec<BigInt> = e.dependency_results.values().map(int).collect();
    let x: BigInt = match (e.handler.as_str(), deps.as_slice()) {
        ("math.square", []) => int(&e.input["even_number"]),
        ("math.square", [one]) => one.clone(),
        _ => deps.iter().product(),
    };
    StepOutcome::Success {
        result: int_json(&x * &x),
    }
}

pub fn engine(templates: TemplateRegistry, host: &Arc<Host>, names: &[&str]) -> Engine {
    engine_with_breakers(templates, host, names, HandlerRegistry::new())
}

/// The host's handlers `names` registered in `handlers` (with its breakers).
pub fn engine_with_breakers(
    templates: TemplateRegistry,
    host: &Arc<Host>,
    names: &[&str],
    mut handlers: HandlerRegistry,
) -> Engine {
    for n in names {
        handlers.register(n, host.handler(n));
    }
    let config = EngineConfig {
        credits: Some(host.credits()),
        run_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    Engine::embedded(templates, handlers, config)
}

/// Runs the fixture task `name` (`even_number` 6) on the host's runtime,
/// which the language side drives; its report comes through the receiver.
pub fn spawn_run(
    host: &Host,
    engine: &Arc<Engine>,
    name: &'static str,
) -> Receiver<Result<TaskReport, EngineError>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let e = engine.clone();
    host.runtime().unwrap().spawn(async move {
        let _ = tx.send(
            e.run("e2e", name, serde_json::json!({ "even_number": 6 }))
                .await,
        );
    });
    rx
}

/// A Rust handler of `math.multiply_and_square` that records the thread it ran on.
pub struct OnThread(pub Arc<parking_lot::Mutex<Vec<std::thread::ThreadId>>>);

#[async_trait::async_trait]
impl stepgraph_worker::StepHandler for OnThread {
    async fn call(&self, ctx: &stepgraph_worker::StepContext) -> stepgraph_worker::HandlerResult {
        self.0.lock().push(std::thread::current().id());
        let product: BigInt = ctx.dependency_results.values().map(int).product();
        Ok(stepgraph_worker::StepOutput::Success(int_json(
            &product * &product,
        )))
    }
}
