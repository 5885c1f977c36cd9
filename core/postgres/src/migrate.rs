//! The schema: the numbered migrations (schema changes only), applied once
//! each in order, then the server-side functions (`functions.sql`, each
//! function's current definition) whenever that file changed; all in one
//! transaction under an advisory lock, so concurrent `migrate` runs (every
//! process runs it at start) serialize.

use crate::errors::backend_error;
use sqlx::postgres::PgPool;
use stepgraph_engine::StoreError;

const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_lean_apply.sql")),
    (3, include_str!("../migrations/0003_leases.sql")),
    (4, include_str!("../migrations/0004_cached_reads.sql")),
    (5, include_str!("../migrations/0005_group_commit.sql")),
    (6, include_str!("../migrations/0006_receive_in_order.sql")),
    (7, include_str!("../migrations/0007_lean_creation.sql")),
    (8, include_str!("../migrations/0008_start_step_json.sql")),
    (9, include_str!("../migrations/0009_receive_started.sql")),
    (10, include_str!("../migrations/0010_dead_letters.sql")),
    (11, include_str!("../migrations/0011_find_tasks.sql")),
    (12, include_str!("../migrations/0012_workers.sql")),
    (13, include_str!("../migrations/0013_scheduling.sql")),
    (14, include_str!("../migrations/0014_trace.sql")),
    (15, include_str!("../migrations/0015_dashboard.sql")),
    (16, include_str!("../migrations/0016_retention.sql")),
    (
        17,
        include_str!("../migrations/0017_partitioned_history.sql"),
    ),
    (18, include_str!("../migrations/0018_task_fillfactor.sql")),
];

/// Every server-side function as it is now (CREATE OR REPLACE).
const FUNCTIONS: &str = include_str!("../functions.sql");

/// Any stable number: serializes concurrent `migrate` runs.
const MIGRATION_LOCK: i64 = 0x5354_4550_4752_4150;

/// Applies the embedded migrations that are not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i32>, StoreError> {
    let mut tx = pool.begin().await.map_err(backend_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(backend_error)?;
    let applied = apply_migrations(&mut tx, i32::MAX).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS sg_schema_functions (id integer PRIMARY KEY CHECK (id = 1), body text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await
    .map_err(backend_error)?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT body FROM sg_schema_functions WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend_error)?;
    if current.as_deref() != Some(FUNCTIONS) {
        sqlx::raw_sql(FUNCTIONS)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Backend(format!("functions.sql: {e}")))?;
        sqlx::query(
            "INSERT INTO sg_schema_functions (id, body) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body, applied_at = now()",
        )
        .bind(FUNCTIONS)
        .execute(&mut *tx)
        .await
        .map_err(backend_error)?;
    }
    tx.commit().await.map_err(backend_error)?;
    Ok(applied)
}

/// The tables as they were after migration `last`, without the functions
/// (which are written for the current tables): for a test that builds a
/// database of an earlier layout, fills it, and migrates it.
#[doc(hidden)]
pub async fn migrate_tables_until(pool: &PgPool, last: i32) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(backend_error)?;
    apply_migrations(&mut tx, last).await?;
    tx.commit().await.map_err(backend_error)
}

/// Applies the migrations up to `last` not applied yet, recording each;
/// which it applied.
async fn apply_migrations(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    last: i32,
) -> Result<Vec<i32>, StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS sg_schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut **tx)
    .await
    .map_err(backend_error)?;
    let done: Vec<i32> = sqlx::query_scalar("SELECT version FROM sg_schema_migrations")
        .fetch_all(&mut **tx)
        .await
        .map_err(backend_error)?;
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) || *version > last {
            continue;
        }
        // A migration that only replaced functions keeps its comments alone.
        if has_statements(sql) {
            sqlx::raw_sql(sql)
                .execute(&mut **tx)
                .await
                .map_err(|e| StoreError::Backend(format!("migration {version}: {e}")))?;
        }
        sqlx::query("INSERT INTO sg_schema_migrations (version) VALUES ($1)")
            .bind(version)
            .execute(&mut **tx)
            .await
            .map_err(backend_error)?;
        applied.push(*version);
    }
    Ok(applied)
}

/// Whether SQL text has anything but comments and blank lines.
fn has_statements(sql: &str) -> bool {
    sql.lines()
        .map(str::trim)
        .any(|l| !l.is_empty() && !l.starts_with("--"))
}
