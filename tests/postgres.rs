//! The distributed system against the real PostgreSQL on this machine:
//! `stepgraph serve` and `stepgraph worker` processes, the HTTP API, cluster
//! mode, and failures (killed processes, dropped connections). The backend
//! in this process (store, queue, migrations) is tested in
//! `postgres_backend.rs`.

mod common;

use common::cluster::{create, http, metric, wait, TestEnv};
use common::shapes::{assert_clean_audit, run_seed_shapes};
use serde_json::json;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// Every step completed exactly once, and each audit chain is unbroken.
#[test]
fn seed_shapes_through_the_api_single_instance() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let _worker = t.worker(&[]);
    run_seed_shapes(&[serve.addr()]);
}

#[test]
fn seed_shapes_with_results_through_the_orchestration_queue() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let classic = [("STEPGRAPH_WORKER_INLINE_ORCHESTRATION", "false")];
    let _worker = t.worker(&classic);
    run_seed_shapes(&[serve.addr()]);
}

/// One server and one worker of each runtime: a thread per core (the
/// default) and a single thread (`STEPGRAPH_THREADS=1`).
#[test]
fn seed_shapes_through_the_api_in_cluster_mode() {
    let t = TestEnv::new();
    let single = [("STEPGRAPH_THREADS", "1")];
    let a = t.serve(&[]);
    let b = t.serve(&single);
    let _w1 = t.worker(&[]);
    let _w2 = t.worker(&single);
    run_seed_shapes(&[a.addr(), b.addr()]);
}

/// A setting that does not parse stops a process at start-up, named.
#[test]
fn a_bad_threads_setting_is_a_clear_error() {
    for command in ["serve", "worker"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
            .arg(command)
            .env("STEPGRAPH_THREADS", "many")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(r#"STEPGRAPH_THREADS is not a number: "many""#),
            "{command}: {stderr}"
        );
    }
}

/// NOTIFY, not the fallback polls, wakes a worker for a sent step and a
/// `wait` for a task's end: with the polls set to 30 s a two-step task,
/// each step sent across processes, ends and is seen well within 5 s.
#[test]
fn notify_wakes_workers_and_waiters_long_before_the_fallback_polls() {
    let t = TestEnv::new();
    let slow_polls = [
        ("STEPGRAPH_QUEUE_FALLBACK_POLL_MS", "30000"),
        ("STEPGRAPH_WAIT_FALLBACK_POLL_MS", "30000"),
        // Every step through the queue, none leased by the commit before it.
        ("STEPGRAPH_WORKER_EAGER_DISPATCH", "false"),
    ];
    let serve = t.serve(&slow_polls);
    let _worker = t.worker(&slow_polls);
    // Both processes idle and sleeping on their queues before the task exists.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let id = create(serve.addr(), "sleepy", json!({ "sleep_ms": 100 }));
        let start = std::time::Instant::now();
        let (status, v) = http(
            serve.addr(),
            "GET",
            &format!("/v1/tasks/{id}/wait?timeout_ms=20000"),
            None,
        );
        let took = start.elapsed();
        assert_eq!((status, &v["state"]), (200, &json!("complete")), "{v}");
        assert!(
            took < Duration::from_secs(5),
            "the task took {took:?}: a send or its end was not notified"
        );
    }
}

#[test]
fn a_step_held_by_a_killed_worker_is_redelivered_and_completes_once() {
    let t = TestEnv::new();
    let fast_redelivery = [("STEPGRAPH_WORKER_VISIBILITY_TIMEOUT_MS", "2500")];
    let serve = t.serve(&[]);
    let mut doomed = t.worker(&fast_redelivery);
    let id = create(serve.addr(), "sleepy", json!({ "sleep_ms": 1000 }));
    // Wait until the doomed worker holds the first step.
    t.await_running(&id, "nap");
    doomed.kill9();
    let _rescuer = t.worker(&fast_redelivery);
    let v = wait(serve.addr(), &id, LONG);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["result"], json!({ "slept_ms": 1000 }));
    assert_clean_audit(&v);
    let nap = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "nap")
        .unwrap();
    assert_eq!(nap["attempts"], 1, "a redelivery is the same attempt");
}

