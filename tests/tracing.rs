//! Traces across processes: an OTLP/HTTP receiver in the test decodes what
//! `serve` and a `worker` (real processes on PostgreSQL, spans exported with
//! `STEPGRAPH_OTLP_ENDPOINT`) send, and finds each task's span (continuing
//! the caller's `traceparent`) with its steps' attempt spans as children and
//! their queue wait, handler run and commit under those.

mod common;

use common::cluster::{http, wait, TestEnv};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use parking_lot::Mutex;
use prost::Message;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The spans received so far, with the service that sent each.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP trace receiver on a free port: its address and what it got.
fn receiver() -> (String, Received) {
    let received: Received = Default::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let sink = received.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |body: axum::body::Bytes| async move {
                    let request = ExportTraceServiceRequest::decode(body.as_ref())
                        .expect("an OTLP trace export request");
                    let mut spans = sink.lock();
                    for rs in request.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (format!("http://{addr}"), received)
}

fn text(v: &AnyValue) -> Option<String> {
    match v {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(n) => Some(n.to_string()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| text(a.value.as_ref()?.value.as_ref()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /v1/tasks` with extra request headers; the status and the body.
fn create_with(addr: &str, headers: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/tasks HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, payload) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

/// The spans of trace `trace_id`, once `ready` holds for them (30 s at most).
fn spans_of(received: &Received, trace_id: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans: Vec<Span> = received
            .lock()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace_id)
            .map(|(_, s)| s.clone())
            .collect();
        if ready(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id}: only {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const TEMPLATE: &str = r#"
namespace: e2e
name: traced
version: "1"
steps:
  - name: shaky
    handler: { callable: util.fail_first_attempts, config: { failures: 1 } }
    retry: { max_attempts: 3, backoff: exponential, backoff_base_ms: 10 }
  - name: echo
    dependencies: [shaky]
    handler: { callable: util.echo_dependencies }
"#;

#[test]
fn a_tasks_span_continues_the_callers_trace_with_its_steps_attempts_under_it() {
    let t = TestEnv::new();
    t.add_template("traced.yaml", TEMPLATE);
    let (endpoint, received) = receiver();
    let env = [
        ("STEPGRAPH_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let serve = t.serve(&env);
    let _worker = t.worker(&env);
    let task = json!({ "namespace": "e2e", "name": "traced", "context": {} });

    // A malformed traceparent in the body is the caller's mistake: 400, named.
    let bad = json!({ "namespace": "e2e", "name": "traced", "traceparent": "00-nope" });
    let (status, v) = create_with(serve.addr(), "", &bad);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not a W3C traceparent"),
        "{v}"
    );

    // The caller did not sample its trace: the task carries it, nothing is recorded.
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let (status, v) = create_with(
        serve.addr(),
        "",
        &json!({ "namespace": "e2e", "name": "traced", "traceparent": unsampled }),
    );
    assert_eq!(status, 201, "{v}");
    let quiet = wait(
        serve.addr(),
        v["task_id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(quiet["state"], "complete", "{quiet}");
    assert_eq!(
        quiet["trace"]["trace_id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(quiet["trace"]["sampled"], false);

    // Continued from the header.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let header = format!("traceparent: 00-{trace_id}-{caller_span}-01\r\n");
    let (status, v) = create_with(serve.addr(), &header, &task);
    assert_eq!(status, 201, "{v}");
    let id = v["task_id"].as_str().unwrap().to_string();
    let done = wait(serve.addr(), &id, Duration::from_secs(30));
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(done["trace"]["trace_id"], trace_id, "{done}");
    assert_eq!(done["trace"]["parent_span_id"], caller_span, "{done}");

    // A malformed header is dropped (W3C): a new trace, started here.
    let (status, v) = create_with(serve.addr(), "traceparent: garbage\r\n", &task);
    assert_eq!(status, 201, "{v}");
    let fresh = wait(
        serve.addr(),
        v["task_id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    let fresh_trace = fresh["trace"]["trace_id"].as_str().unwrap().to_string();
    assert_ne!(fresh_trace, trace_id);
    assert!(fresh["trace"].get("parent_span_id").is_none(), "{fresh}");

    let complete = |spans: &[Span]| {
        spans.iter().any(|s| s.name == "task e2e/traced")
            && spans.iter().filter(|s| s.name.starts_with("step ")).count() == 3
            && spans
                .iter()
                .filter(|s| s.name.starts_with("handler "))
                .count()
                == 3
    };
    let spans = spans_of(&received, trace_id, complete);
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    let task_span = spans.iter().find(|s| s.name == "task e2e/traced").unwrap();
    assert_eq!(hex(&task_span.parent_span_id), caller_span);
    assert_eq!(
        hex(&task_span.span_id),
        done["trace"]["span_id"].as_str().unwrap()
    );
    assert_eq!(
        attr(task_span, "stepgraph.task_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        attr(task_span, "stepgraph.template").as_deref(),
        Some("e2e/traced")
    );
    assert_eq!(
        attr(task_span, "stepgraph.outcome").as_deref(),
        Some("complete")
    );
    assert!(task_span.end_time_unix_nano > task_span.start_time_unix_nano);

    let steps: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("step "))
        .collect();
    for step in &steps {
        assert_eq!(step.parent_span_id, task_span.span_id, "{}", step.name);
        // The task's span ends at its completion time as stored (the API's
        // completed_at); the last step's span ends once that commit returns.
        assert!(step.start_time_unix_nano >= task_span.start_time_unix_nano);
        assert!(
            step.start_time_unix_nano < task_span.end_time_unix_nano,
            "{}",
            step.name
        );
        assert_eq!(
            attr(step, "stepgraph.task_id").as_deref(),
            Some(id.as_str())
        );
        let children: Vec<&str> = spans
            .iter()
            .filter(|c| c.parent_span_id == step.span_id)
            .map(|c| c.name.as_str())
            .collect();
        let handler = format!("handler {}", attr(step, "stepgraph.handler").unwrap());
        assert!(
            children.contains(&handler.as_str()),
            "{}: {children:?}",
            step.name
        );
        assert!(
            children.iter().any(|c| *c == "commit" || *c == "submit"),
            "{}: {children:?}",
            step.name
        );
    }
    let attempt = |name: &str, n: &str| {
        steps
            .iter()
            .find(|s| s.name == name && attr(s, "stepgraph.attempt").as_deref() == Some(n))
            .unwrap_or_else(|| panic!("no span of {name} attempt {n}"))
    };
    let failed = attempt("step shaky", "1");
    assert_eq!(attr(failed, "stepgraph.outcome").as_deref(), Some("failed"));
    assert_eq!(
        failed.status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    let retried = attempt("step shaky", "2");
    assert_eq!(
        attr(retried, "stepgraph.outcome").as_deref(),
        Some("completed")
    );
    assert_eq!(
        attr(retried, "stepgraph.handler").as_deref(),
        Some("util.fail_first_attempts")
    );
    assert!(retried.start_time_unix_nano >= failed.end_time_unix_nano);
    let echo = attempt("step echo", "1");
    assert_eq!(attr(echo, "stepgraph.step").as_deref(), Some("echo"));
    // The first attempt came through the queue from `serve`: it waited there.
    assert!(
        spans
            .iter()
            .any(|c| c.parent_span_id == failed.span_id && c.name == "queue wait"),
        "no queue wait under the first attempt"
    );
    for s in &spans {
        let parent = hex(&s.parent_span_id);
        assert!(
            s.name.starts_with("task ") || by_id.contains_key(&parent),
            "{} has a parent {parent} outside the trace",
            s.name
        );
    }

    // The task started without a valid traceparent is its trace's root.
    let root = spans_of(&received, &fresh_trace, |s| {
        s.iter().any(|s| s.name == "task e2e/traced")
    });
    let root = root.iter().find(|s| s.name == "task e2e/traced").unwrap();
    assert!(root.parent_span_id.is_empty(), "{root:?}");

    // The unsampled trace: nothing of it was sent.
    let services: Vec<String> = received.lock().iter().map(|(s, _)| s.clone()).collect();
    assert!(
        !received
            .lock()
            .iter()
            .any(|(_, s)| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c"),
        "an unsampled trace was recorded"
    );
    assert!(
        services
            .iter()
            .all(|s| s == "stepgraph-worker" || s == "stepgraph-serve"),
        "{services:?}"
    );
    let (_, page) = http(serve.addr(), "GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!(page["trace"]["trace_id"], trace_id);
}
