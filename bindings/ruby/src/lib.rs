//! `Stepgraph::Native`: the Ruby side's view of the foreign handler host,
//! loaded by the `stepgraph` gem (`lib/stepgraph.rb`). Thin and mechanical:
//! events become Ruby Hashes and outcomes JSON values, every blocking call
//! runs without the GVL, and `HostedEngine` and the host in
//! `stepgraph-worker` do the rest (credits, deadlines, breakers,
//! backpressure, the fork guard, graceful shutdown).
//!
//! GC safety: nothing here keeps a Ruby object. Events are converted to
//! fresh Ruby values on the calling Ruby thread, outcomes to Rust values
//! before the GVL is released; the handlers themselves live in Ruby.

mod convert;
mod errors;

use errors::{error, host_error, internal};
use magnus::{function, method, prelude::*, Error, RArray, RHash, Ruby};
use std::ffi::c_void;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;
use stepgraph_worker::{HostedEngine, StepResult, Tuning, WorkerOptions};

/// The engine's allocator, as in the stepgraph binary (see its README):
/// for the Rust side only; the interpreter keeps its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A closure handed through Ruby's C API, and what it returned (or its panic).
struct Call<F, R> {
    f: Option<F>,
    result: Option<std::thread::Result<R>>,
}

impl<F: FnOnce() -> R, R> Call<F, R> {
    fn new(f: F) -> Call<F, R> {
        Call {
            f: Some(f),
            result: None,
        }
    }

    fn data(&mut self) -> *mut c_void {
        self as *mut Call<F, R> as *mut c_void
    }

    /// Runs the closure of the `Call` at `data`, catching a panic.
    unsafe extern "C" fn trampoline(data: *mut c_void) -> *mut c_void {
        // SAFETY: `data` is a `Call<F, R>`, alive for the whole call.
        let call = unsafe { &mut *(data as *mut Call<F, R>) };
        if let Some(f) = call.f.take() {
            call.result = Some(std::panic::catch_unwind(AssertUnwindSafe(f)));
        }
        std::ptr::null_mut()
    }
}

/// Runs `f` without the GVL (other Ruby threads run meanwhile). `f` must
/// not touch Ruby (but see [`with_gvl`]); a panic in it is caught and
/// becomes an error.
fn without_gvl<F, R>(ruby: &Ruby, f: F) -> Result<R, Error>
where
    F: FnOnce() -> R,
{
    let mut call = Call::new(f);
    // SAFETY: the trampoline only runs `f` (no Ruby calls) and returns;
    // without an unblocking function Ruby waits for it to return.
    unsafe {
        rb_sys::rb_thread_call_without_gvl(
            Some(Call::<F, R>::trampoline),
            call.data(),
            None,
            std::ptr::null_mut(),
        );
    }
    match call.result {
        Some(Ok(r)) => Ok(r),
        Some(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(internal(ruby, format!("internal error (panic): {message}")))
        }
        None => Err(internal(ruby, "the call without the GVL did not run")),
    }
}

/// Runs `f` with the GVL again, from inside [`without_gvl`] (a panic in it
/// is caught and becomes None).
fn with_gvl<F, R>(f: F) -> Option<R>
where
    F: FnOnce() -> R,
{
    let mut call = Call::new(f);
    // SAFETY: called on a Ruby thread that released the GVL in
    // `without_gvl`; the trampoline catches panics, and the Ruby calls in
    // `f` go through magnus, which rescues Ruby exceptions.
    unsafe {
        rb_sys::rb_thread_call_with_gvl(Some(Call::<F, R>::trampoline), call.data());
    }
    call.result.and_then(Result::ok)
}

/// An engine whose steps for the named handlers are run by Ruby threads.
#[magnus::wrap(class = "Stepgraph::Native::Engine", free_immediately, size)]
struct NativeEngine {
    inner: HostedEngine,
}

