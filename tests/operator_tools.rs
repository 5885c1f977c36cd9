//! The operator's tools beside the API: the worker registry, the logs of
//! `serve` and `worker`, and the `stepgraph tasks` / `workers` CLI.

mod common;

use common::cluster::TestEnv;
use common::ops::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn workers_register_heartbeat_and_are_shown_gone_or_stopped() {
    let t = TestEnv::new();
    let serve = t.serve(&[("STEPGRAPH_TOKENS", &tokens())]);
    let addr = serve.addr();
    let beat = [("STEPGRAPH_WORKER_HEARTBEAT_MS", "200")];
    let mut killed = t.worker(&beat);
    let mut stopped = t.worker(&beat);
    let workers = |want: &dyn Fn(&[Value]) -> bool| {
        let deadline = Instant::now() + LONG;
        loop {
            let (status, v) = call(addr, Some(READER), "GET", "/v1/workers", None);
            assert_eq!(status, 200, "{v}");
            let all = v["workers"].as_array().unwrap().clone();
            if want(&all) {
                return all;
            }
            assert!(Instant::now() < deadline, "workers: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let state = |all: &[Value], pid: u32| {
        all.iter()
            .find(|w| w["pid"] == pid)
            .map(|w| w["state"].as_str().unwrap().to_string())
    };
    let (k, s) = (killed.pid(), stopped.pid());
    let all = workers(&|all| state(all, k).is_some() && state(all, s).is_some());
    for w in &all {
        assert_eq!(w["state"], "live", "{w}");
        assert_eq!(w["language"], "rust");
        assert_eq!(w["namespaces"], json!(["e2e"]), "{w}");
        assert_eq!(w["heartbeat_ms"], 200);
        let handlers = w["handlers"].as_array().unwrap();
        assert!(handlers.contains(&json!("math.square")), "{w}");
        assert!(w["concurrency"].as_u64().unwrap() > 0);
        assert!(!w["host"].as_str().unwrap().is_empty());
    }
    killed.kill9();
    assert!(stopped.terminate().success());
    let all = workers(&|all| {
        state(all, k).as_deref() == Some("gone") && state(all, s).as_deref() == Some("stopped")
    });
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().find(|w| w["pid"] == s).unwrap()["stopped_at"].is_string());
    // A reader may look; without a token nobody may.
    assert_eq!(call(addr, None, "GET", "/v1/workers", None).0, 401);
}

/// The JSON log lines of `path` whose message is `message`.
fn logged(path: &std::path::Path, message: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
        })
        .filter(|v| v["message"] == message)
        .collect()
}

