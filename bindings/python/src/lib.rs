//! `stepgraph._native`: the Python side's view of the foreign handler host.
//! Thin and mechanical: events and results cross as JSON text, every
//! blocking call releases the GIL, and the host in `stepgraph-worker` does
//! the rest (credits, deadlines, breakers, backpressure, the fork guard).

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stepgraph_core::{
    shutdown_channel, Orchestrator, OrchestratorConfig, PgBackend, Queue, ShutdownTrigger,
    StepOutcome, Store, StoreError, TaskRequest, TemplateRegistry,
};
use stepgraph_worker::{
    examples, Engine, EngineConfig, HandlerRegistry, Host, HostConfig, HostError, Worker,
    WorkerConfig,
};

create_exception!(
    _native,
    StepgraphError,
    PyException,
    "An error from the stepgraph engine."
);
create_exception!(
    _native,
    ForkedProcessError,
    StepgraphError,
    "The engine was created in another process (before a fork)."
);

fn error(e: impl std::fmt::Display) -> PyErr {
    StepgraphError::new_err(e.to_string())
}

fn host_error(e: HostError) -> PyErr {
    match e {
        HostError::Forked { .. } => ForkedProcessError::new_err(e.to_string()),
        other => error(other),
    }
}

/// An embedded engine (orchestrator, in-memory store and queue, worker)
/// whose steps for the named handlers are run by Python threads.
// Frozen: handler threads use it concurrently, each without the GIL.
#[pyclass(module = "stepgraph._native", frozen)]
struct NativeEngine {
    runtime: tokio::runtime::Runtime,
    engine: Mutex<Option<Arc<Engine>>>,
    /// A worker against PostgreSQL: its shutdown trigger and its task.
    worker: Mutex<Option<(ShutdownTrigger, tokio::task::JoinHandle<()>)>>,
    host: Arc<Host>,
}

fn host_config(
    completion_capacity: usize,
    failure_threshold: u32,
    cool_down_ms: u64,
) -> HostConfig {
    HostConfig {
        completion_capacity,
        failure_threshold,
        cool_down: Duration::from_millis(cool_down_ms),
        ..Default::default()
    }
}

/// The built-in Rust handlers, and the host's for the names Python serves.
fn registry(host: &Arc<Host>, names: &[String]) -> HandlerRegistry {
    let mut registry = examples::registry();
    for name in names {
        registry.register(name, host.handler(name));
    }
    registry
}

