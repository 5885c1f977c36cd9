//! Operating the system through the HTTP API, against real PostgreSQL and
//! real `stepgraph serve` / `stepgraph worker` processes: finding tasks
//! (filters, keyset pages), the stats, and repairs (retry a failed task
//! once its cause is fixed, resolve a step by hand), each recorded in the
//! audit trail with who asked and why.

mod common;

use common::cluster::{Process, TestEnv};
use common::ops::*;
use common::SIX_16;
use serde_json::{json, Value};
use std::collections::HashSet;

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
    // The last hour a minute at a time, and the template failing most.
    let minutes = stats["recent"]["per_minute"].as_array().unwrap();
    let sum = |field: &str| {
        minutes
            .iter()
            .map(|m| m[field].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(
        sum("completed_steps"),
        12,
        "3 linear tasks of 4 steps: {stats}"
    );
    assert_eq!(sum("failed_attempts"), 1, "{stats}");
    assert_eq!(
        stats["recent"]["failing_templates"],
        json!([{ "namespace": "e2e", "name": "repairable", "failed_attempts": 1, "failed_tasks": 1 }]),
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
        json!({ "namespace": "e2e", "name": "linear", "context": { "even_number": 2 }, "eta": "2030-01-01T00:00:00Z" }),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("eta"), "{v}");
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
