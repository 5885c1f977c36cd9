//! `stepgraph bench`: every seed shape, N times each, in embedded mode; a
//! latency table beside the seed's published P50.

use crate::fixtures;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepgraph_core::{PgBackend, TaskRequest, TaskState};
use stepgraph_worker::{examples, Engine, EngineConfig};

pub struct Scenario {
    pub label: &'static str,
    pub template: &'static str,
    pub steps: usize,
    pub stages: usize,
    pub seed_p50_ms: f64,
    pub expected: Value,
}

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            label: "Linear",
            template: "linear",
            steps: 4,
            stages: 4,
            seed_p50_ms: 257.0,
            expected: json!(2821109907456u64),
        },
        Scenario {
            label: "Diamond",
            template: "diamond",
            steps: 4,
            stages: 3,
            seed_p50_ms: 200.0,
            expected: json!(2821109907456u64),
        },
        Scenario {
            label: "Complex DAG",
            template: "complex_dag",
            steps: 7,
            stages: 4,
            seed_p50_ms: 382.0,
            expected: json!("63340286662973277706162286946811886609896461828096"),
        },
        Scenario {
            label: "Hierarchical Tree",
            template: "tree",
            steps: 8,
            stages: 4,
            seed_p50_ms: 389.0,
            expected: json!("63340286662973277706162286946811886609896461828096"),
        },
        Scenario {
            label: "Conditional",
            template: "conditional_approval",
            steps: 4,
            stages: 4,
            seed_p50_ms: 251.0,
            expected: json!({ "approved": true, "approvals": ["auto_approve"] }),
        },
        Scenario {
            label: "Batch 1000 rows",
            template: "csv_batch",
            steps: 7,
            stages: 3,
            seed_p50_ms: 358.0,
            expected: json!(12745576047u64),
        },
    ]
}

fn context(template: &str, csv: &str) -> Value {
    match template {
        "conditional_approval" => json!({ "amount": 500, "requester": "benchmark" }),
        "csv_batch" => json!({ "csv_file_path": csv }),
        _ => json!({ "even_number": 6 }),
    }
}

fn checked(template: &str, result: &Value) -> Value {
    if template == "csv_batch" {
        result["total_inventory_value_cents"].clone()
    } else {
        result.clone()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

pub async fn run(
    iterations: usize,
    warmup: usize,
    only: Option<&str>,
    runtime: &str,
    database_url: Option<&str>,
) -> Result<()> {
    let csv_path = std::env::temp_dir().join(format!("stepgraph-bench-{}.csv", std::process::id()));
    std::fs::write(&csv_path, fixtures::PRODUCTS_CSV).context("writing the benchmark CSV")?;
    let csv = csv_path.display().to_string();
    let (engine, mode) = match database_url {
        None => (
            Engine::embedded(
                fixtures::registry()?,
                examples::registry(),
                EngineConfig::default(),
            ),
            "embedded mode (in-memory store and queue",
        ),
        Some(url) => {
            let pg = PgBackend::connect(url, 16).await?;
            pg.migrate().await?;
            let engine = Engine::with_backends(
                Arc::new(pg.store(true)),
                Arc::new(pg.queue()),
                fixtures::registry()?,
                examples::registry(),
                EngineConfig::default(),
            );
            (
                engine,
                "PostgreSQL state and queue, durable commits (orchestrator and worker in this process",
            )
        }
    };
    let chosen: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| only.is_none_or(|o| s.template == o))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario named {:?}", only.unwrap_or_default());
    }
    let bar = ProgressBar::new(((iterations + warmup) * chosen.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{bar:40}] {pos}/{len} {elapsed}")?
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    for s in &chosen {
        bar.set_prefix(s.label);
        let mut samples = Vec::with_capacity(iterations);
        for i in 0..iterations + warmup {
            let request = TaskRequest::new("e2e", s.template, context(s.template, &csv));
            let start = Instant::now();
            let created = engine.submit(request).await?;
            let task = engine
                .wait_task(created.task_id, Duration::from_secs(30))
                .await?;
            let elapsed = start.elapsed();
            if task.state != TaskState::Complete {
                bail!("{}: task ended {} ({:?})", s.label, task.state, task.error);
            }
            let got = checked(s.template, task.result.as_ref().unwrap_or(&Value::Null));
            if got != s.expected {
                bail!("{}: wrong result {got}, expected {}", s.label, s.expected);
            }
            if i >= warmup {
                samples.push(elapsed);
            }
            bar.inc(1);
        }
        samples.sort();
        rows.push((s, samples));
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&csv_path);
    engine.shutdown().await;

    println!(
        "stepgraph bench: {mode}, Rust handlers, {runtime} tokio runtime), \
         {iterations} runs per scenario after {warmup} warm-up runs"
    );
    println!();
    println!(
        "| {:<18} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} | {:>8} | {:>8} |",
        "Scenario", "Steps", "P50", "P95", "P99", "Per stage", "Seed P50", "Speed-up"
    );
    println!(
        "|{:-<20}|{:->7}|{:->11}|{:->11}|{:->11}|{:->11}|{:->10}|{:->10}|",
        "", ":", ":", ":", ":", ":", ":", ":"
    );
    for (s, samples) in rows {
        let p50 = percentile(&samples, 0.50);
        let per_stage = p50 / s.stages as u32;
        let ratio = s.seed_p50_ms / (p50.as_secs_f64() * 1000.0);
        println!(
            "| {:<18} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} | {:>8} | {:>7.0}x |",
            s.label,
            s.steps,
            fmt_latency(p50),
            fmt_latency(percentile(&samples, 0.95)),
            fmt_latency(percentile(&samples, 0.99)),
            fmt_latency(per_stage),
            format!("{} ms", s.seed_p50_ms),
            ratio
        );
    }
    Ok(())
}