#[test]
fn servers_and_workers_log_what_happens_to_tasks_and_steps() {
    let t = TestEnv::new();
    t.add_template(
        "naps_too_long.yaml",
        r#"
namespace: e2e
name: naps_too_long
version: "1"
steps:
  - name: nap
    handler: { callable: util.sleep }
    timeout_seconds: 0.2
    retry: { max_attempts: 2, backoff: linear, backoff_base_ms: 50 }
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (serve_log, worker_log) = (dir.path().join("serve.log"), dir.path().join("worker.log"));
    let json = [("STEPGRAPH_LOG", "info"), ("STEPGRAPH_LOG_FORMAT", "json")];
    let serve = t.logged(&["serve", "--listen", "127.0.0.1:0"], &json, &serve_log);
    let mut worker = t.logged(&["worker"], &json, &worker_log);
    let addr = serve.addr();
    let ok = create(addr, "linear", json!({ "even_number": 2 }));
    let slow = create(addr, "naps_too_long", json!({ "sleep_ms": 2000 }));
    assert_eq!(wait(addr, &ok, LONG)["state"], "complete");
    assert_eq!(wait(addr, &slow, LONG)["state"], "error");
    let failed = failing_task(addr, &dir.path().join("never"));
    // A step's lines follow its commit, which a waiter may see first: the
    // worker stops gracefully, finishing what it was doing, before they are read.
    assert!(worker.terminate().success());
    drop(serve);

    let created = logged(&serve_log, "task created");
    assert_eq!(created.len(), 3, "{created:?}");
    assert!(
        created
            .iter()
            .any(|l| l["task"] == ok && l["template"] == "e2e/linear@1.0.0"),
        "{created:?}"
    );
    let completed = logged(&worker_log, "task completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["task"], ok);
    let retried = logged(&worker_log, "step timed out; retrying");
    assert_eq!(retried.len(), 1, "{retried:?}");
    let r = &retried[0];
    assert_eq!(
        (&r["task"], &r["step"], &r["handler"], &r["attempt"]),
        (&json!(slow), &json!("nap"), &json!("util.sleep"), &json!(1))
    );
    assert_eq!(r["backoff_ms"], 50);
    assert!(r["error"].as_str().unwrap().contains("timed out"), "{r}");
    assert_eq!(
        logged(&worker_log, "step timed out; no attempts left")[0]["attempt"],
        2
    );
    let step_failed = logged(&worker_log, "step failed");
    assert_eq!(step_failed.len(), 1, "{step_failed:?}");
    assert_eq!(
        (&step_failed[0]["task"], &step_failed[0]["step"]),
        (&json!(failed), &json!("check"))
    );
    assert!(step_failed[0]["error"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    let task_failed = logged(&worker_log, "task failed");
    assert_eq!(task_failed.len(), 2, "{task_failed:?}");

    // As text, off a terminal: no colour codes.
    let text_log = dir.path().join("text.log");
    let serve = t.logged(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("STEPGRAPH_LOG", "info")],
        &text_log,
    );
    create(serve.addr(), "linear", json!({ "even_number": 2 }));
    drop(serve);
    let text = std::fs::read_to_string(&text_log).unwrap();
    assert!(text.contains("task created"), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
}

#[test]
fn the_cli_finds_shows_retries_resolves_and_cancels_tasks() {
    let c = cluster();
    let addr = c.serve.addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fixed");
    let failed = failing_task(addr, &file);
    let other = failing_task(addr, &dir.path().join("never"));

    let (ok, out, err) = cli(addr, Some(READER), &["tasks", "list", "--state", "error"]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATE") && header.contains("ERROR"),
        "{out}"
    );
    assert!(out.contains(&failed) && out.contains(&other), "{out}");
    assert!(
        out.contains("e2e/repairable@1.0.0") && out.contains("does not exist"),
        "{out}"
    );
    let (ok, out, _) = cli(
        addr,
        Some(READER),
        &["tasks", "list", "--failed-step", "--limit", "1", "--json"],
    );
    assert!(ok);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["tasks"][0]["id"], json!(other), "newest first: {page}");
    let next = page["next_cursor"].as_str().unwrap();
    let (_, out, _) = cli(
        addr,
        Some(READER),
        &["tasks", "list", "--failed-step", "--cursor", next, "--json"],
    );
    assert_eq!(ids(&serde_json::from_str(&out).unwrap()), [failed.as_str()]);

    let (ok, out, err) = cli(addr, Some(READER), &["tasks", "show", &failed]);
    assert!(ok, "{err}");
    for part in [
        "state     error",
        "STEP",
        "check",
        "report",
        "cancelled",
        "TRANSITION",
        "pending -> enqueued",
        "does not exist",
    ] {
        assert!(out.contains(part), "{part:?} in {out}");
    }

    // A reader may not repair; the admin may.
    let (ok, _, err) = cli(addr, Some(READER), &["tasks", "retry", &failed]);
    assert!(!ok);
    assert!(err.contains("403") && err.contains("needs admin"), "{err}");
    let (ok, _, err) = cli(addr, None, &["tasks", "list"]);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("missing token"),
        "{err}"
    );
    std::fs::write(&file, "").unwrap();
    let (ok, out, err) = cli(
        addr,
        Some(OPS),
        &["tasks", "retry", &failed, "--reason", "fixed it"],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("task {failed}: ")), "{out}");
    assert_eq!(wait(addr, &failed, LONG)["state"], "complete");
    let (ok, _, err) = cli(addr, Some(OPS), &["tasks", "retry", &failed]);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("is complete"), "{err}");

    let (ok, _, err) = cli(
        addr,
        Some(OPS),
        &[
            "tasks",
            "resolve",
            &other,
            "--step",
            "check",
            "--result",
            "{not json",
        ],
    );
    assert!(!ok);
    assert!(err.contains("--result is not JSON"), "{err}");
    let (ok, _, err) = cli(
        addr,
        Some(OPS),
        &[
            "tasks",
            "resolve",
            &other,
            "--step",
            "check",
            "--result",
            r#"{"found": "cli"}"#,
        ],
    );
    assert!(ok, "{err}");
    let v = wait(addr, &other, LONG);
    assert_eq!(v["result"], json!({ "check": { "found": "cli" } }));

    let sleepy = create(addr, "sleepy", json!({ "sleep_ms": 5000 }));
    let (ok, out, err) = cli(addr, Some(WRITER), &["tasks", "cancel", &sleepy]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("task {sleepy}: cancelled"));

    let (ok, out, err) = cli(addr, Some(READER), &["workers"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("LANGUAGE") && out.contains("rust") && out.contains("live"),
        "{out}"
    );
    let (ok, _, err) = cli("127.0.0.1:9", Some(READER), &["workers"]);
    assert!(!ok);
    assert!(err.contains("cannot reach stepgraph serve"), "{err}");
}
