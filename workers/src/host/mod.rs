//! The foreign handler host: the language-neutral half of every binding
//! (Python, Ruby, TypeScript, C). The Rust worker hands a step to a
//! [`ForeignHandler`]; the host queues it as a [`StepEvent`]; the language
//! side pulls events with [`Host::next_events`] and reports each outcome
//! with [`Host::complete`]. A binding only converts [`StepEvent`] and
//! [`StepResult`] to and from its language's values and releases its
//! interpreter lock around the two blocking calls.
//!
//! - Pull with credits: `next_events(max, ..)` says the language side has
//!   `max` free handler slots; the worker claims from the queue only that many
//!   steps (the host grants them as the permits of [`Host::credits`]).
//! - Every dispatched event has a deadline; a reaper thread fails overdue ones
//!   as retryable `timeout`s, and their late completions are refused.
//! - Completions pass through one bounded channel: when it is full,
//!   `complete` waits (backpressure), it never drops; [`HostStats`] counts
//!   the waits.
//! - The host remembers its process id and refuses use from a forked child.

mod config;
mod foreign;
mod pending;
mod schema;

pub use config::{HostConfig, HostError};
pub use foreign::ForeignHandler;
pub use schema::{StepEvent, StepResult};

use crossbeam_channel::{bounded, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};
use pending::{reap, route, Completion, Pending};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stepgraph_engine::queue::Credits;
use stepgraph_engine::{StepError, StepOutcome};
use tokio::sync::Semaphore;

struct Inner {
    pid: u32,
    config: HostConfig,
    ready: Mutex<VecDeque<StepEvent>>,
    /// Handler slots of the callers waiting in `next_events` (changed under the `ready` lock).
    waiting: AtomicUsize,
    arrived: Condvar,
    pending: Mutex<HashMap<u64, Pending>>,
    /// `complete` calls between taking an event off `pending` and handing
    /// its result to the router (changed under the `pending` lock).
    completing: AtomicUsize,
    /// Notified when no event is pending or being completed.
    idle: Condvar,
    completions: Mutex<Option<Sender<Completion>>>,
    /// `complete` calls that found the completion channel full and waited.
    completion_waits: AtomicU64,
    credits: Arc<Semaphore>,
    next_id: AtomicU64,
    /// No new events are handed out; completions are still taken.
    draining: AtomicBool,
    closed: AtomicBool,
}

/// What the host holds and has done, for the bindings' `host_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HostStats {
    /// Events out with the language side.
    pub pending: usize,
    /// Completions waiting for the router.
    pub completion_depth: usize,
    /// `complete` calls that waited because the completion channel was full.
    pub completion_waits: u64,
}

