//! A caller that waits for a task of its own (an embedded engine's `run`)
//! and runs, on its own thread, the handlers of the events it is given
//! meanwhile. It drives the runtime while it waits (waiters in
//! `next_events` step aside), so a task whose steps it runs crosses no
//! thread: the step's commit, the next step's event and its handler all
//! happen here.

use super::{Host, HostError, Inner, StepEvent};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a caller of `serve` waits for a driving waiter to step aside.
const STEP_ASIDE: Duration = Duration::from_millis(1);

/// Waiters of `next_events` do not drive for this long after a caller of
/// `serve` left: back-to-back `run`s keep driving on their own threads.
pub(super) const RUNNERS_LINGER: Duration = Duration::from_millis(10);

/// What [`Host::serve`] came back with.
pub enum Served<T> {
    /// The task's end.
    Done(T),
    /// Events to run (then call `serve` again); empty when another caller
    /// took the event this one was woken for.
    Events(Vec<StepEvent>),
}

/// A caller of `serve` while it waits: one more handler slot, and a
/// runner the waiters of `next_events` leave the driving to.
struct Runner<'a>(&'a Inner);

impl<'a> Runner<'a> {
    fn enter(inner: &'a Inner) -> Runner<'a> {
        inner.runners.fetch_add(1, Ordering::SeqCst);
        {
            let ready = inner.ready.lock();
            inner.waiting.fetch_add(1, Ordering::SeqCst);
            inner.rebalance(ready.len());
        }
        // A waiter driving in `next_events` steps aside.
        inner.driver_arrived.notify_waiters();
        Runner(inner)
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        let ready = self.0.ready.lock();
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.rebalance(ready.len());
        *self.0.runner_left.lock() = Instant::now();
        self.0.runners.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Host {
    /// Waits (without an interpreter lock) for `task` or for an event,
    /// driving the runtime when no other thread does. Returns the task's
    /// output once it ends, or an event for the caller to run and
    /// complete before calling again.
    pub fn serve<F: Future + Unpin>(&self, task: &mut F) -> Result<Served<F::Output>, HostError> {
        self.check()?;
        let inner = &*self.inner;
        if let Some(event) = inner.take_one() {
            return Ok(Served::Events(vec![event]));
        }
        let drive = self.drive()?;
        if inner.stopped() {
            // Nothing more is handed out: only the end is left to wait for.
            return Ok(Served::Done(drive.block_on(task)));
        }
        let runner = Runner::enter(inner);
        // A waiter of `next_events` driving when this caller came steps
        // aside (see `Runner::enter`): the role is free once it has woken.
        let driven = {
            let serving = std::pin::pin!(async {
                tokio::select! {
                    biased;
                    out = &mut *task => Some(out),
                    _ = inner.wait_as_driver(1, None, false) => None,
                }
            });
            let mut serving = serving;
            let gave_up = Instant::now() + STEP_ASIDE;
            loop {
                match drive.drive(serving.as_mut()) {
                    Ok(out) => break Some(out),
                    Err(_) if Instant::now() < gave_up => std::thread::yield_now(),
                    Err(_) => break None,
                }
            }
        };
        let out = match driven {
            Some(out) => {
                let _ready = inner.ready.lock();
                inner.driver_wants.store(0, Ordering::SeqCst);
                out
            }
            // Another thread drives (a runner of another task): wait for
            // the end; the handler threads run this task's events.
            None => {
                drop(runner);
                Some(drive.block_on(&mut *task))
            }
        };
        Ok(match out {
            Some(out) => Served::Done(out),
            None => Served::Events(inner.take_one().into_iter().collect()),
        })
    }
}

impl Inner {
    /// Whether a caller of `serve` drives (or did just now).
    pub(super) fn runners_drive(&self) -> bool {
        self.runners.load(Ordering::SeqCst) > 0
            || self.runner_left.lock().elapsed() < RUNNERS_LINGER
    }

    /// One queued event, if any.
    fn take_one(&self) -> Option<StepEvent> {
        let mut ready = self.ready.lock();
        let event = ready.pop_front();
        if event.is_some() {
            self.rebalance(ready.len());
        }
        event
    }
}
