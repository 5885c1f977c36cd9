//! `stepgraph bench --cluster`: the seed's cluster rows against real
//! processes: 2 `serve` (orchestrator + API) and 2 `worker` processes on one
//! PostgreSQL database, driven over HTTP as a client would.

use crate::fixtures;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn spawn(
    args: &[&str],
    url: &str,
    env: &[(&str, String)],
    templates: &std::path::Path,
) -> Result<(Proc, String)> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .arg("--templates")
        .arg(templates)
        .env("STEPGRAPH_DATABASE_URL", url)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a stepgraph process")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("no stdout")?;
    BufReader::new(stdout).read_line(&mut line).await?;
    if line.is_empty() {
        bail!("stepgraph {args:?} exited at start-up");
    }
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    Ok((Proc(child), addr))
}

async fn http(addr: &str, method: &str, path: &str, body: &str) -> Result<Value> {
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
    let body = json!({ "namespace": "e2e", "name": "linear", "context": { "even_number": 6 } })
        .to_string();
    let created = http(addr, "POST", "/v1/tasks", &body).await?;
    let id = created["task_id"]
        .as_str()
        .context("no task id")?
        .to_string();
    let done = http(
        addr,
        "GET",
        &format!("/v1/tasks/{id}/wait?timeout_ms=30000"),
        "",
    )
    .await?;
    if done["state"] != "complete" || done["result"] != json!(2821109907456u64) {
        bail!("task {id} ended {} with {}", done["state"], done["result"]);
    }
    Ok(())
}

fn p(sorted: &[Duration], q: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

/// The cluster rows on the queue `env` selects; on RabbitMQ with the
/// PostgreSQL queue's P50s beside them, measured first the same way.
pub async fn run(
    url: &str,
    env: &[(&str, String)],
    iterations: usize,
    warmup: usize,
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
        Some(measure(url, &on_postgres, iterations, warmup).await?)
    } else {
        None
    };
    let (single, double) = measure(url, env, iterations, warmup).await?;
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
        "| Scenario | Steps | P50 | P95 | P99 |{pg_col} Reference P50 (published) | vs reference |"
    );
    println!("|---|--:|--:|--:|--:|{pg_rule}--:|--:|");
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
            "| {label} | {steps} | {} | {} | {} |{pg} {seed} ms | {:.0}x |",
            ms(p50),
            ms(p(samples, 0.95)),
            ms(p(samples, 0.99)),
            seed / (p50.as_secs_f64() * 1e3)
        );
    }
    Ok(())
}

/// Starts the processes and runs the two rows: one task at a time (round
/// robin), then two at once (one per `serve`); sorted latencies of each.
async fn measure(
    url: &str,
    env: &[(&str, String)],
    iterations: usize,
    warmup: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = std::env::temp_dir().join(format!("stepgraph-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    fixtures::write_templates(&dir)?;
    let mut procs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let (proc, addr) = spawn(&["serve", "--listen", "127.0.0.1:0"], url, env, &dir).await?;
        procs.push(proc);
        servers.push(addr);
    }
    for _ in 0..2 {
        procs.push(spawn(&["worker"], url, env, &dir).await?.0);
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
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    single.sort();
    double.sort();
    Ok((single, double))
}
