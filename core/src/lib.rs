//! stepgraph-core: task templates and their validation, the task and step
//! state machines, the [`Store`] and [`Queue`] traits with their in-memory
//! backends, and the [`Orchestrator`] that drives tasks. It knows nothing of
//! handler languages or FFI.

pub mod api;
pub mod evaluate;
pub mod metrics;
pub mod model;
pub mod orchestrator;
pub mod pg;
pub mod queue;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod template;
pub mod txn;

pub use model::*;
pub use orchestrator::{
    Claimed, Eager, Orchestrated, Orchestrator, OrchestratorConfig, OrchestratorError, TaskCreated,
    TaskRequest,
};
pub use pg::{PgBackend, Transport};
pub use queue::{MemoryQueue, Queue, QueueError, RabbitConfig, RabbitQueue};
pub use shutdown::{shutdown_channel, Shutdown, ShutdownTrigger};
pub use state::{IllegalTransition, StepState, TaskState};
pub use store::{MemoryStore, PgStore, Store, StoreError, Stranded, StrandedStep};
pub use template::{
    TaskTemplate, TemplateError, TemplateErrorKind, TemplateErrors, TemplateRegistry,
};
