//! The errors a language binding sees, by kind: each binding maps an
//! [`ErrorKind`] to one exception class (Python and Ruby subclasses of
//! `StepgraphError`/`Stepgraph::Error`, TypeScript classes with a `code`),
//! in one place. The causes stay variants down to here: the engine's
//! [`OrchestratorError`] and [`StoreError`], the settings' and the
//! connection's errors, the host's [`HostError`].

use crate::backend::ConnectError;
use crate::engine::EngineError;
use crate::host::HostError;
use crate::settings::SettingsError;
use stepgraph_engine::{OrchestratorError, QueueError, StoreError};

/// What went wrong, as the languages tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Options, settings or templates that cannot work.
    Config,
    /// No template of that namespace, name (and version).
    UnknownTemplate,
    /// No task with that id (never created here, or removed by retention).
    TaskNotFound,
    /// The task context does not match the template's `input_schema`.
    InvalidContext,
    /// The task did not end in the time given.
    Timeout,
    /// A concurrent change won (compare-and-swap), or a key is taken.
    Conflict,
    /// The database or the broker failed or cannot be reached.
    Unavailable,
    /// The engine was created in the parent of this forked process.
    Forked,
    /// The engine is shut down (or has no embedded engine to run tasks).
    Closed,
    /// A completion for an event that is not pending (timed out, say).
    NotPending,
    /// Anything else: a bug, or an unexpected failure; the message says what.
    Internal,
}

impl ErrorKind {
    /// The kind's name as the bindings spell it (TypeScript's `code`).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Config => "Config",
            ErrorKind::UnknownTemplate => "UnknownTemplate",
            ErrorKind::TaskNotFound => "TaskNotFound",
            ErrorKind::InvalidContext => "InvalidContext",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::Forked => "Forked",
            ErrorKind::Closed => "Closed",
            ErrorKind::NotPending => "NotPending",
            ErrorKind::Internal => "Error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostedError {
    /// Options, settings, templates or the runtime could not be set up.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("no embedded engine here (shut down, or a worker: create tasks over the HTTP API)")]
    NoEngine,
    #[error("{0}")]
    Internal(String),
}

impl HostedError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HostedError::Config(_) | HostedError::Settings(_) => ErrorKind::Config,
            HostedError::Connect(ConnectError::Settings(_)) => ErrorKind::Config,
            HostedError::Connect(ConnectError::Store(e)) => store_kind(e),
            HostedError::Connect(ConnectError::Queue(_)) => ErrorKind::Unavailable,
            HostedError::Engine(e) => engine_kind(e),
            HostedError::Host(e) => e.kind(),
            HostedError::NoEngine => ErrorKind::Closed,
            HostedError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl HostError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HostError::Forked { .. } => ErrorKind::Forked,
            HostError::NotPending(_) => ErrorKind::NotPending,
            HostError::Closed => ErrorKind::Closed,
        }
    }
}

