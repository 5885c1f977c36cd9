//! `stepgraph migrate` turns a database with history in the unpartitioned
//! layout (migration 16) into the partitioned one without losing a row: a
//! real PostgreSQL, filled by SQL as the engine of that layout left it
//! (tasks over several days, failed ones with retried steps, ids that are
//! not UUIDv7s), then migrated by the real binary. Every task's audit trail
//! reads the same after, row for row; the rows sit in their day's partition;
//! each step and task counts its rows; and a failed task of the old history
//! retried by a real `serve` and `worker` appends to its trail after them.

mod common;

use common::cluster::TestEnv;
use common::ops::*;
use serde_json::json;
use std::collections::BTreeMap;

/// Tasks of linear shape over the last `DAYS` days; one in ten failed at
/// step_4 after three attempts; the last five have UUIDv4 ids.
const TASKS: i64 = 300;
const DAYS: i64 = 4;

const OLD_HISTORY: &str = "
INSERT INTO sg_namespaces (name) VALUES ('e2e') ON CONFLICT DO NOTHING;
WITH g AS (
  SELECT i, now() - make_interval(days => {days}) + i * (make_interval(days => {days}) / {n}) AS at,
         i % 10 = 0 AS failed
    FROM generate_series(1, {n}) AS i),
t AS (
  INSERT INTO sg_tasks (id, namespace, name, version, context, state, priority, result, error,
                        created_at, updated_at, completed_at)
  SELECT CASE WHEN i > {n} - 5 THEN gen_random_uuid()
              ELSE (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7'
                    || substr(md5('t' || i), 1, 3) || '8' || substr(md5('t' || i), 4, 15))::uuid END,
         'e2e', 'linear', '1.0.0', '{\"even_number\": 2}',
         CASE WHEN failed THEN 'error' ELSE 'complete' END, 0,
         CASE WHEN NOT failed THEN '65536' END::jsonb,
         CASE WHEN failed THEN '{\"step\": \"step_4\"}' END::jsonb,
         at, at + interval '20 ms', at + interval '20 ms'
    FROM g
  RETURNING id, state, created_at),
s AS (
  SELECT t.id AS task_id, t.state AS task_state, t.created_at, k,
         (lpad(to_hex((extract(epoch FROM t.created_at) * 1000)::bigint + k), 12, '0') || '7'
          || substr(md5(t.id::text || k), 1, 3) || '8' || substr(md5(t.id::text || k), 4, 15))::uuid AS id,
         CASE WHEN k = 4 AND t.state = 'error' THEN 'error' ELSE 'complete' END AS state,
         CASE WHEN k = 4 AND t.state = 'error' THEN 3 ELSE 1 END AS attempts
    FROM t CROSS JOIN generate_series(1, 4) AS k),
steps AS (
  INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts,
                        max_attempts, outcome, created_at)
  SELECT id, task_id, 'step_' || k, 'step_' || k, 'standard', 'math.square', 'null', state, attempts, 3,
         CASE WHEN state = 'error' THEN '{\"status\": \"failure\", \"error\": {\"kind\": \"retryable\", \"message\": \"boom\"}}'
              ELSE '{\"status\": \"success\", \"result\": ' || (2 ^ (2 ^ k))::bigint || '}' END::jsonb,
         created_at
    FROM s),
edges AS (
  INSERT INTO sg_edges (task_id, from_step, to_step)
  SELECT b.task_id, a.id, b.id FROM s a JOIN s b ON b.task_id = a.task_id AND b.k = a.k + 1),
task_audit AS (
  INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, most_recent, metadata, created_at)
  SELECT t.id, p.f, coalesce(p.s, t.state), p.j, p.j = 6, jsonb_build_object('j', p.j),
         t.created_at + p.j * interval '3 ms'
    FROM t CROSS JOIN (VALUES (1, NULL, 'pending'), (2, 'pending', 'initializing'),
                              (3, 'initializing', 'enqueuing_steps'), (4, 'enqueuing_steps', 'steps_in_process'),
                              (5, 'steps_in_process', 'evaluating_results'), (6, 'evaluating_results', NULL))
         AS p (j, f, s))
