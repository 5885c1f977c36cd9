//! The host's settings and the errors of its calls.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// For steps whose template sets no timeout.
    pub default_timeout: Duration,
    /// How often the reaper looks for overdue events.
    pub reaper_interval: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
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
