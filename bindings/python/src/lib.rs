//! `stepgraph._native`: the Python side's view of the foreign handler host.
//! Thin and mechanical: events and results cross as JSON text, every
//! blocking call releases the GIL, and the host in `stepgraph-worker` does
//! the rest (credits, deadlines, breakers, backpressure, the fork guard).

mod convert;

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
    examples, roundtrip, Engine, EngineConfig, HandlerRegistry, Host, HostConfig, HostError,
    Worker, WorkerConfig,
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
        // Without Python handlers nothing asks for work: the Rust ones run freely.
        let config = EngineConfig {
            credits: (!handlers.is_empty()).then(|| host.credits()),
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

    /// Up to `max` events (dicts), waiting up to `timeout_ms` without the GIL.
    fn next_events(&self, py: Python<'_>, max: usize, timeout_ms: u64) -> PyResult<Vec<PyObject>> {
        let host = self.host.clone();
        let events = py
            .allow_threads(move || host.next_events(max, Duration::from_millis(timeout_ms)))
            .map_err(host_error)?;
        events
            .iter()
            .map(|e| convert::to_python(py, &serde_json::to_value(e).map_err(error)?))
            .collect()
    }

    /// Reports an event's outcome: a dict `{"status": "success", "result":
    /// ...}` (or a failure, decision or batch). A result that is not JSON
    /// raises ValueError naming what is not; the event stays pending then.
    fn complete(&self, py: Python<'_>, event_id: u64, outcome: &Bound<'_, PyAny>) -> PyResult<()> {
        let outcome: StepOutcome =
            serde_json::from_value(convert::from_python(outcome)?).map_err(|e| {
                error(format!(
                    "outcome of event {event_id} is not a step outcome: {e}"
                ))
            })?;
        let host = self.host.clone();
        py.allow_threads(move || host.complete(event_id, outcome))
            .map_err(host_error)
    }

    /// Benchmarks: runs `n` steps, one after another, through the handler
    /// `handler` this process serves, and returns the nanoseconds they took
    /// as measured in Rust (dispatch, the Python call, the completion).
    fn roundtrip(&self, py: Python<'_>, handler: &str, n: u64) -> PyResult<u64> {
        let foreign = self.host.handler(handler);
        let took = py
            .allow_threads(|| roundtrip::roundtrip(&foreign, handler, n))
            .map_err(error)?;
        Ok(took.as_nanos() as u64)
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

    /// Stops the engine or worker gracefully: no more events are handed
    /// out (waiting Python threads get StepgraphError), the handlers that
    /// are running finish and their results are recorded (up to the
    /// worker's grace period), then the host stops.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let engine = self.engine.lock().map_err(error)?.take();
        let worker = self.worker.lock().map_err(error)?.take();
        self.host.drain();
        py.allow_threads(|| {
            // Tasks still being waited for hold the engine; their waits end with it.
            if let Some(Ok(engine)) = engine.map(Arc::try_unwrap) {
                self.runtime.block_on(engine.shutdown());
            }
            if let Some((trigger, task)) = worker {
                trigger.trigger();
                let _ = self.runtime.block_on(task);
            }
            // Steps of `run` calls still waiting elsewhere: their handlers finish too.
            self.host.wait_idle(WorkerConfig::default().shutdown_grace);
            self.host.shutdown();
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
