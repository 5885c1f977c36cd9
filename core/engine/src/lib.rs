//! stepgraph-engine: task templates and their validation, the task and step
//! state machines, readiness, the [`Store`] and [`Queue`] traits with their
//! in-memory backends, and the [`Orchestrator`] that drives tasks. It knows
//! nothing of SQL, AMQP, HTTP, handler languages or FFI: the backends
//! (`stepgraph-postgres`, `stepgraph-rabbitmq`) implement its traits, and the
//! HTTP server (`stepgraph-http`) drives its orchestrator.

pub mod evaluate;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod orchestrator;
pub mod queue;
pub mod repair;
pub mod retention;
pub mod schedule;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod template;
pub mod trace;
pub mod txn;
pub mod view;

pub use model::*;
pub use orchestrator::{
    Claimed, Eager, Orchestrated, Orchestrator, OrchestratorConfig, OrchestratorError,
    RetentionConfig, TaskCreated, TaskRequest,
};
pub use queue::{MemoryQueue, Queue, QueueError};
pub use shutdown::{shutdown_channel, Shutdown, ShutdownTrigger};
pub use state::{IllegalTransition, StepState, TaskState};
pub use store::{MemoryStore, Store, StoreError, Stranded, StrandedStep};
pub use template::{
    TaskTemplate, TemplateError, TemplateErrorKind, TemplateErrors, TemplateRegistry,
};
pub use view::{StepView, TaskView};
