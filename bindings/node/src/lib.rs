//! `stepgraph.node`: the Node-API view of the foreign handler host, for
//! Node and Bun. Thin and mechanical: events and outcomes cross as JSON
//! text (the TypeScript side parses it, big integers as BigInt), the
//! blocking wait for events runs on libuv's thread pool and resolves a
//! Promise, and the other blocking operations (running a task, a benchmark,
//! shutdown) resolve theirs from the engine's threads. The event loop never
//! waits; `HostedEngine` and the host do the rest.

// The C ABI's `sg_*` functions, exported from this module too (bun:ffi
// opens it where no libstepgraph.so is shipped).
pub use stepgraph_cabi::*;

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Error, JsObject, Status, Task};
use napi_derive::napi;
use std::sync::Arc;
use std::time::Duration;
use stepgraph_worker::{
    Call, EngineOptions, HostError, HostedEngine, HostedError, StepEvent, StepResult,
};

/// The error JavaScript sees: `code` says which (an [`ErrorKind`]'s code,
/// or `InvalidArgument`), `message` says what; the TypeScript side makes
/// it the error class of that code.
fn failure(code: &str, message: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, format!("[{code}] {message}"))
}

fn host_failure(e: HostError) -> Error {
    failure(e.kind().code(), e)
}

fn engine_failure(e: HostedError) -> Error {
    failure(e.kind().code(), e)
}

fn step_result(event_id: i64, outcome: &str) -> napi::Result<StepResult> {
    serde_json::from_str(outcome).map_err(|e| {
        failure(
            "InvalidArgument",
            format!("outcome of event {event_id} is not a step outcome: {e}"),
        )
    })
}

#[napi]
pub struct NativeEngine {
    inner: Arc<HostedEngine>,
}

pub struct NextEvents {
    engine: Arc<HostedEngine>,
    max: usize,
    timeout: Duration,
}

impl Task for NextEvents {
    type Output = Vec<StepEvent>;
    type JsValue = String;

    fn compute(&mut self) -> napi::Result<Vec<StepEvent>> {
        self.engine
            .host()
            .next_events(self.max, self.timeout)
            .map_err(host_failure)
    }

    fn resolve(&mut self, _env: Env, events: Vec<StepEvent>) -> napi::Result<String> {
        serde_json::to_string(&events).map_err(|e| failure("Error", e))
    }
}

#[napi]
impl NativeEngine {
    /// `options` is JSON: see `EngineOptions` (an embedded engine, or a
    /// worker when `database_url` is given).
    #[napi(constructor)]
    pub fn new(options: String) -> napi::Result<NativeEngine> {
        let options: EngineOptions = serde_json::from_str(&options)
            .map_err(|e| failure("InvalidArgument", format!("engine options: {e}")))?;
        let inner = HostedEngine::open(options).map_err(engine_failure)?;
        Ok(NativeEngine {
            inner: Arc::new(inner),
        })
    }

    /// Resolves with up to `max` events (a JSON array) when some arrive, or
    /// an empty array after `timeout_ms`. `max` is the caller's free
    /// handler slots.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn next_events(&self, max: u32, timeout_ms: u32) -> AsyncTask<NextEvents> {
        AsyncTask::new(NextEvents {
            engine: self.inner.clone(),
            max: max as usize,
            timeout: Duration::from_millis(timeout_ms.into()),
        })
    }

    /// Reports the outcome (JSON) of event `event_id`. Waits only while the
    /// engine's completion buffer is full (it drains on its own thread).
    #[napi]
    pub fn complete(&self, event_id: i64, outcome: String) -> napi::Result<()> {
        let outcome = step_result(event_id, &outcome)?;
        self.inner
            .host()
            .complete(event_id as u64, outcome)
            .map_err(host_failure)
    }

    /// Reports the outcome (JSON) of event `event_id` and returns, without
    /// waiting, up to `max` next events (a JSON array, empty when none came
    /// at once: then wait with `nextEvents`). Run on the event loop's
    /// thread, the commit and the next step's dispatch need no other thread.
    /// Not while a `nextEvents` is out.
    #[napi]
    pub fn complete_and_next(
        &self,
        event_id: i64,
        outcome: String,
        max: u32,
    ) -> napi::Result<String> {
        let outcome = step_result(event_id, &outcome)?;
        let events = self
            .inner
            .host()
            .complete_and_next(event_id as u64, outcome, max as usize)
            .map_err(host_failure)?;
        serde_json::to_string(&events).map_err(|e| failure("Error", e))
    }

    /// Up to `max` events (a JSON array) without waiting, after running
    /// on this thread what is runnable when no other thread drives: called
    /// right after a `run` call, it takes the task's first events.
    #[napi]
    pub fn poll_events(&self, max: u32) -> napi::Result<String> {
        let events = self
            .inner
            .host()
            .poll_events(max as usize)
            .map_err(host_failure)?;
        serde_json::to_string(&events).map_err(|e| failure("Error", e))
    }

    /// Starts a blocking operation (JSON: `{"op": "run", ...}`,
    /// `{"op": "get_task", "task_id"}`, `{"op": "roundtrip", ...}`, `{"op": "stats"}` or `{"op": "shutdown"}`); the Promise
    /// resolves with its outcome as JSON text.
    #[napi(ts_return_type = "Promise<string>")]
    pub fn call(&self, env: Env, call: String) -> napi::Result<JsObject> {
        let call: Call = serde_json::from_str(&call)
            .map_err(|e| failure("InvalidArgument", format!("call: {e}")))?;
        let (deferred, promise) = env.create_deferred()?;
        self.inner.call(call, move |outcome| match outcome {
            Ok(value) => deferred
                .resolve(move |_| serde_json::to_string(&value).map_err(|e| failure("Error", e))),
            Err(e) => deferred.reject(engine_failure(e)),
        });
        Ok(promise)
    }
}
