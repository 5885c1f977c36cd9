//! What the HTTP API and `serve` promise beyond running tasks: `/metrics`
//! content, `/health` when the database goes away, 409 answers, `priority`,
//! and the order in which a setting's file, environment and flag apply.

mod common;

use common::cluster::{create, http, metric, templates_dir, wait, Process, TestDb, TestEnv};
use common::proxy::Proxy;
use serde_json::json;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

/// Embedded `serve`: the orchestrator sees every step and task, so every
/// series counts exactly what ran.
#[test]
fn metrics_count_what_ran() {
    let templates = templates_dir();
    let serve = Process::serve_embedded(templates.path());
    let addr = serve.addr();
    for _ in 0..3 {
        let id = create(addr, "linear", json!({ "even_number": 6 }));
        assert_eq!(wait(addr, &id, LONG)["state"], "complete");
    }
    let m = |series: &str| metric(addr, series);
    assert_eq!(m(r#"stepgraph_tasks{state="complete"}"#), Some(3.0));
    assert_eq!(m(r#"stepgraph_steps{state="complete"}"#), Some(12.0));
    assert_eq!(
        m(r#"stepgraph_queue_depth{queue="orchestration"}"#),
        Some(0.0)
    );
    assert_eq!(m(r#"stepgraph_queue_depth{queue="worker.e2e"}"#), Some(0.0));
    let step = r#"template="e2e/linear",handler="math.square""#;
    assert_eq!(
        m(&format!("stepgraph_step_duration_seconds_count{{{step}}}")),
        Some(12.0)
    );
    assert_eq!(
        m(&format!(
            "stepgraph_step_duration_seconds_bucket{{{step},le=\"+Inf\"}}"
        )),
        Some(12.0)
    );
    assert_eq!(
        m(&format!(
            "stepgraph_step_attempts_total{{{step},outcome=\"completed\"}}"
        )),
        Some(12.0)
    );
    assert_eq!(
        m(r#"stepgraph_task_duration_seconds_count{template="e2e/linear"}"#),
        Some(3.0)
    );
    assert_eq!(
        m(r#"stepgraph_tasks_ended_total{template="e2e/linear",outcome="completed"}"#),
        Some(3.0)
    );
    assert_eq!(m("stepgraph_http_waiting_requests"), Some(0.0));
    // The in-memory store's minute counts, as the dashboard's overview reads them.
    let (_, stats) = http(addr, "GET", "/v1/stats", None);
    let minutes = stats["recent"]["per_minute"].as_array().unwrap();
    let completed: i64 = minutes
        .iter()
        .map(|m| m["completed_steps"].as_i64().unwrap())
        .sum();
    assert_eq!(completed, 12, "{stats}");
    assert_eq!(stats["recent"]["failing_templates"], json!([]), "{stats}");
}

/// Distributed: the state gauges come from the database, whoever ran the steps.
#[test]
fn metrics_of_a_distributed_serve_count_the_database() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let _worker = t.worker(&[]);
    let ids: Vec<String> = (0..4)
        .map(|_| create(serve.addr(), "linear", json!({ "even_number": 6 })))
        .collect();
    for id in &ids {
        assert_eq!(wait(serve.addr(), id, LONG)["state"], "complete");
    }
    let m = |series: &str| metric(serve.addr(), series);
    assert_eq!(m(r#"stepgraph_tasks{state="complete"}"#), Some(4.0));
    assert_eq!(m(r#"stepgraph_steps{state="complete"}"#), Some(16.0));
    assert_eq!(m(r#"stepgraph_queue_depth{queue="worker.e2e"}"#), Some(0.0));
}

/// `/health` says 503, naming the database, while PostgreSQL cannot be
/// reached, and 200 again once it can; the API meanwhile answers, never hangs.
#[test]
fn health_is_503_while_the_database_is_unreachable() {
    let db = TestDb::create();
    let proxy = Proxy::start(0);
    let templates = templates_dir();
    let serve = Process::spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        None,
        templates.path(),
        &[
            ("STEPGRAPH_DATABASE_URL", &proxy.url(&db.name)),
            ("STEPGRAPH_MAX_CONNECTIONS", "3"),
        ],
    );
    let addr = serve.addr().to_string();
    let health = || {
        let start = Instant::now();
        let (status, v) = http(&addr, "GET", "/health", None);
        (status, v, start.elapsed())
    };
    let (status, v, _) = health();
    assert_eq!((status, &v["status"]), (200, &json!("ok")), "{v}");

    let port = proxy.stop();
    let (status, v, took) = health();
    assert_eq!((status, &v["status"]), (503, &json!("unhealthy")), "{v}");
    assert_ne!(v["database"], "ok", "{v}");
    assert!(took < Duration::from_secs(30), "answered after {took:?}");

    let _back = Proxy::start(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v, _) = health();
        if status == 200 {
            assert_eq!(v["database"], "ok");
            break;
        }
        assert!(Instant::now() < deadline, "still {status}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A transition that makes no sense for the task's state is a 409 naming it.
#[test]
fn cancelling_a_finished_task_is_a_409() {
    let templates = templates_dir();
    let serve = Process::serve_embedded(templates.path());
    let addr = serve.addr();
    let id = create(addr, "linear", json!({ "even_number": 6 }));
    assert_eq!(wait(addr, &id, LONG)["state"], "complete");
    let (status, v) = http(addr, "POST", &format!("/v1/tasks/{id}/cancel"), None);
    assert_eq!(status, 409, "{v}");
    let error = v["error"].as_str().expect("a JSON error");
    assert!(error.contains("complete"), "{error}");
    // Nothing changed.
    let (_, task) = http(addr, "GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!(task["state"], "complete");
}

/// `priority` is kept with the task and shown with it (dispatch order does
/// not use it yet: see the README).
#[test]
fn a_tasks_priority_is_stored_and_shown() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let body = json!({ "namespace": "e2e", "name": "linear", "context": { "even_number": 6 }, "priority": 7 });
    let (status, v) = http(
        serve.addr(),
        "POST",
        "/v1/tasks",
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(status, 201, "{v}");
    let id = v["task_id"].as_str().unwrap();
    let (_, task) = http(serve.addr(), "GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!(task["priority"], 7, "{task}");
    assert_eq!(
        t.db.query(&format!(
            "SELECT priority::text FROM sg_tasks WHERE id = '{id}'"
        )),
        ["7"]
    );
}

/// A setting comes from the TOML file, then `STEPGRAPH_*` over it, then the
/// flag over both (seen in where `serve` listens).
#[test]
fn a_flag_beats_the_environment_which_beats_the_config_file() {
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let (file_port, env_port, flag_port) = (ports[0], ports[1], ports[2]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stepgraph.toml");
    std::fs::write(&config, format!("listen = \"127.0.0.1:{file_port}\"\n")).unwrap();
    let config = config.to_str().unwrap();
    let templates = templates_dir();
    let env_listen = format!("127.0.0.1:{env_port}");
    let flag_listen = format!("127.0.0.1:{flag_port}");
    let listens = |args: &[&str], env: &[(&str, &str)]| {
        let p = Process::spawn(args, None, templates.path(), env);
        p.addr().to_string()
    };
    assert_eq!(
        listens(&["serve", "--config", config], &[]),
        format!("127.0.0.1:{file_port}")
    );
    assert_eq!(
        listens(
            &["serve", "--config", config],
            &[("STEPGRAPH_LISTEN", &env_listen)]
        ),
        env_listen
    );
    assert_eq!(
        listens(
            &["serve", "--config", config, "--listen", &flag_listen],
            &[("STEPGRAPH_LISTEN", &env_listen)]
        ),
        flag_listen
    );
}

/// What no store can keep is refused at creation with a 400 naming it
/// (before, PostgreSQL's refusal came back as a 503 that a client retries
/// forever, or the task was stored and could not be read back); `wait`'s
/// bad `timeout_ms` is a JSON 400; a key reused with another request is a
/// 409 naming the key, with the same request the task it created.
#[test]
fn requests_no_store_can_keep_are_400s_and_a_reused_key_a_409() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let addr = serve.addr();
    let post = |body: String| http(addr, "POST", "/v1/tasks", Some(body.as_bytes()));
    let linear = |extra: &str| {
        format!(
            r#"{{"namespace": "e2e", "name": "linear", "context": {{"even_number": 6}}{extra}}}"#
        )
    };
    let deep = format!(
        r#"{{"namespace": "e2e", "name": "linear", "context": {{"even_number": 6, "x": {}1{}}}}}"#,
        "[".repeat(125),
        "]".repeat(125)
    );
    let long_key = linear(&format!(r#", "idempotency_key": "{}""#, "k".repeat(20_000)));
    for (body, says) in [
        (
            r#"{"namespace": "e2e", "name": "linear", "context": {"even_number": 6, "note": "a\u0000b"}}"#.to_string(),
            "context.note holds a NUL character",
        ),
        (linear(r#", "idempotency_key": "a\u0000b""#), "the idempotency key holds a NUL character"),
        (long_key, "the idempotency key is 20000 bytes long; at most 255"),
        (deep, "the context nests deeper than 64 levels"),
    ] {
        let (status, v) = post(body);
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
    assert_eq!(
        t.db.query("SELECT count(*)::text FROM sg_tasks"),
        ["0"],
        "nothing stored"
    );

    let (status, v) = http(
        addr,
        "GET",
        "/v1/tasks/01a2179a-1dce-7403-b659-e6ab4ae78f2f/wait?timeout_ms=soon",
        None,
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("timeout_ms"), "{v}");

    let (status, first) = post(linear(r#", "idempotency_key": "order-9""#));
    assert_eq!(status, 201, "{first}");
    let (status, again) = post(linear(r#", "idempotency_key": "order-9""#));
    assert_eq!((status, &again["task_id"]), (200, &first["task_id"]));
    let other = r#"{"namespace": "e2e", "name": "linear", "context": {"even_number": 8}, "idempotency_key": "order-9"}"#;
    let (status, v) = post(other.to_string());
    assert_eq!(status, 409, "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains(r#""order-9""#) && error.contains(first["task_id"].as_str().unwrap()),
        "{error}"
    );
    let diamond = r#"{"namespace": "e2e", "name": "diamond", "context": {"even_number": 6}, "idempotency_key": "order-9"}"#;
    assert_eq!(post(diamond.to_string()).0, 409);
}

/// Connections that never finish their request headers are closed by the
/// header timeout, and while 5,000 of them are open `serve` still answers.
#[test]
fn half_open_connections_are_closed_and_the_server_keeps_answering() {
    use std::io::Write;
    let templates = templates_dir();
    let serve = Process::spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        None,
        templates.path(),
        &[("STEPGRAPH_HTTP_HEADER_TIMEOUT_MS", "2000")],
    );
    let addr = serve.addr().to_string();
    let opened = Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..5000)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(&addr)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            // Half a request head: the blank line that ends it never comes.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: stepgraph\r\n")
                .unwrap();
            s
        })
        .collect();
    let (status, v) = http(&addr, "GET", "/health", None);
    assert_eq!((status, &v["status"]), (200, &json!("ok")), "{v}");
    // Each is closed by the server.
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(20)),
            "connection {i} still open {:?} after it was opened",
            opened.elapsed()
        );
    }
    assert!(
        opened.elapsed() < Duration::from_secs(30),
        "closing them took {:?}",
        opened.elapsed()
    );
    let (status, _) = http(&addr, "GET", "/health", None);
    assert_eq!(status, 200);
}

/// Beyond `http_max_connections` a new connection is closed at once, and
/// an idle keep-alive connection is closed after the header timeout.
#[test]
fn connections_beyond_the_cap_are_closed_and_idle_ones_time_out() {
    use std::io::{Read, Write};
    let templates = templates_dir();
    let serve = Process::spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        None,
        templates.path(),
        &[
            ("STEPGRAPH_HTTP_HEADER_TIMEOUT_MS", "1500"),
            ("STEPGRAPH_HTTP_MAX_CONNECTIONS", "20"),
        ],
    );
    let addr = serve.addr().to_string();
    // One keep-alive request, then idle.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: stepgraph\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let held: Vec<_> = (0..19)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // The 21st: accepted and closed at once (well before the header timeout).
    let mut over = std::net::TcpStream::connect(&addr).unwrap();
    assert!(
        closed_within(&mut over, Duration::from_millis(1000)),
        "a connection beyond the cap stayed open"
    );
    // The idle keep-alive connection is closed by the timeout.
    let start = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(held);
    // Room again once they are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http(&addr, "GET", "/health", None).0 != 200 {
        assert!(Instant::now() < deadline, "no room after the others closed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the server closes `s` (EOF or reset) within `timeout`; whatever
/// it sends first (a 408, say) is read past.
fn closed_within(s: &mut std::net::TcpStream, timeout: Duration) -> bool {
    use std::io::{ErrorKind, Read};
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}
