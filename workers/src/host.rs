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
//!   `complete` waits (backpressure), it never drops.
//! - A circuit breaker per handler: consecutive failures open it; while open
//!   its steps fail as retryable `circuit_open` with the remaining cool-down as
//!   backoff; after the cool-down one probe is let through, whose success
//!   closes it and whose failure opens it again.
//! - The host remembers its process id and refuses use from a forked child.

use crate::handler::{HandlerError, HandlerResult, StepContext, StepHandler, StepOutput};
use async_trait::async_trait;
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stepgraph_core::queue::Credits;
use stepgraph_core::{BatchCursor, StepError, StepId, StepOutcome, TaskId};
use tokio::sync::{oneshot, Semaphore};

/// A step handed to the language side: everything its handler needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    pub event_id: u64,
    pub task_id: TaskId,
    pub step_id: StepId,
    pub namespace: String,
    pub task_name: String,
    pub step_name: String,
    pub handler: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// The task context.
    pub input: Value,
    pub config: Value,
    pub dependency_results: Map<String, Value>,
    pub batch_size: Option<u64>,
    pub cursor: Option<BatchCursor>,
    /// How long the language side has before the host times the event out.
    pub timeout_ms: u64,
}

/// What the language side reports for an event: success with a JSON result,
/// a failure (retryable or permanent), a decision, or a batch outcome.
pub type StepResult = StepOutcome;

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Completions buffered before `complete` waits.
    pub completion_capacity: usize,
    /// Consecutive failures (or timeouts) that open a handler's breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses its handler's steps.
    pub cool_down: Duration,
    /// For steps whose template sets no timeout.
    pub default_timeout: Duration,
    /// How often the reaper looks for overdue events.
    pub reaper_interval: Duration,
}

impl HostConfig {
    /// The settings the bindings expose: the completion channel's capacity
    /// and the breaker's threshold and cool-down; defaults for the rest.
    pub fn tuned(
        completion_capacity: usize,
        failure_threshold: u32,
        cool_down_ms: u64,
    ) -> HostConfig {
        HostConfig {
            completion_capacity,
            failure_threshold,
            cool_down: Duration::from_millis(cool_down_ms),
            ..Default::default()
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            completion_capacity: 1024,
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
            default_timeout: Duration::from_secs(300),
            reaper_interval: Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HostError {
    #[error(
        "this stepgraph worker was created in process {created} and cannot be used in the forked child {current}; create the worker after forking"
    )]
    Forked { created: u32, current: u32 },
    #[error("event {0} is not pending (timed out, already completed, or unknown): its result is refused")]
    NotPending(u64),
    #[error("the stepgraph host is shut down")]
    Closed,
}

/// A breaker's state, as metrics and logs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

struct Pending {
    handler: String,
    deadline: Instant,
    reply: oneshot::Sender<StepOutcome>,
}

struct Completion {
    handler: String,
    result: StepOutcome,
    reply: oneshot::Sender<StepOutcome>,
}

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
    breakers: Mutex<HashMap<String, Breaker>>,
    completions: Mutex<Option<Sender<Completion>>>,
    credits: Arc<Semaphore>,
    next_id: AtomicU64,
    /// No new events are handed out; completions are still taken.
    draining: AtomicBool,
    closed: AtomicBool,
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
            breakers: Mutex::new(HashMap::new()),
            completions: Mutex::new(Some(tx)),
            credits: Arc::new(Semaphore::new(0)),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let router = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("stepgraph-completions".into())
                .spawn(move || route(&inner, rx))
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
        let sent = match tx {
            Some(tx) => tx
                .send(Completion {
                    handler: p.handler,
                    result,
                    reply: p.reply,
                })
                .map_err(|_| HostError::Closed),
            None => Err(HostError::Closed),
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

    pub fn breaker_state(&self, handler: &str) -> BreakerState {
        match self.inner.breakers.lock().get(handler) {
            Some(b) if b.probing => BreakerState::HalfOpen,
            Some(Breaker {
                opened_at: Some(at),
                ..
            }) if at.elapsed() >= self.inner.config.cool_down => BreakerState::HalfOpen,
            Some(Breaker {
                opened_at: Some(_), ..
            }) => BreakerState::Open,
            _ => BreakerState::Closed,
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
    fn rebalance(&self, queued: usize) {
        let target = self.waiting.load(Ordering::SeqCst).saturating_sub(queued);
        let available = self.credits.available_permits();
        if available < target {
            self.credits.add_permits(target - available);
        } else if available > target {
            self.credits.forget_permits(available - target);
        }
    }

    /// Ok to dispatch, or the cool-down left on an open breaker.
    fn allow(&self, handler: &str) -> Result<(), Duration> {
        let mut breakers = self.breakers.lock();
        let b = breakers.entry(handler.to_string()).or_default();
        let Some(at) = b.opened_at else { return Ok(()) };
        let open_for = at.elapsed();
        if open_for < self.config.cool_down {
            return Err(self.config.cool_down - open_for);
        }
        if b.probing {
            // One probe at a time; the others wait for its verdict.
            return Err(self.config.cool_down.min(Duration::from_secs(1)));
        }
        b.probing = true;
        tracing::info!(handler, "circuit half-open: letting one probe through");
        Ok(())
    }

    fn record(&self, handler: &str, success: bool) {
        let mut breakers = self.breakers.lock();
        let b = breakers.entry(handler.to_string()).or_default();
        if success {
            if b.opened_at.is_some() {
                tracing::info!(handler, "circuit closed: the probe succeeded");
            }
            *b = Breaker::default();
        } else if b.probing || b.opened_at.is_some() {
            tracing::warn!(handler, "circuit open again: the probe failed");
            b.probing = false;
            b.opened_at = Some(Instant::now());
        } else {
            b.failures += 1;
            if b.failures >= self.config.failure_threshold {
                tracing::warn!(handler, failures = b.failures, "circuit open");
                b.opened_at = Some(Instant::now());
            }
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

fn route(inner: &Inner, rx: Receiver<Completion>) {
    for c in rx {
        let success = !matches!(c.result, StepOutcome::Failure { .. });
        inner.record(&c.handler, success);
        // The step may have stopped waiting (its worker timed it out): nothing to do then.
        let _ = c.reply.send(c.result);
    }
}

fn reap(inner: &Inner) {
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
            inner.record(&p.handler, false);
            let error = StepError::retryable(format!(
                "handler `{}` did not complete event {id} in time; a late result will be refused",
                p.handler
            ))
            .with_code("timeout");
            let _ = p.reply.send(StepOutcome::Failure { error });
        }
    }
}

/// Dispatches one handler's steps to the language side.
pub struct ForeignHandler {
    host: Arc<Host>,
    name: String,
}

/// Withdraws the event if the step stops waiting before its result arrives.
struct Dispatched<'a> {
    inner: &'a Inner,
    event_id: u64,
    done: bool,
}

impl Drop for Dispatched<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.inner.withdraw(self.event_id);
        }
    }
}

