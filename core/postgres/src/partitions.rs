//! The audit trails' partitions (migration 0017): made ahead, `width` wide,
//! by `sg_add_partition`, and dropped by `sg_drop_partition` once every
//! task they were made for is older than the retention of tasks that ended
//! well. Each partition made or dropped is its own short transaction that
//! gives up on a lock after [`LOCK_TIMEOUT_MS`]; the next pass tries again.

use crate::errors::{backend_error, retrying};
use crate::store::PgStore;
use std::time::Duration;
use stepgraph_engine::retention::{Keep, Rotation};
use stepgraph_engine::StoreError;

/// Any stable number: one process makes or drops partitions at a time.
const PARTITION_LOCK: i64 = 0x5354_4550_5041_5254;

/// Partitions are made this many widths ahead of now.
const AHEAD: f64 = 3.0;

/// A new range begins at least a width, and at most this, ahead of now.
const LEAD: Duration = Duration::from_secs(60);

/// The longest making or dropping a partition waits for a lock, during
/// which the commits that append audit rows may wait behind it.
const LOCK_TIMEOUT_MS: i32 = 200;

/// lock_not_available: the statement gave up waiting for a lock.
fn waited_too_long(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

impl PgStore {
    pub(crate) async fn rotate_partitions(
        &self,
        width: Duration,
        keep: Keep,
    ) -> Result<Rotation, StoreError> {
        // A new range begins at least this far ahead (see sg_add_partition).
        let lead = width.min(LEAD).as_secs_f64();
        let width = width.as_secs_f64();
        let mut done = Rotation::default();
        for table in ["sg_step_transitions", "sg_task_transitions"] {
            loop {
                let made: Result<bool, _> = retrying!(self, pool => sqlx::query_scalar(
                    "SELECT sg_add_partition($1, make_interval(secs => $2), make_interval(secs => $3),
                                             now() + make_interval(secs => $2 * $4), $5, $6)"
                )
                .bind(table)
                .bind(width)
                .bind(lead)
                .bind(AHEAD)
                .bind(PARTITION_LOCK)
                .bind(LOCK_TIMEOUT_MS)
                .fetch_one(pool));
                match made {
                    Ok(true) => done.created += 1,
                    Ok(false) => break,
                    Err(e) if waited_too_long(&e) => {
                        tracing::info!(
                            table,
                            "making a history partition waited too long for a lock; will try again"
                        );
                        break;
                    }
                    Err(e) => return Err(backend_error(e)),
                }
            }
        }
        let Some(keep) = keep.seconds() else {
            return Ok(done);
        };
        let due: Vec<String> = retrying!(self, pool => sqlx::query_scalar(
            "SELECT name FROM sg_partitions WHERE upper_at < now() - make_interval(secs => $1) ORDER BY upper_at"
        )
        .bind(keep)
        .fetch_all(pool))
        .map_err(backend_error)?;
        for name in due {
            let moved: Result<Option<i64>, _> = retrying!(self, pool => sqlx::query_scalar(
                "SELECT sg_drop_partition($1, $2, $3)"
            )
            .bind(&name)
            .bind(PARTITION_LOCK)
            .bind(LOCK_TIMEOUT_MS)
            .fetch_one(pool));
            match moved {
                Ok(Some(moved)) => {
                    done.dropped += 1;
                    done.moved += moved as u64;
                }
                // Another process is at it.
                Ok(None) => break,
                Err(e) if waited_too_long(&e) => {
                    tracing::info!(partition = %name, "dropping a history partition waited too long for its lock; will try again");
                    break;
                }
                Err(e) => return Err(backend_error(e)),
            }
        }
        Ok(done)
    }
}