impl NativeEngine {
    /// `builtin`: the example Rust handlers of the fixtures run beside the
    /// Ruby ones (which take precedence).
    fn embedded(
        ruby: &Ruby,
        templates_dir: String,
        handlers: Vec<String>,
        failure_threshold: u32,
        cool_down_ms: u64,
        builtin: bool,
    ) -> Result<NativeEngine, Error> {
        let config = Tuning::new(failure_threshold, cool_down_ms);
        without_gvl(ruby, || {
            HostedEngine::embedded(Path::new(&templates_dir), &handlers, builtin, config)
        })?
        .map(|inner| NativeEngine { inner })
        .map_err(|e| error(ruby, e))
    }

    #[allow(clippy::too_many_arguments)]
    fn worker(
        ruby: &Ruby,
        database_url: String,
        queue: Option<String>,
        templates_dir: String,
        namespaces: Vec<String>,
        handlers: Vec<String>,
        concurrency: usize,
        failure_threshold: u32,
        cool_down_ms: u64,
        builtin: bool,
    ) -> Result<NativeEngine, Error> {
        let config = Tuning::new(failure_threshold, cool_down_ms);
        let options = WorkerOptions {
            database_url: Some(database_url),
            queue,
            namespaces,
            concurrency: Some(concurrency),
            language: "ruby".into(),
        };
        without_gvl(ruby, || {
            HostedEngine::worker(
                Path::new(&templates_dir),
                &handlers,
                builtin,
                options,
                config,
            )
        })?
        .map(|inner| NativeEngine { inner })
        .map_err(|e| error(ruby, e))
    }

    /// Up to `max` events (Hashes with String keys), waiting up to
    /// `timeout_ms` without the GVL.
    fn next_events(
        ruby: &Ruby,
        rb_self: &Self,
        max: usize,
        timeout_ms: u64,
    ) -> Result<RArray, Error> {
        let host = rb_self.inner.host();
        let events = without_gvl(ruby, || {
            host.next_events(max, Duration::from_millis(timeout_ms))
        })?
        .map_err(|e| host_error(ruby, e))?;
        let out = ruby.ary_new_capa(events.len());
        for e in &events {
            let value = serde_json::to_value(e).map_err(|e| internal(ruby, e))?;
            out.push(convert::to_ruby(ruby, &value)?)?;
        }
        Ok(out)
    }

    /// Reports an event's outcome (`{"status" => "success", "result" =>
    /// ...}`, a failure, decision or batch). A result that is not JSON
    /// raises TypeError naming what is not; the event stays pending then.
    fn complete(ruby: &Ruby, rb_self: &Self, event_id: u64, outcome: RHash) -> Result<(), Error> {
        let value = convert::from_ruby(ruby, outcome.as_value())?;
        let outcome: StepResult = serde_json::from_value(value).map_err(|e| {
            internal(
                ruby,
                format!("outcome of event {event_id} is not a step outcome: {e}"),
            )
        })?;
        let host = rb_self.inner.host();
        // It never waits: the GVL stays.
        host.complete(event_id, outcome)
            .map_err(|e| host_error(ruby, e))
    }