INSERT INTO sg_step_transitions (task_id, step_id, step_name, from_state, to_state, attempt, sort_key,
                                 most_recent, metadata, created_at)
SELECT s.task_id, s.id, 'step_' || s.k, p.f, p.s, p.a, p.j, p.j = max(p.j) OVER (PARTITION BY s.id),
       jsonb_build_object('j', p.j), s.created_at + (s.k * 10 + p.j) * interval '1 ms'
  FROM s JOIN (VALUES
      (false, 1, NULL, 'pending', 1), (false, 2, 'pending', 'enqueued', 1), (false, 3, 'enqueued', 'in_progress', 1),
      (false, 4, 'in_progress', 'enqueued_for_orchestration', 1),
      (false, 5, 'enqueued_for_orchestration', 'complete', 1),
      (true, 1, NULL, 'pending', 1), (true, 2, 'pending', 'enqueued', 1), (true, 3, 'enqueued', 'in_progress', 1),
      (true, 4, 'in_progress', 'enqueued_for_orchestration', 1),
      (true, 5, 'enqueued_for_orchestration', 'waiting_for_retry', 1), (true, 6, 'waiting_for_retry', 'enqueued', 2),
      (true, 7, 'enqueued', 'in_progress', 2), (true, 8, 'in_progress', 'enqueued_for_orchestration', 2),
      (true, 9, 'enqueued_for_orchestration', 'waiting_for_retry', 2), (true, 10, 'waiting_for_retry', 'enqueued', 3),
      (true, 11, 'enqueued', 'in_progress', 3), (true, 12, 'in_progress', 'enqueued_for_orchestration', 3),
      (true, 13, 'enqueued_for_orchestration', 'error', 3))
    AS p (retried, j, f, s, a) ON p.retried = (s.state = 'error');
";

/// Every task's audit trail, both tables, as text in the order written.
const TRAILS: &str = "
SELECT task_id::text || ' ' || string_agg(r, ' | ' ORDER BY kind, id)
  FROM (SELECT task_id, 0 AS kind, id,
               concat_ws(',', from_state, to_state, sort_key, metadata, created_at) AS r
          FROM sg_task_transitions
        UNION ALL
        SELECT task_id, 1, id,
               concat_ws(',', step_id, step_name, from_state, to_state, attempt, sort_key, metadata, created_at)
          FROM sg_step_transitions) x
 GROUP BY task_id ORDER BY task_id";

fn trails(t: &TestEnv) -> BTreeMap<String, String> {
    t.db.query(TRAILS)
        .into_iter()
        .map(|row| {
            let (id, trail) = row.split_once(' ').unwrap();
            (id.to_string(), trail.to_string())
        })
        .collect()
}

