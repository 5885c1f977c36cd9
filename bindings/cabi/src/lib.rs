//! The C ABI of the foreign handler host: what Bun's `bun:ffi` (and any C
//! caller) drives. Thin and mechanical, like the other bindings; the
//! conventions are the C bridges' usual ones:
//!
//! - engines are opaque `u64` handles, never pointers;
//! - input crosses as (pointer, length) byte buffers holding UTF-8 JSON,
//!   never as NUL-terminated strings;
//! - output is an [`SgBuffer`] the library allocated and the caller owns,
//!   released with [`sg_buffer_free`], the one free function;
//! - every function returns an [`SgStatus`]; after a failure,
//!   [`sg_last_error`] gives the calling thread the message;
//! - no export lets a panic cross into the caller.
//!
//! Two calls block: [`sg_next_events`] (the language side pulls steps) and
//! [`sg_next_replies`] (it collects the outcomes of [`sg_call`]s: running a
//! task, a benchmark, a graceful shutdown). A JavaScript caller makes them
//! from a worker thread of its own, so its event loop never waits and no
//! callback is ever called from a Rust thread.

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use stepgraph_worker::{
    Call, EngineOptions, ErrorKind, HostError, HostedEngine, HostedError, StepResult,
};

/// The engine's allocator, as in the stepgraph binary (see its README):
/// for the Rust side only, here and in the Node-API module that links this
/// crate; the runtime keeps its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What every function returns.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SgStatus {
    Ok = 0,
    /// The engine failed; the message says how.
    Error = 1,
    /// An argument is malformed (not UTF-8, not the JSON expected, a null pointer).
    InvalidArgument = 2,
    /// No engine has this handle (never created, or freed).
    UnknownHandle = 3,
    /// `sg_complete` for an event that is not pending (timed out, say): its result is refused.
    NotPending = 4,
    /// The engine is shutting down or shut down.
    Closed = 5,
    /// The engine was created in the parent of this forked process.
    Forked = 6,
    /// A bug: the library panicked; the message has the panic's.
    Panic = 7,
    /// Options, `STEPGRAPH_*` settings or templates that cannot work.
    Config = 8,
    /// No template of that namespace and name (and version).
    UnknownTemplate = 9,
    /// The task context does not match the template's `input_schema`.
    InvalidContext = 10,
    /// The task did not end in the time given.
    Timeout = 11,
    /// A concurrent change won, or a key is taken.
    Conflict = 12,
    /// The database or the message broker failed or cannot be reached.
    Unavailable = 13,
    /// No task with that id.
    TaskNotFound = 14,
}

impl SgStatus {
    /// The status of each kind of engine error.
    fn of(kind: ErrorKind) -> SgStatus {
        match kind {
            ErrorKind::Config => SgStatus::Config,
            ErrorKind::UnknownTemplate => SgStatus::UnknownTemplate,
            ErrorKind::InvalidContext => SgStatus::InvalidContext,
            ErrorKind::Timeout => SgStatus::Timeout,
            ErrorKind::Conflict => SgStatus::Conflict,
            ErrorKind::Unavailable => SgStatus::Unavailable,
            ErrorKind::TaskNotFound => SgStatus::TaskNotFound,
            ErrorKind::Forked => SgStatus::Forked,
            ErrorKind::Closed => SgStatus::Closed,
            ErrorKind::NotPending => SgStatus::NotPending,
            ErrorKind::Internal => SgStatus::Error,
        }
    }
}

/// A byte buffer the library allocated; the caller owns it and releases it
/// with [`sg_buffer_free`] exactly once. `ptr` is null only when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SgBuffer {
    pub ptr: *mut u8,
    pub len: usize,
}

struct Failure {
    status: SgStatus,
    message: String,
}