#[test]
fn a_step_taken_by_eager_dispatch_is_redelivered_when_its_worker_dies() {
    let t = TestEnv::new();
    let fast_redelivery = [("STEPGRAPH_WORKER_VISIBILITY_TIMEOUT_MS", "2500")];
    let serve = t.serve(&[("STEPGRAPH_ORCHESTRATOR_RESEND_STRANDED_AFTER_MS", "1000")]);
    let mut doomed = t.worker(&fast_redelivery);
    let id = create(serve.addr(), "sleepy", json!({ "sleep_ms": 800 }));
    // `after` becomes ready in the commit that completes `nap`, which
    // leases it to the worker that ran `nap`: no message for it.
    t.await_running(&id, "after");
    assert_eq!(
        t.db.query(&format!(
            "SELECT (claimed_until > now())::text FROM sg_steps WHERE task_id = '{id}' AND name = 'after'"
        )),
        ["true"],
        "the running step is leased"
    );
    assert_eq!(
        t.db.query("SELECT count(*)::text FROM sg_queue WHERE queue LIKE 'worker.e2e/%'"),
        ["0"]
    );
    doomed.kill9();
    let _rescuer = t.worker(&fast_redelivery);
    let v = wait(serve.addr(), &id, LONG);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["result"], json!({ "slept_ms": 800 }));
    assert_clean_audit(&v);
    let after = &v["steps"][1];
    assert_eq!(
        (&after["name"], &after["attempts"]),
        (&json!("after"), &json!(1))
    );
}

/// How many times the task's step `name` went into `complete`.
fn completions(t: &TestEnv, id: &str, name: &str) -> Vec<String> {
    t.db.query(&format!(
        "SELECT count(*)::text FROM sg_step_transitions tr JOIN sg_steps s ON s.id = tr.step_id \
          WHERE s.task_id = '{id}' AND s.name = '{name}' AND tr.to_state = 'complete'"
    ))
}

/// SIGTERM while a step runs: the worker takes no new work, lets the step
/// finish and records it (well within `shutdown_grace_ms`), then exits
/// cleanly; the next step waits for another worker and nothing runs twice.
#[test]
fn sigterm_lets_the_running_step_finish_and_record_its_result() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let mut worker = t.worker(&[("STEPGRAPH_WORKER_SHUTDOWN_GRACE_MS", "20000")]);
    let id = create(serve.addr(), "sleepy", json!({ "sleep_ms": 1500 }));
    t.await_running(&id, "nap");
    let start = std::time::Instant::now();
    assert!(worker.terminate().success(), "a clean exit");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(15), "exited after {took:?}");
    // `after`, then `nap`: finished here; `after`, made ready by its commit,
    // sent for another worker, not started by this one.
    assert_eq!(
        t.db.query(&format!(
            "SELECT state || ' ' || attempts FROM sg_steps WHERE task_id = '{id}' ORDER BY name"
        )),
        ["enqueued 1", "complete 1"]
    );
    let _next = t.worker(&[]);
    let v = wait(serve.addr(), &id, LONG);
    assert_eq!(v["result"], json!({ "slept_ms": 1500 }), "{v}");
    assert_clean_audit(&v);
    assert_eq!(completions(&t, &id, "nap"), ["1"]);
    assert_eq!(v["steps"][0]["attempts"], 1);
}

