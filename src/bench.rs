//! `stepgraph bench`: every seed shape, N times each, in embedded mode; a
//! latency table beside the seed's published P50.

use crate::fixtures;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stepgraph_core::{PgBackend, TaskRequest, TaskState, Transport};
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

/// A language whose handlers `stepgraph bench --language` compares with Rust's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Python,
    Ruby,
    /// Under Bun (C ABI and napi), then under Node (napi).
    Typescript,
}

/// The TypeScript package: $STEPGRAPH_TYPESCRIPT_DIR, or this checkout's.
fn typescript_dir() -> std::path::PathBuf {
    std::env::var_os("STEPGRAPH_TYPESCRIPT_DIR")
        .map(Into::into)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/typescript").into())
}

/// The seed's FFI rows: the language's own bench module runs linear and
/// diamond with its handlers and with the native ones, and prints the table.
pub fn foreign(language: Language, iterations: usize, warmup: usize) -> Result<()> {
    let dir =
        std::env::temp_dir().join(format!("stepgraph-bench-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    fixtures::write_templates(&dir).context("writing the fixture templates")?;
    let options = [
        "--templates".to_string(),
        dir.display().to_string(),
        "--runs".into(),
        iterations.to_string(),
        "--warmup".into(),
        warmup.to_string(),
    ];
    let runs: Vec<(String, Vec<String>)> = match language {
        Language::Python => vec![(
            "python3".into(),
            vec!["-m".into(), "stepgraph.bench".into()],
        )],
        Language::Ruby => vec![(
            "ruby".into(),
            vec![
                "-rstepgraph/bench".into(),
                "-e".into(),
                "Stepgraph::Bench.main(ARGV)".into(),
                "--".into(),
            ],
        )],
        Language::Typescript => {
            let ts = typescript_dir();
            let script = ts.join("dist/bench.js").display().to_string();
            let bun = ts.join("node_modules/.bin/bun").display().to_string();
            vec![(bun, vec![script.clone()]), ("node".into(), vec![script])]
        }
    };
    let mut status = Ok(());
    for (program, mut args) in runs {
        args.extend(options.iter().cloned());
        let ran = std::process::Command::new(&program)
            .args(&args)
            .status()
            .with_context(|| {
                format!(
                    "cannot run {program} (is it installed? ./scripts/setup installs the package)"
                )
            });
        match ran {
            Ok(s) if s.success() => println!(),
            Ok(_) => {
                status = Err(anyhow::anyhow!(
                    "the {language:?} bench failed under {program} (see above); ./scripts/setup installs its package"
                ));
                break;
            }
            Err(e) => {
                status = Err(e);
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    status
}

pub struct Options<'a> {
    pub iterations: usize,
    pub warmup: usize,
    pub only: Option<&'a str>,
    pub runtime: &'a str,
    pub database_url: Option<&'a str>,
    /// After the latency table: this many linear tasks at once, for steps/s.
    pub throughput: usize,
    /// How steps travel (with a database URL).
    pub transport: Transport,
    /// Steps a commit makes ready run at once in this process (see
    /// `stepgraph_core::Eager`); off: every step through the queue.
    pub eager_dispatch: bool,
}

pub async fn run(o: Options<'_>) -> Result<()> {
    let csv_path = std::env::temp_dir().join(format!("stepgraph-bench-{}.csv", std::process::id()));
    std::fs::write(&csv_path, fixtures::PRODUCTS_CSV).context("writing the benchmark CSV")?;
    let csv = csv_path.display().to_string();
    let mut pg = None;
    let (engine, mode) = match o.database_url {
        None => (
            Engine::embedded(
                fixtures::registry()?,
                examples::registry(),
                EngineConfig::default(),
            ),
            "embedded mode (in-memory store and queue",
        ),
        Some(url) => {
            let backend = PgBackend::connect(url, 16).await?;
            backend.migrate().await?;
            let (store, queue) = backend.backends(&o.transport).await?;
            let mut config = EngineConfig::default();
            config.worker.eager_dispatch = o.eager_dispatch;
            let engine = Engine::with_backends(
                store,
                queue,
                fixtures::registry()?,
                examples::registry(),
                config,
            );
            pg = Some(backend);
            (
                engine,
                match (&o.transport, o.eager_dispatch) {
                    (Transport::Postgres, true) => "PostgreSQL state and queue, every transition durable (orchestrator and worker in this process, eager dispatch",
                    (Transport::Postgres, false) => "PostgreSQL state and queue, every transition durable (orchestrator and worker in this process, every step through the queue",
                    (Transport::RabbitMq(_), true) => "PostgreSQL state, RabbitMQ queues (persistent, confirmed), every transition durable (orchestrator and worker in this process, eager dispatch",
                    (Transport::RabbitMq(_), false) => "PostgreSQL state, RabbitMQ queues (persistent, confirmed), every transition durable (orchestrator and worker in this process, every step through RabbitMQ",
                },
            )
        }
    };
    let trips = || pg.as_ref().map(|p| p.statements());
    let chosen: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| o.only.is_none_or(|only| s.template == only))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario named {:?}", o.only.unwrap_or_default());
    }
    let bar = ProgressBar::new(((o.iterations + o.warmup) * chosen.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{bar:40}] {pos}/{len} {elapsed}")?
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    for s in &chosen {
        bar.set_prefix(s.label);
        let mut samples = Vec::with_capacity(o.iterations);
        let mut trips_before = None;
        for i in 0..o.iterations + o.warmup {
            if i == o.warmup {
                trips_before = trips();
            }
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
            if i >= o.warmup {
                samples.push(elapsed);
            }
            bar.inc(1);
        }
        let per_step = match (trips_before, trips()) {
            (Some(a), Some(b)) => Some((b - a) as f64 / (o.iterations * s.steps) as f64),
            _ => None,
        };
        samples.sort();
        rows.push((s, samples, per_step));
    }
    bar.finish_and_clear();

    println!(
        "stepgraph bench: {mode}, Rust handlers, {} tokio runtime), {} runs per scenario after {} warm-up runs",
        o.runtime, o.iterations, o.warmup
    );
    println!();
    let trips_col = pg.is_some();
    print!(
        "| {:<18} | {:>5} | {:>9} | {:>9} | {:>9} | {:>9} | {:>8} | {:>8} |",
        "Scenario", "Steps", "P50", "P95", "P99", "Per stage", "Seed P50", "Speed-up"
    );
    println!(
        "{}",
        if trips_col {
            " DB round trips/step |"
        } else {
            ""
        }
    );
    print!(
        "|{:-<20}|{:->7}|{:->11}|{:->11}|{:->11}|{:->11}|{:->10}|{:->10}|",
        "", ":", ":", ":", ":", ":", ":", ":"
    );
    println!(
        "{}",
        if trips_col {
            "--------------------:|"
        } else {
            ""
        }
    );
    for (s, samples, per_step) in rows {
        let p50 = percentile(&samples, 0.50);
        let per_stage = p50 / s.stages as u32;
        let ratio = s.seed_p50_ms / (p50.as_secs_f64() * 1000.0);
        print!(
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
        match per_step {
            Some(t) => println!(" {t:>19.1} |"),
            None => println!(),
        }
    }
    if o.throughput > 0 {
        let n = o.throughput;
        let start = Instant::now();
        // As many clients would: every task submitted and awaited at once.
        let runs = (0..n).map(|_| async {
            let request = TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
            let id = engine.submit(request).await?.task_id;
            let task = engine.wait_task(id, Duration::from_secs(600)).await?;
            if task.state != TaskState::Complete {
                bail!("throughput run: task {id} ended {}", task.state);
            }
            Ok(())
        });
        futures::future::try_join_all(runs).await?;
        let secs = start.elapsed().as_secs_f64();
        println!();
        println!(
            "Throughput: {n} linear tasks submitted at once, {} steps in {secs:.2} s = {:.0} steps/s",
            n * 4,
            (n * 4) as f64 / secs
        );
    }
    let _ = std::fs::remove_file(&csv_path);
    engine.shutdown().await;
    Ok(())
}
