//! `stepgraph._native`: the Python side's view of the foreign handler host.
//! Thin and mechanical: events and results cross as JSON text, every
//! blocking call releases the GIL, and `HostedEngine` and the host in
//! `stepgraph-worker` do the rest (credits, deadlines, breakers,
//! backpressure, the fork guard, graceful shutdown).

mod convert;
mod errors;

use errors::{error, host_error, internal};
use pyo3::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use stepgraph_worker::{HostedEngine, StepResult, Tuning, WorkerOptions};

/// The engine's allocator, as in the stepgraph binary (see its README):
/// for the Rust side only; the interpreter keeps its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An engine whose steps for the named handlers are run by Python threads:
/// embedded, or a worker against PostgreSQL (see `HostedEngine`).
// Frozen: handler threads use it concurrently, each without the GIL.
#[pyclass(module = "stepgraph._native", frozen)]
struct NativeEngine {
    inner: HostedEngine,
}

#[pymethods]
impl NativeEngine {
    /// Loads the templates in `templates_dir`; `handlers` are the names the
    /// Python side serves; with `builtin_handlers` the example Rust handlers
    /// of the fixtures run beside them (the Python ones take precedence).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (templates_dir, handlers, failure_threshold=5, cool_down_ms=30000, builtin_handlers=false))]
    fn embedded(
        py: Python<'_>,
        templates_dir: &str,
        handlers: Vec<String>,
        failure_threshold: u32,
        cool_down_ms: u64,
        builtin_handlers: bool,
    ) -> PyResult<Self> {
        let config = Tuning::new(failure_threshold, cool_down_ms);
        let dir = Path::new(templates_dir);
        let inner = py
            .allow_threads(|| HostedEngine::embedded(dir, &handlers, builtin_handlers, config))
            .map_err(error)?;
        Ok(NativeEngine { inner })
    }

    /// A worker for the steps of `namespaces` (default: every template's)
    /// in the PostgreSQL database at `database_url`; it orchestrates the
    /// results of its own steps, so it loads the templates too. `queue`
    /// None: `STEPGRAPH_QUEUE` (default `postgres`).
    #[staticmethod]
    #[pyo3(signature = (database_url, templates_dir, namespaces, handlers, concurrency=4, failure_threshold=5, cool_down_ms=30000, queue=None, builtin_handlers=false))]
    #[allow(clippy::too_many_arguments)]
    fn postgres(
        py: Python<'_>,
        database_url: &str,
        templates_dir: &str,
        namespaces: Vec<String>,
        handlers: Vec<String>,
        concurrency: usize,
        failure_threshold: u32,
        cool_down_ms: u64,
        queue: Option<String>,
        builtin_handlers: bool,
    ) -> PyResult<Self> {
        let config = Tuning::new(failure_threshold, cool_down_ms);
        let options = WorkerOptions {
            database_url: Some(database_url.to_string()),
            queue,
            namespaces,
            concurrency: Some(concurrency),
            language: "python".into(),
        };
        let inner = py
            .allow_threads(|| {
                let dir = Path::new(templates_dir);
                HostedEngine::worker(dir, &handlers, builtin_handlers, options, config)
            })
            .map_err(error)?;
        Ok(NativeEngine { inner })
    }

    /// Up to `max` events (dicts), waiting up to `timeout_ms` without the GIL.
    fn next_events(&self, py: Python<'_>, max: usize, timeout_ms: u64) -> PyResult<Vec<PyObject>> {
        let host = self.inner.host();
        let events = py
            .allow_threads(|| host.next_events(max, Duration::from_millis(timeout_ms)))
            .map_err(host_error)?;
        events
            .iter()
            .map(|e| convert::to_python(py, &serde_json::to_value(e).map_err(internal)?))
            .collect()
    }

