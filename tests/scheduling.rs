//! Delayed tasks and cron schedules on real PostgreSQL with real `serve`
//! and `worker` processes: a delayed task does not start early and can be
//! cancelled while it waits; a one-second schedule makes one task per tick
//! across two `serve` processes, while one is killed, and after every
//! process restarts; bad input is a 400 naming the field.

mod common;

use chrono::{DateTime, Utc};
use common::cluster::{http, wait, TestEnv};
use common::ops::cli;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn post(addr: &str, path: &str, body: Value) -> (u16, Value) {
    http(addr, "POST", path, Some(body.to_string().as_bytes()))
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn a_delayed_task_starts_at_its_time_and_can_be_cancelled_while_it_waits() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let _worker = t.worker(&[]);
    let addr = serve.addr();
    let context = json!({ "even_number": 2 });
    let (status, v) = post(
        addr,
        "/v1/tasks",
        json!({ "namespace": "e2e", "name": "linear", "context": context, "delay_ms": 1500 }),
    );
    assert_eq!(status, 201, "{v}");
    let delayed = v["task_id"].as_str().unwrap().to_string();
    let run_at = (Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let (status, v) = post(
        addr,
        "/v1/tasks",
        json!({ "namespace": "e2e", "name": "linear", "context": context, "run_at": run_at }),
    );
    assert_eq!(status, 201, "{v}");
    let cancelled = v["task_id"].as_str().unwrap().to_string();

    let (_, task) = http(addr, "GET", &format!("/v1/tasks/{delayed}"), None);
    assert_eq!(task["state"], "scheduled", "{task}");
    assert_eq!(task["steps"], json!([]), "nothing is made before it starts");
    let (_, page) = http(addr, "GET", "/v1/tasks?state=scheduled", None);
    let listed: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&delayed.as_str()) && listed.contains(&cancelled.as_str()));
    assert!(page["tasks"][0]["run_at"].is_string(), "{page}");

    let (status, v) = post(addr, &format!("/v1/tasks/{cancelled}/cancel"), json!({}));
    assert_eq!(
        (status, v["state"].clone()),
        (200, json!("cancelled")),
        "{v}"
    );

    let done = wait(addr, &delayed, Duration::from_secs(30));
    assert_eq!(done["state"], "complete", "{done}");
    let run_at = time(&done["run_at"]);
    let started = done["transitions"]["task"]
        .as_array()
        .unwrap()
        .iter()
        .find(|tr| tr["from"] == "scheduled")
        .expect("a scheduled -> initializing transition");
    assert_eq!(started["to"], "initializing");
    assert!(
        time(&started["at"]) >= run_at,
        "started at {} before its run_at {run_at}",
        started["at"]
    );
    let first_step = done["transitions"]["steps"][0]["at"].clone();
    assert!(time(&first_step) >= run_at, "{first_step} < {run_at}");
    assert!(
        time(&started["at"]) - run_at < chrono::Duration::seconds(2),
        "started {} late",
        time(&started["at"]) - run_at
    );

    // The cancelled one stays cancelled after its time has come.
    std::thread::sleep(Duration::from_millis(500));
    let (_, v) = http(addr, "GET", &format!("/v1/tasks/{cancelled}"), None);
    assert_eq!(v["state"], "cancelled", "{v}");
    assert_eq!(v["steps"], json!([]));
}

#[test]
fn bad_delays_and_schedules_are_refused_naming_the_field() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let addr = serve.addr();
    let base = json!({ "namespace": "e2e", "name": "linear", "context": { "even_number": 2 } });
    let with = |extra: Value| {
        let mut b = base.clone();
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let soon = (Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    for (body, names) in [
        (
            json!({ "run_at": soon, "delay_ms": 10 }),
            "run_at or delay_ms",
        ),
        (json!({ "run_at": past }), "run_at"),
        (json!({ "run_at": "tomorrow" }), "run_at"),
        (json!({ "delay_ms": -5 }), "delay_ms"),
    ] {
        let (status, v) = post(addr, "/v1/tasks", with(body.clone()));
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(names), "{body}: {v}");
    }
    let schedule = json!({
        "name": "s", "namespace": "e2e", "template": "linear", "cron": "*/5 * * * *",
        "timezone": "Europe/Berlin", "context": { "even_number": 2 }
    });
    let bad = |field: &str, value: Value| {
        let mut b = schedule.clone();
        b[field] = value;
        b
    };
    for (body, status, names) in [
        (bad("cron", json!("61 * * * *")), 400, "cron"),
        (bad("cron", json!("every minute")), 400, "cron"),
        (bad("timezone", json!("Mars/Olympus")), 400, "timezone"),
        (bad("name", json!("has space")), 400, "name"),
        (bad("every", json!(5)), 400, "every"),
        (bad("template", json!("nope")), 422, "nope"),
        (
            bad("context", json!({ "even_number": 3 })),
            422,
            "even_number",
        ),
    ] {
        let (got, v) = post(addr, "/v1/schedules", body.clone());
        assert_eq!(got, status, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(names), "{body}: {v}");
    }
    let (status, v) = post(addr, "/v1/schedules", schedule.clone());
    assert_eq!(status, 201, "{v}");
    assert_eq!(post(addr, "/v1/schedules", schedule).0, 409);
    assert_eq!(http(addr, "GET", "/v1/schedules/none", None).0, 404);
    assert_eq!(http(addr, "DELETE", "/v1/schedules/s", None).0, 204);
    assert_eq!(http(addr, "DELETE", "/v1/schedules/s", None).0, 404);
}

