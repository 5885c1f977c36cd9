//! The distributed system against the real PostgreSQL on this machine:
//! `stepgraph serve` and `stepgraph worker` processes, the HTTP API, cluster
//! mode, and failures (killed processes, dropped connections). The backend
//! in this process (store, queue, migrations) is tested in
//! `postgres_backend.rs`.

mod common;

use common::cluster::{create, http, wait, TestEnv};
use common::shapes::{assert_clean_audit, run_seed_shapes};
use common::SIX_16;
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
        t.db.query("SELECT count(*)::text FROM sg_queue WHERE queue = 'worker.e2e'"),
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

#[test]
fn a_killed_orchestrator_leaves_its_work_to_the_other() {
    let t = TestEnv::new();
    let quick = [("STEPGRAPH_ORCHESTRATOR_VISIBILITY_TIMEOUT_MS", "1500")];
    let mut a = t.serve(&quick);
    let b = t.serve(&quick);
    // Results go through the orchestrators, so the killed one holds some.
    let _w = t.worker(&[
        ("STEPGRAPH_WORKER_CONCURRENCY", "32"),
        ("STEPGRAPH_WORKER_INLINE_ORCHESTRATION", "false"),
    ]);
    let ids: Vec<String> = (0..30)
        .map(|_| create(a.addr(), "sleepy", json!({ "sleep_ms": 200 })))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    a.kill9();
    for id in ids {
        let v = wait(b.addr(), &id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_clean_audit(&v);
    }
}

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
    std::thread::sleep(Duration::from_millis(150));
    assert!(t.db.terminate_connections() > 0);
    std::thread::sleep(Duration::from_millis(400));
    t.db.terminate_connections();
    for id in ids {
        let v = wait(serve.addr(), &id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_clean_audit(&v);
    }
}

#[test]
fn a_thousand_linear_tasks_in_cluster_mode_lose_and_duplicate_nothing() {
    let t = TestEnv::new();
    let a = t.serve(&[]);
    let b = t.serve(&[]);
    let _w1 = t.worker(&[]);
    let _w2 = t.worker(&[]);
    let servers = [a.addr().to_string(), b.addr().to_string()];
    let ids: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let servers = &servers;
                scope.spawn(move || {
                    (0..250)
                        .map(|i| {
                            let addr = &servers[(t + i) % 2];
                            (
                                addr.clone(),
                                create(addr, "linear", json!({ "even_number": 6 })),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(ids.len(), 1000);
    for (addr, id) in &ids {
        let v = wait(addr, id, LONG);
        assert_eq!(v["state"], "complete", "{v}");
        assert_eq!(v["result"], json!(SIX_16));
    }
    let count = |sql: &str| {
        t.db.query(&format!("SELECT ({sql})::text"))[0]
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(
        count("SELECT count(*) FROM sg_tasks WHERE state = 'complete'"),
        1000
    );
    assert_eq!(count("SELECT count(*) FROM sg_steps"), 4000);
    assert_eq!(
        count("SELECT count(*) FROM sg_step_transitions WHERE to_state = 'complete'"),
        4000
    );
    assert_eq!(
        count("SELECT count(*) FROM (SELECT step_id FROM sg_step_transitions WHERE to_state = 'complete' GROUP BY step_id HAVING count(*) > 1) d"),
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM sg_step_transitions WHERE most_recent"),
        4000
    );
    assert_eq!(
        count("SELECT count(*) FROM sg_queue"),
        0,
        "every message was acknowledged"
    );
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
    assert_eq!(v["templates"].as_array().unwrap().len(), 7);
}

#[test]
fn idempotency_cancel_and_graceful_shutdown() {
    let t = TestEnv::new();
    let mut serve = t.serve(&[]);
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
    // A waiting request is woken when the task ends: cancelled before any step starts.
    let waiting = std::thread::spawn({
        let (addr, id) = (addr.clone(), id.to_string());
        move || wait(&addr, &id, LONG)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, v) = http(&addr, "POST", &format!("/v1/tasks/{id}/cancel"), None);
    assert_eq!((status, v["state"].as_str()), (200, Some("cancelled")));
    let v = waiting.join().unwrap();
    assert_eq!(v["state"], "cancelled");
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
