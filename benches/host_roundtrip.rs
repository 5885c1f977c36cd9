//! The foreign handler host's round trip per step, per language: a step
//! handed to a no-op handler and its result back in Rust, timed in Rust by
//! `stepgraph_worker::roundtrip` (the same code for every row).
//!
//! - `rust/direct`: a native Rust handler, called directly (the baseline);
//! - `rust/host`: through the host, with a Rust thread as the language side
//!   (the host's own cost: queue, wake-up, completion channel);
//! - `python`: through the PyO3 binding to a Python handler (a driver
//!   process, `benches/drivers/roundtrip.py`, needs `./scripts/python-deps`);
//! - `ruby`: through the Magnus binding to a Ruby handler
//!   (`benches/drivers/roundtrip.rb`, needs `./scripts/ruby-deps`);
//! - `bun/cabi`, `bun/napi`, `node/napi`: a TypeScript handler under Bun
//!   through the C ABI (bun:ffi) and through the Node-API module, and under
//!   Node through Node-API (`benches/drivers/roundtrip.mjs`, needs
//!   `./scripts/typescript-deps`).
//!
//! `cargo bench --bench host_roundtrip [-- python]`.

use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::StepOutcome;
use stepgraph_worker::roundtrip::{roundtrip, roundtrip_here};
use stepgraph_worker::{HandlerResult, Host, HostConfig, StepContext, StepHandler, StepOutput};

struct Noop;

#[async_trait]
impl StepHandler for Noop {
    async fn call(&self, _: &StepContext) -> HandlerResult {
        Ok(StepOutput::Success(serde_json::Value::Null))
    }
}

/// A language's side of the bench, in its own process.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn spawn(language: &str, program: &str, args: &[&str]) -> Driver {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // A round trip runs no template: an engine loads none (one that loaded
        // the fixtures would refuse to start without their handlers).
        let templates = std::env::temp_dir().join("stepgraph-roundtrip-no-templates");
        std::fs::create_dir_all(&templates).expect("a temporary directory");
        let mut child = Command::new(program)
            .args(args)
            .arg(&templates)
            .current_dir(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {language} driver ({program}): {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading the driver");
        assert_eq!(
            line.trim(),
            "ready",
            "the {language} driver did not start (is its package installed? see ./scripts/setup)"
        );
        Driver {
            child,
            stdin,
            stdout,
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        writeln!(self.stdin, "{iters}").expect("writing to the driver");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading the driver");
        let nanos: u64 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the driver answered {line:?}, not nanoseconds"));
        Duration::from_nanos(nanos)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_roundtrip");
    group.bench_function("rust/direct", |b| {
        b.iter_custom(|iters| roundtrip_here(&Noop, "noop", iters).unwrap())
    });

    group.bench_function("rust/host", |b| {
        let host = Host::new(HostConfig::default());
        let side = {
            let host: Arc<Host> = host.clone();
            std::thread::spawn(move || {
                while let Ok(events) = host.next_events(1, Duration::from_secs(1)) {
                    for e in events {
                        let _ = host.complete(
                            e.event_id,
                            StepOutcome::Success {
                                result: serde_json::Value::Null,
                            },
                        );
                    }
                }
            })
        };
        let handler: Arc<dyn StepHandler> = Arc::new(host.handler("noop"));
        let runtime = host.runtime().unwrap();
        b.iter_custom(|iters| roundtrip(&runtime, handler.clone(), "noop", iters).unwrap());
        host.shutdown();
        side.join().unwrap();
    });

    group.bench_function("python", |b| {
        let mut driver = Driver::spawn("Python", "python3", &["benches/drivers/roundtrip.py"]);
        b.iter_custom(|iters| driver.run(iters));
    });
    group.bench_function("ruby", |b| {
        let mut driver = Driver::spawn("Ruby", "ruby", &["benches/drivers/roundtrip.rb"]);
        b.iter_custom(|iters| driver.run(iters));
    });
    let bun = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/typescript/node_modules/.bin/bun"
    );
    for (row, program, backend) in [
        ("bun/cabi", bun, "bun-ffi"),
        ("bun/napi", bun, "napi"),
        ("node/napi", "node", "napi"),
    ] {
        group.bench_function(row, |b| {
            let mut driver = Driver::spawn(
                &format!("TypeScript ({row})"),
                program,
                &["benches/drivers/roundtrip.mjs", backend],
            );
            b.iter_custom(|iters| driver.run(iters));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