#[test]
fn migrate_partitions_an_existing_history_without_losing_a_row() {
    let t = TestEnv::new();
    let url = t.db.url.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            stepgraph_postgres::migrate_tables_until(&pool, 16)
                .await
                .unwrap();
            let sql = OLD_HISTORY
                .replace("{n}", &TASKS.to_string())
                .replace("{days}", &DAYS.to_string());
            sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
            pool.close().await;
        });
    let before = trails(&t);
    assert_eq!(before.len(), TASKS as usize);
    let rows = |table: &str| -> i64 {
        t.db.query(&format!("SELECT count(*)::text FROM {table}"))[0]
            .parse()
            .unwrap()
    };
    let audit_rows = rows("sg_task_transitions") + rows("sg_step_transitions");
    assert_eq!(audit_rows, TASKS * 6 + TASKS * 4 * 5 + TASKS / 10 * 8);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stepgraph"))
        .arg("migrate")
        .env("STEPGRAPH_DATABASE_URL", &t.db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("17"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Row for row the same trails, in partitioned tables.
    let after = trails(&t);
    let changed: Vec<&String> = before
        .keys()
        .filter(|id| after.get(*id) != before.get(*id))
        .collect();
    assert!(
        changed.is_empty() && after.len() == before.len(),
        "{} of {} trails changed; the first, {:?}, was\n{}\nand is\n{:?}",
        changed.len(),
        before.len(),
        changed.first(),
        changed.first().map_or("", |id| before[*id].as_str()),
        changed.first().and_then(|id| after.get(*id)),
    );
    assert_eq!(
        rows("sg_task_transitions") + rows("sg_step_transitions"),
        audit_rows
    );
    for parent in ["sg_task_transitions", "sg_step_transitions"] {
        assert_eq!(
            t.db.query(&format!(
                "SELECT c.relkind::text FROM pg_class c WHERE c.relname = '{parent}'"
            )),
            ["p"],
            "{parent} is partitioned"
        );
        // A partition a day from the oldest task to the start of today,
        // each holding that day's tasks' rows; today's, and the ids that
        // are not UUIDv7s, in the default one.
        let days: i64 = t.db.query(&format!(
            "SELECT count(*)::text FROM sg_partitions WHERE parent = '{parent}'"
        ))[0]
            .parse()
            .unwrap();
        assert!((DAYS..=DAYS + 1).contains(&days), "{days} partitions");
        assert_eq!(
            t.db.query(&format!(
                "SELECT count(*)::text FROM {parent} x JOIN sg_partitions p
                     ON p.name = x.tableoid::regclass::text
                  WHERE x.task_id < sg_uuid_at(p.lower_at) OR x.task_id >= sg_uuid_at(p.upper_at)"
            )),
            ["0"]
        );
        let in_default: i64 = t.db.query(&format!(
            "SELECT count(DISTINCT task_id)::text FROM {parent}_default"
        ))[0]
            .parse()
            .unwrap();
        assert!(
            in_default >= 5,
            "{parent}: {in_default} tasks in the default partition"
        );
        assert!(
            in_default < TASKS / 2,
            "{parent}: {in_default} tasks in the default partition"
        );
    }
    // Each step and task counts its audit rows.
    for (entities, table, key) in [
        ("sg_steps", "sg_step_transitions", "step_id"),
        ("sg_tasks", "sg_task_transitions", "task_id"),
    ] {
        assert_eq!(
            t.db.query(&format!(
                "SELECT count(*)::text FROM {entities} e
                  WHERE e.transitions <> (SELECT count(*) FROM {table} x WHERE x.{key} = e.id)"
            )),
            ["0"],
            "{entities} miscounted"
        );
    }

    // A failed task of the old history, retried: its trail goes on after
    // what was there, its rows numbered after theirs.
    let serve = t.serve(&[("STEPGRAPH_TOKENS", &tokens())]);
    let _worker = t.worker(&[]);
    let failed = t.db.query(
        "SELECT id::text FROM sg_tasks WHERE state = 'error' AND substr(id::text, 15, 1) = '7'
          ORDER BY id LIMIT 1",
    )[0]
    .clone();
    let (status, v) = post(
        serve.addr(),
        &format!("/v1/tasks/{failed}/retry"),
        json!({}),
    );
    assert_eq!(status, 200, "{v}");
    let v = wait(serve.addr(), &failed, LONG);
    assert_eq!(v["state"], "complete", "{v}");
    let after = trails(&t);
    let mut old = before[&failed].split(" | ").peekable();
    for row in after[&failed].split(" | ") {
        old.next_if_eq(&row);
    }
    assert!(old.peek().is_none(), "old rows lost: {}", after[&failed]);
    // Numbered on from the old rows, without a gap, ending complete.
    assert_eq!(
        t.db.query(&format!(
            "SELECT bool_and(sort_key = 13 + n)::text || ' ' || max(n)::text || ' '
                    || (array_agg(to_state ORDER BY sort_key DESC))[1]
               FROM (SELECT sort_key, to_state, row_number() OVER (ORDER BY sort_key) AS n
                       FROM sg_step_transitions
                      WHERE task_id = '{failed}' AND step_name = 'step_4' AND sort_key > 13) x"
        ))[0]
            .split(' ')
            .map(str::to_string)
            .collect::<Vec<_>>()
            .iter()
            .map(|w| w.as_str())
            .collect::<Vec<_>>()[..],
        ["true", "5", "complete"][..]
    );
    for (id, trail) in &before {
        if *id != failed {
            assert_eq!(&after[id], trail, "task {id}'s trail changed");
        }
    }
}
