//! Operating the system through the HTTP API, against real PostgreSQL and
//! real `stepgraph serve` / `stepgraph worker` processes: finding tasks
//! (filters, keyset pages), the stats, and repairs (retry a failed task
//! once its cause is fixed, resolve a step by hand), each recorded in the
//! audit trail with who asked and why.

mod common;

use common::cluster::{try_http_as, Process, TestEnv};
use common::SIX_16;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use stepgraph_http::token_hash;

const LONG: Duration = Duration::from_secs(60);

/// The tokens every cluster here is configured with, by scope.
const READER: &str = "reader-secret";
const WRITER: &str = "writer-secret";
const OPS: &str = "ops-secret";

fn tokens() -> String {
    format!(
        "reader:read:{},writer:write:{},ops:admin:{}",
        token_hash(READER),
        token_hash(WRITER),
        token_hash(OPS)
    )
}

fn call(
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    try_http_as(
        addr,
        token,
        method,
        path,
        body.as_deref().map(str::as_bytes),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// As the admin token `ops`.
fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    call(addr, Some(OPS), "POST", path, Some(body))
}

fn get(addr: &str, path: &str) -> (u16, Value) {
    call(addr, Some(OPS), "GET", path, None)
}

fn create(addr: &str, name: &str, context: Value) -> String {
    let (status, v) = post(
        addr,
        "/v1/tasks",
        json!({ "namespace": "e2e", "name": name, "context": context }),
    );
    assert_eq!(status, 201, "{v}");
    v["task_id"].as_str().unwrap().to_string()
}

fn wait(addr: &str, id: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, v) = get(addr, &format!("/v1/tasks/{id}/wait?timeout_ms=10000"));
        assert_eq!(status, 200, "{v}");
        let state = v["state"].as_str().unwrap_or_default();
        if ["complete", "error", "cancelled"].contains(&state) || Instant::now() > deadline {
            return v;
        }
    }
}

/// The ids of a list answer.
fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {page}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

fn list(addr: &str, query: &str) -> Vec<String> {
    let (status, page) = get(addr, &format!("/v1/tasks?{query}"));
    assert_eq!(status, 200, "{page}");
    ids(&page)
}

/// A repairable task (see tests/fixtures/extra/repairable.yaml) whose
/// first step fails until `file` exists; waited for until it ended.
fn failing_task(addr: &str, file: &std::path::Path) -> String {
    let id = create(
        addr,
        "repairable",
        json!({ "required_file": file.to_str().unwrap() }),
    );
    let v = wait(addr, &id, LONG);
    assert_eq!(v["state"], "error", "{v}");
    id
}

struct Cluster {
    t: TestEnv,
    serve: Process,
    _worker: Process,
}

fn cluster() -> Cluster {
    let t = TestEnv::new();
    let serve = t.serve(&[("STEPGRAPH_TOKENS", &tokens())]);
    let worker = t.worker(&[]);
    Cluster {
        t,
        serve,
        _worker: worker,
    }
}

