//! Steps go to the workers that have their handlers. Rust, Python, Ruby and
//! TypeScript workers (real processes) share one namespace, each serving
//! its own handlers: every polyglot task completes, every step on its first
//! attempt, each run by the worker of its language, on the PostgreSQL queue
//! and over RabbitMQ. A step whose handler no live worker serves waits,
//! shown as waiting for that handler, and fails only after the configured
//! handler-wait timeout.

mod common;

use common::cluster::{create, http, wait, Process, TestEnv};
use common::ops::cli;
use common::rabbit::Rabbit;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const POLYGLOT: &str = r#"
namespace: routed
name: four
version: "1"
steps:
  - name: square
    handler: { callable: math.square }
  - name: double
    dependencies: [square]
    handler: { callable: py.double }
  - name: add_one
    dependencies: [double]
    handler: { callable: rb.add_one }
  - name: describe
    dependencies: [add_one]
    handler: { callable: ts.describe }
"#;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A language worker process on namespace `routed`; killed on drop.
struct Foreign(Child);

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a worker logs when a step for a handler it lacks reaches it (it
/// hands the step back): with a queue per handler, never.
const HANDED_BACK: &str = "no such handler here";
/// Warnings, and the worker's hand-backs (a debug line).
const LOG: &str = "warn,stepgraph_worker::runtime=debug";

fn foreign(program: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Foreign {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("STEPGRAPH_LOG", LOG)
        .env("STEPGRAPH_MAX_CONNECTIONS", "5")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Foreign(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("{program} is needed for this test: {e}")),
    )
}

/// The Python, Ruby and TypeScript workers, each with its one handler,
/// each logging to its file in `logs`.
fn language_workers(
    url: &str,
    templates: &Path,
    env: &[(&str, &str)],
    logs: &Path,
) -> Vec<Foreign> {
    let templates = templates.to_str().unwrap();
    let ts = format!("{ROOT}/typescript/dist/index.js");
    let node_script = format!(
        r#"import {{ Worker, defineHandler }} from {ts:?};
const describe = defineHandler("ts.describe", (ctx) => ({{ text: `${{ctx.dependency("add_one").value}} widgets`, by: "typescript" }}));
await new Worker({{ databaseUrl: process.argv[1], templatesDir: process.argv[2], namespaces: ["routed"], handlers: [describe] }}).run();"#
    );
    vec![
        foreign(
            "python3",
            &[
                "-c",
                r#"import sys, stepgraph
double = stepgraph.handler("py.double")(lambda ctx: {"value": int(ctx.dependency("square")) * 2, "by": "python"})
stepgraph.Worker(sys.argv[1], sys.argv[2], [double], namespaces=["routed"]).run()"#,
                url,
                templates,
            ],
            env,
            &logs.join("python.log"),
        ),
        foreign(
            "ruby",
            &[
                "-e",
                r#"require "stepgraph"
add_one = Stepgraph.handler("rb.add_one") { |ctx| { "value" => ctx.dependency("double").fetch("value") + 1, "by" => "ruby" } }
Stepgraph::Worker.new(database_url: ARGV[0], templates_dir: ARGV[1], handlers: [add_one], namespaces: ["routed"]).run"#,
                url,
                templates,
            ],
            env,
            &logs.join("ruby.log"),
        ),
        foreign(
            "node",
            &["--input-type=module", "-e", &node_script, url, templates],
            env,
            &logs.join("node.log"),
        ),
    ]
}

/// Waits until `n` workers are live in the registry.
fn live_workers(addr: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = http(addr, "GET", "/v1/workers", None);
        let live = v["workers"]
            .as_array()
            .map(|w| w.iter().filter(|w| w["state"] == "live").count())
            .unwrap_or(0);
        if live >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {live} of {n} workers live: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn polyglot_tasks(env: &[(&str, &str)], tasks: usize) {
    let t = TestEnv::new();
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(templates.path().join("four.yaml"), POLYGLOT).unwrap();
    let serve = Process::serve(&t.db, templates.path(), env);
    let logs = tempfile::tempdir().unwrap();
    let rust_env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([("STEPGRAPH_LOG", LOG)])
        .collect();
    let mut rust = Process::spawn_to(
        &["worker", "--namespace", "routed"],
        Some(&t.db),
        templates.path(),
        &rust_env,
        Stdio::from(std::fs::File::create(logs.path().join("rust.log")).unwrap()),
    );
    let mut foreign = language_workers(&t.db.url, templates.path(), env, logs.path());
    live_workers(serve.addr(), 4);

    let ids: Vec<String> = (0..tasks)
        .map(|i| {
            let body = json!({ "namespace": "routed", "name": "four", "context": { "even_number": i % 10 } });
            let (status, v) = http(serve.addr(), "POST", "/v1/tasks", Some(body.to_string().as_bytes()));
            assert_eq!(status, 201, "{v}");
            v["task_id"].as_str().unwrap().to_string()
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let done = wait(serve.addr(), id, Duration::from_secs(120));
        assert_eq!(done["state"], "complete", "{done}");
        let n = (i % 10) as i64;
        let step = |name: &str| -> &Value {
            done["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .unwrap()
        };
        for name in ["square", "double", "add_one", "describe"] {
            assert_eq!(
                step(name)["attempts"],
                1,
                "{name} used an attempt elsewhere: {done}"
            );
        }
        // Only the Rust worker has math.square; each other step says who ran it.
        assert_eq!(step("square")["result"], json!(n * n));
        assert_eq!(
            step("double")["result"],
            json!({ "value": 2 * n * n, "by": "python" })
        );
        assert_eq!(
            step("add_one")["result"],
            json!({ "value": 2 * n * n + 1, "by": "ruby" })
        );
        assert_eq!(
            step("describe")["result"],
            json!({ "text": format!("{} widgets", 2 * n * n + 1), "by": "typescript" })
        );
        let failed = done["transitions"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|tr| tr["to"] == "error" || tr["to"] == "waiting_for_retry")
            .count();
        assert_eq!(failed, 0, "{done}");
    }
    // No worker was handed a step it could not run.
    rust.kill9();
    foreign.clear();
    for lang in ["rust", "python", "ruby", "node"] {
        let log = std::fs::read_to_string(logs.path().join(format!("{lang}.log"))).unwrap();
        let handed_back = log.lines().filter(|l| l.contains(HANDED_BACK)).count();
        assert_eq!(
            handed_back, 0,
            "the {lang} worker was handed steps it lacks the handler of:\n{log}"
        );
    }
}

#[test]
fn four_languages_workers_on_one_namespace_each_run_their_own_steps_on_the_postgres_queue() {
    polyglot_tasks(&[], 200);
}

#[test]
fn four_languages_workers_on_one_namespace_each_run_their_own_steps_over_rabbitmq() {
    let rabbit = Rabbit::new();
    polyglot_tasks(&rabbit.env(), 50);
}

#[test]
fn a_step_nobody_serves_waits_named_then_fails_after_the_handler_wait_timeout() {
    let t = TestEnv::new();
    t.add_template(
        "orphan.yaml",
        r#"
namespace: e2e
name: orphan
version: "1"
steps:
  - name: lonely
    handler: { callable: nobody.serves }
"#,
    );
    // Without a timeout it waits, shown as waiting for its handler.
    let patient = t.serve(&[]);
    let log = tempfile::NamedTempFile::new().unwrap();
    let _worker = t.logged(&["worker"], &[("STEPGRAPH_LOG", "warn")], log.path());
    live_workers(patient.addr(), 1);
    // At start the worker warned of the step it has no handler for, by name.
    let warned = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        warned.contains("another worker must serve them")
            && warned.contains("`nobody.serves` (e2e/orphan@1 step lonely)"),
        "{warned}"
    );
    let id = create(patient.addr(), "orphan", json!({}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = http(patient.addr(), "GET", &format!("/v1/tasks/{id}"), None);
        let step = &v["steps"][0];
        if step["waiting_for_handler"] == "nobody.serves" {
            assert_eq!(step["state"], "enqueued", "{v}");
            assert_eq!(v["state"], "steps_in_process", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "never shown as waiting: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, text, err) = cli(patient.addr(), None, &["tasks", "show", &id]);
    assert!(ok, "{err}");
    assert!(
        text.contains("waiting for a worker with handler nobody.serves"),
        "{text}"
    );
    // The worker released it untouched: no attempt began.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, v) = http(patient.addr(), "GET", &format!("/v1/tasks/{id}"), None);
    assert_eq!(v["steps"][0]["state"], "enqueued", "{v}");
    drop(patient);

    // With one, it fails then, naming the handler.
    let strict = t.serve(&[("STEPGRAPH_ORCHESTRATOR_HANDLER_WAIT_TIMEOUT_MS", "1000")]);
    let done = wait(strict.addr(), &id, Duration::from_secs(30));
    assert_eq!(done["state"], "error", "{done}");
    let error = &done["steps"][0]["error"];
    assert_eq!(error["code"], "handler_unavailable", "{done}");
    assert!(
        error["message"].as_str().unwrap().contains("nobody.serves"),
        "{done}"
    );
    assert_eq!(done["steps"][0]["attempts"], 1, "{done}");
}