pub struct Host {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Host {
    /// Starts the host's completion router and reaper threads.
    pub fn new(config: HostConfig) -> Arc<Host> {
        let (tx, rx) = bounded(config.completion_capacity.max(1));
        let inner = Arc::new(Inner {
            pid: std::process::id(),
            config,
            ready: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            arrived: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            completing: AtomicUsize::new(0),
            idle: Condvar::new(),
            completions: Mutex::new(Some(tx)),
            completion_waits: AtomicU64::new(0),
            credits: Arc::new(Semaphore::new(0)),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let router = {
            std::thread::Builder::new()
                .name("stepgraph-completions".into())
                .spawn(move || route(rx))
                .expect("spawning the completion router")
        };
        let reaper = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("stepgraph-reaper".into())
                .spawn(move || reap(&inner))
                .expect("spawning the reaper")
        };
        Arc::new(Host {
            inner,
            threads: Mutex::new(vec![router, reaper]),
        })
    }

    /// The permits the worker claims steps with (see [`crate::Worker::with_credits`]).
    pub fn credits(&self) -> Credits {
        let inner = self.inner.clone();
        Credits {
            permits: self.inner.credits.clone(),
            settle: Arc::new(move || {
                let ready = inner.ready.lock();
                inner.rebalance(ready.len());
            }),
        }
    }

    /// The Rust-side handler that dispatches `name`'s steps to the language side.
    pub fn handler(self: &Arc<Self>, name: &str) -> ForeignHandler {
        ForeignHandler {
            host: self.clone(),
            name: name.to_string(),
        }
    }

    fn check(&self) -> Result<(), HostError> {
        let current = std::process::id();
        if current != self.inner.pid {
            return Err(HostError::Forked {
                created: self.inner.pid,
                current,
            });
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(HostError::Closed);
        }
        Ok(())
    }

    /// Blocks (call it without holding an interpreter lock) until events are
    /// there or `timeout` passes; returns at most `max`. `max` is the
    /// caller's free handler slots: while callers wait, the worker is granted
    /// as many claims as they wait for in all, less the events already queued.
    pub fn next_events(&self, max: usize, timeout: Duration) -> Result<Vec<StepEvent>, HostError> {
        self.check()?;
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(HostError::Closed);
        }
        let deadline = Instant::now() + timeout;
        let mut ready = self.inner.ready.lock();
        self.inner.waiting.fetch_add(max, Ordering::SeqCst);
        self.inner.rebalance(ready.len());
        while ready.is_empty()
            && !self.inner.closed.load(Ordering::SeqCst)
            && !self.inner.draining.load(Ordering::SeqCst)
        {
            if self
                .inner
                .arrived
                .wait_until(&mut ready, deadline)
                .timed_out()
            {
                break;
            }
        }
        let n = max.min(ready.len());
        let events: Vec<StepEvent> = ready.drain(..n).collect();
        self.inner.waiting.fetch_sub(max, Ordering::SeqCst);
        self.inner.rebalance(ready.len());
        Ok(events)
    }

