//! Retention: ended tasks that outlived what their template (or the
//! default) keeps are removed, a batch per transaction with a pause between
//! batches as long as the batch took, so that live work keeps the database. See [`crate::retention`].

use super::{Orchestrator, OrchestratorError};
use crate::model::TaskId;
use crate::retention::{Expiry, Keep, Rotation};
use crate::shutdown::Shutdown;
use std::time::Duration;

const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// Space is reclaimed after a pass that removed something, at most this often.
const RECLAIM_EVERY: Duration = Duration::from_secs(60);

impl Orchestrator {
    /// What expires, or None when retention is off.
    pub fn expiry(&self) -> Option<Expiry> {
        let c = self.config.retention?;
        Some(self.templates.expiry(c.default, c.archive))
    }

    /// Removes every expired task, a batch at a time, until none is left
    /// (or `shutdown`); how many. Another process doing it at the same time
    /// makes this one find nothing.
    pub async fn expire(&self, shutdown: Option<&Shutdown>) -> Result<u64, OrchestratorError> {
        let Some(config) = self.config.retention else {
            return Ok(0);
        };
        let expiry = self.templates.expiry(config.default, config.archive);
        if expiry.shortest().is_none() {
            return Ok(0);
        }
        let batch = config.batch.max(1);
        let mut total = 0;
        loop {
            let began = tokio::time::Instant::now();
            let removed = self.store.expire(&expiry, batch).await?;
            crate::metrics::expired(removed);
            total += removed;
            if removed < batch as u64 || shutdown.is_some_and(Shutdown::is_triggered) {
                break;
            }
            // As long again as the batch took: a backlog is cleared with at
            // most about half of the time, and the busier the database (the
            // slower a batch), the more it is left to live work.
            tokio::time::sleep(began.elapsed().max(BATCH_PAUSE)).await;
        }
        if total > 0 {
            tracing::info!(tasks = total, "removed ended tasks past their retention");
        }
        Ok(total)
    }

    /// Makes the history partitions ahead and drops those past the default
    /// retention of tasks that ended well ([`crate::Store::rotate`]).
    pub async fn rotate(&self) -> Result<Rotation, OrchestratorError> {
        let Some(config) = self.config.retention else {
            return Ok(Rotation::default());
        };
        let done = self
            .store
            .rotate(config.partition, config.default.ended)
            .await?;
        crate::metrics::rotated(&done);
        if done != Rotation::default() {
            tracing::info!(
                created = done.created,
                dropped = done.dropped,
                moved = done.moved,
                "history partitions made ahead and dropped past their retention"
            );
        }
        Ok(done)
    }

    /// Every `retention.every`, [`Self::expire`] and [`Self::rotate`]
    /// (which also runs at once, so that the partitions exist from the
    /// start); then, when it removed something, [`crate::Store::reclaim`]
    /// (at most once a minute), so that the space is reused and the
    /// database stays the same size whether or not the server vacuums by
    /// itself.
    pub(super) async fn retain(&self, every: Duration, mut shutdown: Shutdown) {
        let mut removed = 0;
        let mut reclaimed = tokio::time::Instant::now();
        self.rotate_or_warn().await;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.expire(Some(&shutdown)).await {
                Ok(n) => removed += n,
                Err(e) => {
                    tracing::warn!(error = %e, "removing expired tasks failed; will try again")
                }
            }
            self.rotate_or_warn().await;
            if removed > 0 && reclaimed.elapsed() >= RECLAIM_EVERY {
                reclaimed = tokio::time::Instant::now();
                removed = 0;
                if let Err(e) = self.store.reclaim().await {
                    tracing::warn!(error = %e, "reclaiming the space of removed tasks failed");
                }
            }
        }
    }

    async fn rotate_or_warn(&self) {
        if let Err(e) = self.rotate().await {
            tracing::warn!(error = %e, "rotating the history partitions failed; will try again");
        }
    }

    /// Why a task is not found, for an answer that tells a task removed by
    /// retention from one that never was: archived (and when), or created
    /// before the shortest retention could have removed it (task ids are
    /// UUIDv7s, which carry their creation time).
    pub async fn why_missing(&self, task_id: TaskId) -> String {
        if let Ok(Some(at)) = self.store.archived(task_id).await {
            return format!(
                "task {task_id} is gone: removed by retention at {}; its record is in the archive",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        let shortest = self.expiry().and_then(|e| e.shortest());
        let created = task_id.get_timestamp().map(|t| {
            let (secs, nanos) = t.to_unix();
            std::time::UNIX_EPOCH + Duration::new(secs, nanos)
        });
        match (shortest, created.and_then(|c| c.elapsed().ok())) {
            (Some(keep), Some(age)) if age > keep => format!(
                "task {task_id} is gone: it was created {} ago and ended tasks are kept for {} \
                 or longer, so retention has removed it (if it ever existed)",
                crate::retention::age(age),
                Keep::For(keep)
            ),
            _ => format!("task {task_id} not found"),
        }
    }
}
