//! `stepgraph bench --language L`: the seed's FFI rows. Each language's own
//! bench module (installed with its package) runs them: in embedded mode it
//! prints its table itself; with a database URL it runs as a worker process
//! that `language_workers` drives beside the Rust worker.

use crate::fixtures;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stepgraph_engine::{TaskRequest, TaskState};
use stepgraph_worker::{examples, Engine, EngineConfig};

/// A language whose handlers `stepgraph bench --language` compares with Rust's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Python,
    Ruby,
    /// Under Bun (C ABI and napi), then under Node (napi).
    Typescript,
}

/// The TypeScript package: $STEPGRAPH_TYPESCRIPT_DIR, or this checkout's.
fn typescript_dir() -> PathBuf {
    std::env::var_os("STEPGRAPH_TYPESCRIPT_DIR")
        .map(Into::into)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/typescript").into())
}

/// One runtime that runs a language's bench module: the command that starts
/// it (options follow) and the bindings it has.
pub(super) struct Runtime {
    pub name: &'static str,
    pub program: String,
    pub args: Vec<String>,
    /// The TypeScript bindings (`--backend`) this runtime loads; empty for
    /// languages with one binding.
    pub backends: &'static [&'static str],
}

impl Runtime {
    /// The binding's name in a table: "Python", "Bun C ABI", "Node napi".
    pub fn binding(&self, backend: Option<&str>) -> String {
        match backend {
            None => self.name.to_string(),
            Some("bun-ffi") => format!("{} C ABI", self.name),
            Some(b) => format!("{} {b}", self.name),
        }
    }

    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.program);
        c.args(&self.args);
        c
    }
}

pub(super) fn runtimes(language: Language) -> Vec<Runtime> {
    match language {
        Language::Python => vec![Runtime {
            name: "Python",
            program: "python3".into(),
            args: vec!["-m".into(), "stepgraph.bench".into()],
            backends: &[],
        }],
        Language::Ruby => vec![Runtime {
            name: "Ruby",
            program: "ruby".into(),
            args: vec![
                "-rstepgraph/bench".into(),
                "-e".into(),
                "Stepgraph::Bench.main(ARGV)".into(),
                "--".into(),
            ],
            backends: &[],
        }],
        Language::Typescript => {
            let ts = typescript_dir();
            let script = ts.join("dist/bench.js").display().to_string();
            let bun = ts.join("node_modules/.bin/bun").display().to_string();
            vec![
                Runtime {
                    name: "Bun",
                    program: bun,
                    args: vec![script.clone()],
                    backends: &["bun-ffi", "napi"],
                },
                Runtime {
                    name: "Node",
                    program: "node".into(),
                    args: vec![script],
                    backends: &["napi"],
                },
            ]
        }
    }
}

/// A fresh directory holding the fixture templates; removed on drop.
pub(super) struct TemplatesDir(pub PathBuf);

impl TemplatesDir {
    pub fn empty(what: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("stepgraph-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// With the fixture templates.
    pub fn new(what: &str) -> Result<Self> {
        let dir = Self::empty(what)?;
        fixtures::write_templates(&dir.0).context("writing the fixture templates")?;
        Ok(dir)
    }
}

impl Drop for TemplatesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `stepgraph bench`'s own P50 of `template` (the native engine in this
/// process, made and driven as `stepgraph bench` makes and drives it).
async fn native_p50(template: &str, runs: usize, warmup: usize) -> Result<Duration> {
    let engine = Engine::embedded(
        fixtures::registry()?,
        examples::registry(),
        EngineConfig::default(),
    );
    let mut samples = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let request = TaskRequest::new("e2e", template, json!({ "even_number": 6 }));
        let start = Instant::now();
        let id = engine.submit(request).await?.task_id;
        let task = engine.wait_task(id, Duration::from_secs(30)).await?;
        let took = start.elapsed();
        if task.state != TaskState::Complete {
            bail!("{template}: the native task ended {}", task.state);
        }
        if i >= warmup {
            samples.push(took);
        }
    }
    engine.shutdown().await;
    samples.sort();
    Ok(samples[samples.len() / 2])
}

/// Embedded mode: the language's bench module runs linear and diamond with
/// its handlers and with the native ones, and prints the table, its Rust
/// column beside `stepgraph bench`'s own P50 measured here first.
pub async fn embedded(language: Language, iterations: usize, warmup: usize) -> Result<()> {
    let dir = TemplatesDir::new("bench-templates")?;
    let mut native = Vec::new();
    for template in ["linear", "diamond"] {
        let p50 = native_p50(template, iterations, warmup).await?;
        native.push(format!("{template}={:.1}", p50.as_secs_f64() * 1e6));
    }
    let native = native.join(",");
    for runtime in runtimes(language) {
        let ran = runtime
            .command()
            .arg("--templates")
            .arg(&dir.0)
            .args(["--runs", &iterations.to_string()])
            .args(["--warmup", &warmup.to_string()])
            .args(["--native-p50-us", &native])
            .status()
            .with_context(|| {
                format!(
                    "cannot run {} (is it installed? ./scripts/setup installs the package)",
                    runtime.program
                )
            })?;
        if !ran.success() {
            anyhow::bail!(
                "the {language:?} bench failed under {} (see above); ./scripts/setup installs its package",
                runtime.program
            );
        }
        println!();
    }
    Ok(())
}
