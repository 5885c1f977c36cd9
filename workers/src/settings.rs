//! One configuration for every process: a TOML file, then `STEPGRAPH_*`
//! environment variables over it, then explicit arguments (the CLI's flags,
//! a language worker's options). The defaults run embedded mode. `serve`,
//! `worker` and the Python, Ruby and TypeScript workers all read it here,
//! so they agree on the database, the queue and its AMQP prefix.

use crate::transport::Transport;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stepgraph_engine::retention::{Keep, Retention};
use stepgraph_engine::RetentionConfig;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config {path}: {message}")]
    Read { path: String, message: String },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    /// A `STEPGRAPH_*` variable or a setting with a value it cannot take.
    #[error("{0}")]
    Invalid(String),
    #[error("no database URL: set database_url in the config file, STEPGRAPH_DATABASE_URL, or --database-url")]
    NoDatabaseUrl,
}

type Result<T> = std::result::Result<T, SettingsError>;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database_url: Option<String>,
    /// `postgres` (the queue lives in the database) or `rabbitmq` (with `amqp_url`).
    pub queue: String,
    /// RabbitMQ's address, for `queue = "rabbitmq"`.
    pub amqp_url: Option<String>,
    /// Prepended to every RabbitMQ queue name.
    pub amqp_prefix: String,
    /// RabbitMQ deletes this process's queues after they are unused this long (for tests).
    pub amqp_queue_expires_ms: Option<u64>,
    pub templates_dir: PathBuf,
    pub listen: String,
    /// `serve`: a request's headers must arrive within this (and an idle
    /// keep-alive connection closes after it).
    pub http_header_timeout_ms: u64,
    /// `serve`: connections open at once; beyond them one is closed at once.
    pub http_max_connections: usize,
    /// `serve`: the API's bearer tokens (`[[tokens]]` in the file, or
    /// `STEPGRAPH_TOKENS=name:scope:sha256:<hex>,...`). None: the API is
    /// open, which `serve` allows only on a loopback address.
    pub tokens: Vec<TokenSetting>,
    /// `serve`: allow an open API (no tokens) on a non-loopback address.
    pub insecure: bool,
    /// `serve`: `/health` and `/metrics` answer without a token.
    pub open_probes: bool,
    pub max_connections: u32,
    /// The process's runtime threads: 0 is one per CPU core; 1 is a
    /// single-thread runtime (several processes sharing a few cores switch
    /// threads less; a worker's handlers then share that one thread).
    pub threads: usize,
    /// A receiver sleeping on an empty PostgreSQL queue is woken by NOTIFY;
    /// it also claims by itself this often, in case a notification was lost.
    pub queue_fallback_poll_ms: u64,
    /// The same for a `wait` for a task's end.
    pub wait_fallback_poll_ms: u64,
    /// Deliveries of a message (step or orchestration) that failed the same
    /// way before it is dead-lettered and its task failed naming the cause.
    pub max_deliveries: u32,
    pub orchestrator: OrchestratorSection,
    pub worker: WorkerSection,
    /// `serve`: what is kept of ended tasks (see `stepgraph_engine::retention`).
    pub retention: RetentionSection,
}

/// `[retention]`: how long `serve` keeps ended tasks before it removes them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Tasks that ended but in Error, unless their template says
    /// otherwise: a time (`"30d"`) or `"forever"` (`STEPGRAPH_RETENTION`).
    pub ended: Keep,
    /// Tasks that ended in Error (`STEPGRAPH_FAILED_RETENTION`).
    pub failed: Keep,
    /// Copy each task to `sg_archived_tasks` before removing it.
    pub archive: bool,
    /// How often `serve` looks for expired tasks.
    pub every_ms: u64,
    /// Tasks removed per transaction.
    pub batch: i64,
    /// The creation-time window of one partition of the audit trails
    /// (`STEPGRAPH_RETENTION_PARTITION`, at least 1s); `serve` makes them
    /// ahead and drops each once `ended` has passed since its end.
    pub partition: Keep,
}

