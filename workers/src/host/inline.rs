//! The event loop's fast path (the TypeScript bindings): the thread that
//! runs the handlers reports a step's outcome and, when no other thread
//! drives the runtime, runs what that outcome makes runnable itself (the
//! step's commit, the next step's dispatch) and takes the events this
//! queues, in the same call. It never waits: work that is not runnable at
//! once (a database commit on the wire) is left to the next `next_events`.
//!
//! A JavaScript thread cannot block in `next_events` the way a Python or
//! Ruby handler thread does; there, reporting to a driver on another
//! thread and receiving the next event from it took three wake-ups a step
//! (the driver, a thread-pool thread, the event loop). Here a chain of
//! steps whose handlers return at once crosses no thread.

use super::{Host, HostError, Inner, StepEvent};
use std::sync::atomic::Ordering;
use stepgraph_engine::StepOutcome;

/// How many times the call lets the runtime run everything runnable,
/// looking for events in between, before it gives up: a commit and the
/// dispatch it makes take one round in memory; more rounds find nothing.
const ROUNDS: usize = 3;

/// The caller's free slots, counted as waiting while it drives, so that the
/// worker may claim (or eagerly take) the steps this commit makes ready.
struct Asking<'a> {
    inner: &'a Inner,
    max: usize,
}

impl<'a> Asking<'a> {
    fn enter(inner: &'a Inner, max: usize) -> Asking<'a> {
        let ready = inner.ready.lock();
        inner.waiting.fetch_add(max, Ordering::SeqCst);
        inner.rebalance(ready.len());
        Asking { inner, max }
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let ready = self.inner.ready.lock();
        self.inner.waiting.fetch_sub(self.max, Ordering::SeqCst);
        self.inner.rebalance(ready.len());
    }
}

impl Host {
    /// Reports an event's outcome like [`Host::complete`], then returns up
    /// to `max` events (the caller's free handler slots) without waiting:
    /// those queued already, or those the work made runnable by this
    /// outcome queues, run here when no other thread drives. Empty when
    /// none came at once: wait for more with `next_events`. Call it only
    /// while no `next_events` of the same caller is out (its slots would
    /// count twice).
    pub fn complete_and_next(
        &self,
        event_id: u64,
        result: impl Into<StepOutcome>,
        max: usize,
    ) -> Result<Vec<StepEvent>, HostError> {
        let mut result = Some(result.into());
        // Inside the runtime the step's wake-up is a push on this thread's
        // run queue, not a signal to a driver.
        self.drive_inline(max, || {
            self.complete(event_id, result.take().expect("taken once"))
        })?;
        // Another thread drives (or nothing more is handed out): it runs
        // the step on; what it queues comes through `next_events`.
        if let Some(result) = result {
            self.complete(event_id, result)?;
        }
        Ok(self.inner.take(max))
    }

    /// Up to `max` events without waiting, after running here what is
    /// runnable when no other thread drives: the caller that has just
    /// started a task (`HostedEngine::call`) takes its first steps' events
    /// in the same turn. The same rule as [`Host::complete_and_next`].
    pub fn poll_events(&self, max: usize) -> Result<Vec<StepEvent>, HostError> {
        self.drive_inline(max, || Ok(()))?;
        Ok(self.inner.take(max))
    }

    /// Runs `first`, then what is runnable, on this thread when it may
    /// drive (else runs neither).
    fn drive_inline(
        &self,
        max: usize,
        first: impl FnOnce() -> Result<(), HostError>,
    ) -> Result<(), HostError> {
        self.check()?;
        let inner = &*self.inner;
        if max == 0 || inner.stopped() {
            return Ok(());
        }
        let Ok(drive) = self.drive() else {
            return Ok(());
        };
        let _asking = Asking::enter(inner, max);
        let driving = async {
            first()?;
            inner.run_runnable(max).await;
            Ok(())
        };
        drive.drive(driving).unwrap_or(Ok(()))
    }
}

impl Inner {
    /// Lets the runtime run what is runnable, round by round, until an
    /// event is queued (or the host stops, or [`ROUNDS`] pass).
    async fn run_runnable(&self, max: usize) {
        self.driver_wants.store(max, Ordering::SeqCst);
        for _ in 0..ROUNDS {
            // Runs every task scheduled now, and polls sockets and timers
            // without blocking, before this future is polled again.
            tokio::task::yield_now().await;
            if !self.ready.lock().is_empty() || self.stopped() {
                break;
            }
        }
        let _ready = self.ready.lock();
        self.driver_wants.store(0, Ordering::SeqCst);
    }

    /// Up to `max` queued events, without waiting.
    fn take(&self, max: usize) -> Vec<StepEvent> {
        let mut ready = self.ready.lock();
        let n = max.min(ready.len());
        let events: Vec<StepEvent> = ready.drain(..n).collect();
        if n > 0 {
            self.rebalance(ready.len());
        }
        if !ready.is_empty() {
            self.arrived.notify_one();
        }
        events
    }
}
