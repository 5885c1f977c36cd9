//! What every binding drives: an engine whose steps for some handler names
//! are run by another language through a [`Host`], on the host's runtime
//! (driven by the language side's waiting thread). Either embedded (orchestrator, in-memory store and queue, and a
//! worker, for `run`) or a worker against PostgreSQL (tasks come from
//! `stepgraph serve`). Every method blocks: a binding calls them with its
//! interpreter lock released.

use crate::breaker::{BreakerState, Breakers};
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::error::HostedError;
use crate::handler::HandlerRegistry;
use crate::host::Host;
use crate::runtime::WorkerConfig;
use crate::{examples, roundtrip};
use parking_lot::Mutex;
use serde_json::Value;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_engine::{
    shutdown_channel, ShutdownTrigger, TaskId, TaskRequest, TaskView, TemplateRegistry,
};
use tokio::task::JoinHandle;

mod options;
pub use options::{Call, EngineOptions, Tuning, WorkerOptions};

pub struct HostedEngine {
    engine: Mutex<Option<Arc<Engine>>>,
    /// A worker against PostgreSQL: its shutdown trigger and its task.
    worker: Mutex<Option<(ShutdownTrigger, JoinHandle<()>)>>,
    host: Arc<Host>,
    /// The breakers of every handler the engine runs, foreign or Rust.
    breakers: Arc<Breakers>,
    /// How long a shutdown waits in all for the handlers still running
    /// (the worker's `shutdown_grace_ms`).
    grace: Duration,
}

/// The templates, the host, the handler registry (the host's for the names
/// the language side serves, and with `builtin` the example Rust handlers
/// of the fixtures beside them, which the language's take precedence over;
/// with the tuning's breakers).
fn prepare(
    templates_dir: &Path,
    handlers: &[String],
    builtin: bool,
    tuning: Tuning,
) -> Result<(TemplateRegistry, Arc<Host>, HandlerRegistry), HostedError> {
    let templates = TemplateRegistry::load_dir(templates_dir)
        .map_err(|e| HostedError::Config(e.to_string()))?;
    let host = Host::new(tuning.host);
    let mut registry = if builtin {
        examples::registry()
    } else {
        HandlerRegistry::new()
    }
    .with_breakers(tuning.breakers);
    for name in handlers {
        registry.register(name, host.handler(name));
    }
    Ok((templates, host, registry))
}

impl HostedEngine {
    /// Loads the templates in `templates_dir`; `handlers` are the names the
    /// language side serves; with `builtin` the example Rust handlers of the
    /// fixtures run beside them.
    pub fn embedded(
        templates_dir: &Path,
        handlers: &[String],
        builtin: bool,
        tuning: Tuning,
    ) -> Result<HostedEngine, HostedError> {
        crate::logging::init(false).map_err(HostedError::Config)?;
        crate::telemetry::init_from_env("stepgraph-embedded").map_err(HostedError::Config)?;
        let (templates, host, registry) = prepare(templates_dir, handlers, builtin, tuning)?;
        // Nothing else runs this engine's steps: a step nobody serves would
        // only fail when it runs.
        let missing = registry.missing_for(&templates, None);
        if !missing.is_empty() {
            return Err(HostedError::Config(format!(
                "no handler is registered for {} of the templates in {}: register {}, or load only the templates this engine runs{}",
                if missing.len() == 1 { "a step" } else { "steps" },
                templates_dir.display(),
                missing.join("; "),
                if builtin { "" } else { " (the fixtures' example Rust handlers come with the builtin handlers option)" },
            )));
        }
        let breakers = registry.breakers().clone();
        // Without foreign handlers nothing asks for work: the Rust ones run freely.
        let config = EngineConfig {
            credits: (!handlers.is_empty()).then(|| host.credits()),
            ..Default::default()
        };
        let engine = {
            let _guard = host.runtime()?.enter();
            Engine::embedded(templates, registry, config)
        };
        Ok(HostedEngine {
            engine: Mutex::new(Some(Arc::new(engine))),
            worker: Mutex::new(None),
            host,
            breakers,
            grace: WorkerConfig::default().shutdown_grace,
        })
    }

