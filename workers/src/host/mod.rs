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
//! - A completion goes straight to its step, which is waiting for it: it
//!   never waits and is never dropped; what is out at once is bounded by
//!   the credits.
//! - The host owns the engine's runtime, driven by the language thread
//!   that waits for events (see `drive`): a step's commit and the next
//!   step's dispatch run on the thread that reported its result. An event
//!   loop, which cannot wait, reports with [`Host::complete_and_next`] and
//!   drives in that call (see `inline`).
//! - The host remembers its process id and refuses use from a forked child.

#[cfg(test)]
mod boundary;
mod config;
mod drive;
mod foreign;
mod inline;
mod pending;
mod schema;
mod serve;

pub use config::{HostConfig, HostError};
pub use foreign::ForeignHandler;
pub use schema::{BatchRequest, StepEvent, StepResult};
pub use serve::Served;

use drive::Drive;
use parking_lot::{Condvar, Mutex};
use pending::{reap, Pending};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stepgraph_engine::queue::Credits;
use stepgraph_engine::{StepError, StepOutcome};
use tokio::sync::{Notify, Semaphore};

struct Inner {
    pid: u32,
    config: HostConfig,
    ready: Mutex<VecDeque<StepEvent>>,
    /// Handler slots of the callers waiting in `next_events` (changed under the `ready` lock).
    waiting: AtomicUsize,
    /// Wakes the callers waiting on the condition variable.
    arrived: Condvar,
    /// The events the driving caller (see `drive`) takes when it wakes: an
    /// event it will take wakes it alone (changed under the `ready` lock).
    driver_wants: AtomicUsize,
    /// Wakes the driving caller.
    driver_arrived: Notify,
    pending: Mutex<HashMap<u64, Pending>>,
    /// `complete` calls between taking an event off `pending` and handing
    /// its result to its step (changed under the `pending` lock).
    completing: AtomicUsize,
    /// Notified when no event is pending or being completed.
    idle: Condvar,
    credits: Arc<Semaphore>,
    /// Handler names served by the language side (see [`Host::handler`]).
    serves: AtomicUsize,
    /// Callers of [`Host::serve`] (while one is, waiters in `next_events`
    /// leave the driving to it).
    runners: AtomicUsize,
    /// When the last caller of `serve` left.
    runner_left: Mutex<Instant>,
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
}

pub struct Host {
    inner: Arc<Inner>,
    /// The runtime (None once released: the steps' tasks hold the host,
    /// so the runtime is dropped by `release`, not with the host).
    drive: Mutex<Option<Arc<Drive>>>,
    reaper: Mutex<Option<JoinHandle<()>>>,
}

