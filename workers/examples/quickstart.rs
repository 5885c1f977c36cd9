//! The README's quick start: a template, a Rust handler, one task in embedded mode.
//! Run with `cargo run --example quickstart -p stepgraph-worker`.

use serde_json::json;
use stepgraph_engine::{TaskTemplate, TemplateRegistry};
use stepgraph_worker::{Engine, EngineConfig, HandlerError, HandlerRegistry, StepOutput};

const TEMPLATE: &str = r#"
namespace: shop
name: order
version: 1.0.0
input_schema:
  type: object
  required: [items]
  properties:
    items: { type: array, items: { type: object, required: [price, qty] } }
steps:
  - name: total
    handler: { callable: order.total }
  - name: receipt
    dependencies: [total]
    handler: { callable: order.receipt, config: { currency: EUR } }
    retry: { max_attempts: 5, backoff: exponential, backoff_base_ms: 200, max_backoff_ms: 5000 }
    timeout_seconds: 10
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut templates = TemplateRegistry::new();
    templates.register(TaskTemplate::from_yaml(TEMPLATE, "order.yaml")?)?;

    let mut handlers = HandlerRegistry::new();
    handlers.register_fn("order.total", |ctx| async move {
        let items = ctx.input["items"].as_array().cloned().unwrap_or_default();
        let cents: i64 = items
            .iter()
            .map(|i| i["price"].as_i64().unwrap_or(0) * i["qty"].as_i64().unwrap_or(0))
            .sum();
        if cents == 0 {
            return Err(HandlerError::permanent("empty order"));
        }
        Ok(StepOutput::Success(json!({ "cents": cents })))
    });
    handlers.register_fn("order.receipt", |ctx| async move {
        let cents = ctx
            .dependency("total")
            .and_then(|t| t["cents"].as_i64())
            .unwrap_or(0);
        let currency = ctx.config["currency"].as_str().unwrap_or("USD").to_string();
        Ok(StepOutput::Success(
            json!({ "text": format!("{}.{:02} {currency}", cents / 100, cents % 100) }),
        ))
    });

    let engine = Engine::embedded(templates, handlers, EngineConfig::default());
    let report = engine
        .run(
            "shop",
            "order",
            json!({ "items": [{ "price": 1250, "qty": 2 }, { "price": 399, "qty": 1 }] }),
        )
        .await?;
    println!("{}: {}", report.task.state, report.result().unwrap());
    engine.shutdown().await;
    Ok(())
}
