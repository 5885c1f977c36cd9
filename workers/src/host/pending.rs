//! Events out with the language side: each with its deadline and the step
//! waiting for its outcome. The reaper thread fails overdue events as
//! retryable `timeout`s, whose late completions are then refused.

use super::Inner;
use std::sync::atomic::Ordering;
use std::time::Instant;
use stepgraph_engine::{StepError, StepOutcome};
use tokio::sync::oneshot;

pub(super) struct Pending {
    pub(super) handler: String,
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<StepOutcome>,
}

pub(super) fn reap(inner: &Inner) {
    while !inner.closed.load(Ordering::SeqCst) {
        std::thread::sleep(inner.config.reaper_interval);
        let now = Instant::now();
        let overdue: Vec<(u64, Pending)> = {
            let mut pending = inner.pending.lock();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            let overdue = ids
                .into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect();
            inner.notify_if_idle(&pending);
            overdue
        };
        for (id, p) in overdue {
            inner.ready.lock().retain(|e| e.event_id != id);
            let error = StepError::retryable(format!(
                "handler `{}` did not complete event {id} in time; a late result will be refused",
                p.handler
            ))
            .with_code("timeout");
            let _ = p.reply.send(StepOutcome::Failure { error });
        }
    }
}
