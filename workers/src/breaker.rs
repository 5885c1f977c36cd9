//! One circuit breaker per handler, Rust or foreign: consecutive failed
//! attempts (raised errors, panics and timeouts alike) open it; while open
//! its steps are not started and fail as retryable `circuit_open` with the
//! rest of the cool-down as their backoff; after the cool-down one probe is
//! let through, whose success closes it and whose failure opens it again.
//! The worker's `execute` asks and tells it around every attempt, so a
//! handler that hangs past its timeout trips it like one that raises.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use stepgraph_engine::store::Circuit;

/// A breaker's state, as metrics and logs show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts (errors, panics or timeouts) that open it.
    pub failure_threshold: u32,
    /// How long an open breaker refuses its handler's steps.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

pub struct Breakers {
    map: Mutex<HashMap<String, Breaker>>,
    threshold: u32,
    cool_down: Duration,
    /// Transitions so far, by handler and the state entered (for /metrics).
    transitions: Mutex<BTreeMap<(String, BreakerState), u64>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            map: Mutex::new(HashMap::new()),
            threshold: config.failure_threshold.max(1),
            cool_down: config.cool_down,
            transitions: Mutex::default(),
        }
    }

    fn entered(&self, handler: &str, state: BreakerState) {
        *self
            .transitions
            .lock()
            .entry((handler.to_string(), state))
            .or_default() += 1;
    }

    /// `stepgraph_circuit_transitions_total{handler, to}` in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "stepgraph_circuit_transitions_total";
        let _ = writeln!(
            out,
            "# HELP {name} Circuit-breaker transitions, by handler and the state entered.\n# TYPE {name} counter"
        );
        for ((handler, to), n) in self.transitions.lock().iter() {
            let to = match to {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            };
            let handler = handler.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{handler=\"{handler}\",to=\"{to}\"}} {n}");
        }
    }

    /// Ok to dispatch, or the cool-down left on an open breaker.
    pub fn allow(&self, handler: &str) -> Result<(), Duration> {
        let mut breakers = self.map.lock();
        // A handler with no entry has not failed since its last success.
        let Some(b) = breakers.get_mut(handler) else {
            return Ok(());
        };
        let Some(at) = b.opened_at else { return Ok(()) };
        let open_for = at.elapsed();
        if open_for < self.cool_down {
            return Err(self.cool_down - open_for);
        }
        if b.probing {
            // One probe at a time; the others wait for its verdict.
            return Err(self.cool_down.min(Duration::from_secs(1)));
        }
        b.probing = true;
        drop(breakers);
        tracing::info!(handler, "circuit half-open: letting one probe through");
        self.entered(handler, BreakerState::HalfOpen);
        Ok(())
    }

    pub fn record(&self, handler: &str, success: bool) {
        let mut breakers = self.map.lock();
        // Every attempt of every handler comes here: a success of a handler
        // that has not failed allocates nothing.
        if success {
            if let Some(b) = breakers.remove(handler) {
                if b.opened_at.is_some() {
                    drop(breakers);
                    tracing::info!(handler, "circuit closed: the probe succeeded");
                    self.entered(handler, BreakerState::Closed);
                }
            }
            return;
        }
        let b = breakers.entry(handler.to_string()).or_default();
        if b.probing || b.opened_at.is_some() {
            tracing::warn!(handler, "circuit open again: the probe failed");
            b.probing = false;
            b.opened_at = Some(Instant::now());
            drop(breakers);
            self.entered(handler, BreakerState::Open);
        } else {
            b.failures += 1;
            if b.failures >= self.threshold {
                tracing::warn!(handler, failures = b.failures, "circuit open");
                b.opened_at = Some(Instant::now());
                drop(breakers);
                self.entered(handler, BreakerState::Open);
            }
        }
    }

    /// The breakers that are not closed, for the worker's heartbeat (the
    /// dashboard shows them), by handler.
    pub fn not_closed(&self) -> Vec<Circuit> {
        let handlers: Vec<String> = {
            let map = self.map.lock();
            let mut open: Vec<String> = map
                .iter()
                .filter(|(_, b)| b.opened_at.is_some())
                .map(|(h, _)| h.clone())
                .collect();
            open.sort();
            open
        };
        handlers
            .into_iter()
            .filter_map(|handler| {
                let state = match self.state(&handler) {
                    BreakerState::Closed => return None,
                    BreakerState::Open => "open",
                    BreakerState::HalfOpen => "half_open",
                };
                Some(Circuit {
                    handler,
                    state: state.into(),
                })
            })
            .collect()
    }

    pub fn state(&self, handler: &str) -> BreakerState {
        match self.map.lock().get(handler) {
            Some(b) if b.probing => BreakerState::HalfOpen,
            Some(Breaker {
                opened_at: Some(at),
                ..
            }) if at.elapsed() >= self.cool_down => BreakerState::HalfOpen,
            Some(Breaker {
                opened_at: Some(_), ..
            }) => BreakerState::Open,
            _ => BreakerState::Closed,
        }
    }
}
