//! Finding tasks and counting them for an operator (`Store::list_tasks`,
//! `Store::stats`); indexed by migration 0011.

use crate::errors::{backend_error, retrying};
use crate::store::PgStore;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};
use std::collections::BTreeMap;
use stepgraph_engine::store::{
    FailingTemplate, MinuteCounts, Recent, Stats, TaskFilter, TaskSummary, TemplateStats,
};
use stepgraph_engine::{StoreError, TaskId, TaskState};

const COLUMNS: &str = "id, namespace, name, version, state, idempotency_key, priority, error, \
                       created_at, updated_at, completed_at, run_at";

type Row = (
    TaskId,
    String,
    String,
    String,
    String,
    Option<String>,
    i32,
    Option<Value>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// `WHERE ...` for `filter`, with `state` (one of the filter's, if any).
fn push_where(q: &mut QueryBuilder<'_, Postgres>, filter: &TaskFilter, state: Option<TaskState>) {
    q.push(" WHERE true");
    if let Some(state) = state {
        q.push(" AND t.state = ").push_bind(state.as_str());
    }
    for (column, value) in [
        ("namespace", &filter.namespace),
        ("name", &filter.name),
        ("version", &filter.version),
        ("idempotency_key", &filter.idempotency_key),
    ] {
        if let Some(v) = value {
            q.push(format!(" AND t.{column} = ")).push_bind(v.clone());
        }
    }
    if let Some(at) = filter.created_after {
        q.push(" AND t.created_at >= ").push_bind(at);
    }
    if let Some(at) = filter.created_before {
        q.push(" AND t.created_at < ").push_bind(at);
    }
    if let Some(id) = filter.older_than {
        q.push(" AND t.id < ").push_bind(id);
    }
    if let Some(failed) = filter.has_failed_step {
        q.push(if failed { " AND " } else { " AND NOT " });
        q.push("EXISTS (SELECT 1 FROM sg_steps s WHERE s.task_id = t.id AND s.state = 'error')");
    }
}

/// One state's page: a backward walk of (state, id) that stops at the limit.
fn push_page(q: &mut QueryBuilder<'_, Postgres>, filter: &TaskFilter, state: Option<TaskState>) {
    q.push(format!("SELECT {COLUMNS} FROM sg_tasks t"));
    push_where(q, filter, state);
    q.push(" ORDER BY t.id DESC LIMIT ")
        .push_bind(filter.limit as i64);
}

/// The whole list statement: with several states, each state's newest
/// merged, so that every part reads only its page.
fn push_list(q: &mut QueryBuilder<'_, Postgres>, filter: &TaskFilter) {
    match filter.states.as_slice() {
        [] => push_page(q, filter, None),
        [one] => push_page(q, filter, Some(*one)),
        many => {
            q.push(format!("SELECT {COLUMNS} FROM ("));
            for (i, state) in many.iter().enumerate() {
                if i > 0 {
                    q.push(" UNION ALL ");
                }
                q.push("(");
                push_page(q, filter, Some(*state));
                q.push(")");
            }
            q.push(") t ORDER BY id DESC LIMIT ")
                .push_bind(filter.limit as i64);
        }
    }
}

impl PgStore {
    pub(crate) async fn find_tasks(
        &self,
        filter: &TaskFilter,
    ) -> Result<Vec<TaskSummary>, StoreError> {
        // A builder is spent by one statement: each try builds its own.
        let rows: Vec<Row> = retrying!(self, pool => async {
            let mut q = QueryBuilder::new("");
            push_list(&mut q, filter);
            q.build_query_as().fetch_all(pool).await
        })
        .map_err(backend_error)?;
        rows.into_iter().map(summary).collect()
    }

    pub(crate) async fn count_stats(&self, since: DateTime<Utc>) -> Result<Stats, StoreError> {
        let tasks: Vec<(String, String, String, i64)> = retrying!(self, pool => sqlx::query_as(
            "SELECT namespace, name, state, count(*) FROM sg_tasks GROUP BY 1, 2, 3",
        )
        .fetch_all(pool))
        .map_err(backend_error)?;
        let steps: Vec<(String, String, String, i64)> = retrying!(self, pool => sqlx::query_as(
            "SELECT t.namespace, t.name, s.state, count(*) FROM sg_steps s JOIN sg_tasks t ON t.id = s.task_id
              GROUP BY 1, 2, 3",
        )
        .fetch_all(pool))
        .map_err(backend_error)?;
        let (failed_tasks, failed_steps, retries): (i64, i64, i64) = retrying!(self, pool => sqlx::query_as(
            "SELECT (SELECT count(*) FROM sg_task_transitions WHERE to_state = 'error' AND created_at >= $1),
                    (SELECT count(*) FROM sg_step_transitions WHERE to_state = 'error' AND created_at >= $1),
                    (SELECT count(*) FROM sg_step_transitions WHERE to_state = 'waiting_for_retry' AND created_at >= $1)",
        )
        .bind(since)
        .fetch_one(pool))
        .map_err(backend_error)?;
        // Audit rows of the hour by the BRIN index on their time (0015):
        // they are appended in time order, so the index is a few pages.
        let minutes: Vec<(DateTime<Utc>, i64, i64)> = retrying!(self, pool => sqlx::query_as(
            "SELECT date_trunc('minute', created_at),
                    count(*) FILTER (WHERE to_state = 'complete'),
                    count(*) FILTER (WHERE to_state <> 'complete')
               FROM sg_step_transitions
              WHERE created_at >= $1 AND to_state IN ('complete', 'error', 'waiting_for_retry')
              GROUP BY 1 ORDER BY 1",
        )
        .bind(since)
        .fetch_all(pool))
        .map_err(backend_error)?;
        let failing: Vec<(String, String, i64, i64)> = retrying!(self, pool => sqlx::query_as(
            "SELECT t.namespace, t.name, count(*) FILTER (WHERE f.step), count(*) FILTER (WHERE NOT f.step)
               FROM (SELECT task_id, true AS step FROM sg_step_transitions
                      WHERE to_state IN ('error', 'waiting_for_retry') AND created_at >= $1
                     UNION ALL
                     SELECT task_id, false FROM sg_task_transitions
                      WHERE to_state = 'error' AND created_at >= $1) f
               JOIN sg_tasks t ON t.id = f.task_id
              GROUP BY 1, 2",
        )
        .bind(since)
        .fetch_all(pool))
        .map_err(backend_error)?;
        let mut failing_templates: Vec<FailingTemplate> = failing
            .into_iter()
            .map(
                |(namespace, name, failed_attempts, failed_tasks)| FailingTemplate {
                    namespace,
                    name,
                    failed_attempts,
                    failed_tasks,
                },
            )
            .collect();
        FailingTemplate::rank(&mut failing_templates);
        let mut templates: BTreeMap<(String, String), TemplateStats> = BTreeMap::new();
        for (which, rows) in [(true, tasks), (false, steps)] {
            for (namespace, name, state, n) in rows {
                let t = templates
                    .entry((namespace.clone(), name.clone()))
                    .or_insert_with(|| TemplateStats {
                        namespace,
                        name,
                        ..TemplateStats::default()
                    });
                let counts = if which { &mut t.tasks } else { &mut t.steps };
                counts.insert(state, n);
            }
        }
        Ok(Stats {
            templates: templates.into_values().collect(),
            recent: Recent {
                since: Some(since),
                failed_tasks,
                failed_steps,
                retries,
                per_minute: minutes
                    .into_iter()
                    .map(|(minute, completed_steps, failed_attempts)| MinuteCounts {
                        minute,
                        completed_steps,
                        failed_attempts,
                    })
                    .collect(),
                failing_templates,
            },
        })
    }
}

fn summary(row: Row) -> Result<TaskSummary, StoreError> {
    let (
        id,
        namespace,
        name,
        version,
        state,
        idempotency_key,
        priority,
        error,
        created,
        updated,
        completed,
        run_at,
    ) = row;
    let state: TaskState = state
        .parse()
        .map_err(|e| StoreError::Unreadable(format!("task {id}: {e}")))?;
    Ok(TaskSummary {
        id,
        namespace,
        name,
        version,
        state,
        idempotency_key,
        priority,
        error,
        created_at: created,
        updated_at: updated,
        completed_at: completed,
        run_at,
    })
}

impl PgStore {
    /// `EXPLAIN (ANALYZE, BUFFERS)` of the statement [`Store::list_tasks`]
    /// runs for `filter`: what `stepgraph bench --list-tasks` shows.
    ///
    /// [`Store::list_tasks`]: stepgraph_engine::Store::list_tasks
    pub async fn explain_list(&self, filter: &TaskFilter) -> Result<String, StoreError> {
        let lines: Vec<String> = retrying!(self, pool => async {
            let mut q = QueryBuilder::new("EXPLAIN (ANALYZE, BUFFERS) ");
            push_list(&mut q, filter);
            q.build_query_scalar().fetch_all(pool).await
        })
        .map_err(backend_error)?;
        Ok(lines.join("\n"))
    }
}
