//! `stepgraph bench --cluster`: the seed's cluster rows against real
//! processes: 2 `serve` (orchestrator + API) and 2 `worker` processes on one
//! PostgreSQL database, driven over HTTP as a client would; each row beside
//! the durable-commit floor, and with `--throughput N` a burst of N tasks
//! with the CPU each process spent per task (read from `/proc`).

use crate::bench::{cpu, floor};
use crate::fixtures;
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Starts `cmd` (stdout piped, killed on drop) and waits for the first line
/// it prints, which says it is ready: returns that line.
pub(crate) async fn started(mut cmd: Command, what: &str) -> Result<(Proc, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("no stdout")?;
    BufReader::new(stdout).read_line(&mut line).await?;
    if line.is_empty() {
        bail!("{what} exited at start-up (see above)");
    }
    Ok((Proc(child), line.trim().to_string()))
}

/// The environment of the processes a bench starts: the database, and only
/// what goes wrong in their logs (the table is the output) unless
/// STEPGRAPH_LOG asks for more.
pub(crate) fn process_env(cmd: &mut Command, url: &str, env: &[(&str, String)]) {
    cmd.env("STEPGRAPH_DATABASE_URL", url)
        .env(
            "STEPGRAPH_LOG",
            std::env::var("STEPGRAPH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
}

/// A `stepgraph` process (`serve` or `worker`); for `serve`, the address it
/// listens on.
pub(crate) async fn spawn(
    args: &[&str],
    url: &str,
    env: &[(&str, String)],
    templates: &std::path::Path,
) -> Result<(Proc, String)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args).arg("--templates").arg(templates);
    process_env(&mut cmd, url, env);
    let (proc, line) = started(cmd, &format!("stepgraph {args:?}")).await?;
    let addr = line
        .strip_prefix("listening on http://")
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    Ok((proc, addr))
}

pub(crate) async fn http(addr: &str, method: &str, path: &str, body: &str) -> Result<Value> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let payload = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(payload).with_context(|| format!("{method} {path}: {raw}"))
}

async fn linear(addr: &str) -> Result<()> {
    run_task(addr, "e2e", "linear").await
}

/// Creates a task of `namespace`/`name` (linear or diamond: 6 squared four
/// times) over HTTP and long-polls it to its end, which must be that result.
pub(crate) async fn run_task(addr: &str, namespace: &str, name: &str) -> Result<()> {
    let body = json!({ "namespace": namespace, "name": name, "context": { "even_number": 6 } })
        .to_string();
    let created = http(addr, "POST", "/v1/tasks", &body).await?;
    let id = created["task_id"]
        .as_str()
        .with_context(|| format!("no task id: {created}"))?
        .to_string();
    let done = http(
        addr,
        "GET",
        &format!("/v1/tasks/{id}/wait?timeout_ms=30000"),
        "",
    )
    .await?;
    if done["state"] != "complete" || done["result"] != json!(2821109907456u64) {
        bail!(
            "{namespace}/{name} task {id} ended {} with {}: {}",
            done["state"],
            done["result"],
            done["error"]
        );
    }
    Ok(())
}

/// Tasks of the burst in flight at once: each holds a connection to a
/// `serve` while it long-polls.
const BURST_IN_FLIGHT: usize = 256;

/// What the burst took and the CPU each kind of process spent on it.
struct Burst {
    tasks: usize,
    took: Duration,
    postgres: Duration,
    serve: Duration,
    worker: Duration,
    client: Duration,
}

/// CPU so far of PostgreSQL's backends for the database, of the `serve`
/// and `worker` processes (summed by kind) and of this process.
async fn cpu_now(
    pool: &sqlx::PgPool,
    procs: &[(&'static str, Option<u32>)],
) -> Option<(cpu::Snapshot, Duration, Duration)> {
    let snap = cpu::snapshot(pool).await?;
    let of = |kind: &str| -> Option<Duration> {
        procs
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, pid)| cpu::cpu_of(&(*pid)?.to_string()))
            .sum()
    };
    Some((snap, of("serve")?, of("worker")?))
}

