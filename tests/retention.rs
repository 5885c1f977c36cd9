//! Retention against real PostgreSQL and real `serve` / `worker`
//! processes (and embedded `serve`): ended tasks past their retention are
//! removed with their steps, edges and audit trails, archived first when
//! asked; failed tasks and a template's own retention are kept apart; one
//! process at a time does it; what was removed answers 404 saying so. The
//! audit trails' partitions (1s wide here) are made ahead and dropped,
//! the rows of tasks still kept moved out of them first.

mod common;

use common::cluster::{metric, Process, TestEnv};
use common::ops::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A linear template whose tasks are kept for ever.
const KEPT: &str = "namespace: e2e
name: linear_kept
version: 1.0.0
retention: forever
steps:
  - name: step_1
    handler: { callable: math.square }
  - name: step_2
    dependencies: [step_1]
    handler: { callable: math.square }
";

/// Holds the retention lock on its own connection until dropped, as
/// another `serve` doing retention would.
struct RetentionLock(
    Option<mpsc::Sender<()>>,
    Option<std::thread::JoinHandle<()>>,
);

impl RetentionLock {
    fn take(url: &str) -> RetentionLock {
        let (release, released) = mpsc::channel::<()>();
        let (locked, is_locked) = mpsc::channel::<()>();
        let url = url.to_string();
        let holder = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(stepgraph_postgres::RETENTION_LOCK)
                    .execute(&mut c)
                    .await
                    .unwrap();
                locked.send(()).unwrap();
                let _ = released.recv();
                c.close().await.unwrap();
            });
        });
        is_locked.recv().unwrap();
        RetentionLock(Some(release), Some(holder))
    }
}

impl Drop for RetentionLock {
    fn drop(&mut self) {
        drop(self.0.take());
        if let Some(h) = self.1.take() {
            h.join().unwrap();
        }
    }
}

fn count(t: &TestEnv, table: &str, ids: &[String]) -> i64 {
    let list = ids
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(",");
    let column = if table == "sg_tasks" { "id" } else { "task_id" };
    t.db.query(&format!(
        "SELECT count(*)::text FROM {table} WHERE {column} IN ({list})"
    ))[0]
        .parse()
        .unwrap()
}

const TABLES: [&str; 5] = [
    "sg_tasks",
    "sg_steps",
    "sg_edges",
    "sg_task_transitions",
    "sg_step_transitions",
];