/// What both kinds of engine start from: the templates, the host, the
/// handler registry, and a runtime of their own.
fn prepare(
    templates_dir: &str,
    handlers: &[String],
    config: HostConfig,
) -> PyResult<(
    TemplateRegistry,
    Arc<Host>,
    HandlerRegistry,
    tokio::runtime::Runtime,
)> {
    let templates = TemplateRegistry::load_dir(Path::new(templates_dir)).map_err(error)?;
    let host = Host::new(config);
    let registry = registry(&host, handlers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(error)?;
    Ok((templates, host, registry, runtime))
}

#[pymethods]
impl NativeEngine {
    /// Loads the templates in `templates_dir`; `handlers` are the names the
    /// Python side serves (they take precedence over the built-in Rust
    /// example handlers of the same name).
    #[staticmethod]
    #[pyo3(signature = (templates_dir, handlers, completion_capacity=1024, failure_threshold=5, cool_down_ms=30000))]
    fn embedded(
        templates_dir: &str,
        handlers: Vec<String>,
        completion_capacity: usize,
        failure_threshold: u32,
        cool_down_ms: u64,
    ) -> PyResult<Self> {
        let (templates, host, registry, runtime) = prepare(
            templates_dir,
            &handlers,
            host_config(completion_capacity, failure_threshold, cool_down_ms),
        )?;
        let config = EngineConfig {
            credits: Some(host.credits()),
            ..Default::default()
        };
        let engine = {
            let _guard = runtime.enter();
            Engine::embedded(templates, registry, config)
        };
        Ok(NativeEngine {
            runtime,
            engine: Mutex::new(Some(Arc::new(engine))),
            worker: Mutex::new(None),
            host,
        })
    }

    /// A worker for the steps of `namespaces` (default: every template's)
    /// in the PostgreSQL database at `database_url`; it orchestrates the
    /// results of its own steps, so it loads the templates too.
    #[staticmethod]
    #[pyo3(signature = (database_url, templates_dir, namespaces, handlers, concurrency=4, completion_capacity=1024, failure_threshold=5, cool_down_ms=30000))]
    #[allow(clippy::too_many_arguments)]
    fn postgres(
        py: Python<'_>,
        database_url: &str,
        templates_dir: &str,
        namespaces: Vec<String>,
        handlers: Vec<String>,
        concurrency: usize,
        completion_capacity: usize,
        failure_threshold: u32,
        cool_down_ms: u64,
    ) -> PyResult<Self> {
        let (templates, host, registry, runtime) = prepare(
            templates_dir,
            &handlers,
            host_config(completion_capacity, failure_threshold, cool_down_ms),
        )?;
        let credits = host.credits();
        let worker = py.allow_threads(|| {
            runtime.block_on(async {
                let pg = PgBackend::connect(database_url, 10).await?;
                pg.migrate().await?;
                let store: Arc<dyn Store> = Arc::new(pg.store(true));
                let queue: Arc<dyn Queue> = Arc::new(pg.queue());
                let namespaces = if namespaces.is_empty() {
                    templates.namespaces()
                } else {
                    namespaces
                };
                let orchestrator = Arc::new(Orchestrator::new(
                    store.clone(),
                    queue.clone(),
                    Arc::new(templates),
                    OrchestratorConfig::default(),
                ));
                let config = WorkerConfig {
                    namespaces,
                    concurrency: concurrency.max(1),
                    ..Default::default()
                };
                let worker = Worker::new(store, queue, Arc::new(registry), config)
                    .with_inline_orchestration(orchestrator)
                    .with_credits(credits);
                let (trigger, shutdown) = shutdown_channel();
                let task = tokio::spawn(Arc::new(worker).run(shutdown));
                Ok::<_, StoreError>((trigger, task))
            })
        });
        Ok(NativeEngine {
            runtime,
            engine: Mutex::new(None),
            worker: Mutex::new(Some(worker.map_err(error)?)),
            host,
        })
    }

    /// Up to `max` events (JSON text), waiting up to `timeout_ms` without the GIL.
    fn next_events(&self, py: Python<'_>, max: usize, timeout_ms: u64) -> PyResult<Vec<String>> {
        let host = self.host.clone();
        let events = py
            .allow_threads(move || host.next_events(max, Duration::from_millis(timeout_ms)))
            .map_err(host_error)?;
        events
            .iter()
            .map(|e| serde_json::to_string(e).map_err(error))
            .collect()
    }

    /// Reports an event's result (JSON text of a step outcome).
    fn complete(&self, py: Python<'_>, event_id: u64, result: &str) -> PyResult<()> {
        let outcome: StepOutcome = serde_json::from_str(result).map_err(|e| {
            error(format!(
                "result of event {event_id} is not a step outcome: {e}"
            ))
        })?;
        let host = self.host.clone();
        py.allow_threads(move || host.complete(event_id, outcome))
            .map_err(host_error)
    }

    /// Creates a task and waits (without the GIL) for it; its report as JSON text.
    #[pyo3(signature = (namespace, name, context, timeout_ms=300000))]
    fn run(
        &self,
        py: Python<'_>,
        namespace: &str,
        name: &str,
        context: &str,
        timeout_ms: u64,
    ) -> PyResult<String> {
        let engine = self.engine.lock().map_err(error)?.clone().ok_or_else(|| {
            error(
                "no embedded engine here (shut down, or a worker: create tasks over the HTTP API)",
            )
        })?;
        let context: Value = serde_json::from_str(context)
            .map_err(|e| error(format!("context is not JSON: {e}")))?;
        let request = TaskRequest::new(namespace, name, context);
        let report = py.allow_threads(|| {
            self.runtime.block_on(async {
                let created = engine.submit(request).await?;
                engine
                    .wait(created.task_id, Duration::from_millis(timeout_ms))
                    .await
            })
        });
        let report = report.map_err(error)?;
        serde_json::to_string(&report).map_err(error)
    }

    /// Stops the engine or worker; waiting Python threads are released.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let engine = self.engine.lock().map_err(error)?.take();
        let worker = self.worker.lock().map_err(error)?.take();
        self.host.shutdown();
        py.allow_threads(|| {
            // Tasks still being waited for hold the engine; their waits end with it.
            if let Some(Ok(engine)) = engine.map(Arc::try_unwrap) {
                self.runtime.block_on(engine.shutdown());
            }
            if let Some((trigger, task)) = worker {
                trigger.trigger();
                let _ = self.runtime.block_on(task);
            }
        });
        Ok(())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeEngine>()?;
    m.add("StepgraphError", m.py().get_type::<StepgraphError>())?;
    m.add(
        "ForkedProcessError",
        m.py().get_type::<ForkedProcessError>(),
    )?;
    Ok(())
}