impl Host {
    /// Starts the host's runtime and its reaper thread.
    pub fn new(config: HostConfig) -> Arc<Host> {
        let inner = Arc::new(Inner {
            pid: current_pid(),
            config,
            ready: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            arrived: Condvar::new(),
            driver_wants: AtomicUsize::new(0),
            driver_arrived: Notify::new(),
            pending: Mutex::new(HashMap::new()),
            completing: AtomicUsize::new(0),
            idle: Condvar::new(),
            credits: Arc::new(Semaphore::new(0)),
            serves: AtomicUsize::new(0),
            runners: AtomicUsize::new(0),
            runner_left: Mutex::new(Instant::now() - serve::RUNNERS_LINGER),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let reaper = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("stepgraph-reaper".into())
                .spawn(move || reap(&inner))
                .expect("spawning the reaper")
        };
        Arc::new(Host {
            inner,
            drive: Mutex::new(Some(Arc::new(Drive::new()))),
            reaper: Mutex::new(Some(reaper)),
        })
    }

    fn drive(&self) -> Result<Arc<Drive>, HostError> {
        self.drive.lock().clone().ok_or(HostError::Closed)
    }

    /// The runtime an engine on this host runs on: spawn its tasks here
    /// (and enter it to build one) so that the language side drives them.
    pub fn runtime(&self) -> Result<tokio::runtime::Handle, HostError> {
        Ok(self.drive()?.handle().clone())
    }

    /// Runs `future` on the host's runtime from a thread outside any
    /// runtime (setting up and shutting down; a caller that waits for a
    /// task's end should rather spawn it and wait, leaving the driving to
    /// the language side).
    pub fn block_on<F: Future>(&self, future: F) -> Result<F::Output, HostError> {
        Ok(self.drive()?.block_on(future))
    }

    /// Runs `future` here, driving the runtime, if the language side serves
    /// no handler (it would never drive: its callers of `next_events` wait
    /// for nothing) and no other thread drives as it would; else gives it
    /// back unpolled. A task of Rust steps alone then runs on the thread
    /// that waits for it, as in a native engine.
    pub fn drive_if_native<F: Future>(&self, future: F) -> Result<F::Output, F> {
        if self.inner.serves.load(Ordering::SeqCst) > 0 {
            return Err(future);
        }
        match self.drive() {
            Ok(drive) => drive.drive(future),
            Err(_) => Err(future),
        }
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
        self.inner.serves.fetch_add(1, Ordering::SeqCst);
        ForeignHandler {
            host: self.clone(),
            name: name.to_string(),
        }
    }

    fn check(&self) -> Result<(), HostError> {
        let current = current_pid();
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
        let inner = &*self.inner;
        let mut ready = inner.ready.lock();
        inner.waiting.fetch_add(max, Ordering::SeqCst);
        inner.rebalance(ready.len());
        if ready.is_empty() && !inner.stopped() {
            drop(ready);
            // Without handlers here no event comes: the waiter does not
            // drive; nor while a caller of `serve` waits for its task.
            let drive = inner.serves.load(Ordering::SeqCst) > 0 && !inner.runners_drive();
            let drove = drive.then(|| self.drive().ok()).flatten().and_then(|d| {
                d.drive(inner.wait_as_driver(max, Some(deadline), true))
                    .ok()
            });
            ready = inner.ready.lock();
            if drove.is_some() {
                inner.driver_wants.store(0, Ordering::SeqCst);
            }
            while ready.is_empty() && !inner.stopped() {
                if inner.arrived.wait_until(&mut ready, deadline).timed_out() {
                    break;
                }
            }
        }
        let n = max.min(ready.len());
        let events: Vec<StepEvent> = ready.drain(..n).collect();
        inner.waiting.fetch_sub(max, Ordering::SeqCst);
        inner.rebalance(ready.len());
        if !ready.is_empty() {
            inner.arrived.notify_one();
        }
        Ok(events)
    }

    /// Reports an event's outcome to its step (which a caller of
    /// `next_events` then commits, see `drive`); refuses an event that is
    /// not pending (timed out, say). Never waits.
    pub fn complete(&self, event_id: u64, result: impl Into<StepOutcome>) -> Result<(), HostError> {
        let result = result.into();
        self.check()?;
        let p = {
            let mut pending = self.inner.pending.lock();
            let Some(p) = pending.remove(&event_id) else {
                return Err(HostError::NotPending(event_id));
            };
            self.inner.completing.fetch_add(1, Ordering::SeqCst);
            p
        };
        // The step may have stopped waiting (its worker timed it out): nothing to do then.
        let _ = p.reply.send(result);
        let pending = self.inner.pending.lock();
        self.inner.completing.fetch_sub(1, Ordering::SeqCst);
        self.inner.notify_if_idle(&pending);
        Ok(())
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

    /// Events dispatched and not yet completed.
    pub fn pending_count(&self) -> usize {
        self.inner.pending.lock().len()
    }

    pub fn stats(&self) -> HostStats {
        HostStats {
            pending: self.pending_count(),
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
        self.inner.driver_arrived.notify_waiters();
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
        self.inner.driver_arrived.notify_waiters();
        self.inner.ready.lock().clear();
        {
            let mut pending = self.inner.pending.lock();
            pending.clear();
            self.inner.idle.notify_all();
        }
        if let Some(t) = self.reaper.lock().take() {
            let _ = t.join();
        }
    }

    /// Drops the runtime and its tasks. Its tasks hold this host, so
    /// dropping the host would not: the owner of an engine on it calls
    /// this when it drops the engine (waits still in progress end then).
    pub fn release(&self) {
        let drive = self.drive.lock().take();
        drop(drive);
    }
}

/// This process's id. `getpid` is a system call and `check` runs on every
/// completion, so it is read once per process: a fork handler clears it in
/// the child, which reads its own.
fn current_pid() -> u32 {
    static PID: AtomicU32 = AtomicU32::new(0);
    static HANDLER: std::sync::Once = std::sync::Once::new();
    extern "C" fn forked() {
        PID.store(0, Ordering::SeqCst);
    }
    HANDLER.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
    match PID.load(Ordering::SeqCst) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::SeqCst);
            pid
        }
        pid => pid,
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown();
        self.release();
    }
}

impl Inner {
    fn stopped(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.draining.load(Ordering::SeqCst)
    }

    /// Waits, driving the runtime, until an event is queued, the host
    /// stops or `deadline` passes (or, with `yield_to_runners`, a caller of
    /// `serve` comes to drive).
    async fn wait_as_driver(&self, max: usize, deadline: Option<Instant>, yield_to_runners: bool) {
        loop {
            let notified = self.driver_arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let ready = self.ready.lock();
                self.driver_wants.store(max, Ordering::SeqCst);
                if !ready.is_empty()
                    || self.stopped()
                    || (yield_to_runners && self.runners.load(Ordering::SeqCst) > 0)
                {
                    return;
                }
            }
            match deadline {
                Some(deadline) => tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline.into()) => return,
                },
                None => notified.await,
            }
        }
    }

    /// Queues an event (with the `ready` lock held) and wakes who takes it.
    fn queue(&self, ready: &mut VecDeque<StepEvent>, event: StepEvent) {
        ready.push_back(event);
        if ready.len() <= self.driver_wants.load(Ordering::SeqCst) {
            self.driver_arrived.notify_one();
        } else {
            self.arrived.notify_one();
        }
    }

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
                driver_wants: AtomicUsize::new(0),
                driver_arrived: Notify::new(),
                pending: Mutex::new(HashMap::new()),
                completing: AtomicUsize::new(0),
                idle: Condvar::new(),
                credits: Arc::new(Semaphore::new(0)),
                serves: AtomicUsize::new(0),
                runners: AtomicUsize::new(0),
                runner_left: Mutex::new(Instant::now()),
                next_id: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
            drive: Mutex::new(None),
            reaper: Mutex::new(None),
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