impl Default for RetentionSection {
    fn default() -> Self {
        let d = RetentionConfig::default();
        RetentionSection {
            ended: d.default.ended,
            failed: d.default.failed,
            archive: d.archive,
            every_ms: d.every.as_millis() as u64,
            batch: d.batch,
            partition: Keep::For(d.partition),
        }
    }
}

/// One API token as configured: its name, scope (read, write, admin) and
/// hash (`sha256:<hex>`; `stepgraph tokens new` makes a token and its line).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSetting {
    pub name: String,
    pub scope: String,
    pub hash: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorSection {
    pub concurrency: usize,
    pub visibility_timeout_ms: u64,
    /// Every half of this, re-send the messages of steps whose eager-dispatch
    /// leases ran out (their worker died) and, over RabbitMQ, of steps
    /// stranded this long (a crash between a commit and its send).
    pub resend_stranded_after_ms: u64,
    /// The scheduler looks this often for delayed tasks and schedule ticks
    /// that other processes stored (its own it knows of at once).
    pub schedule_poll_ms: u64,
    /// A step enqueued this long whose handler no live worker serves fails
    /// (`handler_unavailable`); 0: it waits however long.
    pub handler_wait_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    pub namespaces: Vec<String>,
    /// Orchestrate each result in the commit that records it (needs the templates).
    pub inline_orchestration: bool,
    /// With inline orchestration: run the steps a commit makes ready here,
    /// while there are free slots, leased to this worker, instead of sending
    /// them through the queue.
    pub eager_dispatch: bool,
    pub concurrency: usize,
    pub visibility_timeout_ms: u64,
    pub default_step_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Consecutive failed attempts (errors, panics, timeouts) of one handler
    /// that open its circuit breaker (`stepgraph worker` and `serve`'s
    /// embedded mode; the language workers take it as an option).
    pub breaker_failure_threshold: u32,
    /// How long an open breaker refuses its handler's steps.
    pub breaker_cool_down_ms: u64,
    /// How often a worker tells the registry it is alive (three missed
    /// heartbeats and `GET /v1/workers` shows it gone).
    pub heartbeat_ms: u64,
    /// Serve Prometheus `/metrics` of this worker's orchestration at this
    /// address (e.g. `127.0.0.1:9464`); none by default.
    pub metrics_listen: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: None,
            queue: "postgres".into(),
            amqp_url: None,
            amqp_prefix: "stepgraph.".into(),
            amqp_queue_expires_ms: None,
            templates_dir: PathBuf::from("templates"),
            listen: "127.0.0.1:8080".into(),
            http_header_timeout_ms: 5_000,
            http_max_connections: 10_000,
            tokens: Vec::new(),
            insecure: false,
            open_probes: true,
            max_connections: 10,
            threads: 0,
            queue_fallback_poll_ms: 5_000,
            wait_fallback_poll_ms: 2_000,
            max_deliveries: stepgraph_engine::queue::poison::DEFAULT_MAX_DELIVERIES,
            orchestrator: OrchestratorSection::default(),
            worker: WorkerSection::default(),
            retention: RetentionSection::default(),
        }
    }
}

impl Default for OrchestratorSection {
    fn default() -> Self {
        OrchestratorSection {
            concurrency: 64,
            visibility_timeout_ms: 30_000,
            resend_stranded_after_ms: 60_000,
            schedule_poll_ms: 1_000,
            handler_wait_timeout_ms: 0,
        }
    }
}

