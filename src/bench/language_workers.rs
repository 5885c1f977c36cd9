//! `stepgraph bench --language L --database-url URL [--queue rabbitmq]`: the
//! seed's FFI rows end to end through the distributed system, as the
//! reference measured them. One `serve` (orchestrator and API), the Rust
//! worker and one worker process per binding of the language, each serving
//! linear and diamond under a namespace of its own. Tasks go over HTTP one
//! at a time, to each worker in turn, so every row is measured in the same
//! minutes as the Rust worker's it is compared with.

use super::language::{runtimes, Language, Runtime, TemplatesDir};
use super::table::fmt_latency;
use crate::cluster::{p, process_env, run_task, spawn, started, Proc};
use crate::fixtures;
use anyhow::{bail, Result};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Handlers running at once in every worker, as in the embedded rows.
const CONCURRENCY: usize = 2;

/// The rows: template, steps, the reference's published FFI P50 (ms).
const ROWS: [(&str, &str, usize, f64); 2] = [
    ("FFI linear", "linear", 4, 312.0),
    ("FFI diamond", "diamond", 4, 260.0),
];

/// A worker process serving the FFI rows' namespace.
struct Worker {
    binding: String,
    namespace: String,
    _proc: Proc,
}

/// A namespace per binding: "ffi_rust", "ffi_bun_c_abi".
fn namespace(binding: &str) -> String {
    format!("ffi_{}", binding.to_lowercase().replace(' ', "_"))
}

/// Each binding of the language: its name, the runtime that starts its
/// worker and the binding it loads there (`--backend`), if it has several.
fn bindings(runtimes: &[Runtime]) -> Vec<(String, &Runtime, Option<&'static str>)> {
    runtimes
        .iter()
        .flat_map(|r| match r.backends {
            [] => vec![(r.binding(None), r, None)],
            backends => backends
                .iter()
                .map(|b| (r.binding(Some(b)), r, Some(*b)))
                .collect(),
        })
        .collect()
}

/// The Rust worker, then a worker of each of `bindings`, all started with
/// `env` (the queue) and ready.
async fn start_workers(
    bindings: &[(String, &Runtime, Option<&'static str>)],
    url: &str,
    env: &[(&str, String)],
    dir: &std::path::Path,
) -> Result<Vec<Worker>> {
    let concurrency = CONCURRENCY.to_string();
    let ns = namespace("Rust");
    let (proc, _) = spawn(
        &["worker", "--namespace", &ns, "--concurrency", &concurrency],
        url,
        env,
        dir,
    )
    .await?;
    let mut workers = vec![Worker {
        binding: "Rust".into(),
        namespace: ns,
        _proc: proc,
    }];
    for (binding, runtime, backend) in bindings {
        let ns = namespace(binding);
        let mut cmd = Command::from(runtime.command());
        cmd.arg("--worker").arg("--templates").arg(dir).args([
            "--namespace",
            &ns,
            "--concurrency",
            &concurrency,
        ]);
        if let Some(b) = backend {
            cmd.args(["--backend", b]);
        }
        process_env(&mut cmd, url, env);
        let what = format!(
            "the {binding} worker ({}; ./scripts/setup installs its package)",
            runtime.program
        );
        let (proc, line) = started(cmd, &what).await?;
        if !line.starts_with("worker serving") {
            bail!("{what} said {line:?} instead of that it serves");
        }
        workers.push(Worker {
            binding: binding.clone(),
            namespace: ns,
            _proc: proc,
        });
    }
    Ok(workers)
}

/// Per row, per worker (in `workers`' order), the sorted latencies.
type Samples = Vec<Vec<Vec<Duration>>>;

/// One queue: a `serve` and the workers, then every row.
async fn measure(
    language: Language,
    url: &str,
    env: &[(&str, String)],
    iterations: usize,
    warmup: usize,
) -> Result<(Vec<String>, Samples)> {
    let dir = TemplatesDir::empty("bench-ffi")?;
    let runtimes = runtimes(language);
    let bindings = bindings(&runtimes);
    let names = std::iter::once("Rust").chain(bindings.iter().map(|(b, _, _)| b.as_str()));
    for binding in names {
        fixtures::write_ffi_templates(&dir.0, &namespace(binding))?;
    }
    let (_serve, addr) = spawn(&["serve", "--listen", "127.0.0.1:0"], url, env, &dir.0).await?;
    let workers = start_workers(&bindings, url, env, &dir.0).await?;
    let mut rows = Vec::new();
    for (_, template, _, _) in ROWS {
        let mut samples = vec![Vec::with_capacity(iterations); workers.len()];
        for i in 0..warmup + iterations {
            // Each worker in turn, starting with another one each time.
            for k in 0..workers.len() {
                let w = (i + k) % workers.len();
                let start = Instant::now();
                run_task(&addr, &workers[w].namespace, template).await?;
                if i >= warmup {
                    samples[w].push(start.elapsed());
                }
            }
        }
        samples.iter_mut().for_each(|s| s.sort());
        rows.push(samples);
    }
    Ok((workers.into_iter().map(|w| w.binding).collect(), rows))
}

/// Measures on each of `queues` (a name and the processes' environment)
/// and prints one table.
pub async fn run(
    language: Language,
    url: &str,
    queues: &[(&str, Vec<(&str, String)>)],
    iterations: usize,
    warmup: usize,
) -> Result<()> {
    let mut measured = Vec::new();
    for (queue, env) in queues {
        measured.push((
            *queue,
            measure(language, url, env, iterations, warmup).await?,
        ));
    }
    println!(
        "stepgraph bench --language {} --database-url: end to end through the distributed system: \
         one serve, the Rust worker and a worker process per binding (one runtime thread each, \
         {CONCURRENCY} handlers at once), PostgreSQL state, every transition durable, driven over HTTP \
         one task at a time, to each worker in turn; {iterations} runs per row after {warmup} warm-up runs",
        format!("{language:?}").to_lowercase()
    );
    println!();
    println!("| Scenario | Queue | Worker | Steps | P50 | P95 | P99 | overhead/step | vs Rust worker | Reference FFI P50 (published) |");
    println!("|---|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for (queue, (bindings, rows)) in &measured {
        for ((label, _, steps, seed), samples) in ROWS.iter().zip(rows) {
            let rust = p(&samples[0], 0.5);
            for (binding, s) in bindings.iter().zip(samples) {
                let p50 = p(s, 0.5);
                let (over, vs) = if binding == "Rust" {
                    ("".to_string(), "".to_string())
                } else {
                    let delta = p50.as_secs_f64() - rust.as_secs_f64();
                    (
                        format!("{:.0} µs", delta * 1e6 / *steps as f64),
                        format!("{:+.1}%", 100.0 * delta / rust.as_secs_f64()),
                    )
                };
                println!(
                    "| {label} | {queue} | {binding} | {steps} | {} | {} | {} | {over} | {vs} | {seed:.0} ms |",
                    fmt_latency(p50),
                    fmt_latency(p(s, 0.95)),
                    fmt_latency(p(s, 0.99)),
                );
            }
        }
    }
    println!();
    println!(
        "vs Rust worker: the P50 over the Rust worker's, measured in turn with it; \
         the reference's FFI rows were 23% over its native ones."
    );
    Ok(())
}
