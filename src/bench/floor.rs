//! The durable-commit floor of the database a bench runs against: what one
//! durable write costs there and then, so that a scenario's P50 can be read
//! against the least its commits could take (a task needs one to be
//! created and one per step).

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

const WARMUP: usize = 20;

/// The median time of a single-row INSERT committed durably
/// (`synchronous_commit = on`) on one connection, over `runs` commits.
pub async fn durable_commit(url: &str, runs: usize) -> Result<Duration> {
    let mut c = PgConnection::connect(url)
        .await
        .context("connecting to measure the durable-commit floor")?;
    sqlx::query("SET synchronous_commit = on")
        .execute(&mut c)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS sg_bench_floor \
         (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(&mut c)
    .await?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs + WARMUP {
        let start = Instant::now();
        sqlx::query("INSERT INTO sg_bench_floor DEFAULT VALUES")
            .execute(&mut c)
            .await?;
        if i >= WARMUP {
            samples.push(start.elapsed());
        }
    }
    sqlx::query("DROP TABLE sg_bench_floor")
        .execute(&mut c)
        .await?;
    samples.sort();
    Ok(samples[samples.len() / 2])
}