impl Failure {
    fn new(status: SgStatus, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Failure {
        Failure::new(SgStatus::of(e.kind()), e.to_string())
    }
}

impl From<HostedError> for Failure {
    fn from(e: HostedError) -> Failure {
        Failure::new(SgStatus::of(e.kind()), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

static BUFFERS_LIVE: AtomicI64 = AtomicI64::new(0);

/// Runs an export's body: its status, with the message kept for
/// [`sg_last_error`] on failure, and a panic turned into [`SgStatus::Panic`].
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> i32 {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return SgStatus::Ok as i32,
        Ok(Err(failure)) => failure,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Failure::new(SgStatus::Panic, format!("stepgraph panicked: {message}"))
        }
    };
    LAST_ERROR.with(|e| *e.borrow_mut() = failure.message);
    failure.status as i32
}

fn owned(bytes: Vec<u8>) -> SgBuffer {
    if bytes.is_empty() {
        return SgBuffer {
            ptr: std::ptr::null_mut(),
            len: 0,
        };
    }
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    BUFFERS_LIVE.fetch_add(1, Ordering::SeqCst);
    SgBuffer {
        ptr: Box::into_raw(boxed).cast::<u8>(),
        len,
    }
}

/// # Safety
/// `ptr` is null or points at `len` readable bytes for the call's duration.
unsafe fn input<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::new(
            SgStatus::InvalidArgument,
            format!("{what}: null pointer with length {len}"),
        ));
    }
    Ok(std::slice::from_raw_parts(ptr, len))
}

fn out<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller passes a writable T or null, which is refused.
    unsafe { ptr.as_mut() }.ok_or_else(|| {
        Failure::new(
            SgStatus::InvalidArgument,
            format!("{what}: null output pointer"),
        )
    })
}

fn json_input<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Failure> {
    serde_json::from_slice(bytes)
        .map_err(|e| Failure::new(SgStatus::InvalidArgument, format!("{what}: {e}")))
}

fn step_outcome(event_id: u64, bytes: &[u8]) -> Result<StepResult, Failure> {
    json_input(
        bytes,
        &format!("outcome of event {event_id} is not a step outcome"),
    )
}

enum Reply {
    Done(u64, Result<Value, HostedError>),
    /// The engine was freed: wakes every waiter in `sg_next_replies`.
    Closed,
}

struct Entry {
    engine: Arc<HostedEngine>,
    next_ticket: AtomicU64,
    replies: (Sender<Reply>, Receiver<Reply>),
}

static ENGINES: LazyLock<Mutex<HashMap<u64, Arc<Entry>>>> = LazyLock::new(Default::default);
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

fn unknown_handle(handle: u64) -> Failure {
    Failure::new(
        SgStatus::UnknownHandle,
        format!("no stepgraph engine has handle {handle} (never created, or freed)"),
    )
}

fn entry(handle: u64) -> Result<Arc<Entry>, Failure> {
    ENGINES
        .lock()
        .get(&handle)
        .cloned()
        .ok_or_else(|| unknown_handle(handle))
}

/// `value` as a JSON buffer the caller owns.
fn json_output(value: &impl serde::Serialize, what: &str) -> Result<SgBuffer, Failure> {
    serde_json::to_vec(value)
        .map(owned)
        .map_err(|e| Failure::new(SgStatus::Error, format!("encoding {what}: {e}")))
}

/// Creates an engine from `options` (JSON: `templates_dir`, `handlers`, and
/// optionally `failure_threshold`, `cool_down_ms`,
/// `builtin_handlers` (the example Rust handlers beside `handlers`); with
/// `database_url`, and optionally `queue`, `namespaces`, `concurrency`, a
/// worker against PostgreSQL instead of an embedded engine, its other
/// settings from the `STEPGRAPH_*` variables) and writes its handle to
/// `*handle`. A failure's status names its kind (`Config`,
/// `UnknownTemplate`, `Unavailable`, ...).
///
/// # Safety
/// `options` points at `options_len` readable bytes; `handle` is writable.
#[no_mangle]
pub unsafe extern "C" fn sg_engine_new(
    options: *const u8,
    options_len: usize,
    handle: *mut u64,
) -> i32 {
    guard(|| {
        let handle = out(handle, "sg_engine_new")?;
        let options: EngineOptions =
            json_input(input(options, options_len, "options")?, "engine options")?;
        let engine = HostedEngine::open(options)?;
        let id = NEXT_HANDLE.fetch_add(1, Ordering::SeqCst);
        ENGINES.lock().insert(
            id,
            Arc::new(Entry {
                engine: Arc::new(engine),
                next_ticket: AtomicU64::new(1),
                replies: unbounded(),
            }),
        );
        *handle = id;
        Ok(())
    })
}

