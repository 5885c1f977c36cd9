//! What the operations tests share: a serve with tokens of each scope (and
//! a worker), requests made with a token, and a task that fails until a
//! file exists (tests/fixtures/extra/repairable.yaml).

use super::cluster::{try_http_as, Process, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stepgraph_http::token_hash;

pub const LONG: Duration = Duration::from_secs(60);

/// The tokens every cluster here is configured with, by scope.
pub const READER: &str = "reader-secret";
pub const WRITER: &str = "writer-secret";
pub const OPS: &str = "ops-secret";

pub fn tokens() -> String {
    format!(
        "reader:read:{},writer:write:{},ops:admin:{}",
        token_hash(READER),
        token_hash(WRITER),
        token_hash(OPS)
    )
}

pub fn call(
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
pub fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    call(addr, Some(OPS), "POST", path, Some(body))
}

pub fn get(addr: &str, path: &str) -> (u16, Value) {
    call(addr, Some(OPS), "GET", path, None)
}

pub fn create(addr: &str, name: &str, context: Value) -> String {
    let (status, v) = post(
        addr,
        "/v1/tasks",
        json!({ "namespace": "e2e", "name": name, "context": context }),
    );
    assert_eq!(status, 201, "{v}");
    v["task_id"].as_str().unwrap().to_string()
}

pub fn wait(addr: &str, id: &str, timeout: Duration) -> Value {
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
pub fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {page}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

pub fn list(addr: &str, query: &str) -> Vec<String> {
    let (status, page) = get(addr, &format!("/v1/tasks?{query}"));
    assert_eq!(status, 200, "{page}");
    ids(&page)
}

/// A repairable task (see tests/fixtures/extra/repairable.yaml) whose
/// first step fails until `file` exists; waited for until it ended.
pub fn failing_task(addr: &str, file: &std::path::Path) -> String {
    let id = create(
        addr,
        "repairable",
        json!({ "required_file": file.to_str().unwrap() }),
    );
    let v = wait(addr, &id, LONG);
    assert_eq!(v["state"], "error", "{v}");
    id
}

pub struct Cluster {
    pub t: TestEnv,
    pub serve: Process,
    pub _worker: Process,
}

pub fn cluster() -> Cluster {
    let t = TestEnv::new();
    let serve = t.serve(&[("STEPGRAPH_TOKENS", &tokens())]);
    let worker = t.worker(&[]);
    Cluster {
        t,
        serve,
        _worker: worker,
    }
}

/// `stepgraph <args>` as a client of `addr`: its exit success, stdout and stderr.
pub fn cli(addr: &str, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
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
