//! One circuit breaker per handler: consecutive failures (or timeouts) open
//! it; while open its steps are not started; after the cool-down one probe
//! is let through, whose success closes it and whose failure opens it again.

use super::HostConfig;
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

pub(super) struct Breakers {
    map: Mutex<HashMap<String, Breaker>>,
    threshold: u32,
    cool_down: Duration,
}

impl Breakers {
    pub(super) fn new(config: &HostConfig) -> Breakers {
        Breakers {
            map: Mutex::new(HashMap::new()),
            threshold: config.failure_threshold,
            cool_down: config.cool_down,
        }
    }

    /// Ok to dispatch, or the cool-down left on an open breaker.
    pub(super) fn allow(&self, handler: &str) -> Result<(), Duration> {
        let mut breakers = self.map.lock();
        let b = breakers.entry(handler.to_string()).or_default();
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

    pub(super) fn record(&self, handler: &str, success: bool) {
        let mut breakers = self.map.lock();
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
            if b.failures >= self.threshold {
                tracing::warn!(handler, failures = b.failures, "circuit open");
                b.opened_at = Some(Instant::now());
            }
        }
    }

    pub(super) fn state(&self, handler: &str) -> BreakerState {
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
