//! The C ABI as a C caller sees it: a task run through it with the handler
//! served by a thread of this test, every status and message for bad input,
//! and ownership: every buffer the library returned is freed exactly once
//! (the live count is back to where it started).

use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use stepgraph_cabi::*;

/// The live-buffer count is per process: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn templates() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/templates")
}

const EMPTY: SgBuffer = SgBuffer {
    ptr: std::ptr::null_mut(),
    len: 0,
};

/// The buffer's bytes as JSON; frees it.
fn take(buf: SgBuffer) -> Value {
    let value = if buf.len == 0 {
        Value::Null
    } else {
        let bytes = unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) };
        serde_json::from_slice(bytes).expect("the library returns JSON")
    };
    unsafe { sg_buffer_free(buf.ptr, buf.len) };
    value
}

fn last_error() -> String {
    let mut buf = EMPTY;
    assert_eq!(unsafe { sg_last_error(&mut buf) }, SgStatus::Ok as i32);
    let text = if buf.len == 0 {
        String::new()
    } else {
        String::from_utf8(unsafe { std::slice::from_raw_parts(buf.ptr, buf.len) }.to_vec()).unwrap()
    };
    unsafe { sg_buffer_free(buf.ptr, buf.len) };
    text
}

fn engine(options: Value) -> u64 {
    let bytes = options.to_string().into_bytes();
    let mut handle = 0;
    let status = unsafe { sg_engine_new(bytes.as_ptr(), bytes.len(), &mut handle) };
    assert_eq!(status, SgStatus::Ok as i32, "{}", last_error());
    handle
}

fn call(handle: u64, request: Value) -> u64 {
    let bytes = request.to_string().into_bytes();
    let mut ticket = 0;
    let status = unsafe { sg_call(handle, bytes.as_ptr(), bytes.len(), &mut ticket) };
    assert_eq!(status, SgStatus::Ok as i32, "{}", last_error());
    ticket
}

fn reply(handle: u64) -> Value {
    let mut buf = EMPTY;
    let status = unsafe { sg_next_replies(handle, 1, 60_000, &mut buf) };
    assert_eq!(status, SgStatus::Ok as i32, "{}", last_error());
    let mut replies = take(buf);
    assert_eq!(replies.as_array().map(Vec::len), Some(1), "{replies}");
    replies[0].take()
}

/// Serves `math.square` (within 64 bits) until the engine closes: waits
/// with `sg_next_events` only when it holds no event, and reports with
/// `sg_complete_and_next`, which hands back the next ones.
fn serve(handle: u64, served: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut held: Vec<Value> = Vec::new();
        loop {
            if held.is_empty() {
                let mut buf = EMPTY;
                let status = unsafe { sg_next_events(handle, 4, 200, &mut buf) };
                if status == SgStatus::Closed as i32 {
                    return;
                }
                assert_eq!(status, SgStatus::Ok as i32, "{}", last_error());
                held = take(buf).as_array().unwrap().clone();
                continue;
            }
            let event = held.remove(0);
            let x = event["dependency_results"]
                .as_object()
                .and_then(|d| d.values().next().cloned())
                .unwrap_or_else(|| event["input"]["even_number"].clone())
                .as_u64()
                .unwrap();
            let outcome = json!({"status": "success", "result": x * x}).to_string();
            let id = event["event_id"].as_u64().unwrap();
            let mut buf = EMPTY;
            let free = 4 - held.len();
            let status = unsafe {
                sg_complete_and_next(handle, id, outcome.as_ptr(), outcome.len(), free, &mut buf)
            };
            assert_eq!(status, SgStatus::Ok as i32, "{}", last_error());
            held.extend(take(buf).as_array().unwrap().iter().cloned());
            served.store(true, Ordering::SeqCst);
        }
    })
}

