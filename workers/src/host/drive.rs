//! Who runs the engine's tasks: the host's runtime is a current-thread one,
//! driven by the language-side thread that waits in `next_events`. That
//! thread has just reported a step's result, so it runs the step's commit
//! and the next step's dispatch itself, and takes the event that dispatch
//! queues without being woken: a step costs no thread hand-off.
//!
//! One language thread drives at a time (the others wait on the host's
//! condition variable). While none does (every handler slot busy, or no
//! language side at all), a background thread drives, but only after the
//! runtime has gone [`IDLE`] undriven: short handlers come back sooner and
//! keep driving; a language thread that comes back while the background
//! thread drives kicks it out (one wake-up).

use parking_lot::{Condvar, Mutex};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// How long the runtime may go undriven before the background thread drives.
pub(super) const IDLE: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Background {
    /// Waits for the language driver to leave.
    Parked,
    /// Saw it leave; looks again [`IDLE`] after it left.
    Timing,
    Driving,
}

struct State {
    /// A language thread drives.
    language: bool,
    background: Background,
    left_at: Instant,
    closed: bool,
}

struct Shared {
    runtime: Runtime,
    state: Mutex<State>,
    changed: Condvar,
    /// Ends the background thread's drive.
    kick: Notify,
    /// Threads inside `block_on` (the runtime must not be dropped meanwhile).
    inside: AtomicUsize,
}

pub(super) struct Drive {
    shared: Arc<Shared>,
    background: Mutex<Option<JoinHandle<()>>>,
}

/// Counts a thread inside the runtime's `block_on`.
struct Inside<'a>(&'a AtomicUsize);

impl<'a> Inside<'a> {
    fn enter(n: &'a AtomicUsize) -> Inside<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Inside(n)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drive {
    pub(super) fn new() -> Drive {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building the host's runtime");
        let shared = Arc::new(Shared {
            runtime,
            state: Mutex::new(State {
                language: false,
                background: Background::Parked,
                left_at: Instant::now(),
                closed: false,
            }),
            changed: Condvar::new(),
            kick: Notify::new(),
            inside: AtomicUsize::new(0),
        });
        let background = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("stepgraph-runtime".into())
                .spawn(move || drive_in_background(&shared))
                .expect("spawning the runtime's thread")
        };
        Drive {
            shared,
            background: Mutex::new(Some(background)),
        }
    }

    pub(super) fn handle(&self) -> &tokio::runtime::Handle {
        self.shared.runtime.handle()
    }

    /// Runs `future` to its end on this thread, driving the runtime when no
    /// other thread does. Not for a thread inside a runtime.
    pub(super) fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _inside = Inside::enter(&self.shared.inside);
        self.shared.runtime.block_on(future)
    }

    /// Runs `future` as the language side's driver if no other language
    /// thread drives (and this thread is in no runtime); else gives it back
    /// unpolled.
    pub(super) fn drive<F: Future>(&self, future: F) -> Result<F::Output, F> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(future);
        }
        {
            let mut state = self.shared.state.lock();
            if state.language || state.closed {
                return Err(future);
            }
            state.language = true;
            if state.background == Background::Driving {
                self.shared.kick.notify_one();
            }
        }
        let out = self.block_on(future);
        let mut state = self.shared.state.lock();
        state.language = false;
        state.left_at = Instant::now();
        if state.background == Background::Parked {
            state.background = Background::Timing;
            self.shared.changed.notify_one();
        }
        Ok(out)
    }

    /// Stops the background thread (a thread inside a runtime does not wait for it).
    pub(super) fn close(&self) {
        {
            let mut state = self.shared.state.lock();
            state.closed = true;
            self.shared.changed.notify_all();
        }
        self.shared.kick.notify_one();
        if tokio::runtime::Handle::try_current().is_err() {
            if let Some(t) = self.background.lock().take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        self.close();
        // A runtime cannot be dropped inside another one, nor while a
        // thread is in its `block_on`: then a thread of its own drops it.
        if tokio::runtime::Handle::try_current().is_ok()
            || self.shared.inside.load(Ordering::SeqCst) > 0
        {
            let shared = self.shared.clone();
            std::thread::spawn(move || {
                // Dropped here once this thread holds the last reference.
                let deadline = Instant::now() + Duration::from_secs(30);
                while (Arc::strong_count(&shared) > 1 || shared.inside.load(Ordering::SeqCst) > 0)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if Arc::strong_count(&shared) > 1 || shared.inside.load(Ordering::SeqCst) > 0 {
                    // Still in use: leaked rather than dropped under a caller.
                    std::mem::forget(shared);
                }
            });
        }
    }
}

fn drive_in_background(shared: &Shared) {
    loop {
        {
            let mut state = shared.state.lock();
            loop {
                if state.closed {
                    return;
                }
                if state.language {
                    state.background = Background::Parked;
                    shared.changed.wait(&mut state);
                    continue;
                }
                let due = state.left_at + IDLE;
                let now = Instant::now();
                if now >= due {
                    break;
                }
                state.background = Background::Timing;
                shared.changed.wait_until(&mut state, due);
            }
            state.background = Background::Driving;
        }
        let _inside = Inside::enter(&shared.inside);
        shared.runtime.block_on(shared.kick.notified());
        drop(_inside);
        let mut state = shared.state.lock();
        state.background = Background::Parked;
    }
}