impl Default for WorkerSection {
    fn default() -> Self {
        WorkerSection {
            namespaces: Vec::new(),
            inline_orchestration: true,
            eager_dispatch: true,
            concurrency: 16,
            visibility_timeout_ms: 330_000,
            default_step_timeout_ms: 300_000,
            shutdown_grace_ms: 30_000,
            breaker_failure_threshold: 5,
            breaker_cool_down_ms: 30_000,
            heartbeat_ms: 5_000,
            metrics_listen: None,
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(format!("STEPGRAPH_{name}"))
        .ok()
        .filter(|v| !v.is_empty())
}

fn env_num<T: std::str::FromStr>(name: &str, into: &mut T) -> Result<()> {
    if let Some(v) = env(name) {
        *into = v.parse().map_err(|_| {
            SettingsError::Invalid(format!("STEPGRAPH_{name} is not a number: {v:?}"))
        })?;
    }
    Ok(())
}

fn env_keep(name: &str, into: &mut Keep) -> Result<()> {
    if let Some(v) = env(name) {
        *into = v
            .parse()
            .map_err(|e| SettingsError::Invalid(format!("STEPGRAPH_{name}: {e}")))?;
    }
    Ok(())
}

fn env_bool(name: &str, into: &mut bool) -> Result<()> {
    if let Some(v) = env(name) {
        *into = match v.as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => {
                return Err(SettingsError::Invalid(format!(
                    "STEPGRAPH_{name} must be true or false, not {v:?}"
                )))
            }
        };
    }
    Ok(())
}

impl Settings {
    /// The file's settings (or the defaults), with the `STEPGRAPH_*`
    /// variables over them; the caller applies its explicit arguments last.
    pub fn load(file: Option<&Path>) -> Result<Settings> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SettingsError::Read {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| SettingsError::Parse {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
            }
            None => Settings::default(),
        };
        if let Some(v) = env("DATABASE_URL") {
            c.database_url = Some(v);
        }
        if let Some(v) = env("QUEUE") {
            c.queue = v;
        }
        if let Some(v) = env("AMQP_URL") {
            c.amqp_url = Some(v);
        }
        if let Some(v) = env("AMQP_PREFIX") {
            c.amqp_prefix = v;
        }
        if let Some(v) = env("AMQP_QUEUE_EXPIRES_MS") {
            c.amqp_queue_expires_ms = Some(v.parse().map_err(|_| {
                SettingsError::Invalid(format!(
                    "STEPGRAPH_AMQP_QUEUE_EXPIRES_MS: not a number: {v:?}"
                ))
            })?);
        }
        if let Some(v) = env("TEMPLATES_DIR") {
            c.templates_dir = v.into();
        }
        if let Some(v) = env("LISTEN") {
            c.listen = v;
        }
        if let Some(v) = env("WORKER_NAMESPACES") {
            c.worker.namespaces = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        env_num("MAX_CONNECTIONS", &mut c.max_connections)?;
        env_num("HTTP_HEADER_TIMEOUT_MS", &mut c.http_header_timeout_ms)?;
        env_num("HTTP_MAX_CONNECTIONS", &mut c.http_max_connections)?;
        env_bool("INSECURE", &mut c.insecure)?;
        env_bool("OPEN_PROBES", &mut c.open_probes)?;
        if let Some(list) = std::env::var("STEPGRAPH_TOKENS")
            .ok()
            .filter(|v| !v.is_empty())
        {
            c.tokens = list
                .split(',')
                .map(|t| {
                    let mut parts = t.trim().splitn(3, ':');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(name), Some(scope), Some(hash)) => Ok(TokenSetting {
                            name: name.into(),
                            scope: scope.into(),
                            hash: hash.into(),
                        }),
                        _ => Err(SettingsError::Invalid(format!(
                            "STEPGRAPH_TOKENS: {t:?} is not name:scope:sha256:<hex>"
                        ))),
                    }
                })
                .collect::<Result<_>>()?;
        }
        env_num("THREADS", &mut c.threads)?;
        env_num("QUEUE_FALLBACK_POLL_MS", &mut c.queue_fallback_poll_ms)?;
        env_num("WAIT_FALLBACK_POLL_MS", &mut c.wait_fallback_poll_ms)?;
        env_num("MAX_DELIVERIES", &mut c.max_deliveries)?;
        env_bool(
            "WORKER_INLINE_ORCHESTRATION",
            &mut c.worker.inline_orchestration,
        )?;
        env_bool("WORKER_EAGER_DISPATCH", &mut c.worker.eager_dispatch)?;
        env_num("ORCHESTRATOR_CONCURRENCY", &mut c.orchestrator.concurrency)?;
        env_num(
            "ORCHESTRATOR_VISIBILITY_TIMEOUT_MS",
            &mut c.orchestrator.visibility_timeout_ms,
        )?;
        env_num(
            "ORCHESTRATOR_RESEND_STRANDED_AFTER_MS",
            &mut c.orchestrator.resend_stranded_after_ms,
        )?;
        env_num(
            "ORCHESTRATOR_SCHEDULE_POLL_MS",
            &mut c.orchestrator.schedule_poll_ms,
        )?;
        env_num(
            "ORCHESTRATOR_HANDLER_WAIT_TIMEOUT_MS",
            &mut c.orchestrator.handler_wait_timeout_ms,
        )?;
        env_num("WORKER_CONCURRENCY", &mut c.worker.concurrency)?;
        env_num(
            "WORKER_VISIBILITY_TIMEOUT_MS",
            &mut c.worker.visibility_timeout_ms,
        )?;
        env_num(
            "WORKER_DEFAULT_STEP_TIMEOUT_MS",
            &mut c.worker.default_step_timeout_ms,
        )?;
        env_num("WORKER_SHUTDOWN_GRACE_MS", &mut c.worker.shutdown_grace_ms)?;
        env_num(
            "WORKER_BREAKER_FAILURE_THRESHOLD",
            &mut c.worker.breaker_failure_threshold,
        )?;
        env_num(
            "WORKER_BREAKER_COOL_DOWN_MS",
            &mut c.worker.breaker_cool_down_ms,
        )?;
        env_num("WORKER_HEARTBEAT_MS", &mut c.worker.heartbeat_ms)?;
        env_keep("RETENTION", &mut c.retention.ended)?;
        env_keep("FAILED_RETENTION", &mut c.retention.failed)?;
        env_bool("RETENTION_ARCHIVE", &mut c.retention.archive)?;
        env_num("RETENTION_EVERY_MS", &mut c.retention.every_ms)?;
        env_num("RETENTION_BATCH", &mut c.retention.batch)?;
        env_keep("RETENTION_PARTITION", &mut c.retention.partition)?;
        if !matches!(c.retention.partition, Keep::For(d) if d >= Duration::from_secs(1)) {
            return Err(SettingsError::Invalid(format!(
                "retention.partition (STEPGRAPH_RETENTION_PARTITION) must be a time of at least 1s, like \"1d\", not {}",
                c.retention.partition
            )));
        }
        if c.retention.batch < 1 || c.retention.every_ms < 1 {
            return Err(SettingsError::Invalid(format!(
                "retention.batch and retention.every_ms (STEPGRAPH_RETENTION_BATCH, STEPGRAPH_RETENTION_EVERY_MS) must be at least 1, not {} and {}",
                c.retention.batch, c.retention.every_ms
            )));
        }
        if let Some(v) = env("WORKER_METRICS_LISTEN") {
            c.worker.metrics_listen = Some(v);
        }
        if let Some(addr) = &c.worker.metrics_listen {
            addr.parse::<std::net::SocketAddr>().map_err(|_| {
                SettingsError::Invalid(format!(
                    "worker.metrics_listen (STEPGRAPH_WORKER_METRICS_LISTEN) must be host:port, e.g. 127.0.0.1:9464, not {addr:?}"
                ))
            })?;
        }
        c.transport()?;
        Ok(c)
    }

    /// How steps travel: the `queue` setting, with `amqp_url` and `amqp_prefix`.
    pub fn transport(&self) -> Result<Transport> {
        #[allow(unused_mut)]
        let mut t = Transport::parse(&self.queue, self.amqp_url.as_deref())
            .map_err(SettingsError::Invalid)?;
        #[cfg(feature = "rabbitmq")]
        if let Transport::RabbitMq(r) = &mut t {
            r.prefix = self.amqp_prefix.clone();
            r.expires = self.amqp_queue_expires_ms.map(Duration::from_millis);
        }
        Ok(t)
    }

    pub fn database_url(&self) -> Result<&str> {
        self.database_url
            .as_deref()
            .ok_or(SettingsError::NoDatabaseUrl)
    }

    /// The pool and the NOTIFY fallback polls of the PostgreSQL backend.
    pub fn postgres(&self) -> stepgraph_postgres::PgOptions {
        stepgraph_postgres::PgOptions {
            max_connections: self.max_connections,
            polls: stepgraph_postgres::FallbackPolls {
                queue: Duration::from_millis(self.queue_fallback_poll_ms.max(1)),
                wait: Duration::from_millis(self.wait_fallback_poll_ms.max(1)),
            },
        }
    }

    pub fn orchestrator(&self) -> stepgraph_engine::OrchestratorConfig {
        stepgraph_engine::OrchestratorConfig {
            concurrency: self.orchestrator.concurrency,
            visibility_timeout: Duration::from_millis(self.orchestrator.visibility_timeout_ms),
            resend_stranded_after: Some(Duration::from_millis(
                self.orchestrator.resend_stranded_after_ms,
            )),
            max_deliveries: self.max_deliveries,
            schedule_poll: Duration::from_millis(self.orchestrator.schedule_poll_ms.max(10)),
            handler_wait_timeout: (self.orchestrator.handler_wait_timeout_ms > 0)
                .then(|| Duration::from_millis(self.orchestrator.handler_wait_timeout_ms)),
            ..Default::default()
        }
    }

    /// `serve`'s orchestrator: [`Self::orchestrator`] that also removes
    /// expired tasks.
    pub fn serving_orchestrator(&self) -> stepgraph_engine::OrchestratorConfig {
        let r = &self.retention;
        stepgraph_engine::OrchestratorConfig {
            retention: Some(RetentionConfig {
                default: Retention {
                    ended: r.ended,
                    failed: r.failed,
                },
                archive: r.archive,
                every: Duration::from_millis(r.every_ms),
                batch: r.batch,
                partition: match r.partition {
                    Keep::For(d) => d,
                    Keep::Forever => RetentionConfig::default().partition,
                },
            }),
            ..self.orchestrator()
        }
    }

    pub fn breakers(&self) -> crate::BreakerConfig {
        crate::BreakerConfig {
            failure_threshold: self.worker.breaker_failure_threshold,
            cool_down: Duration::from_millis(self.worker.breaker_cool_down_ms),
        }
    }

    pub fn worker(&self) -> crate::WorkerConfig {
        crate::WorkerConfig {
            namespaces: self.worker.namespaces.clone(),
            concurrency: self.worker.concurrency,
            visibility_timeout: Duration::from_millis(self.worker.visibility_timeout_ms),
            default_step_timeout: Duration::from_millis(self.worker.default_step_timeout_ms),
            shutdown_grace: Duration::from_millis(self.worker.shutdown_grace_ms),
            eager_dispatch: self.worker.eager_dispatch,
            max_deliveries: self.max_deliveries,
            heartbeat: Duration::from_millis(self.worker.heartbeat_ms.max(1)),
            metrics_listen: self
                .worker
                .metrics_listen
                .as_deref()
                .and_then(|a| a.parse().ok()),
            shared_queues: true,
            ..Default::default()
        }
    }
}

/// A tokio runtime with `threads` threads: 0 is one per CPU core, 1 a
/// single-thread runtime.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    builder.enable_all().build()
}