#[test]
fn a_failed_task_is_found_retried_once_fixed_and_completes() {
    let c = cluster();
    let addr = c.serve.addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("restored");
    let ordinary: Vec<String> = (0..3)
        .map(|_| create(addr, "linear", json!({ "even_number": 6 })))
        .collect();
    for id in &ordinary {
        assert_eq!(wait(addr, id, LONG)["result"], json!(SIX_16));
    }
    let failed = failing_task(addr, &file);

    // Found by every filter that fits it, and by none that does not.
    assert_eq!(list(addr, "state=error"), [failed.as_str()]);
    assert_eq!(list(addr, "has_failed_step=true"), [failed.as_str()]);
    assert_eq!(
        list(addr, "state=error,cancelled&name=repairable"),
        [failed.as_str()]
    );
    assert_eq!(list(addr, "state=error&name=linear"), Vec::<String>::new());
    let newest_first: Vec<String> = ordinary.iter().rev().cloned().collect();
    assert_eq!(list(addr, "state=complete"), newest_first);
    assert_eq!(
        list(addr, "has_failed_step=false&namespace=e2e"),
        newest_first
    );
    let mut all = vec![failed.clone()];
    all.extend(newest_first.clone());
    assert_eq!(list(addr, ""), all);
    assert_eq!(list(addr, "state=complete&state=error"), all);
    let (_, page) = get(addr, "/v1/tasks?state=error");
    let summary = &page["tasks"][0];
    assert_eq!(summary["name"], "repairable");
    assert_eq!(summary["error"]["step"], "check", "{summary}");
    assert!(
        summary.get("context").is_none(),
        "a list leaves the context out"
    );

    // Failing counted in the stats.
    let (status, stats) = get(addr, "/v1/stats");
    assert_eq!(status, 200, "{stats}");
    assert!(
        stats["recent"]["failed_tasks"].as_i64().unwrap() >= 1,
        "{stats}"
    );
    assert!(
        stats["recent"]["failed_steps"].as_i64().unwrap() >= 1,
        "{stats}"
    );
    let repairable = stats["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "repairable")
        .unwrap();
    assert_eq!(repairable["tasks"], json!({ "error": 1 }), "{stats}");
    assert_eq!(
        repairable["steps"],
        json!({ "error": 1, "cancelled": 1 }),
        "{stats}"
    );

    // Fixed, then retried: it goes on from the failed step, with a fresh attempt.
    std::fs::write(&file, "").unwrap();
    let (status, v) = post(
        addr,
        &format!("/v1/tasks/{failed}/retry"),
        json!({ "reason": "the file is back" }),
    );
    assert_eq!(status, 200, "{v}");
    let v = wait(addr, &failed, LONG);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(
        v["result"],
        json!({ "check": { "found": file.to_str().unwrap() } })
    );
    assert!(v["error"].is_null(), "the old error is gone: {v}");
    let check = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "check")
        .unwrap();
    assert_eq!(
        (check["attempts"].as_u64(), check["max_attempts"].as_u64()),
        (Some(2), Some(4))
    );
    // The repair is in the audit trail, with who and why.
    let repaired: Vec<&Value> = v["transitions"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["metadata"]["action"] == "retried")
        .collect();
    assert_eq!(
        repaired.len(),
        2,
        "the failed step and the one its failure cancelled: {v}"
    );
    for t in &repaired {
        assert_eq!(t["metadata"]["by"], "ops", "the token's name");
        assert_eq!(t["metadata"]["reason"], "the file is back");
        assert_eq!(t["to"], "pending");
    }
    assert_eq!(list(addr, "state=error"), Vec::<String>::new());
    common_assert_clean(&c.t, &failed);

    // What makes no sense in the task's or step's state is a 409 naming it.
    let (status, v) = post(addr, &format!("/v1/tasks/{failed}/retry"), json!({}));
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is complete"), "{v}");
    let (status, v) = post(
        addr,
        &format!("/v1/tasks/{failed}/steps/report/resolve"),
        json!({ "result": 1 }),
    );
    assert_eq!(status, 409, "{v}");
}

/// Every step completed at most once, and the audit chains are unbroken.
fn common_assert_clean(t: &TestEnv, task: &str) {
    let twice = t.db.query(&format!(
        "SELECT step_id::text FROM sg_step_transitions WHERE task_id = '{task}' AND to_state = 'complete'
          GROUP BY step_id HAVING count(*) > 1"
    ));
    assert!(twice.is_empty(), "completed twice: {twice:?}");
    let broken = t.db.query(&format!(
        "SELECT step_id::text FROM (SELECT step_id, from_state, lag(to_state) OVER w AS prev
           FROM sg_step_transitions WHERE task_id = '{task}' WINDOW w AS (PARTITION BY step_id ORDER BY sort_key)) x
          WHERE from_state IS DISTINCT FROM prev"
    ));
    assert!(broken.is_empty(), "broken chains: {broken:?}");
}

