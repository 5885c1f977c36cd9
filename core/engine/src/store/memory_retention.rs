//! The in-memory store's retention (see `memory` and [`crate::retention`]).
//! Archiving keeps only when each task was removed: the embedded mode's
//! history ends with its process anyway.

use super::memory::Inner;
use crate::model::TaskId;
use crate::retention::{Expiry, Keep};
use crate::state::TaskState;
use chrono::{DateTime, Utc};

impl Inner {
    pub(super) fn expire(&mut self, expiry: &Expiry, now: DateTime<Utc>, limit: i64) -> u64 {
        let mut doomed: Vec<(DateTime<Utc>, TaskId)> = self
            .tasks
            .values()
            .filter_map(|e| {
                let t = &e.task;
                let ended = t.completed_at.filter(|_| t.state.is_terminal())?;
                let keep = expiry.of(&t.namespace, &t.name, &t.version);
                let keep = if t.state == TaskState::Error {
                    keep.failed
                } else {
                    keep.ended
                };
                match keep {
                    Keep::For(d) => (now - ended).to_std().is_ok_and(|age| age > d),
                    Keep::Forever => false,
                }
                .then_some((ended, t.id))
            })
            .collect();
        doomed.sort();
        doomed.truncate(limit.max(0) as usize);
        for (_, id) in &doomed {
            let Some(entry) = self.tasks.remove(id) else {
                continue;
            };
            for s in &entry.steps {
                self.step_index.remove(&s.id);
            }
            if let Some(key) = &entry.task.idempotency_key {
                self.idempotency.remove(key);
            }
            if expiry.archive {
                self.archived.insert(*id, now);
            }
        }
        doomed.len() as u64
    }
}
