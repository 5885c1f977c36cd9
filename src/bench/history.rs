//! `stepgraph bench --database-url URL --history N`: the same rows on a
//! database that already holds N ended linear tasks' whole history, made
//! by SQL rather than by running them: per task its row, 4 steps, 3 edges,
//! 6 task transitions and 5 per step, 34 rows, spread over the last 30 days
//! (92% complete, 8% failed at their last step). Ids are UUIDv7s of their
//! time, as the engine makes them, so the history sits in the indexes where
//! a real one would.

use anyhow::{Context, Result};
use sqlx::PgPool;
use std::time::Instant;

const BATCH: usize = 50_000;

/// A UUIDv7-shaped id of the time `at` (a timestamptz expression) with the
/// random part from the text `seed`.
fn v7(at: &str, seed: &str) -> String {
    format!(
        "(lpad(to_hex((extract(epoch FROM {at}) * 1000)::bigint), 12, '0') || '7' \
         || substr(md5({seed}), 1, 3) || '8' || substr(md5({seed}), 4, 15))::uuid"
    )
}

/// Adds generated history until the database holds `n` tasks; how many it holds.
pub async fn fill(pool: &PgPool, n: usize) -> Result<usize> {
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM sg_tasks")
        .fetch_one(pool)
        .await?;
    let mut from = have as usize;
    if from >= n {
        return Ok(from);
    }
    let started = Instant::now();
    // The history's days get their partitions, as a database that has
    // run for a month has them.
    sqlx::raw_sql(
        "SELECT sg_add_past_partitions(t, now() - interval '31 days')
           FROM unnest(ARRAY['sg_task_transitions', 'sg_step_transitions']) AS t",
    )
    .execute(pool)
    .await
    .context("making the history's partitions")?;
    let task_id = v7("at", "'t' || i");
    let step_id = v7("t.created_at + k * interval '1 ms'", "t.id::text || k");
    let parent_id = v7(
        "t.created_at + (k - 1) * interval '1 ms'",
        "t.id::text || (k - 1)",
    );
    while from < n {
        let to = (from + BATCH).min(n);
        let sql = format!(
            "WITH g AS (
               SELECT i, now() - interval '30 days' + i * (interval '30 days' / {n}) AS at FROM generate_series({from}, {last}) AS i),
             t AS (
               INSERT INTO sg_tasks (id, namespace, name, version, context, state, priority, result, error,
                                     created_at, updated_at, completed_at, transitions)
               SELECT {task_id}, 'e2e', 'linear', '1.0.0', '{{\"even_number\": 6}}',
                      CASE WHEN i % 100 < 92 THEN 'complete' ELSE 'error' END, 0,
                      CASE WHEN i % 100 < 92 THEN '2821109907456' END::jsonb,
                      CASE WHEN i % 100 >= 92 THEN '{{\"step\": \"step_4\"}}' END::jsonb,
                      at, at + interval '20 ms', at + interval '20 ms', 6
                 FROM g
               RETURNING id, state, created_at),
             s AS (
               SELECT t.id AS task_id, t.state AS task_state, t.created_at, k, {step_id} AS id, {parent_id} AS parent,
                      CASE WHEN k = 4 AND t.state = 'error' THEN 'error' ELSE 'complete' END AS state
                 FROM t CROSS JOIN generate_series(1, 4) AS k),
             steps AS (
               INSERT INTO sg_steps (id, task_id, name, template_step, step_type, handler, config, state, attempts,
                                     max_attempts, outcome, created_at, transitions)
               SELECT id, task_id, 'step_' || k, 'step_' || k, 'standard', 'math.square', 'null', state, 1, 3,
                      '{{\"status\": \"success\", \"result\": 36}}', created_at, 5
                 FROM s),
             edges AS (
               INSERT INTO sg_edges (task_id, from_step, to_step) SELECT task_id, parent, id FROM s WHERE k > 1),
             task_audit AS (
               INSERT INTO sg_task_transitions (task_id, from_state, to_state, sort_key, metadata, created_at)
               SELECT t.id, p.f, CASE WHEN p.j = 6 THEN t.state ELSE p.s END, p.j, '{{}}',
                      t.created_at + p.j * interval '3 ms'
                 FROM t CROSS JOIN (VALUES (1, NULL, 'pending'), (2, 'pending', 'initializing'),
                                           (3, 'initializing', 'enqueuing_steps'), (4, 'enqueuing_steps', 'steps_in_process'),
                                           (5, 'steps_in_process', 'evaluating_results'), (6, 'evaluating_results', NULL))
                      AS p (j, f, s))
             INSERT INTO sg_step_transitions (task_id, step_id, step_name, from_state, to_state, attempt, sort_key,
                                              metadata, created_at)
             SELECT s.task_id, s.id, 'step_' || s.k, p.f, CASE WHEN p.j = 5 THEN s.state ELSE p.s END, 1, p.j,
                    '{{}}', s.created_at + (s.k * 4 + p.j) * interval '1 ms'
               FROM s CROSS JOIN (VALUES (1, NULL, 'pending'), (2, 'pending', 'enqueued'), (3, 'enqueued', 'in_progress'),
                                         (4, 'in_progress', 'enqueued_for_orchestration'),
                                         (5, 'enqueued_for_orchestration', NULL)) AS p (j, f, s)",
            last = to - 1
        );
        sqlx::raw_sql(&sql)
            .execute(pool)
            .await
            .context("generating history")?;
        from = to;
        eprintln!("  history: {from} tasks ({:.0?})", started.elapsed());
    }
    sqlx::raw_sql(
        "VACUUM ANALYZE sg_tasks, sg_steps, sg_edges, sg_task_transitions, sg_step_transitions",
    )
    .execute(pool)
    .await?;
    Ok(from)
}