/// The ticks (from the idempotency keys) of the tasks `schedule` made.
fn ticks(t: &TestEnv, schedule: &str) -> Vec<DateTime<Utc>> {
    let prefix = format!("schedule:{schedule}:");
    let keys = t.db.query(&format!(
        "SELECT idempotency_key FROM sg_tasks WHERE idempotency_key LIKE '{prefix}%' ORDER BY 1"
    ));
    keys.iter()
        .map(|k| k.strip_prefix(&prefix).unwrap().parse().unwrap())
        .collect()
}

fn consecutive(ticks: &[DateTime<Utc>]) -> bool {
    ticks
        .windows(2)
        .all(|w| w[1] - w[0] == chrono::Duration::seconds(1))
}

#[test]
fn a_one_second_schedule_makes_one_task_per_tick_across_serves_kills_and_restarts() {
    let t = TestEnv::new();
    let mut a = t.serve(&[]);
    let b = t.serve(&[]);
    let (status, v) = post(
        a.addr(),
        "/v1/schedules",
        json!({
            "name": "every-second", "namespace": "e2e", "template": "linear",
            "cron": "* * * * * *", "context": { "even_number": 2 }
        }),
    );
    assert_eq!(status, 201, "{v}");
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    a.kill9();
    std::thread::sleep(Duration::from_secs(10) - started.elapsed());
    let (status, v) = post(b.addr(), "/v1/schedules/every-second/pause", json!({}));
    assert_eq!((status, v["paused"].clone()), (200, json!(true)), "{v}");
    let first = ticks(&t, "every-second");
    assert!(
        (9..=11).contains(&first.len()),
        "{} tasks in 10 s: {first:?}",
        first.len()
    );
    assert!(
        consecutive(&first),
        "a tick was missed or doubled: {first:?}"
    );
    let total = t.db.query("SELECT count(*)::text FROM sg_tasks")[0].clone();
    assert_eq!(
        total,
        first.len().to_string(),
        "one task per tick, no other"
    );

    // Paused: nothing more.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(ticks(&t, "every-second").len(), first.len());

    // Every process restarts; the schedule goes on (missed ticks skipped).
    post(b.addr(), "/v1/schedules/every-second/resume", json!({}));
    std::thread::sleep(Duration::from_secs(2));
    drop(b);
    std::thread::sleep(Duration::from_secs(3));
    let before_restart = ticks(&t, "every-second");
    let c = t.serve(&[]);
    let _d = t.serve(&[]);
    std::thread::sleep(Duration::from_secs(3));
    let after = ticks(&t, "every-second");
    let new: Vec<_> = after[before_restart.len()..].to_vec();
    assert!(
        (2..=4).contains(&new.len()),
        "after the restart: {new:?} (before: {before_restart:?})"
    );
    assert!(consecutive(&new), "{new:?}");
    assert!(
        new[0] - *before_restart.last().unwrap() > chrono::Duration::seconds(2),
        "the ticks missed while no process ran were skipped: {after:?}"
    );
    let (_, s) = http(c.addr(), "GET", "/v1/schedules/every-second", None);
    assert!(s["last_task_id"].is_string(), "{s}");
    assert!(s["last_error"].is_null(), "{s}");
}

#[test]
fn a_template_declares_its_schedules() {
    let t = TestEnv::new();
    t.add_template(
        "scheduled.yaml",
        r#"
namespace: e2e
name: scheduled
version: "1"
input_schema:
  type: object
  required: [n]
schedules:
  - cron: "*/2 * * * * *"
    timezone: Europe/Berlin
    context: { n: 1 }
  - name: nightly
    cron: "0 3 * * *"
    context: { n: 2 }
    catch_up: once
steps:
  - name: only
    handler: { callable: echo }
"#,
    );
    let serve = t.serve(&[]);
    let addr = serve.addr();
    let (_, v) = http(addr, "GET", "/v1/schedules", None);
    let names: Vec<&str> = v["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["e2e.scheduled.0", "nightly"], "{v}");
    assert_eq!(v["schedules"][0]["source"], "template");
    assert_eq!(v["schedules"][1]["catch_up"], "once");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks(&t, "e2e.scheduled.0").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the template's schedule never fired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, v) = http(addr, "DELETE", "/v1/schedules/nightly", None);
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("template"), "{v}");

    // A template whose schedule cannot be used is refused where it is written.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "namespace: e2e\nname: bad\nversion: \"1\"\nschedules:\n  - cron: \"* * * * *\"\n  - cron: \"99 * * * *\"\nsteps:\n  - name: only\n    handler: { callable: echo }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("bad.yaml:6") && text.contains("schedules[1]") && text.contains("cron"),
        "{text}"
    );
}

