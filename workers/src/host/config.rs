//! The host's settings and the errors of its calls.

use std::time::Duration;

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