    /// Reports an event's outcome. Waits while the completion channel is
    /// full; refuses an event that is not pending (timed out, say).
    pub fn complete(&self, event_id: u64, result: StepResult) -> Result<(), HostError> {
        self.check()?;
        let p = {
            let mut pending = self.inner.pending.lock();
            let Some(p) = pending.remove(&event_id) else {
                return Err(HostError::NotPending(event_id));
            };
            self.inner.completing.fetch_add(1, Ordering::SeqCst);
            p
        };
        let tx = self.inner.completions.lock().clone();
        let completion = Completion {
            result,
            reply: p.reply,
        };
        let sent = match tx {
            None => Err(HostError::Closed),
            Some(tx) => match tx.try_send(completion) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(completion)) => {
                    self.inner.completion_waits.fetch_add(1, Ordering::Relaxed);
                    tx.send(completion).map_err(|_| HostError::Closed)
                }
                Err(TrySendError::Disconnected(_)) => Err(HostError::Closed),
            },
        };
        let pending = self.inner.pending.lock();
        self.inner.completing.fetch_sub(1, Ordering::SeqCst);
        self.inner.notify_if_idle(&pending);
        sent
    }

    /// Waits (call it without an interpreter lock) until no event is out
    /// with the language side, or `timeout` passes; true when none is.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pending = self.inner.pending.lock();
        while !self.inner.is_idle(&pending) {
            if self
                .inner
                .idle
                .wait_until(&mut pending, deadline)
                .timed_out()
            {
                return self.inner.is_idle(&pending);
            }
        }
        true
    }

    /// Completions waiting for the router (a metric).
    pub fn completion_depth(&self) -> usize {
        self.inner
            .completions
            .lock()
            .as_ref()
            .map_or(0, |tx| tx.len())
    }

    /// Events dispatched and not yet completed.
    pub fn pending_count(&self) -> usize {
        self.inner.pending.lock().len()
    }

    pub fn stats(&self) -> HostStats {
        HostStats {
            pending: self.pending_count(),
            completion_depth: self.completion_depth(),
            completion_waits: self.inner.completion_waits.load(Ordering::Relaxed),
        }
    }

    /// The first half of a graceful shutdown: hands out no more events
    /// (waiting callers get [`HostError::Closed`]) and gives the events not
    /// yet handed out back to their steps as retryable failures, but still
    /// takes the completions of the handlers that are running.
    pub fn drain(&self) {
        let undelivered: Vec<StepEvent> = {
            let mut ready = self.inner.ready.lock();
            self.inner.draining.store(true, Ordering::SeqCst);
            ready.drain(..).collect()
        };
        self.inner.arrived.notify_all();
        for event in undelivered {
            let removed = {
                let mut pending = self.inner.pending.lock();
                let p = pending.remove(&event.event_id);
                self.inner.notify_if_idle(&pending);
                p
            };
            if let Some(p) = removed {
                let error = StepError::retryable(
                    "the worker shut down before the step was handed to its handler",
                )
                .with_code("host_unavailable");
                let _ = p.reply.send(StepOutcome::Failure { error });
            }
        }
    }

    /// Stops handing out events and wakes every waiter; steps still waiting
    /// for the language side fail as retryable and are run again later.
    pub fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.arrived.notify_all();
        self.inner.ready.lock().clear();
        {
            let mut pending = self.inner.pending.lock();
            pending.clear();
            self.inner.idle.notify_all();
        }
        self.inner.completions.lock().take();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    /// Grants the worker as many claims as waiting slots not already served
    /// by queued events. Call with the `ready` lock held (`queued` its length).
    /// A grant already taken by a claim that has not brought its event yet
    /// (a receive still waiting for a message) is not counted: a caller that
    /// times out and asks again meanwhile is granted one more, so one extra
    /// step per such re-ask can arrive and wait queued for a slot.
    fn rebalance(&self, queued: usize) {
        let target = self.waiting.load(Ordering::SeqCst).saturating_sub(queued);
        let available = self.credits.available_permits();
        if available < target {
            self.credits.add_permits(target - available);
        } else if available > target {
            self.credits.forget_permits(available - target);
        }
    }

    /// Takes an event back that its step no longer waits for.
    fn withdraw(&self, event_id: u64) {
        {
            let mut pending = self.pending.lock();
            pending.remove(&event_id);
            self.notify_if_idle(&pending);
        }
        self.ready.lock().retain(|e| e.event_id != event_id);
    }

    fn is_idle(&self, pending: &HashMap<u64, Pending>) -> bool {
        pending.is_empty() && self.completing.load(Ordering::SeqCst) == 0
    }

    /// Call with the `pending` lock held, after taking events off it.
    fn notify_if_idle(&self, pending: &HashMap<u64, Pending>) {
        if self.is_idle(pending) {
            self.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_forked_child_is_refused() {
        let host = Host::new(HostConfig::default());
        // As if this process were a child forked after the host started.
        let forked = Host {
            inner: Arc::new(Inner {
                pid: std::process::id() + 1,
                config: HostConfig::default(),
                ready: Mutex::new(VecDeque::new()),
                waiting: AtomicUsize::new(0),
                arrived: Condvar::new(),
                pending: Mutex::new(HashMap::new()),
                completing: AtomicUsize::new(0),
                idle: Condvar::new(),
                completions: Mutex::new(None),
                completion_waits: AtomicU64::new(0),
                credits: Arc::new(Semaphore::new(0)),
                next_id: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
            threads: Mutex::new(Vec::new()),
        };
        let err = forked.next_events(1, Duration::ZERO).unwrap_err();
        assert!(matches!(err, HostError::Forked { .. }));
        assert!(
            err.to_string()
                .contains("cannot be used in the forked child"),
            "{err}"
        );
        assert!(matches!(
            forked.complete(
                1,
                StepOutcome::Success {
                    result: Value::Null
                }
            ),
            Err(HostError::Forked { .. })
        ));
        assert!(host.next_events(1, Duration::ZERO).unwrap().is_empty());
    }
}