/// Releases the handle; the engine stops when no call is using it (shut it
/// down first with an `{"op": "shutdown"}` [`sg_call`] to let running
/// handlers finish). Waiters in [`sg_next_replies`] return [`SgStatus::Closed`].
#[no_mangle]
pub extern "C" fn sg_engine_free(handle: u64) -> i32 {
    guard(|| {
        let entry = ENGINES
            .lock()
            .remove(&handle)
            .ok_or_else(|| unknown_handle(handle))?;
        let _ = entry.replies.0.send(Reply::Closed);
        Ok(())
    })
}

/// Waits up to `timeout_ms` for steps to run and writes up to `max` of them
/// to `*events` as a JSON array of step events. `max` is the caller's free
/// handler slots: the engine claims no more steps than that for it. An
/// empty array when the time passed.
///
/// # Safety
/// `events` is writable.
#[no_mangle]
pub unsafe extern "C" fn sg_next_events(
    handle: u64,
    max: usize,
    timeout_ms: u64,
    events: *mut SgBuffer,
) -> i32 {
    guard(|| {
        let events = out(events, "sg_next_events")?;
        let entry = entry(handle)?;
        let batch = entry
            .engine
            .host()
            .next_events(max, Duration::from_millis(timeout_ms))?;
        *events = json_output(&batch, "events")?;
        Ok(())
    })
}

/// Reports the outcome of event `event_id`: JSON `{"status": "success",
/// "result": ...}`, or a failure, decision or batch outcome. Waits while
/// the engine's completion buffer is full (it drains on its own thread).
///
/// # Safety
/// `outcome` points at `outcome_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn sg_complete(
    handle: u64,
    event_id: u64,
    outcome: *const u8,
    outcome_len: usize,
) -> i32 {
    guard(|| {
        let outcome = step_outcome(event_id, input(outcome, outcome_len, "outcome")?)?;
        entry(handle)?.engine.host().complete(event_id, outcome)?;
        Ok(())
    })
}

/// Reports the outcome of event `event_id` as [`sg_complete`] does, then
/// writes to `*events`, without waiting, up to `max` next events (a JSON
/// array, empty when none came at once: then wait with [`sg_next_events`]).
/// Called from the thread that runs the handlers, it runs the commit and the
/// next step's dispatch itself when no other thread drives the engine. Not
/// while an [`sg_next_events`] of the same caller is waiting.
///
/// # Safety
/// `outcome` points at `outcome_len` readable bytes; `events` is writable.
#[no_mangle]
pub unsafe extern "C" fn sg_complete_and_next(
    handle: u64,
    event_id: u64,
    outcome: *const u8,
    outcome_len: usize,
    max: usize,
    events: *mut SgBuffer,
) -> i32 {
    guard(|| {
        let events = out(events, "sg_complete_and_next")?;
        let outcome = step_outcome(event_id, input(outcome, outcome_len, "outcome")?)?;
        let batch = entry(handle)?
            .engine
            .host()
            .complete_and_next(event_id, outcome, max)?;
        *events = json_output(&batch, "events")?;
        Ok(())
    })
}

/// Writes to `*events`, without waiting, up to `max` events (a JSON array),
/// after running on this thread what is runnable when no other thread
/// drives the engine: called right after an `{"op": "run"}` [`sg_call`],
/// it takes the task's first events. Not while an [`sg_next_events`] of the
/// same caller is waiting.
///
/// # Safety
/// `events` is writable.
#[no_mangle]
pub unsafe extern "C" fn sg_poll_events(handle: u64, max: usize, events: *mut SgBuffer) -> i32 {
    guard(|| {
        let events = out(events, "sg_poll_events")?;
        let batch = entry(handle)?.engine.host().poll_events(max)?;
        *events = json_output(&batch, "events")?;
        Ok(())
    })
}