#[test]
fn a_step_resolved_by_hand_lets_its_dependents_run_with_its_result() {
    let c = cluster();
    let addr = c.serve.addr();
    let dir = tempfile::tempdir().unwrap();
    let failed = failing_task(addr, &dir.path().join("never"));

    // Bad requests first: each a 4xx naming the problem, nothing changed.
    let resolve = format!("/v1/tasks/{failed}/steps/check/resolve");
    let (status, v) = post(addr, &resolve, json!({ "reason": "no result" }));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("result"), "{v}");
    let (status, v) = post(
        addr,
        &format!("/v1/tasks/{failed}/steps/nope/resolve"),
        json!({ "result": 1 }),
    );
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no step `nope`"),
        "{v}"
    );
    let (status, v) = post(
        addr,
        &format!("/v1/tasks/{failed}/steps/report/retry"),
        json!({}),
    );
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("`report`"), "{v}");
    assert!(v["error"].as_str().unwrap().contains("cancelled"), "{v}");
    let (status, v) = post(addr, &resolve, json!({ "result": 1, "extra": true }));
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("extra"), "{v}");
    let (status, v) = post(addr, "/v1/tasks/not-an-id/retry", json!({}));
    assert_eq!(status, 400, "{v}");
    assert_eq!(list(addr, "state=error"), [failed.as_str()]);

    let (status, v) = post(
        addr,
        &resolve,
        json!({ "result": { "found": "by hand" }, "reason": "checked it myself" }),
    );
    assert_eq!(status, 200, "{v}");
    let v = wait(addr, &failed, LONG);
    assert_eq!(v["state"], "complete", "{v}");
    assert_eq!(v["result"], json!({ "check": { "found": "by hand" } }));
    let check = &v["steps"][0];
    assert_eq!(
        (&check["name"], &check["state"]),
        (&json!("check"), &json!("resolved_manually"))
    );
    let resolved = v["transitions"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["to"] == "resolved_manually")
        .unwrap();
    assert_eq!(
        resolved["metadata"],
        json!({ "action": "resolved", "by": "ops", "reason": "checked it myself" })
    );
    common_assert_clean(&c.t, &failed);
}

#[test]
fn pages_miss_and_repeat_nothing_while_new_tasks_arrive() {
    let c = cluster();
    let addr = c.serve.addr().to_string();
    let before: Vec<String> = (0..120)
        .map(|_| create(&addr, "linear", json!({ "even_number": 2 })))
        .collect();
    let (seen, during) = std::thread::scope(|scope| {
        let creating = scope.spawn(|| {
            (0..30)
                .map(|_| create(&addr, "linear", json!({ "even_number": 2 })))
                .collect::<Vec<_>>()
        });
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("/v1/tasks?limit=50&cursor={c}"),
                None => "/v1/tasks?limit=50".to_string(),
            };
            let (status, page) = get(&addr, &query);
            assert_eq!(status, 200, "{page}");
            let got = ids(&page);
            assert!(got.len() <= 50);
            seen.extend(got);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        (seen, creating.join().unwrap())
    });
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a task was listed twice");
    for id in &before {
        assert!(unique.contains(id), "task {id} was missed");
    }
    let all: HashSet<&String> = before.iter().chain(&during).collect();
    assert!(unique.iter().all(|id| all.contains(id)));
    // Newest first throughout.
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted);
}