    /// A worker for the steps of `options.namespaces` in PostgreSQL; it
    /// orchestrates the results of its own steps, so it loads the templates
    /// too. Its settings are those of every stepgraph process (the
    /// `STEPGRAPH_*` variables: the queue, its AMQP prefix, the pool, the
    /// worker's timeouts) with `options` over them.
    pub fn worker(
        templates_dir: &Path,
        handlers: &[String],
        builtin: bool,
        options: WorkerOptions,
        tuning: Tuning,
    ) -> Result<HostedEngine, HostedError> {
        let settings = options.settings()?;
        // A worker's events go where `stepgraph worker`'s do (stderr, at info).
        crate::logging::init(true).map_err(HostedError::Config)?;
        crate::telemetry::init_from_env(&format!("stepgraph-worker-{}", options.language))
            .map_err(HostedError::Config)?;
        let (templates, host, registry) = prepare(templates_dir, handlers, builtin, tuning)?;
        let breakers = registry.breakers().clone();
        let credits = host.credits();
        let worker = host.block_on(async {
            let worker =
                crate::backend::connect_worker(&settings, templates, registry, Some(credits))
                    .await?
                    .in_language(&options.language);
            let (trigger, shutdown) = shutdown_channel();
            let task = tokio::spawn(Arc::new(worker).run(shutdown));
            Ok::<_, HostedError>((trigger, task))
        })??;
        Ok(HostedEngine {
            engine: Mutex::new(None),
            worker: Mutex::new(Some(worker)),
            host,
            breakers,
            grace: settings.worker().shutdown_grace,
        })
    }