/// Starts a blocking operation without blocking: `call` is JSON
/// `{"op": "run", "namespace", "name", "context", "timeout_ms"}`,
/// `{"op": "get_task", "task_id"}`, `{"op": "roundtrip", "handler", "n"}`, `{"op": "stats"}`
/// or `{"op": "shutdown"}`. Writes
/// its ticket to `*ticket`; its outcome comes from [`sg_next_replies`].
///
/// # Safety
/// `call` points at `call_len` readable bytes; `ticket` is writable.
#[no_mangle]
pub unsafe extern "C" fn sg_call(
    handle: u64,
    call: *const u8,
    call_len: usize,
    ticket: *mut u64,
) -> i32 {
    guard(|| {
        let ticket = out(ticket, "sg_call")?;
        let call: Call = json_input(input(call, call_len, "call")?, "call")?;
        let entry = entry(handle)?;
        let id = entry.next_ticket.fetch_add(1, Ordering::SeqCst);
        let replies = entry.replies.0.clone();
        entry.engine.call(call, move |outcome| {
            let _ = replies.send(Reply::Done(id, outcome));
        });
        *ticket = id;
        Ok(())
    })
}

/// Waits up to `timeout_ms` for finished [`sg_call`]s and writes up to
/// `max` of them to `*replies` as a JSON array of `{"ticket", "ok"}` or
/// `{"ticket", "error"}`; an empty array when the time passed.
///
/// # Safety
/// `replies` is writable.
#[no_mangle]
pub unsafe extern "C" fn sg_next_replies(
    handle: u64,
    max: usize,
    timeout_ms: u64,
    replies: *mut SgBuffer,
) -> i32 {
    guard(|| {
        let replies = out(replies, "sg_next_replies")?;
        let entry = entry(handle)?;
        let (tx, rx) = entry.replies.clone();
        drop(entry);
        let mut batch = Vec::new();
        let first = match rx.recv_timeout(Duration::from_millis(timeout_ms)) {
            Ok(reply) => Some(reply),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Reply::Closed),
        };
        let mut next = first;
        while let Some(reply) = next {
            match reply {
                Reply::Done(ticket, Ok(value)) => {
                    batch.push(json!({"ticket": ticket, "ok": value}))
                }
                Reply::Done(ticket, Err(error)) => batch.push(json!({
                    "ticket": ticket,
                    "error": error.to_string(),
                    "code": error.kind().code(),
                })),
                Reply::Closed => {
                    // Pass the wake-up on to any other waiter.
                    let _ = tx.send(Reply::Closed);
                    if batch.is_empty() {
                        return Err(Failure::new(
                            SgStatus::Closed,
                            format!("stepgraph engine {handle} was freed"),
                        ));
                    }
                    break;
                }
            }
            next = if batch.len() < max.max(1) {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        *replies = json_output(&batch, "replies")?;
        Ok(())
    })
}

/// Writes the message of this thread's last failed call to `*message`
/// (UTF-8, empty when none failed).
///
/// # Safety
/// `message` is writable.
#[no_mangle]
pub unsafe extern "C" fn sg_last_error(message: *mut SgBuffer) -> i32 {
    guard(|| {
        let message = out(message, "sg_last_error")?;
        let text = LAST_ERROR.with(|e| e.borrow().clone());
        *message = owned(text.into_bytes());
        Ok(())
    })
}

/// Releases a buffer this library returned. Each buffer exactly once; a
/// null pointer is ignored.
///
/// # Safety
/// `ptr` and `len` are a buffer's, as this library returned it, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn sg_buffer_free(ptr: *mut u8, len: usize) {
    let _ = catch_unwind(|| {
        if ptr.is_null() {
            return;
        }
        BUFFERS_LIVE.fetch_sub(1, Ordering::SeqCst);
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)));
    });
}

/// Buffers returned and not yet freed, in this process (for leak checks).
#[no_mangle]
pub extern "C" fn sg_buffers_live() -> i64 {
    BUFFERS_LIVE.load(Ordering::SeqCst)
}