/// A step that outlives the grace period is abandoned when the worker
/// exits; its message comes back after the visibility timeout and another
/// worker runs it to completion, once.
#[test]
fn a_step_that_outlives_the_grace_is_redelivered_and_completes_elsewhere() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let quick = ("STEPGRAPH_WORKER_VISIBILITY_TIMEOUT_MS", "2500");
    let mut worker = t.worker(&[quick, ("STEPGRAPH_WORKER_SHUTDOWN_GRACE_MS", "300")]);
    let id = create(serve.addr(), "sleepy", json!({ "sleep_ms": 4000 }));
    t.await_running(&id, "nap");
    let start = std::time::Instant::now();
    assert!(worker.terminate().success(), "a clean exit");
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(3000),
        "exited after {took:?}: the grace is 300 ms"
    );
    assert_eq!(
        completions(&t, &id, "nap"),
        ["0"],
        "abandoned, not finished"
    );
    let _rescuer = t.worker(&[quick]);
    let v = wait(serve.addr(), &id, LONG);
    assert_eq!(v["result"], json!({ "slept_ms": 4000 }), "{v}");
    assert_clean_audit(&v);
    assert_eq!(completions(&t, &id, "nap"), ["1"]);
}

/// With `eager_dispatch = false` the step a commit makes ready is sent,
/// claimed from the queue and run from its message: no lease.
#[test]
fn without_eager_dispatch_every_step_travels_through_the_queue() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let _worker = t.worker(&[("STEPGRAPH_WORKER_EAGER_DISPATCH", "false")]);
    let id = create(serve.addr(), "sleepy", json!({ "sleep_ms": 800 }));
    t.await_running(&id, "after");
    assert_eq!(
        t.db.query(&format!(
            "SELECT coalesce(claimed_until::text, 'none') FROM sg_steps WHERE task_id = '{id}' AND name = 'after'"
        )),
        ["none"],
        "not leased"
    );
    assert_eq!(
        t.db.query("SELECT delivery_count::text FROM sg_queue WHERE queue LIKE 'worker.e2e/%'"),
        ["1"],
        "its message, claimed once"
    );
    let v = wait(serve.addr(), &id, LONG);
    assert_eq!(v["result"], json!({ "slept_ms": 800 }));
    assert_clean_audit(&v);
}