#[test]
fn ended_tasks_past_retention_are_archived_and_removed_by_one_process() {
    let t = TestEnv::new();
    t.add_template("kept.yaml", KEPT);
    let retention = [
        ("STEPGRAPH_TOKENS", tokens()),
        ("STEPGRAPH_RETENTION", "2s".to_string()),
        ("STEPGRAPH_FAILED_RETENTION", "1h".to_string()),
        ("STEPGRAPH_RETENTION_ARCHIVE", "true".to_string()),
        ("STEPGRAPH_RETENTION_EVERY_MS", "100".to_string()),
        ("STEPGRAPH_RETENTION_BATCH", "2".to_string()),
        ("STEPGRAPH_RETENTION_PARTITION", "1s".to_string()),
    ];
    let env: Vec<(&str, &str)> = retention.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Two servers that would both remove; the lock lets one at a time.
    let serve = t.serve(&env);
    let other = t.serve(&env);
    let _worker = t.worker(&[]);
    let addr = serve.addr();
    let lock = RetentionLock::take(&t.db.url);
    // Partitions begin a width ahead of when they are made: tasks created
    // from now on have theirs.
    std::thread::sleep(Duration::from_millis(1500));

    let dir = tempfile::tempdir().unwrap();
    let failed = failing_task(addr, &dir.path().join("never"));
    let kept = create(addr, "linear_kept", json!({ "even_number": 2 }));
    let done: Vec<String> = (0..3)
        .map(|_| create(other.addr(), "linear", json!({ "even_number": 2 })))
        .collect();
    for id in done.iter().chain([&kept]) {
        assert_eq!(wait(addr, id, LONG)["state"], "complete");
    }
    let before: HashMap<&str, i64> = TABLES
        .iter()
        .map(|&tb| (tb, count(&t, tb, &done)))
        .collect();
    assert_eq!(before["sg_steps"], 12);
    assert_eq!(before["sg_edges"], 9);
    assert!(before["sg_step_transitions"] >= 12 * 4, "{before:?}");
    let audit = |id: &str| -> (Value, Value) {
        let (_, v) = get(addr, &format!("/v1/tasks/{id}"));
        (v["transitions"].clone(), v["steps"].clone())
    };
    let kept_view = audit(&kept);
    let failed_view = audit(&failed);
    let in_default = |id: &str| -> i64 {
        t.db.query(&format!(
            "SELECT ((SELECT count(*) FROM sg_step_transitions_default WHERE task_id = '{id}')
                  + (SELECT count(*) FROM sg_task_transitions_default WHERE task_id = '{id}'))::text"
        ))[0]
            .parse()
            .unwrap()
    };
    let audit_rows = |id: &str| -> i64 {
        count(&t, "sg_step_transitions", &[id.to_string()])
            + count(&t, "sg_task_transitions", &[id.to_string()])
    };
    let (kept_rows, failed_rows) = (audit_rows(&kept), audit_rows(&failed));
    assert_eq!(
        (in_default(&kept), in_default(&failed)),
        (0, 0),
        "made in a partition of their own"
    );

    // Past their retention, but another process holds the lock: all stay.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&t, "sg_tasks", &done), 3, "removed while locked");
    drop(lock);

    // The tasks go, and their audit rows with them: by the task from the
    // default partition, where the rows of tasks still there when their
    // partition was dropped went, or with their partition.
    let started = Instant::now();
    while TABLES.iter().any(|tb| count(&t, tb, &done) > 0) {
        assert!(
            started.elapsed() < LONG,
            "rows of removed tasks are left: {:?}",
            TABLES.map(|tb| (tb, count(&t, tb, &done)))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The partitions they were made in are gone; the rows of the tasks
    // still kept moved to the default partition, every one.
    while in_default(&kept) < kept_rows || in_default(&failed) < failed_rows {
        assert!(started.elapsed() < LONG, "the partitions were not dropped");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (audit_rows(&kept), audit_rows(&failed)),
        (kept_rows, failed_rows)
    );
    let dropped = metric(addr, "stepgraph_history_partitions_dropped_total").unwrap_or(0.0)
        + metric(other.addr(), "stepgraph_history_partitions_dropped_total").unwrap_or(0.0);
    assert!(dropped >= 2.0, "{dropped} partitions dropped");
    assert!(
        t.db.query("SELECT count(*)::text FROM sg_partitions WHERE upper_at > now()")[0] != "0",
        "no partitions made ahead"
    );

    // Each archived once, whole: the same steps, edges and audit rows.
    for id in &done {
        let record: Value = serde_json::from_str(
            &t.db.query(&format!(
                "SELECT record::text FROM sg_archived_tasks WHERE id = '{id}'"
            ))[0],
        )
        .unwrap();
        assert_eq!(record["task"]["state"], "complete", "{record}");
        assert_eq!(record["steps"].as_array().unwrap().len(), 4);
        assert_eq!(record["edges"].as_array().unwrap().len(), 3);
        assert!(!record["task_transitions"].as_array().unwrap().is_empty());
    }
    let archived = |column: &str| -> i64 {
        let ids = done
            .iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(",");
        t.db.query(&format!(
            "SELECT coalesce(sum(jsonb_array_length(record->'{column}')), 0)::text
               FROM sg_archived_tasks WHERE id IN ({ids})"
        ))[0]
            .parse()
            .unwrap()
    };
    assert_eq!(archived("step_transitions"), before["sg_step_transitions"]);
    assert_eq!(archived("task_transitions"), before["sg_task_transitions"]);
    assert_eq!(
        t.db.query("SELECT count(*)::text FROM sg_archived_tasks"),
        ["3"],
        "only the expired tasks, each once"
    );
    let removed = metric(addr, "stepgraph_tasks_expired_total").unwrap_or(0.0)
        + metric(other.addr(), "stepgraph_tasks_expired_total").unwrap_or(0.0);
    assert_eq!(removed, 3.0);

    // A failed task (kept an hour) and a template kept for ever: untouched.
    assert_eq!(audit(&kept), kept_view);
    assert_eq!(audit(&failed), failed_view);

    // Gone, and saying so; the list no longer has them.
    let (status, v) = get(addr, &format!("/v1/tasks/{}", done[0]));
    assert_eq!(status, 404, "{v}");
    let why = v["error"].as_str().unwrap();
    assert!(
        why.contains("is gone") && why.contains("retention"),
        "{why}"
    );
    let (status, v) = get(addr, &format!("/v1/tasks/{}/wait?timeout_ms=10", done[1]));
    assert_eq!(status, 404, "{v}");
    assert_eq!(list(addr, "name=linear"), Vec::<String>::new());
    let never = stepgraph_engine::TaskId::now_v7();
    let (status, v) = get(addr, &format!("/v1/tasks/{never}"));
    assert_eq!(
        (status, v["error"].clone()),
        (404, json!(format!("task {never} not found")))
    );
}

#[test]
fn embedded_serve_removes_ended_tasks_and_says_they_are_gone() {
    let t = TestEnv::new();
    let serve = Process::spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        None,
        t.templates(),
        &[
            ("STEPGRAPH_RETENTION", "1s"),
            ("STEPGRAPH_RETENTION_EVERY_MS", "100"),
        ],
    );
    let addr = serve.addr();
    let id = common::cluster::create(addr, "linear", json!({ "even_number": 2 }));
    assert_eq!(common::cluster::wait(addr, &id, LONG)["state"], "complete");
    let started = Instant::now();
    let (status, v) = loop {
        let (status, v) = common::cluster::http(addr, "GET", &format!("/v1/tasks/{id}"), None);
        if status != 200 || started.elapsed() > LONG {
            break (status, v);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 404, "{v}");
    let why = v["error"].as_str().unwrap();
    assert!(why.contains("is gone") && why.contains("1s"), "{why}");
}

#[test]
fn nonsense_retention_settings_are_refused_naming_them() {
    let t = TestEnv::new();
    for (name, value, says) in [
        (
            "STEPGRAPH_RETENTION",
            "soon",
            "STEPGRAPH_RETENTION: retention \"soon\"",
        ),
        ("STEPGRAPH_FAILED_RETENTION", "0s", "longer than zero"),
        (
            "STEPGRAPH_RETENTION_BATCH",
            "0",
            "STEPGRAPH_RETENTION_BATCH",
        ),
        (
            "STEPGRAPH_RETENTION_PARTITION",
            "forever",
            "STEPGRAPH_RETENTION_PARTITION) must be a time of at least 1s",
        ),
        (
            "STEPGRAPH_RETENTION_PARTITION",
            "500ms",
            "STEPGRAPH_RETENTION_PARTITION) must be a time of at least 1s",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("STEPGRAPH_TEMPLATES_DIR", t.templates())
            .env(name, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}={value} was taken");
        assert!(err.contains(says), "{name}={value}: {err}");
    }
}