#[async_trait]
impl StepHandler for ForeignHandler {
    async fn call(&self, ctx: &StepContext) -> HandlerResult {
        let inner = &self.host.inner;
        if let Err(e) = self.host.check() {
            return Err(HandlerError::retryable(e.to_string()).with_code("host_unavailable"));
        }
        if let Err(remaining) = inner.allow(&self.name) {
            // Rounded up to the next millisecond, so the retry never comes a
            // hair before the cool-down ends (and burns an attempt).
            let remaining = Duration::from_millis(remaining.as_millis() as u64 + 1);
            return Err(HandlerError::retryable(format!(
                "circuit open for handler `{}` after repeated failures; retrying in {remaining:?}",
                self.name
            ))
            .retry_after(remaining)
            .with_code("circuit_open"));
        }
        let timeout = ctx.timeout.unwrap_or(inner.config.default_timeout);
        let event_id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, result) = oneshot::channel();
        inner.pending.lock().insert(
            event_id,
            Pending {
                handler: self.name.clone(),
                deadline: Instant::now() + timeout,
                reply,
            },
        );
        let mut dispatched = Dispatched {
            inner,
            event_id,
            done: false,
        };
        let event = StepEvent {
            event_id,
            task_id: ctx.task_id,
            step_id: ctx.step_id,
            namespace: ctx.namespace.clone(),
            task_name: ctx.task_name.clone(),
            step_name: ctx.step_name.clone(),
            handler: ctx.handler.clone(),
            attempt: ctx.attempt,
            max_attempts: ctx.max_attempts,
            input: ctx.input.clone(),
            config: ctx.config.clone(),
            dependency_results: ctx.dependency_results.clone(),
            batch_size: ctx.batch_size,
            cursor: ctx.cursor.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        {
            // Under the lock `drain` takes: an event is either handed back by
            // it or never queued.
            let mut ready = inner.ready.lock();
            if inner.draining.load(Ordering::SeqCst) {
                return Err(HandlerError::retryable("the worker is shutting down")
                    .with_code("host_unavailable"));
            }
            ready.push_back(event);
        }
        inner.arrived.notify_one();
        let outcome = result.await;
        dispatched.done = true;
        match outcome {
            Ok(StepOutcome::Success { result }) => Ok(StepOutput::Success(result)),
            Ok(StepOutcome::Decision { branches }) => Ok(StepOutput::Decision(branches)),
            Ok(StepOutcome::Batch { batch }) => Ok(StepOutput::Batch(batch)),
            Ok(StepOutcome::Failure { error }) => Err(HandlerError {
                kind: error.kind,
                message: error.message,
                retry_after: error.retry_after_ms.map(Duration::from_millis),
                code: error.code,
                error_type: error.error_type,
                backtrace: error.backtrace,
            }),
            Err(_) => Err(HandlerError::retryable(
                "the stepgraph host shut down before the step finished",
            )
            .with_code("host_unavailable")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                breakers: Mutex::new(HashMap::new()),
                completions: Mutex::new(None),
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
