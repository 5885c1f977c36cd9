//! One circuit breaker per handler, Rust or foreign: consecutive failed
//! attempts (raised errors, panics and timeouts alike) open it; while open
//! its steps are not started and fail as retryable `circuit_open` with the
//! rest of the cool-down as their backoff; after the cool-down one probe is
//! let through, whose success closes it and whose failure opens it again.
//! The worker's `execute` asks and tells it around every attempt, so a
//! handler that hangs past its timeout trips it like one that raises.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            map: Mutex::new(HashMap::new()),
            threshold: config.failure_threshold.max(1),
            cool_down: config.cool_down,
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
        tracing::info!(handler, "circuit half-open: letting one probe through");
        Ok(())
    }

    pub fn record(&self, handler: &str, success: bool) {
        let mut breakers = self.map.lock();
        // Every attempt of every handler comes here: a success of a handler
        // that has not failed allocates nothing.
        if success {
            if let Some(b) = breakers.remove(handler) {
                if b.opened_at.is_some() {
                    tracing::info!(handler, "circuit closed: the probe succeeded");
                }
            }
            return;
        }
        let b = breakers.entry(handler.to_string()).or_default();
        if b.probing || b.opened_at.is_some() {
            tracing::warn!(handler, "circuit open again: the probe failed");
            b.probing = false;
            b.opened_at = Some(Instant::now());
        } else {
            b.failures += 1;
            if b.failures >= self.threshold {
                tracing::warn!(handler, failures = b.failures, "circuit open");
                b.opened_at = Some(Instant::now());
            }
        }
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