/// The orchestrator is killed while it holds claimed results (checked
/// after its death: their messages are still claimed, by no one alive);
/// the one started after it takes them once their visibility times out.
#[test]
fn a_killed_orchestrator_leaves_its_work_to_the_other() {
    let t = TestEnv::new();
    let quick = [("STEPGRAPH_ORCHESTRATOR_VISIBILITY_TIMEOUT_MS", "1500")];
    // Results go through the orchestrator's queue.
    let _w = t.worker(&[
        ("STEPGRAPH_WORKER_CONCURRENCY", "32"),
        ("STEPGRAPH_WORKER_INLINE_ORCHESTRATION", "false"),
    ]);
    let claimed = "SELECT count(*) FROM sg_queue WHERE queue = 'orchestration' \
                   AND delivery_count >= 1 AND visible_at > now()";
    let mut a = t.serve(&quick);
    let mut ids = Vec::new();
    let mut held = 0;
    // A claim lasts milliseconds: the orchestrator is frozen the moment
    // one is seen, and killed if it still holds one; if it let go in
    // between, it is thawed and caught again with more work.
    for _ in 0..20 {
        ids.extend((0..30).map(|_| create(a.addr(), "sleepy", json!({ "sleep_ms": 200 }))));
        let seen = t.db.when(
            &format!("SELECT ({claimed}) > 0"),
            Duration::from_secs(30),
            || a.signal("STOP"),
        );
        assert!(seen, "the orchestrator never claimed a result");
        held = t.db.query(&format!("SELECT ({claimed})::text"))[0]
            .parse()
            .unwrap();
        if held > 0 {
            a.kill9();
            break;
        }
        a.signal("CONT");
    }
    assert!(
        held > 0,
        "no orchestrator was caught holding a claimed result"
    );
    let b = t.serve(&quick);
    for id in ids {
        let v = wait(b.addr(), &id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_clean_audit(&v);
    }
    assert_eq!(
        t.db.query("SELECT count(*)::text FROM sg_queue"),
        ["0"],
        "every message taken and acknowledged"
    );
}

/// Every connection of both processes is dropped twice while tasks run:
/// once when the first steps are running, again once more steps have
/// completed since (the processes reconnected and went on).
#[test]
fn processes_recover_when_their_connections_are_dropped() {
    let t = TestEnv::new();
    let env = [
        ("STEPGRAPH_WORKER_VISIBILITY_TIMEOUT_MS", "3000"),
        ("STEPGRAPH_ORCHESTRATOR_VISIBILITY_TIMEOUT_MS", "3000"),
    ];
    let serve = t.serve(&env);
    let _w = t.worker(&env);
    let ids: Vec<String> = (0..10)
        .map(|_| create(serve.addr(), "sleepy", json!({ "sleep_ms": 300 })))
        .collect();
    let steps = |state: &str| format!("SELECT count(*) FROM sg_steps WHERE state = '{state}'");
    t.db.await_count(&steps("in_progress"), "steps running", |n| n > 0);
    let done = t.db.query(&format!("SELECT ({})::text", steps("complete")))[0]
        .parse::<i64>()
        .unwrap();
    assert!(done < 20, "mid-run");
    assert!(t.db.terminate_connections() > 0);
    let later = t.db.await_count(
        &steps("complete"),
        "steps completed after the first drop",
        |n| n > done,
    );
    assert!(later < 20, "mid-run");
    assert!(t.db.terminate_connections() > 0);
    for id in ids {
        let v = wait(serve.addr(), &id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_clean_audit(&v);
    }
}

#[test]
fn an_orchestration_message_failing_on_every_delivery_is_dead_lettered() {
    let t = TestEnv::new();
    let serve = t.serve(&[("STEPGRAPH_MAX_DELIVERIES", "2")]);
    // No worker: the task's first step waits while its stored context is
    // made one the engine cannot read back, and a wake-up for it arrives.
    let id = create(serve.addr(), "linear", json!({ "even_number": 6 }));
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let wake = json!({ "type": "wake", "task_id": id }).to_string();
    t.db.query(&format!(
        "UPDATE sg_tasks SET context = '{deep}'::jsonb WHERE id = '{id}' RETURNING id::text"
    ));
    t.db.query(&format!(
        "SELECT sg_send(ARRAY['orchestration'], ARRAY[convert_to('{wake}', 'UTF8')], ARRAY[0::bigint])::text"
    ));
    t.db.await_count(
        "SELECT count(*) FROM sg_dead_letters WHERE queue = 'orchestration'",
        "dead letters",
        |n| n == 1,
    );
    let dead =
        t.db.query("SELECT delivery_count || ' ' || reason FROM sg_dead_letters");
    assert!(
        dead[0].starts_with("2 failed on each of 2 deliveries: stored data cannot be read"),
        "{dead:?}"
    );
    let task = t.db.query(&format!(
        "SELECT concat_ws(' ', state, error->>'code', error->>'step') FROM sg_tasks WHERE id = '{id}'"
    ));
    // The task failed as a whole (an orchestration message names no step).
    assert_eq!(task, ["error poison_message"]);
    let steps = t.db.query(&format!(
        "SELECT DISTINCT state FROM sg_steps WHERE task_id = '{id}'"
    ));
    assert_eq!(steps, ["cancelled"]);
}

#[test]
fn bad_http_input_gets_its_status_and_a_clear_message() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let addr = serve.addr();
    let post = |body: &[u8]| http(addr, "POST", "/v1/tasks", Some(body));

    let (status, v) = post(b"{not json");
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed request body"),
        "{v}"
    );

    let (status, v) = post(br#"{"namespace": "e2e", "name": "nope", "context": {}}"#);
    assert_eq!(status, 422);
    assert_eq!(v["error"], "no template e2e/nope");

    let (status, v) =
        post(br#"{"namespace": "e2e", "name": "linear", "context": {"even_number": 7}}"#);
    assert_eq!(status, 422);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("/even_number: 7 is not a multiple of 2"),
        "{v}"
    );

    let (status, v) = post(br#"{"name": "linear"}"#);
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("missing field `namespace`"),
        "{v}"
    );

    let big = vec![b' '; 2 * 1024 * 1024];
    let (status, v) = post(&big);
    assert_eq!(status, 413);
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");

    let (status, v) = http(
        addr,
        "GET",
        "/v1/tasks/01a2179a-1dce-7403-b659-e6ab4ae78f2f",
        None,
    );
    assert_eq!(status, 404);
    assert!(v["error"].as_str().unwrap().contains("not found"), "{v}");

    let (status, _) = http(addr, "GET", "/v1/tasks/not-a-uuid", None);
    assert_eq!(status, 400);
    let (status, _) = http(addr, "GET", "/v1/nothing", None);
    assert_eq!(status, 404);

    let (status, v) = http(addr, "GET", "/health", None);
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")));
    let (status, v) = http(addr, "GET", "/v1/templates", None);
    assert_eq!(status, 200);
    // Every template of the fixtures' two folders.
    let files: usize = ["templates", "extra"]
        .iter()
        .map(|d| {
            let dir = format!("{}/tests/fixtures/{d}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_dir(dir).unwrap().count()
        })
        .sum();
    assert_eq!(v["templates"].as_array().unwrap().len(), files);
}

#[test]
fn idempotency_cancel_and_graceful_shutdown() {
    let t = TestEnv::new();
    // A waiter that is not notified would wait this long.
    let mut serve = t.serve(&[("STEPGRAPH_WAIT_FALLBACK_POLL_MS", "30000")]);
    let addr = serve.addr().to_string();
    let body = br#"{"namespace": "e2e", "name": "sleepy", "context": {"sleep_ms": 2000}, "idempotency_key": "order-7"}"#;
    let (s1, v1) = http(&addr, "POST", "/v1/tasks", Some(body));
    let (s2, v2) = http(&addr, "POST", "/v1/tasks", Some(body));
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(v1["task_id"], v2["task_id"]);
    assert_eq!(v2["created"], false);
    let id = v1["task_id"].as_str().unwrap();
    // No worker runs: a wait that times out answers with the task as it is.
    let (status, v) = http(
        &addr,
        "GET",
        &format!("/v1/tasks/{id}/wait?timeout_ms=300"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(v["steps"][0]["state"], "enqueued");
    assert!(!["complete", "error", "cancelled"].contains(&v["state"].as_str().unwrap()));
    // A waiting request (seen waiting in /metrics) is woken when the task
    // ends: cancelled before any step starts.
    let waiting = std::thread::spawn({
        let (addr, id) = (addr.clone(), id.to_string());
        move || {
            let start = std::time::Instant::now();
            let path = format!("/v1/tasks/{id}/wait?timeout_ms=60000");
            (http(&addr, "GET", &path, None), start.elapsed())
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&addr, "stepgraph_http_waiting_requests") != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "the wait never began");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, v) = http(&addr, "POST", &format!("/v1/tasks/{id}/cancel"), None);
    assert_eq!((status, v["state"].as_str()), (200, Some("cancelled")));
    let ((status, v), took) = waiting.join().unwrap();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(20), "not notified: {took:?}");
    assert_eq!(v["state"], "cancelled");
    assert_eq!(metric(&addr, "stepgraph_http_waiting_requests"), Some(0.0));
    assert_eq!(v["steps"][0]["state"], "cancelled");
    assert!(
        serve.terminate().success(),
        "SIGTERM shuts serve down cleanly"
    );

    let mut worker = t.worker(&[]);
    assert!(
        worker.terminate().success(),
        "SIGTERM shuts a worker down cleanly"
    );
}
