//! `stepgraph bench`: every seed shape, N times each, in embedded mode; a
//! latency table beside the seed's published P50.

use crate::fixtures;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stepgraph_engine::{TaskRequest, TaskState};
use stepgraph_postgres::PgBackend;
use stepgraph_worker::Transport;
use stepgraph_worker::{examples, Engine, EngineConfig};

pub struct Scenario {
    pub label: &'static str,
    pub template: &'static str,
    pub steps: usize,
    pub stages: usize,
    pub seed_p50_ms: f64,
    pub expected: Value,
}

pub(crate) mod cpu;
pub(crate) mod floor;
mod history;
pub mod language;
pub mod language_workers;
pub mod soak;
pub(crate) mod table;

use table::{print_table, FLOOR_RUNS};

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
    /// `stepgraph_engine::Eager`); off: every step through the queue.
    pub eager_dispatch: bool,
    /// With a database URL: first fill it (once) with this many ended
    /// tasks' history (see `history`).
    pub history: usize,
}

/// One engine's figures: per scenario its sorted latencies, DB statements
/// and CPU per step; how long the throughput run took.
struct Measured<'s> {
    rows: Vec<Row<'s>>,
    throughput: Option<Duration>,
}

struct Row<'s> {
    scenario: &'s Scenario,
    samples: Vec<Duration>,
    statements: Option<f64>,
    cpu: Option<cpu::Spent>,
}

/// [`measure`] on an engine whose state is in the database at `url` and
/// whose steps travel over `transport`.
async fn measure_pg<'s>(
    url: &str,
    transport: &Transport,
    chosen: &'s [Scenario],
    o: &Options<'_>,
    csv: &str,
) -> Result<Measured<'s>> {
    let backend = PgBackend::connect(url, 16).await?;
    backend.migrate().await?;
    // The audit rows go to partitions as under a `serve` that has run for a
    // while (which makes them ahead); nothing runs yet, so the first may
    // begin now rather than a minute ahead.
    sqlx::raw_sql(
        "SELECT sg_add_partition(t, interval '1 day', interval '0', now() + interval '3 days', 0, 1000)
           FROM unnest(ARRAY['sg_step_transitions', 'sg_task_transitions']) AS t",
    )
    .execute(backend.pool())
    .await?;
    let (store, queue) = transport.backends(&backend).await?;
    let mut config = EngineConfig::default();
    config.worker.eager_dispatch = o.eager_dispatch;
    let engine = Engine::with_backends(
        store,
        queue,
        fixtures::registry()?,
        examples::registry(),
        config,
    );
    let measured = measure(&engine, Some(&backend), chosen, o, csv).await;
    engine.shutdown().await;
    measured
}

pub async fn run(o: Options<'_>) -> Result<()> {
    let csv_path = std::env::temp_dir().join(format!("stepgraph-bench-{}.csv", std::process::id()));
    std::fs::write(&csv_path, fixtures::PRODUCTS_CSV).context("writing the benchmark CSV")?;
    let csv = csv_path.display().to_string();
    let chosen: Vec<Scenario> = scenarios()
        .into_iter()
        .filter(|s| o.only.is_none_or(|only| s.template == only))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario named {:?}", o.only.unwrap_or_default());
    }
    let Some(url) = o.database_url else {
        let engine = Engine::embedded(
            fixtures::registry()?,
            examples::registry(),
            EngineConfig::default(),
        );
        let measured = measure(&engine, None, &chosen, &o, &csv).await;
        engine.shutdown().await;
        let _ = std::fs::remove_file(&csv_path);
        let mode = "embedded mode (in-memory store and queue";
        print_table(mode, &o, &measured?, None, None);
        return Ok(());
    };
    let through = if o.eager_dispatch {
        "eager dispatch"
    } else if matches!(o.transport, Transport::Postgres) {
        "every step through the queue"
    } else {
        "every step through RabbitMQ"
    };
    if o.history > 0 {
        let pg = PgBackend::connect(url, 2).await?;
        pg.migrate().await?;
        let held = history::fill(pg.pool(), o.history).await?;
        let size: String =
            sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
                .fetch_one(pg.pool())
                .await?;
        println!("history: {held} tasks in the database ({size})");
    }
    let floor = floor::durable_commit(url, FLOOR_RUNS).await?;
    // RabbitMQ's figures come with the PostgreSQL queue's beside them,
    // measured first the same way on the same database.
    let beside = match o.transport {
        Transport::Postgres => None,
        Transport::RabbitMq(_) => {
            Some(measure_pg(url, &Transport::Postgres, &chosen, &o, &csv).await?)
        }
    };
    let measured = measure_pg(url, &o.transport, &chosen, &o, &csv).await;
    let _ = std::fs::remove_file(&csv_path);
    let mode = match o.transport {
        Transport::Postgres => format!("PostgreSQL state and queue, every transition durable (orchestrator and worker in this process, {through}"),
        Transport::RabbitMq(_) => format!("PostgreSQL state, RabbitMQ queues (persistent, confirmed), every transition durable, beside the PostgreSQL queue (orchestrator and worker in this process, {through}"),
    };
    print_table(&mode, &o, &measured?, beside.as_ref(), Some(floor));
    Ok(())
}

/// Runs every chosen scenario on `engine`, then the throughput run.
async fn measure<'s>(
    engine: &Engine,
    pg: Option<&PgBackend>,
    chosen: &'s [Scenario],
    o: &Options<'_>,
    csv: &str,
) -> Result<Measured<'s>> {
    let trips = || pg.map(|p| p.statements());
    let bar = ProgressBar::new(((o.iterations + o.warmup) * chosen.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>18} [{bar:40}] {pos}/{len} {elapsed}")?
            .progress_chars("=> "),
    );
    let mut rows = Vec::new();
    for s in chosen {
        bar.set_prefix(s.label);
        let mut samples = Vec::with_capacity(o.iterations);
        let mut trips_before = None;
        let mut cpu_before = None;
        for i in 0..o.iterations + o.warmup {
            if i == o.warmup {
                trips_before = trips();
                if let Some(pg) = pg {
                    cpu_before = cpu::snapshot(pg.pool()).await;
                }
            }
            let request = TaskRequest::new("e2e", s.template, context(s.template, csv));
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
        let cpu = match (cpu_before, pg) {
            (Some(before), Some(pg)) => cpu::snapshot(pg.pool())
                .await
                .map(|after| before.until(&after)),
            _ => None,
        };
        samples.sort();
        rows.push(Row {
            scenario: s,
            samples,
            statements: per_step,
            cpu,
        });
    }
    bar.finish_and_clear();
    let throughput = if o.throughput > 0 {
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
            let expected = json!(2821109907456u64);
            if task.result.as_ref() != Some(&expected) {
                bail!(
                    "throughput run: task {id} gave {:?}, expected {expected}",
                    task.result
                );
            }
            Ok(())
        });
        futures::future::try_join_all(runs).await?;
        Some(start.elapsed())
    } else {
        None
    };
    Ok(Measured { rows, throughput })
}
