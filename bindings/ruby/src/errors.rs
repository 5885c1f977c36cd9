//! Every engine error becomes one Ruby exception class per kind, each a
//! `Stepgraph::Error` (the classes are defined in Ruby, by
//! `lib/stepgraph/errors.rb`, loaded before this extension); this is the
//! only place that decides which.

use magnus::{prelude::*, Error, ExceptionClass, RModule, Ruby};
use stepgraph_worker::{ErrorKind, HostError, HostedError};

/// Each kind's class under `Stepgraph`.
const CLASSES: &[(ErrorKind, &str)] = &[
    (ErrorKind::Config, "ConfigurationError"),
    (ErrorKind::UnknownTemplate, "TemplateNotFoundError"),
    (ErrorKind::TaskNotFound, "TaskNotFoundError"),
    (ErrorKind::InvalidContext, "InvalidContextError"),
    (ErrorKind::Timeout, "TaskTimeoutError"),
    (ErrorKind::Conflict, "ConflictError"),
    (ErrorKind::Unavailable, "BackendUnavailableError"),
    (ErrorKind::Forked, "ForkedProcessError"),
    (ErrorKind::Closed, "ShutDownError"),
    (ErrorKind::NotPending, "EventNotPendingError"),
];

/// The exception class `Stepgraph::<name>`.
fn class(ruby: &Ruby, name: &str) -> ExceptionClass {
    ruby.class_object()
        .const_get::<_, RModule>("Stepgraph")
        .and_then(|m| m.const_get::<_, ExceptionClass>(name))
        .unwrap_or_else(|_| ruby.exception_runtime_error())
}

fn raise(ruby: &Ruby, kind: ErrorKind, message: String) -> Error {
    let name = CLASSES
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("StepgraphError", |(_, name)| name);
    Error::new(class(ruby, name), message)
}

pub(crate) fn error(ruby: &Ruby, e: HostedError) -> Error {
    raise(ruby, e.kind(), e.to_string())
}

pub(crate) fn host_error(ruby: &Ruby, e: HostError) -> Error {
    raise(ruby, e.kind(), e.to_string())
}

/// A failure with no kind of its own: `Stepgraph::StepgraphError`.
pub(crate) fn internal(ruby: &Ruby, e: impl std::fmt::Display) -> Error {
    Error::new(class(ruby, "StepgraphError"), e.to_string())
}
