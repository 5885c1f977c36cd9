//! What a worker process counts: its `/metrics` (worker.metrics_listen),
//! scraped after a task whose step fails once and then succeeds, shows
//! exactly one failed attempt, one retry and one completion for that
//! template and handler, in the Prometheus text format.

mod common;

use common::cluster::{create, http, wait, TestEnv};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// `name{labels}` -> value, for every sample of a Prometheus text page; a
/// line that is neither a comment nor `series value` fails the test.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_workers_metrics_count_a_failed_attempt_its_retry_and_the_completion() {
    let t = TestEnv::new();
    t.add_template(
        "flaky.yaml",
        r#"
namespace: e2e
name: flaky
version: "1"
steps:
  - name: shaky
    handler: { callable: util.fail_first_attempts, config: { failures: 1 } }
    retry: { max_attempts: 3, backoff: exponential, backoff_base_ms: 10 }
"#,
    );
    let serve = t.serve(&[]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let _worker = t.worker(&[("STEPGRAPH_WORKER_METRICS_LISTEN", &metrics)]);
    let id = create(serve.addr(), "flaky", json!({}));
    let done = wait(serve.addr(), &id, Duration::from_secs(30));
    assert_eq!(done["state"], "complete", "{done}");

    let (status, page) = http(&metrics, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let text = page.as_str().expect("text").to_string();
    let s = samples(&text);
    let labels = r#"template="e2e/flaky",handler="util.fail_first_attempts""#;
    for (series, want) in [
        (
            format!("stepgraph_step_attempts_total{{{labels},outcome=\"failed\"}}"),
            1.0,
        ),
        (
            format!("stepgraph_step_attempts_total{{{labels},outcome=\"completed\"}}"),
            1.0,
        ),
        (format!("stepgraph_step_retries_total{{{labels}}}"), 1.0),
        (
            r#"stepgraph_tasks_ended_total{template="e2e/flaky",outcome="completed"}"#.to_string(),
            1.0,
        ),
    ] {
        assert_eq!(s.get(&series), Some(&want), "{series} in:\n{text}");
    }
    assert!(
        !s.keys()
            .any(|k| k.starts_with("stepgraph_step_errors_total")),
        "{text}"
    );
    // The first attempt came through the worker's queue (serve created the task).
    let waited = format!("stepgraph_step_queue_wait_seconds_count{{{labels}}}");
    assert!(
        s.get(&waited).is_some_and(|n| *n >= 1.0),
        "{waited} in:\n{text}"
    );
    assert!(
        text.contains("# TYPE stepgraph_step_retries_total counter"),
        "{text}"
    );
    assert_eq!(http(&metrics, "GET", "/other", None).0, 404);
    accepted_by_the_prometheus_parser(&text);

    // A message the worker cannot read is dead-lettered, and counted.
    t.db.query("SELECT sg_send(ARRAY['worker.e2e'], ARRAY[convert_to('not json', 'UTF8')], ARRAY[0::bigint])::text");
    let dead = r#"stepgraph_dead_letters_total{queue="worker.e2e"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, page) = http(&metrics, "GET", "/metrics", None);
        if samples(page.as_str().unwrap()).get(dead) == Some(&1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{dead} never 1: {page}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every metric the Grafana dashboard charts is one serve or a worker exports.
    let (_, served) = http(serve.addr(), "GET", "/metrics", None);
    let exported = format!("{text}{}", served.as_str().unwrap());
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/stepgraph.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("stepgraph_"))
            {
                charted += 1;
                assert!(
                    exported.contains(&format!("# TYPE {name} "))
                        || exported.contains(&format!("\n{name}{{"))
                        || exported.contains(&format!("\n{name} ")),
                    "the dashboard charts {name}, which nothing exports ({:?})",
                    panel["title"]
                );
            }
        }
    }
    assert!(charted >= 10, "{charted}");
}

/// The page, read by the Prometheus project's own text-format parser
/// (prometheus_client, installed by ./scripts/python-deps).
fn accepted_by_the_prometheus_parser(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\n\
             families = list(parse(sys.stdin.read()))\nprint(len(families))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the page: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(families >= 5, "{families} families");
}

#[test]
fn a_workers_metrics_count_circuit_breaker_transitions() {
    let t = TestEnv::new();
    t.add_template(
        "tripping.yaml",
        r#"
namespace: e2e
name: tripping
version: "1"
steps:
  - name: shaky
    handler: { callable: util.fail_first_attempts, config: { failures: 1 } }
    retry: { max_attempts: 5, backoff: exponential, backoff_base_ms: 10 }
"#,
    );
    let serve = t.serve(&[]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let _worker = t.worker(&[
        ("STEPGRAPH_WORKER_METRICS_LISTEN", &metrics),
        ("STEPGRAPH_WORKER_BREAKER_FAILURE_THRESHOLD", "1"),
        ("STEPGRAPH_WORKER_BREAKER_COOL_DOWN_MS", "200"),
    ]);
    let id = create(serve.addr(), "tripping", json!({}));
    let done = wait(serve.addr(), &id, Duration::from_secs(30));
    assert_eq!(done["state"], "complete", "{done}");
    let (_, page) = http(&metrics, "GET", "/metrics", None);
    let text = page.as_str().unwrap().to_string();
    let s = samples(&text);
    let series = |to: &str| {
        format!(
            r#"stepgraph_circuit_transitions_total{{handler="util.fail_first_attempts",to="{to}"}}"#
        )
    };
    // Opened by the failure, half-open after the cool-down, closed by the probe's success.
    assert!(s.get(&series("open")).is_some_and(|n| *n >= 1.0), "{text}");
    assert!(
        s.get(&series("half_open")).is_some_and(|n| *n >= 1.0),
        "{text}"
    );
    assert_eq!(s.get(&series("closed")), Some(&1.0), "{text}");
    accepted_by_the_prometheus_parser(&text);
}

#[test]
fn a_workers_open_circuit_breaker_is_listed_with_it() {
    let t = TestEnv::new();
    t.add_template(
        "tripping.yaml",
        r#"
namespace: e2e
name: tripping
version: "1"
steps:
  - name: shaky
    handler: { callable: util.fail_first_attempts, config: { failures: 1 } }
    retry: { max_attempts: 5, backoff: exponential, backoff_base_ms: 10 }
"#,
    );
    let serve = t.serve(&[]);
    let _worker = t.worker(&[
        ("STEPGRAPH_WORKER_HEARTBEAT_MS", "100"),
        ("STEPGRAPH_WORKER_BREAKER_FAILURE_THRESHOLD", "1"),
        ("STEPGRAPH_WORKER_BREAKER_COOL_DOWN_MS", "60000"),
    ]);
    create(serve.addr(), "tripping", json!({}));
    // Opened by the first failure, it stays open for the minute's cool-down;
    // the worker's next heartbeat tells the registry.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = http(serve.addr(), "GET", "/v1/workers", None);
        assert_eq!(status, 200, "{v}");
        let circuits = &v["workers"][0]["open_circuits"];
        if circuits == &json!([{ "handler": "util.fail_first_attempts", "state": "open" }]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no open circuit listed: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