    /// Creates a task in the embedded engine and waits (without the GVL)
    /// for it; its view (without the audit trail) as a Hash. With `serve` (a Proc), this thread runs
    /// handlers while it waits: `serve` is called (with the GVL) with an
    /// Array of events to run and complete.
    #[allow(clippy::too_many_arguments)]
    fn run(
        ruby: &Ruby,
        rb_self: &Self,
        namespace: String,
        name: String,
        context: magnus::Value,
        timeout_ms: u64,
        run_at: Option<String>,
        delay_ms: Option<u64>,
        serve: Option<magnus::Value>,
    ) -> Result<magnus::Value, Error> {
        let context = convert::from_ruby(ruby, context)?;
        let request = stepgraph_worker::hosted::task_request(
            &namespace,
            &name,
            context,
            run_at.as_deref(),
            delay_ms,
        )
        .map_err(|e| error(ruby, e))?;
        let timeout = Duration::from_millis(timeout_ms);
        // `serve` stays referenced by this call's arguments (on Ruby's
        // stack) for as long as the wait lasts.
        let mut failed: Option<Error> = None;
        let report = without_gvl(ruby, || match serve {
            None => rb_self.inner.run(request, timeout),
            Some(serve) => rb_self.inner.run_serving(request, timeout, |events| {
                let served = with_gvl(|| {
                    // With the GVL, this is a Ruby thread.
                    let ruby = Ruby::get().ok()?;
                    let list = ruby.ary_new_capa(events.len());
                    let called = events
                        .iter()
                        .try_for_each(|e| {
                            let value = serde_json::to_value(e).map_err(|e| internal(&ruby, e))?;
                            list.push(convert::to_ruby(&ruby, &value)?)
                        })
                        .and_then(|()| serve.funcall::<_, _, magnus::Value>("call", (list,)));
                    Some(called.map(|_| ()))
                })
                .flatten();
                match served {
                    Some(Ok(())) => true,
                    Some(Err(e)) => {
                        failed = Some(e);
                        false
                    }
                    None => false,
                }
            }),
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let report = report.map_err(|e| error(ruby, e))?;
        let value = serde_json::to_value(&report).map_err(|e| internal(ruby, e))?;
        convert::to_ruby(ruby, &value)
    }

    /// Benchmarks: `n` steps through the Ruby handler `handler`, one after
    /// another; the nanoseconds they took, timed in Rust.
    fn roundtrip(ruby: &Ruby, rb_self: &Self, handler: String, n: u64) -> Result<u64, Error> {
        let took = without_gvl(ruby, || rb_self.inner.roundtrip(&handler, n))?
            .map_err(|e| error(ruby, e))?;
        Ok(took.as_nanos() as u64)
    }

    /// A task of the embedded engine, with its audit trail, as a Hash.
    fn get_task(ruby: &Ruby, rb_self: &Self, task_id: String) -> Result<magnus::Value, Error> {
        let view =
            without_gvl(ruby, || rb_self.inner.get_task(&task_id))?.map_err(|e| error(ruby, e))?;
        let value = serde_json::to_value(&view).map_err(|e| internal(ruby, e))?;
        convert::to_ruby(ruby, &value)
    }

    /// Events handed to Ruby and not yet completed.
    fn pending_count(&self) -> usize {
        self.inner.host().pending_count()
    }

    /// What the host holds, a Hash: `pending` (events out with the Ruby side).
    fn host_stats(ruby: &Ruby, rb_self: &Self) -> Result<magnus::Value, Error> {
        let stats =
            serde_json::to_value(rb_self.inner.host().stats()).map_err(|e| internal(ruby, e))?;
        convert::to_ruby(ruby, &stats)
    }

    /// `closed`, `open` or `half_open`.
    fn breaker_state(&self, handler: String) -> String {
        serde_json::to_value(self.inner.breaker_state(&handler))
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Stops gracefully: no more events are handed out (waiting threads get
    /// Stepgraph::Error), running handlers finish and are recorded, then the
    /// host stops.
    fn shutdown(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        without_gvl(ruby, || rb_self.inner.shutdown())
    }
}

#[magnus::init(name = "stepgraph_native")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let module = ruby.define_module("Stepgraph")?;
    let native = module.define_module("Native")?;
    let class = native.define_class("Engine", ruby.class_object())?;
    class.define_singleton_method("embedded", function!(NativeEngine::embedded, 5))?;
    class.define_singleton_method("worker", function!(NativeEngine::worker, 9))?;
    class.define_method("next_events", method!(NativeEngine::next_events, 2))?;
    class.define_method("complete", method!(NativeEngine::complete, 2))?;
    class.define_method("run", method!(NativeEngine::run, 7))?;
    class.define_method("get_task", method!(NativeEngine::get_task, 1))?;
    class.define_method("roundtrip", method!(NativeEngine::roundtrip, 2))?;
    class.define_method("pending_count", method!(NativeEngine::pending_count, 0))?;
    class.define_method("breaker_state", method!(NativeEngine::breaker_state, 1))?;
    class.define_method("host_stats", method!(NativeEngine::host_stats, 0))?;
    class.define_method("shutdown", method!(NativeEngine::shutdown, 0))?;
    Ok(())
}
