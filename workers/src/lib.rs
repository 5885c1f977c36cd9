//! stepgraph-worker: the worker runtime (claims steps, runs handlers with a
//! concurrency limit and per-step timeouts, catches panics), the handler
//! registry and the native Rust [`StepHandler`] trait, the embedded
//! [`Engine`], and the example handlers the fixture workflows use.

pub mod backend;
pub mod breaker;
pub mod engine;
pub mod error;
pub mod examples;
pub mod handler;
pub mod host;
pub mod hosted;
pub mod logging;
mod metrics_http;
pub mod roundtrip;
pub mod runtime;
pub mod settings;
pub mod telemetry;
pub mod transport;

pub use backend::{connect, connect_worker, ConnectError};
pub use breaker::{BreakerConfig, BreakerState};
pub use engine::{Engine, EngineConfig, EngineError, TaskReport, TimelineRow};
pub use error::{ErrorKind, HostedError};
pub use handler::{
    HandlerError, HandlerRegistry, HandlerResult, StepContext, StepHandler, StepOutput,
};
pub use host::{
    BatchRequest, ForeignHandler, Host, HostConfig, HostError, HostStats, StepEvent, StepResult,
};
pub use hosted::{Call, EngineOptions, HostedEngine, Tuning, WorkerOptions};
pub use runtime::{Worker, WorkerConfig};
pub use settings::{Settings, SettingsError};
pub use transport::Transport;