#[test]
fn the_cli_creates_lists_pauses_resumes_and_deletes_schedules() {
    let t = TestEnv::new();
    let serve = t.serve(&[]);
    let addr = serve.addr();
    let (ok, out, err) = cli(
        addr,
        None,
        &[
            "schedules",
            "create",
            "reports",
            "--cron",
            "0 9 * * 1-5",
            "--namespace",
            "e2e",
            "--template",
            "linear",
            "--timezone",
            "America/New_York",
            "--context",
            r#"{"even_number": 2}"#,
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("reports") && out.contains("America/New_York"),
        "{out}"
    );
    let (ok, out, _) = cli(addr, None, &["schedules", "list", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["schedules"][0]["cron"], "0 9 * * 1-5", "{v}");
    let (ok, out, _) = cli(addr, None, &["schedules", "pause", "reports"]);
    assert!(ok && out.contains("paused"), "{out}");
    let (ok, out, _) = cli(addr, None, &["schedules", "resume", "reports"]);
    assert!(ok && out.contains("active"), "{out}");
    let (ok, out, err) = cli(
        addr,
        None,
        &[
            "schedules",
            "create",
            "x",
            "--cron",
            "nope",
            "--namespace",
            "e2e",
            "--template",
            "linear",
        ],
    );
    assert!(
        !ok && err.contains("400") && err.contains("cron"),
        "{out}{err}"
    );
    let (ok, out, _) = cli(addr, None, &["schedules", "delete", "reports"]);
    assert!(ok && out.contains("deleted reports"), "{out}");
    let (_, v) = http(addr, "GET", "/v1/schedules", None);
    assert_eq!(v["schedules"], json!([]));
}

/// After downtime, `skip` makes nothing for the missed ticks and `once`
/// one task, for the latest of them; both go on from the next tick.
#[test]
fn missed_ticks_are_skipped_or_made_once() {
    use std::sync::Arc;
    use stepgraph_engine::schedule::{CatchUp, ScheduleSource, ScheduleSpec};
    use stepgraph_engine::{MemoryQueue, MemoryStore, Orchestrator, OrchestratorConfig, Store};
    common::block_on(async {
        let store = Arc::new(MemoryStore::new());
        let orchestrator = Orchestrator::new(
            store.clone(),
            Arc::new(MemoryQueue::new()),
            Arc::new(common::fixture_templates()),
            OrchestratorConfig::default(),
        );
        let now = Utc::now();
        let an_hour_ago = now - chrono::Duration::hours(1);
        for (name, catch_up) in [("skipper", CatchUp::Skip), ("once", CatchUp::Once)] {
            let spec = ScheduleSpec {
                name: name.into(),
                namespace: "e2e".into(),
                template: "linear".into(),
                version: None,
                cron: "*/10 * * * *".into(),
                timezone: "UTC".into(),
                context: json!({ "even_number": 2 }),
                catch_up,
            };
            // Stored an hour ago, and nothing ran it since.
            let s = spec
                .into_schedule(ScheduleSource::Api, an_hour_ago)
                .unwrap();
            assert!(store.insert_schedule(&s).await.unwrap());
        }
        orchestrator.run_due(now).await.unwrap();
        let schedules = store.schedules().await.unwrap();
        let tasks = |key: String| {
            let store = store.clone();
            async move { store.find_by_idempotency_key(&key).await.unwrap() }
        };
        for s in &schedules {
            let next = s.next_run_at.unwrap();
            assert!(
                next > now && next - now <= chrono::Duration::minutes(10),
                "{s:?}"
            );
        }
        let once = schedules.iter().find(|s| s.name == "once").unwrap();
        let latest = once.latest_at_or_before(now).unwrap();
        assert_eq!(once.last_run_at, Some(latest));
        let made = tasks(stepgraph_engine::schedule::tick_key("once", latest)).await;
        assert_eq!(
            made, once.last_task_id,
            "one task, for the latest missed tick"
        );
        let skipper = schedules.iter().find(|s| s.name == "skipper").unwrap();
        assert_eq!((skipper.last_run_at, skipper.last_task_id), (None, None));
        let all = store
            .list_tasks(&stepgraph_engine::store::TaskFilter {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
    });
}