fn engine_kind(e: &EngineError) -> ErrorKind {
    match e {
        EngineError::Orchestrator(e) => match e {
            OrchestratorError::TemplateNotFound { .. } => ErrorKind::UnknownTemplate,
            OrchestratorError::InvalidContext { .. } | OrchestratorError::InvalidRequest(_) => {
                ErrorKind::InvalidContext
            }
            OrchestratorError::IdempotencyKeyReused { .. } => ErrorKind::Conflict,
            OrchestratorError::Store(e) => store_kind(e),
            OrchestratorError::Queue(QueueError::Backend(_)) => ErrorKind::Unavailable,
            OrchestratorError::Queue(QueueError::Encode(_)) => ErrorKind::Internal,
            OrchestratorError::Illegal(_)
            | OrchestratorError::Contention { .. }
            | OrchestratorError::WrongState { .. }
            | OrchestratorError::WrongStepState { .. } => ErrorKind::Conflict,
            OrchestratorError::NoSuchStep { .. } => ErrorKind::Internal,
        },
        EngineError::Store(e) => store_kind(e),
        EngineError::Timeout { .. } => ErrorKind::Timeout,
    }
}

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::Conflict(_)
        | StoreError::DuplicateIdempotencyKey { .. }
        | StoreError::KeyTaken { .. } => ErrorKind::Conflict,
        StoreError::Unavailable(_) | StoreError::Backend(_) => ErrorKind::Unavailable,
        StoreError::TaskNotFound(_) => ErrorKind::TaskNotFound,
        StoreError::StepNotFound(_) | StoreError::Unreadable(_) => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepgraph_engine::{new_id, IllegalTransition, TaskState};

    fn engine(e: OrchestratorError) -> HostedError {
        HostedError::Engine(EngineError::Orchestrator(e))
    }

    #[test]
    fn every_cause_has_its_kind() {
        let task_id = new_id();
        let cases = [
            (HostedError::Config("bad".into()), ErrorKind::Config),
            (
                HostedError::Settings(SettingsError::NoDatabaseUrl),
                ErrorKind::Config,
            ),
            (
                engine(OrchestratorError::TemplateNotFound {
                    namespace: "n".into(),
                    name: "t".into(),
                    version: None,
                }),
                ErrorKind::UnknownTemplate,
            ),
            (
                engine(OrchestratorError::InvalidContext {
                    template: "n/t@1".into(),
                    message: "m".into(),
                }),
                ErrorKind::InvalidContext,
            ),
            (
                HostedError::Engine(EngineError::Timeout {
                    task_id,
                    timeout: std::time::Duration::from_millis(5),
                    state: TaskState::StepsInProcess,
                }),
                ErrorKind::Timeout,
            ),
            (
                engine(OrchestratorError::Contention { task_id }),
                ErrorKind::Conflict,
            ),
            (
                engine(OrchestratorError::WrongState {
                    task_id,
                    state: TaskState::Complete,
                    action: "cancelled",
                }),
                ErrorKind::Conflict,
            ),
            (
                engine(OrchestratorError::Illegal(IllegalTransition {
                    entity: "task",
                    from: "complete".into(),
                    to: "pending".into(),
                })),
                ErrorKind::Conflict,
            ),
            (
                engine(OrchestratorError::Store(
                    StoreError::DuplicateIdempotencyKey {
                        key: "k".into(),
                        existing: task_id,
                    },
                )),
                ErrorKind::Conflict,
            ),
            (
                HostedError::Engine(EngineError::Store(StoreError::Unavailable("down".into()))),
                ErrorKind::Unavailable,
            ),
            (
                HostedError::Connect(ConnectError::Store(StoreError::Unavailable(
                    "cannot connect".into(),
                ))),
                ErrorKind::Unavailable,
            ),
            (
                HostedError::Connect(ConnectError::Queue(QueueError::Backend("amqp".into()))),
                ErrorKind::Unavailable,
            ),
            (
                HostedError::Host(HostError::Forked {
                    created: 1,
                    current: 2,
                }),
                ErrorKind::Forked,
            ),
            (HostedError::Host(HostError::Closed), ErrorKind::Closed),
            (HostedError::NoEngine, ErrorKind::Closed),
            (
                HostedError::Host(HostError::NotPending(7)),
                ErrorKind::NotPending,
            ),
            (HostedError::Internal("bug".into()), ErrorKind::Internal),
        ];
        for (error, kind) in cases {
            assert_eq!(error.kind(), kind, "{error}");
        }
    }

    #[test]
    fn codes_are_distinct() {
        let kinds = [
            ErrorKind::Config,
            ErrorKind::UnknownTemplate,
            ErrorKind::TaskNotFound,
            ErrorKind::InvalidContext,
            ErrorKind::Timeout,
            ErrorKind::Conflict,
            ErrorKind::Unavailable,
            ErrorKind::Forked,
            ErrorKind::Closed,
            ErrorKind::NotPending,
            ErrorKind::Internal,
        ];
        let mut codes: Vec<&str> = kinds.iter().map(|k| k.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
    }
}