/// `tasks` linear tasks created over HTTP across both servers, at most
/// [`BURST_IN_FLIGHT`] at a time, each waited for by a long poll.
async fn burst(
    url: &str,
    servers: &[String],
    procs: &[(&'static str, Option<u32>)],
    tasks: usize,
) -> Result<Burst> {
    let pool = sqlx::PgPool::connect(url).await?;
    let before = cpu_now(&pool, procs).await;
    let start = Instant::now();
    let mut done = futures::stream::iter(0..tasks)
        .map(|i| linear(&servers[i % servers.len()]))
        .buffer_unordered(BURST_IN_FLIGHT);
    while let Some(r) = done.next().await {
        r?;
    }
    let took = start.elapsed();
    let after = cpu_now(&pool, procs).await;
    pool.close().await;
    let ((b, b_serve, b_worker), (a, a_serve, a_worker)) = before
        .zip(after)
        .context("the CPU of the processes cannot be read (/proc, or PostgreSQL elsewhere)")?;
    let spent = b.until(&a);
    Ok(Burst {
        tasks,
        took,
        postgres: spent.postgres,
        serve: a_serve.saturating_sub(b_serve),
        worker: a_worker.saturating_sub(b_worker),
        client: spent.own,
    })
}

pub(crate) fn p(sorted: &[Duration], q: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

/// The cluster rows on the queue `env` selects; on RabbitMQ with the
/// PostgreSQL queue's P50s beside them, measured first the same way.
pub async fn run(
    url: &str,
    env: &[(&str, String)],
    iterations: usize,
    warmup: usize,
    tasks: usize,
) -> Result<()> {
    let setting = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let rabbitmq = setting("STEPGRAPH_QUEUE") == Some("rabbitmq");
    let beside = if rabbitmq {
        let mut on_postgres: Vec<(&str, String)> = env
            .iter()
            .filter(|(k, _)| *k != "STEPGRAPH_QUEUE")
            .cloned()
            .collect();
        on_postgres.push(("STEPGRAPH_QUEUE", "postgres".into()));
        Some(
            measure(url, &on_postgres, iterations, warmup, 0)
                .await?
                .rows,
        )
    } else {
        None
    };
    let floor = floor::durable_commit(url, crate::bench::table::FLOOR_RUNS).await?;
    let Measured {
        rows: (single, double),
        burst,
    } = measure(url, env, iterations, warmup, tasks).await?;
    let queue = if rabbitmq {
        "RabbitMQ queues, beside the PostgreSQL queue"
    } else {
        "PostgreSQL queue"
    };
    let dispatch = match setting("STEPGRAPH_WORKER_EAGER_DISPATCH") {
        Some("false") => "every step through the queue",
        _ => "eager dispatch",
    };
    let threads = match setting("STEPGRAPH_THREADS") {
        Some("1") => "a single-thread runtime each".to_string(),
        Some("0") | None => "one runtime thread per core each".to_string(),
        Some(n) => format!("{n} runtime threads each"),
    };
    println!("stepgraph bench --cluster: 2 serve + 2 worker processes ({threads}), PostgreSQL state, {queue}, {dispatch}, driven over HTTP; {iterations} runs after {warmup} warm-up runs");
    println!();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    let (pg_col, pg_rule) = match beside {
        Some(_) => (" PostgreSQL queue P50 |", "--:|"),
        None => ("", ""),
    };
    println!(
        "| Scenario | Steps | P50 | P95 | P99 | vs floor |{pg_col} Reference P50 (published) | vs reference |"
    );
    println!("|---|--:|--:|--:|--:|--:|{pg_rule}--:|--:|");
    let rows = [
        ("Cluster single (round robin)", 4, &single, 261.0),
        ("Cluster 2x (one task per orchestrator)", 8, &double, 332.0),
    ];
    for (i, (label, steps, samples, seed)) in rows.into_iter().enumerate() {
        let p50 = p(samples, 0.5);
        let pg = match &beside {
            Some((single, double)) => format!(" {} |", ms(p([single, double][i], 0.5))),
            None => String::new(),
        };
        println!(
            "| {label} | {steps} | {} | {} | {} | {:.1}x |{pg} {seed} ms | {:.0}x |",
            ms(p50),
            ms(p(samples, 0.95)),
            ms(p(samples, 0.99)),
            // Each task: a durable commit to create it and one per step.
            p50.as_secs_f64() / (floor.as_secs_f64() * 5.0),
            seed / (p50.as_secs_f64() * 1e3)
        );
    }
    println!();
    println!(
        "vs floor: P50 / (floor x 5), a linear task needing one durable commit to be created and one per step; \
         the floor is a single-row INSERT committed durably on one connection, measured at the start: {} (median of {}).",
        crate::bench::table::fmt_latency(floor),
        crate::bench::table::FLOOR_RUNS
    );
    if let Some(b) = burst {
        let per_task = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3 / b.tasks as f64);
        println!(
            "Burst: {} linear tasks over HTTP, {BURST_IN_FLIGHT} at a time across both servers, {} steps in {:.2} s = {:.0} steps/s ({:.0} tasks/s)",
            b.tasks,
            b.tasks * 4,
            b.took.as_secs_f64(),
            (b.tasks * 4) as f64 / b.took.as_secs_f64(),
            b.tasks as f64 / b.took.as_secs_f64()
        );
        println!(
            "CPU per task: PostgreSQL {}, serve {} (2 processes), worker {} (2 processes), this client {}; PostgreSQL per step {:.0} µs",
            per_task(b.postgres),
            per_task(b.serve),
            per_task(b.worker),
            per_task(b.client),
            b.postgres.as_secs_f64() * 1e6 / (b.tasks * 4) as f64
        );
    }
    Ok(())
}

/// The rows' sorted latencies, and the burst's figures when asked for.
struct Measured {
    rows: (Vec<Duration>, Vec<Duration>),
    burst: Option<Burst>,
}

/// Starts the processes and runs the two rows: one task at a time (round
/// robin), then two at once (one per `serve`); then, for `tasks` > 0, the
/// burst.
async fn measure(
    url: &str,
    env: &[(&str, String)],
    iterations: usize,
    warmup: usize,
    tasks: usize,
) -> Result<Measured> {
    let dir = std::env::temp_dir().join(format!("stepgraph-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    fixtures::write_templates(&dir)?;
    let mut procs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let (proc, addr) = spawn(&["serve", "--listen", "127.0.0.1:0"], url, env, &dir).await?;
        procs.push(("serve", proc));
        servers.push(addr);
    }
    for _ in 0..2 {
        procs.push(("worker", spawn(&["worker"], url, env, &dir).await?.0));
    }
    let mut single = Vec::new();
    let mut double = Vec::new();
    for i in 0..iterations + warmup {
        let start = Instant::now();
        linear(&servers[i % 2]).await?;
        let one = start.elapsed();
        let start = Instant::now();
        let (a, b) = tokio::join!(linear(&servers[0]), linear(&servers[1]));
        a?;
        b?;
        if i >= warmup {
            single.push(one);
            double.push(start.elapsed());
        }
    }
    let burst = if tasks > 0 {
        let pids: Vec<_> = procs.iter().map(|(k, p)| (*k, p.0.id())).collect();
        Some(burst(url, &servers, &pids, tasks).await?)
    } else {
        None
    };
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    single.sort();
    double.sort();
    Ok(Measured {
        rows: (single, double),
        burst,
    })
}
