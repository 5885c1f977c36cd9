//! Who may use the API: bearer tokens with nested scopes on every
//! endpoint, an open API only on loopback, and `stepgraph tokens new`.

mod common;

use common::cluster::TestEnv;
use common::ops::*;
use serde_json::json;

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
        "/v1/workers",
        "/v1/schedules",
        "/v1/schedules/none",
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
            "/v1/schedules".to_string(),
            Some(json!({
                "name": "nightly", "namespace": "e2e", "template": "linear",
                "cron": "0 3 * * *", "context": { "even_number": 2 }
            })),
            "write",
        ),
        (
            "POST",
            "/v1/schedules/nightly/pause".to_string(),
            Some(json!({})),
            "write",
        ),
        ("DELETE", "/v1/schedules/nightly".to_string(), None, "write"),
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
    // The API's document needs no token: it holds no data.
    let (status, doc) = call(closed.addr(), None, "GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    // A method an endpoint does not take: 405 with a JSON error, after the token check.
    let (status, v) = call(closed.addr(), Some(OPS), "DELETE", "/v1/stats", None);
    assert_eq!(status, 405, "{v}");
    assert!(v["error"].as_str().unwrap().contains("method"), "{v}");
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