    /// An embedded engine, or a worker when `options.database_url` is set.
    pub fn open(options: EngineOptions) -> Result<HostedEngine, HostedError> {
        let config = Tuning::new(options.failure_threshold, options.cool_down_ms);
        match options.database_url {
            None => HostedEngine::embedded(
                &options.templates_dir,
                &options.handlers,
                options.builtin_handlers,
                config,
            ),
            Some(database_url) => HostedEngine::worker(
                &options.templates_dir,
                &options.handlers,
                options.builtin_handlers,
                WorkerOptions {
                    database_url: Some(database_url),
                    queue: options.queue,
                    namespaces: options.namespaces,
                    concurrency: options.concurrency,
                    language: options.language,
                },
                config,
            ),
        }
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The state of `handler`'s circuit breaker.
    pub fn breaker_state(&self, handler: &str) -> BreakerState {
        self.breakers.state(handler)
    }

    /// Creates a task in the embedded engine (delayed, if `request` says
    /// so) and waits for it to end; its view without the audit trail (see
    /// [`HostedEngine::get_task`]). The task runs on the host's runtime:
    /// this thread only waits, the language side's drives.
    pub fn run(&self, request: TaskRequest, timeout: Duration) -> Result<TaskView, HostedError> {
        let engine = self.engine.lock().clone().ok_or(HostedError::NoEngine)?;
        let task = async move { submit_and_wait(&engine, request, timeout).await };
        let task = match self.host.drive_if_native(task) {
            Ok(report) => return report.map_err(HostedError::from),
            Err(task) => task,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.host.runtime()?.spawn(async move {
            let _ = tx.send(task.await);
        });
        rx.recv()
            .map_err(|_| HostedError::from(crate::host::HostError::Closed))?
            .map_err(HostedError::from)
    }

    /// [`HostedEngine::run`], with the waiting thread running handlers too:
    /// `serve` gets the events of this engine's steps that come while it
    /// waits (it runs their handlers and completes them, and returns false
    /// to stop waiting). While it waits, this thread drives the engine, so
    /// a task whose steps it runs crosses no other thread. A handler run
    /// here cannot be interrupted: when one returns after `timeout`, the
    /// wait ends there with the timeout error (whatever the task's state).
    pub fn run_serving(
        &self,
        request: TaskRequest,
        timeout: Duration,
        mut serve: impl FnMut(Vec<crate::host::StepEvent>) -> bool,
    ) -> Result<TaskView, HostedError> {
        let engine = self.engine.lock().clone().ok_or(HostedError::NoEngine)?;
        let deadline = std::time::Instant::now() + timeout;
        let created = Arc::new(Mutex::new(None));
        let mut task = Box::pin({
            let (engine, created) = (engine.clone(), created.clone());
            async move {
                let task_id = engine.submit(request).await?.task_id;
                *created.lock() = Some(task_id);
                engine.wait_task(task_id, timeout).await?;
                engine.view(task_id, false).await
            }
        });
        loop {
            let events = match self.host.serve(&mut task)? {
                crate::host::Served::Done(report) => return report.map_err(HostedError::from),
                crate::host::Served::Events(events) => events,
            };
            if events.is_empty() {
                continue;
            }
            if !serve(events) {
                return Err(HostedError::Internal(
                    "the caller stopped serving the task's events".into(),
                ));
            }
            let task_id = *created.lock();
            if let Some(task_id) = task_id.filter(|_| std::time::Instant::now() >= deadline) {
                let state = match self
                    .host
                    .block_on(engine.wait_task(task_id, Duration::ZERO))?
                {
                    Ok(task) => task.state,
                    Err(EngineError::Timeout { state, .. }) => state,
                    Err(e) => return Err(e.into()),
                };
                return Err(EngineError::Timeout {
                    task_id,
                    timeout,
                    state,
                }
                .into());
            }
        }
    }

    /// A task of the embedded engine as it is now, with its audit trail.
    pub fn get_task(&self, task_id: &str) -> Result<TaskView, HostedError> {
        let engine = self.engine.lock().clone().ok_or(HostedError::NoEngine)?;
        let task_id = parse_task_id(task_id)?;
        let view = async move { engine.view(task_id, true).await };
        match self.host.drive_if_native(view) {
            Ok(view) => view.map_err(HostedError::from),
            Err(view) => self.host.block_on(view)?.map_err(HostedError::from),
        }
    }

    /// Runs `call` without blocking the caller and hands `reply` its outcome
    /// (JSON) on another thread: the caller's own thread stays free to run
    /// the handlers the call waits for.
    pub fn call(
        self: &Arc<Self>,
        call: Call,
        reply: impl FnOnce(Result<Value, HostedError>) + Send + 'static,
    ) {
        match call {
            Call::Run {
                namespace,
                name,
                context,
                timeout_ms,
                run_at,
                delay_ms,
            } => {
                let request =
                    match task_request(&namespace, &name, context, run_at.as_deref(), delay_ms) {
                        Ok(r) => r,
                        Err(e) => return reply(Err(e)),
                    };
                let timeout = Duration::from_millis(timeout_ms);
                self.spawn_on_engine(reply, move |engine| async move {
                    submit_and_wait(&engine, request, timeout).await
                });
            }
            Call::GetTask { task_id } => {
                let task_id = match parse_task_id(&task_id) {
                    Ok(id) => id,
                    Err(e) => return reply(Err(e)),
                };
                self.spawn_on_engine(reply, move |engine| async move {
                    engine.view(task_id, true).await
                });
            }
            call => {
                let this = self.clone();
                // They block a thread for as long as the language side's handlers take.
                std::thread::spawn(move || {
                    reply(match call {
                        Call::Roundtrip { handler, n } => this
                            .roundtrip(&handler, n)
                            .map(|took| Value::from(took.as_nanos() as u64)),
                        Call::Stats => serde_json::to_value(this.host.stats())
                            .map_err(|e| HostedError::Internal(e.to_string())),
                        Call::Shutdown => {
                            this.shutdown();
                            Ok(Value::Null)
                        }
                        Call::Run { .. } | Call::GetTask { .. } => {
                            unreachable!("the engine's calls run on its runtime")
                        }
                    })
                });
            }
        }
    }

    /// Runs `op` on the embedded engine, as a task of the host's runtime
    /// (which the language side drives), and replies with the view it
    /// comes to, as JSON.
    fn spawn_on_engine<F, Fut>(
        &self,
        reply: impl FnOnce(Result<Value, HostedError>) + Send + 'static,
        op: F,
    ) where
        F: FnOnce(Arc<Engine>) -> Fut,
        Fut: Future<Output = Result<TaskView, EngineError>> + Send + 'static,
    {
        let Some(engine) = self.engine.lock().clone() else {
            return reply(Err(HostedError::NoEngine));
        };
        let runtime = match self.host.runtime() {
            Ok(r) => r,
            Err(e) => return reply(Err(e.into())),
        };
        let op = op(engine);
        runtime.spawn(async move {
            reply(op.await.map_err(HostedError::from).and_then(|view| {
                serde_json::to_value(view).map_err(|e| HostedError::Internal(e.to_string()))
            }));
        });
    }

    /// Benchmarks: `n` steps, one after another, through the handler
    /// `handler` of the language side (see [`roundtrip::roundtrip`]).
    pub fn roundtrip(&self, handler: &str, n: u64) -> Result<Duration, HostedError> {
        let runtime = self.host.runtime()?;
        roundtrip::roundtrip(&runtime, Arc::new(self.host.handler(handler)), handler, n)
            .map_err(HostedError::Internal)
    }

    /// Stops gracefully: no more events are handed out (waiting callers of
    /// `next_events` get an error), the handlers that are running finish
    /// and their results are recorded (up to the worker's grace period),
    /// then the host stops.
    pub fn shutdown(&self) {
        let deadline = std::time::Instant::now() + self.grace;
        let engine = self.engine.lock().take();
        let worker = self.worker.lock().take();
        self.host.drain();
        // `run` calls still waiting hold the engine; their waits end with it.
        if let Some(Ok(engine)) = engine.map(Arc::try_unwrap) {
            let _ = self.host.block_on(engine.shutdown());
        }
        if let Some((trigger, task)) = worker {
            trigger.trigger();
            let _ = self.host.block_on(task);
        }
        // The steps of `run` calls still waiting elsewhere finish too, within
        // the same grace: what outlives it is abandoned and redelivered.
        self.host
            .wait_idle(deadline.saturating_duration_since(std::time::Instant::now()));
        self.host.shutdown();
        stepgraph_engine::trace::flush();
    }
}

impl Drop for HostedEngine {
    /// Without a `shutdown` first, the steps still running are abandoned
    /// (and redelivered, in a worker). The runtime lives until here, so
    /// that `run`s still waiting at `shutdown` get their task's end.
    fn drop(&mut self) {
        self.host.shutdown();
        self.host.release();
    }
}

/// What a language's `run` asks for: a task, started at once, at `run_at`
/// (RFC 3339) or `delay_ms` from now. A `run_at` that is not a time is an
/// invalid request naming it.
pub fn task_request(
    namespace: &str,
    name: &str,
    context: Value,
    run_at: Option<&str>,
    delay_ms: Option<u64>,
) -> Result<TaskRequest, HostedError> {
    let run_at = run_at
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| {
                    let why = format!("run_at must be an RFC 3339 time ({t:?}: {e})");
                    HostedError::Engine(EngineError::Orchestrator(
                        stepgraph_engine::OrchestratorError::InvalidRequest(why),
                    ))
                })
        })
        .transpose()?;
    Ok(TaskRequest {
        run_at,
        delay_ms,
        ..TaskRequest::new(namespace, name, context)
    })
}

fn parse_task_id(id: &str) -> Result<TaskId, HostedError> {
    id.parse()
        .map_err(|e| HostedError::Config(format!("{id:?} is not a task id (a UUID): {e}")))
}

/// Creates a task in `engine` and waits for it to end.
async fn submit_and_wait(
    engine: &Engine,
    request: TaskRequest,
    timeout: Duration,
) -> Result<TaskView, EngineError> {
    let created = engine.submit(request).await?;
    engine.wait_task(created.task_id, timeout).await?;
    engine.view(created.task_id, false).await
}