    /// Reports an event's outcome: a dict `{"status": "success", "result":
    /// ...}` (or a failure, decision or batch). A result that is not JSON
    /// raises ValueError naming what is not; the event stays pending then.
    fn complete(&self, event_id: u64, outcome: &Bound<'_, PyAny>) -> PyResult<()> {
        let outcome: StepResult =
            serde_json::from_value(convert::from_python(outcome)?).map_err(|e| {
                internal(format!(
                    "outcome of event {event_id} is not a step outcome: {e}"
                ))
            })?;
        // It never waits: the GIL stays.
        self.inner
            .host()
            .complete(event_id, outcome)
            .map_err(host_error)
    }

    /// Benchmarks: runs `n` steps, one after another, through the handler
    /// `handler` this process serves, and returns the nanoseconds they took
    /// as measured in Rust (dispatch, the Python call, the completion).
    fn roundtrip(&self, py: Python<'_>, handler: &str, n: u64) -> PyResult<u64> {
        let took = py
            .allow_threads(|| self.inner.roundtrip(handler, n))
            .map_err(error)?;
        Ok(took.as_nanos() as u64)
    }

    /// Creates a task (at once, at `run_at` (RFC 3339) or `delay_ms` from
    /// now) and waits (without the GIL) for it; its view (without the
    /// audit trail) as JSON text.
    /// With `serve`, this thread runs handlers while it waits: `serve` is
    /// called (with the GIL) with a list of events to run and complete.
    #[pyo3(signature = (namespace, name, context, timeout_ms=300000, run_at=None, delay_ms=None, serve=None))]
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        py: Python<'_>,
        namespace: &str,
        name: &str,
        context: &str,
        timeout_ms: u64,
        run_at: Option<&str>,
        delay_ms: Option<u64>,
        serve: Option<PyObject>,
    ) -> PyResult<String> {
        let context: Value = serde_json::from_str(context)
            .map_err(|e| internal(format!("context is not JSON: {e}")))?;
        let request =
            stepgraph_worker::hosted::task_request(namespace, name, context, run_at, delay_ms)
                .map_err(error)?;
        let timeout = Duration::from_millis(timeout_ms);
        let Some(serve) = serve else {
            let report = py
                .allow_threads(|| self.inner.run(request, timeout))
                .map_err(error)?;
            return serde_json::to_string(&report).map_err(internal);
        };
        let mut failed: Option<PyErr> = None;
        let report = py.allow_threads(|| {
            self.inner.run_serving(request, timeout, |events| {
                Python::with_gil(|py| {
                    let served = events
                        .iter()
                        .map(|e| {
                            convert::to_python(py, &serde_json::to_value(e).map_err(internal)?)
                        })
                        .collect::<PyResult<Vec<PyObject>>>()
                        .and_then(|events| serve.call1(py, (events,)));
                    match served {
                        Ok(_) => true,
                        Err(e) => {
                            failed = Some(e);
                            false
                        }
                    }
                })
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        serde_json::to_string(&report.map_err(error)?).map_err(internal)
    }

    /// A task of the embedded engine, with its audit trail, as JSON text.
    fn get_task(&self, py: Python<'_>, task_id: &str) -> PyResult<String> {
        let view = py
            .allow_threads(|| self.inner.get_task(task_id))
            .map_err(error)?;
        serde_json::to_string(&view).map_err(internal)
    }

    /// What the host holds: `pending` (events out with the Python side).
    fn host_stats(&self, py: Python<'_>) -> PyResult<PyObject> {
        let stats = serde_json::to_value(self.inner.host().stats()).map_err(internal)?;
        convert::to_python(py, &stats)
    }

    /// Stops gracefully: no more events are handed out (waiting Python
    /// threads get StepgraphError), the handlers that are running finish
    /// and their results are recorded, then the host stops.
    fn shutdown(&self, py: Python<'_>) {
        py.allow_threads(|| self.inner.shutdown());
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeEngine>()?;
    errors::register(m)?;
    Ok(())
}