#[test]
fn a_task_through_the_c_abi_and_every_buffer_freed_once() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let live_before = sg_buffers_live();
    let handle = engine(json!({
        "templates_dir": templates(),
        "handlers": ["math.square"],
        // The fixtures' other steps: an engine serves every template it loads.
        "builtin_handlers": true,
    }));
    let served = Arc::new(AtomicBool::new(false));
    let server = serve(handle, served.clone());

    let ticket = call(
        handle,
        json!({"op": "run", "namespace": "e2e", "name": "linear", "context": {"even_number": 2}}),
    );
    // The thread that started it may take its first events at once (the
    // serving thread takes them otherwise): none is lost either way.
    let mut polled = EMPTY;
    let status = unsafe { sg_poll_events(handle, 0, &mut polled) };
    assert_eq!(status, SgStatus::Ok as i32, "{}", last_error());
    assert_eq!(take(polled), json!([]), "no slots, no events");
    let r = reply(handle);
    assert_eq!(r["ticket"], ticket);
    assert_eq!(r["ok"]["state"], "complete", "{r}");
    // 2 -> 4 -> 16 -> 256 -> 65536, every step by this test's thread.
    assert_eq!(r["ok"]["result"], 65536, "{r}");
    assert!(served.load(Ordering::SeqCst));
    // The view `GET /v1/tasks/{id}` shows, without the audit trail; get_task has it.
    assert_eq!(r["ok"]["steps"].as_array().map(Vec::len), Some(4), "{r}");
    assert!(r["ok"].get("transitions").is_none(), "{r}");
    call(
        handle,
        json!({"op": "get_task", "task_id": r["ok"]["id"].clone()}),
    );
    let audited = reply(handle);
    assert_eq!(audited["ok"]["result"], 65536, "{audited}");
    let completed = audited["ok"]["transitions"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["to"] == "complete")
        .count();
    assert_eq!(completed, 4, "{audited}");
    call(
        handle,
        json!({"op": "get_task", "task_id": "00000000-0000-0000-0000-000000000000"}),
    );
    let missing = reply(handle);
    assert_eq!(missing["code"], "TaskNotFound", "{missing}");
    assert!(
        missing["error"].as_str().unwrap().contains("not found"),
        "{missing}"
    );

    // A step outcome that is not one, and an event that is not pending.
    let garbage = b"{\"status\": \"maybe\"}";
    let status = unsafe { sg_complete(handle, 1, garbage.as_ptr(), garbage.len()) };
    assert_eq!(status, SgStatus::InvalidArgument as i32);
    assert!(last_error().contains("outcome of event 1 is not a step outcome"));
    let ok = br#"{"status": "success", "result": 1}"#;
    let status = unsafe { sg_complete(handle, 999_999, ok.as_ptr(), ok.len()) };
    assert_eq!(status, SgStatus::NotPending as i32);
    assert!(last_error().contains("event 999999 is not pending"));
    let mut buf = EMPTY;
    let status =
        unsafe { sg_complete_and_next(handle, 1, garbage.as_ptr(), garbage.len(), 1, &mut buf) };
    assert_eq!(status, SgStatus::InvalidArgument as i32);
    assert!(last_error().contains("outcome of event 1 is not a step outcome"));
    let status =
        unsafe { sg_complete_and_next(handle, 999_999, ok.as_ptr(), ok.len(), 1, &mut buf) };
    assert_eq!(status, SgStatus::NotPending as i32);
    assert_eq!(buf.len, 0, "nothing handed out with a refusal");

    // A run of an unknown template fails with a message, as a reply.
    call(
        handle,
        json!({"op": "run", "namespace": "e2e", "name": "nope"}),
    );
    let r = reply(handle);
    assert!(r["error"].as_str().unwrap().contains("nope"), "{r}");

    call(handle, json!({"op": "shutdown"}));
    assert_eq!(reply(handle)["ok"], Value::Null);
    server.join().unwrap();
    assert_eq!(sg_engine_free(handle), SgStatus::Ok as i32);
    // Waiters on a freed engine are told so.
    let mut buf = EMPTY;
    let status = unsafe { sg_next_replies(handle, 1, 10, &mut buf) };
    assert_eq!(status, SgStatus::UnknownHandle as i32);
    assert_eq!(buf.len, 0);
    assert_eq!(sg_buffers_live(), live_before, "a buffer was not freed");
}

#[test]
fn bad_arguments_get_a_status_and_a_message() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Not JSON, not the options, a missing templates directory (a configuration error).
    for (options, expected, says) in [
        (
            &b"{not json"[..],
            SgStatus::InvalidArgument,
            "engine options",
        ),
        (
            br#"{"templates": "x"}"#,
            SgStatus::InvalidArgument,
            "unknown field `templates`",
        ),
        (
            br#"{"templates_dir": "/nonexistent/stepgraph"}"#,
            SgStatus::Config,
            "/nonexistent/stepgraph",
        ),
    ] {
        let mut handle = 0;
        let status = unsafe { sg_engine_new(options.as_ptr(), options.len(), &mut handle) };
        assert_eq!(status, expected as i32);
        let message = last_error();
        assert!(message.contains(says), "{message:?} should name {says:?}");
    }
    // A null pointer with a length, and a null output.
    let mut handle = 0;
    let status = unsafe { sg_engine_new(std::ptr::null(), 5, &mut handle) };
    assert_eq!(status, SgStatus::InvalidArgument as i32);
    assert!(last_error().contains("null pointer"));
    let status = unsafe { sg_next_events(1, 1, 0, std::ptr::null_mut()) };
    assert_eq!(status, SgStatus::InvalidArgument as i32);
    // Unknown handles, for every call that takes one.
    let mut buf = EMPTY;
    assert_eq!(
        unsafe { sg_next_events(u64::MAX, 1, 0, &mut buf) },
        SgStatus::UnknownHandle as i32
    );
    assert!(last_error().contains(&format!("handle {}", u64::MAX)));
    assert_eq!(sg_engine_free(u64::MAX), SgStatus::UnknownHandle as i32);
    let shutdown = br#"{"op": "shutdown"}"#;
    let mut ticket = 0;
    assert_eq!(
        unsafe { sg_call(u64::MAX, shutdown.as_ptr(), shutdown.len(), &mut ticket) },
        SgStatus::UnknownHandle as i32
    );
    let unknown_op = br#"{"op": "explode"}"#;
    assert_eq!(
        unsafe { sg_call(u64::MAX, unknown_op.as_ptr(), unknown_op.len(), &mut ticket) },
        SgStatus::InvalidArgument as i32
    );
    assert!(last_error().contains("explode"));
}
