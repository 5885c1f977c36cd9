//! What a binding passes to a hosted engine: its options (explicit, or as
//! JSON from the C ABI), the tuning of its host and breakers, and the
//! blocking calls a JavaScript thread asks for.

use crate::breaker::BreakerConfig;
use crate::host::HostConfig;
use crate::settings::{Settings, SettingsError};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Where a hosted worker's state and queue live: what its caller passed
/// explicitly, over the `STEPGRAPH_*` settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// None: `STEPGRAPH_DATABASE_URL`.
    pub database_url: Option<String>,
    /// The queue backend: `postgres`, `rabbitmq` (with `STEPGRAPH_AMQP_URL`),
    /// or an AMQP URL; None: `STEPGRAPH_QUEUE` (default `postgres`).
    pub queue: Option<String>,
    /// The namespaces served; empty: `STEPGRAPH_WORKER_NAMESPACES`, else
    /// every template's.
    pub namespaces: Vec<String>,
    /// Steps run at once (of the built-in Rust handlers; the foreign ones
    /// are limited by what the language side asks for); None: `STEPGRAPH_WORKER_CONCURRENCY`.
    pub concurrency: Option<usize>,
    /// The language side's language, as the worker registry shows it.
    pub language: String,
}

impl WorkerOptions {
    /// The process settings (`STEPGRAPH_*`) with these options over them.
    pub fn settings(&self) -> Result<Settings, SettingsError> {
        let mut s = Settings::load(None)?;
        if let Some(url) = &self.database_url {
            s.database_url = Some(url.clone());
        }
        if let Some(queue) = &self.queue {
            s.queue = queue.clone();
        }
        if !self.namespaces.is_empty() {
            s.worker.namespaces = self.namespaces.clone();
        }
        if let Some(n) = self.concurrency {
            s.worker.concurrency = n.max(1);
        }
        s.transport()?;
        s.database_url()?;
        Ok(s)
    }
}

/// An engine's settings as a binding passes them (JSON): an embedded
/// engine, or a worker when `database_url` is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineOptions {
    pub templates_dir: PathBuf,
    /// The handler names the language side serves.
    #[serde(default)]
    pub handlers: Vec<String>,
    /// Also the example Rust handlers of the fixture workflows (off: only
    /// the language side's handlers run here).
    #[serde(default)]
    pub builtin_handlers: bool,
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_cool_down_ms")]
    pub cool_down_ms: u64,
    pub database_url: Option<String>,
    /// `postgres`, `rabbitmq` or an AMQP URL; unset: `STEPGRAPH_QUEUE`.
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The caller's language, for the worker registry.
    #[serde(default = "default_language")]
    pub language: String,
}

fn default_language() -> String {
    "c".into()
}

fn default_threshold() -> u32 {
    BreakerConfig::default().failure_threshold
}
fn default_cool_down_ms() -> u64 {
    BreakerConfig::default().cool_down.as_millis() as u64
}

/// What a binding tunes: the host and the breakers of the handlers the
/// engine runs.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    pub host: HostConfig,
    pub breakers: BreakerConfig,
}

impl Tuning {
    /// The breakers' threshold and cool-down; defaults for the rest.
    pub fn new(failure_threshold: u32, cool_down_ms: u64) -> Tuning {
        Tuning {
            host: HostConfig::default(),
            breakers: BreakerConfig {
                failure_threshold,
                cool_down: Duration::from_millis(cool_down_ms),
            },
        }
    }
}

/// A blocking operation, asked for by a language whose handlers run on the
/// thread that would otherwise wait for it (JavaScript's): see
/// [`HostedEngine::call`].
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Call {
    /// Creates a task and waits for it; replies with its view (without
    /// the audit trail).
    Run {
        namespace: String,
        name: String,
        #[serde(default)]
        context: Value,
        #[serde(default = "default_run_timeout_ms")]
        timeout_ms: u64,
        /// Start at this time (RFC 3339) rather than at once (read by
        /// [`task_request`], whose error names it).
        #[serde(default)]
        run_at: Option<String>,
        /// Start this many milliseconds from now.
        #[serde(default)]
        delay_ms: Option<u64>,
    },
    /// Replies with a task's view, with its audit trail.
    GetTask { task_id: String },
    /// Benchmarks: replies with the nanoseconds `n` round trips took.
    Roundtrip { handler: String, n: u64 },
    /// Replies with the host's [`crate::HostStats`].
    Stats,
    /// Stops gracefully; replies with null.
    Shutdown,
}

fn default_run_timeout_ms() -> u64 {
    300_000
}
