//! `stepgraph bench --database-url URL --soak 20m --retention 2m`: linear
//! tasks as fast as the engine takes them (a fixed number in flight) for
//! the whole time, with retention removing what ended longer ago than
//! `--retention`; every minute a line with the minute's throughput, the
//! tasks held and the database's size, which should stay flat once the
//! first tasks expire.

use anyhow::{bail, Result};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stepgraph_engine::retention::{Keep, Retention};
use stepgraph_engine::{RetentionConfig, TaskRequest, TaskState};
use stepgraph_postgres::PgBackend;
use stepgraph_worker::{examples, Engine, EngineConfig, Transport};

/// Tasks in flight at once: enough to keep the engine busy.
const IN_FLIGHT: usize = 64;

/// A quarter of the retention (at least a second): the audit rows of a
/// minute go with their partition about a quarter of the retention after
/// the retention, as a day's would a day after a month.
fn partition(keep: Keep) -> Duration {
    match keep {
        Keep::For(d) => (d / 4).max(Duration::from_secs(1)),
        Keep::Forever => RetentionConfig::default().partition,
    }
}

pub async fn run(url: &str, transport: &Transport, soak: Duration, keep: Keep) -> Result<()> {
    let backend = PgBackend::connect(url, 16).await?;
    backend.migrate().await?;
    let (store, queue) = transport.backends(&backend).await?;
    let mut config = EngineConfig::default();
    config.orchestrator.retention = Some(RetentionConfig {
        default: Retention {
            ended: keep,
            failed: keep,
        },
        every: Duration::from_secs(10),
        partition: partition(keep),
        ..Default::default()
    });
    let engine = Arc::new(Engine::with_backends(
        store,
        queue,
        crate::fixtures::registry()?,
        examples::registry(),
        config,
    ));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (engine, done, stop) = (engine.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = TaskRequest::new("e2e", "linear", json!({ "even_number": 6 }));
                    let id = engine.submit(request).await?.task_id;
                    let task = engine.wait_task(id, Duration::from_secs(120)).await?;
                    if task.state != TaskState::Complete {
                        bail!("soak: task {id} ended {}", task.state);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    println!(
        "soak: linear tasks, {IN_FLIGHT} in flight, for {}, retention {keep}, audit partitions {} wide",
        humantime::format_duration(soak),
        humantime::format_duration(partition(keep))
    );
    println!(
        "{:>6} {:>10} {:>9} {:>12} {:>12} {:>14}",
        "minute", "tasks", "steps/s", "tasks held", "db size", "audit (steps)"
    );
    let started = Instant::now();
    let mut last = 0;
    let mut sizes = Vec::new();
    let mut minute = 0;
    while started.elapsed() < soak {
        minute += 1;
        let until = started + Duration::from_secs(60 * minute);
        tokio::time::sleep_until(until.min(started + soak).into()).await;
        if clients.iter().any(|c| c.is_finished()) {
            break; // a client failed: its error is reported below
        }
        let now = done.load(Ordering::Relaxed);
        let (held, size, audit): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM sg_tasks), pg_database_size(current_database()),
                    (SELECT sum(pg_total_relation_size(relid))::bigint
                       FROM pg_partition_tree('sg_step_transitions'))",
        )
        .fetch_one(backend.pool())
        .await?;
        println!(
            "{minute:>6} {:>10} {:>9.0} {held:>12} {:>9.1} MB {:>11.1} MB",
            now - last,
            (now - last) as f64 * 4.0 / 60.0,
            size as f64 / 1e6,
            audit as f64 / 1e6
        );
        sizes.push(size);
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await??;
    }
    if let Ok(engine) = Arc::try_unwrap(engine) {
        engine.shutdown().await;
    }
    // The first minutes fill the retention window; from the first minute
    // past it plus a cycle the size should hold.
    let settled = (keep.seconds().unwrap_or(f64::MAX) / 60.0).ceil() as usize + 1;
    if let (Some(first), Some(end)) = (sizes.get(settled), sizes.last()) {
        println!(
            "size after minute {}: {:.1} MB; at the end: {:.1} MB ({:+.1}%)",
            settled + 1,
            *first as f64 / 1e6,
            *end as f64 / 1e6,
            (*end as f64 / *first as f64 - 1.0) * 100.0
        );
    }
    Ok(())
}