#[test]
fn bad_list_queries_and_unknown_create_fields_are_400s_naming_them() {
    let c = cluster();
    let addr = c.serve.addr();
    for (query, names) in [
        ("state=exploded", "exploded"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("colour=red", "colour"),
        ("created_after=yesterday", "created_after"),
        ("has_failed_step=maybe", "has_failed_step"),
        ("cursor=abc", "cursor"),
    ] {
        let (status, v) = get(addr, &format!("/v1/tasks?{query}"));
        assert_eq!(status, 400, "{query}: {v}");
        assert!(v["error"].as_str().unwrap().contains(names), "{query}: {v}");
    }
    let (status, v) = post(
        addr,
        "/v1/tasks",
        json!({ "namespace": "e2e", "name": "linear", "context": { "even_number": 2 }, "run_at": "2030-01-01T00:00:00Z" }),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("run_at"), "{v}");
    assert_eq!(list(addr, ""), Vec::<String>::new(), "nothing was created");
    // A time window.
    let id = create(addr, "linear", json!({ "even_number": 2 }));
    let (_, v) = get(addr, &format!("/v1/tasks/{id}"));
    let created = v["created_at"].as_str().unwrap().replace('+', "%2B");
    assert_eq!(
        list(addr, &format!("created_after={created}")),
        [id.as_str()]
    );
    assert_eq!(
        list(addr, &format!("created_before={created}")),
        Vec::<String>::new()
    );
    assert_eq!(
        list(addr, "idempotency_key=none-such"),
        Vec::<String>::new()
    );
}

#[test]
fn the_embedded_server_lists_and_repairs_the_same_way() {
    let templates = common::cluster::templates_dir();
    let serve = Process::serve_embedded(templates.path());
    let addr = serve.addr();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("later");
    let failed = failing_task(addr, &file);
    let ok = create(addr, "linear", json!({ "even_number": 6 }));
    wait(addr, &ok, LONG);
    assert_eq!(list(addr, "state=error"), [failed.as_str()]);
    assert_eq!(list(addr, "limit=1"), [ok.as_str()]);
    let (_, page) = get(addr, "/v1/tasks?limit=1");
    let next = page["next_cursor"].as_str().unwrap();
    assert_eq!(
        list(addr, &format!("limit=1&cursor={next}")),
        [failed.as_str()]
    );
    std::fs::write(&file, "").unwrap();
    let (status, v) = post(addr, &format!("/v1/tasks/{failed}/retry"), json!({}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(wait(addr, &failed, LONG)["state"], "complete");
}

#[test]
fn every_endpoint_needs_a_token_with_its_scope() {
    let c = cluster();
    let addr = c.serve.addr();
    let dir = tempfile::tempdir().unwrap();
    let failed = failing_task(addr, &dir.path().join("never"));
    let read = [
        "/v1/tasks",
        &format!("/v1/tasks/{failed}"),
        &format!("/v1/tasks/{failed}/wait?timeout_ms=1"),
        "/v1/stats",
        "/v1/templates",
    ]
    .map(|p| ("GET", p.to_string(), None, "read"));
    let create = json!({ "namespace": "e2e", "name": "linear", "context": { "even_number": 2 } });
    let changes = [
        (
            "POST",
            format!("/v1/tasks/{failed}/steps/nope/retry"),
            Some(json!({})),
            "admin",
        ),
        (
            "POST",
            format!("/v1/tasks/{failed}/steps/nope/resolve"),
            Some(json!({ "result": 1 })),
            "admin",
        ),
        (
            "POST",
            format!("/v1/tasks/{failed}/retry"),
            Some(json!({})),
            "admin",
        ),
        ("POST", "/v1/tasks".to_string(), Some(create), "write"),
        (
            "POST",
            format!("/v1/tasks/{failed}/cancel"),
            Some(json!({})),
            "write",
        ),
    ];
    let rank = |scope: &str| {
        ["read", "write", "admin"]
            .iter()
            .position(|s| *s == scope)
            .unwrap()
    };
    for (method, path, body, needs) in read.into_iter().chain(changes) {
        let (status, v) = call(addr, None, method, &path, body.clone());
        assert_eq!(status, 401, "{method} {path} without a token: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("missing token"),
            "{v}"
        );
        let (status, v) = call(addr, Some("not-a-token"), method, &path, body.clone());
        assert_eq!(status, 401, "{method} {path} with an unknown token: {v}");
        for (token, scope) in [(READER, "read"), (WRITER, "write"), (OPS, "admin")] {
            let (status, v) = call(addr, Some(token), method, &path, body.clone());
            if rank(scope) < rank(needs) {
                assert_eq!(status, 403, "{method} {path} as {scope}: {v}");
                assert!(
                    v["error"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("needs {needs}")),
                    "{v}"
                );
            } else {
                assert!(
                    ![401, 403].contains(&status),
                    "{method} {path} as {scope}: {status} {v}"
                );
            }
        }
    }
    // The probes answer without a token (open_probes, the default).
    assert_eq!(call(addr, None, "GET", "/health", None).0, 200);
    assert_eq!(call(addr, None, "GET", "/metrics", None).0, 200);
    // Nothing a refused request asked for happened: the reader's create
    // made no task (the writer's and ops' did).
    assert_eq!(list(addr, "").len(), 3);
    let closed = c.t.serve(&[
        ("STEPGRAPH_TOKENS", &tokens()),
        ("STEPGRAPH_OPEN_PROBES", "false"),
    ]);
    assert_eq!(call(closed.addr(), None, "GET", "/health", None).0, 401);
    assert_eq!(
        call(closed.addr(), Some(READER), "GET", "/health", None).0,
        200
    );
}

#[test]
fn an_open_api_serves_only_on_loopback_unless_told_insecure() {
    let t = TestEnv::new();
    let templates = common::cluster::templates_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .args(["serve", "--listen", "0.0.0.0:0", "--templates"])
        .arg(templates.path())
        .env("STEPGRAPH_DATABASE_URL", &t.db.url)
        .env_remove("STEPGRAPH_TOKENS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no API tokens are configured") && err.contains("insecure"),
        "{err}"
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .args(["serve", "--listen", "127.0.0.1:0", "--templates"])
        .arg(templates.path())
        .env("STEPGRAPH_DATABASE_URL", &t.db.url)
        .env("STEPGRAPH_TOKENS", "ops:root:sha256:00")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("token \"ops\"") && err.contains("root"),
        "{err}"
    );
    // Told insecure, it serves (and says so in its log).
    let open = t.serve(&[("STEPGRAPH_INSECURE", "true")]);
    assert_eq!(call(open.addr(), None, "GET", "/v1/tasks", None).0, 200);
}

#[test]
fn tokens_new_prints_a_token_its_configuration_admits() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .args(["tokens", "new", "--name", "ci", "--scope", "write"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string();
    let env = text
        .lines()
        .find_map(|l| l.strip_prefix("or: STEPGRAPH_TOKENS="))
        .unwrap()
        .to_string();
    assert!(env.starts_with("ci:write:sha256:"), "{text}");
    assert!(
        !text.contains(&format!("hash = \"{token}")),
        "the token itself is not configured"
    );
    let t = TestEnv::new();
    let serve = t.serve(&[("STEPGRAPH_TOKENS", &env)]);
    let body = json!({ "namespace": "e2e", "name": "linear", "context": { "even_number": 2 } });
    assert_eq!(
        call(serve.addr(), Some(&token), "POST", "/v1/tasks", Some(body)).0,
        201
    );
    assert_eq!(
        call(
            serve.addr(),
            Some(&token),
            "POST",
            "/v1/tasks/x/retry",
            Some(json!({}))
        )
        .0,
        403
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .args(["tokens", "new", "--name", "ci", "--scope", "everything"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));
}

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
    let worker = t.logged(&["worker"], &json, &worker_log);
    let addr = serve.addr();
    let ok = create(addr, "linear", json!({ "even_number": 2 }));
    let slow = create(addr, "naps_too_long", json!({ "sleep_ms": 2000 }));
    assert_eq!(wait(addr, &ok, LONG)["state"], "complete");
    assert_eq!(wait(addr, &slow, LONG)["state"], "error");
    let failed = failing_task(addr, &dir.path().join("never"));
    drop((serve, worker));

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

/// `stepgraph <args>` as a client of `addr`: its exit success, stdout and stderr.
fn cli(addr: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"));
    cmd.args(args)
        .env("STEPGRAPH_SERVER", format!("http://{addr}"))
        .env_remove("STEPGRAPH_TOKEN");
    if let Some(t) = token {
        cmd.env("STEPGRAPH_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
