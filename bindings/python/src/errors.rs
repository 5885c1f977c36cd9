//! Every engine error becomes one Python exception class per kind, all
//! subclasses of `StepgraphError`; this is the only place that decides which.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyDict, PyTuple, PyType};
use stepgraph_worker::{ErrorKind, HostError, HostedError};

create_exception!(
    _native,
    StepgraphError,
    PyException,
    "An error from the stepgraph engine."
);
create_exception!(
    _native,
    ConfigurationError,
    StepgraphError,
    "Options, STEPGRAPH_* settings or templates that cannot work."
);
create_exception!(
    _native,
    TemplateNotFoundError,
    StepgraphError,
    "No template of that namespace and name (and version)."
);
create_exception!(
    _native,
    InvalidContextError,
    StepgraphError,
    "The task context does not match the template's input_schema."
);
create_exception!(
    _native,
    StepgraphTimeout,
    StepgraphError,
    "The task did not end in the time given."
);

/// `TaskTimeoutError`: a [`StepgraphError`] that is also Python's own
/// `TimeoutError`, so `except TimeoutError` catches it too. A class with two
/// bases cannot be declared with `create_exception!`; it is made once, with
/// `type()`, at import.
static TASK_TIMEOUT: GILOnceCell<Py<PyType>> = GILOnceCell::new();

fn task_timeout_class(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    TASK_TIMEOUT
        .get_or_try_init(py, || {
            let builtins = py.import("builtins")?;
            let bases = PyTuple::new(
                py,
                [
                    py.get_type::<StepgraphTimeout>().into_any(),
                    builtins.getattr("TimeoutError")?,
                ],
            )?;
            let attrs = PyDict::new(py);
            attrs.set_item("__module__", "stepgraph")?;
            attrs.set_item(
                "__doc__",
                "The task did not end in the time given (also a built-in TimeoutError).",
            )?;
            let class = builtins
                .getattr("type")?
                .call1(("TaskTimeoutError", bases, attrs))?;
            Ok(class.downcast_into::<PyType>()?.unbind())
        })
        .map(|c| c.bind(py))
}

fn timeout_error(message: String) -> PyErr {
    Python::with_gil(|py| match task_timeout_class(py) {
        Ok(class) => PyErr::from_type(class.clone(), message),
        Err(e) => e,
    })
}
create_exception!(
    _native,
    ConflictError,
    StepgraphError,
    "A concurrent change won, or a key is taken."
);
create_exception!(
    _native,
    BackendUnavailableError,
    StepgraphError,
    "The database or the message broker failed or cannot be reached."
);
create_exception!(
    _native,
    ForkedProcessError,
    StepgraphError,
    "The engine was created in another process (before a fork)."
);
create_exception!(
    _native,
    ShutDownError,
    StepgraphError,
    "The engine is shut down (or runs no embedded engine)."
);
create_exception!(
    _native,
    EventNotPendingError,
    StepgraphError,
    "A completion for an event that is not pending (timed out, say): refused."
);

create_exception!(
    _native,
    TaskNotFoundError,
    StepgraphError,
    "No task with that id (never created here, or removed by retention)."
);

fn raise(kind: ErrorKind, message: String) -> PyErr {
    match kind {
        ErrorKind::Config => ConfigurationError::new_err(message),
        ErrorKind::UnknownTemplate => TemplateNotFoundError::new_err(message),
        ErrorKind::TaskNotFound => TaskNotFoundError::new_err(message),
        ErrorKind::InvalidContext => InvalidContextError::new_err(message),
        ErrorKind::Timeout => timeout_error(message),
        ErrorKind::Conflict => ConflictError::new_err(message),
        ErrorKind::Unavailable => BackendUnavailableError::new_err(message),
        ErrorKind::Forked => ForkedProcessError::new_err(message),
        ErrorKind::Closed => ShutDownError::new_err(message),
        ErrorKind::NotPending => EventNotPendingError::new_err(message),
        ErrorKind::Internal => StepgraphError::new_err(message),
    }
}

pub(crate) fn error(e: HostedError) -> PyErr {
    raise(e.kind(), e.to_string())
}

pub(crate) fn host_error(e: HostError) -> PyErr {
    raise(e.kind(), e.to_string())
}

/// A failure with no kind of its own (a value that does not convert, say).
pub(crate) fn internal(e: impl std::fmt::Display) -> PyErr {
    StepgraphError::new_err(e.to_string())
}

/// Adds every class to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("StepgraphError", py.get_type::<StepgraphError>())?;
    m.add("ConfigurationError", py.get_type::<ConfigurationError>())?;
    m.add(
        "TemplateNotFoundError",
        py.get_type::<TemplateNotFoundError>(),
    )?;
    m.add("TaskNotFoundError", py.get_type::<TaskNotFoundError>())?;
    m.add("InvalidContextError", py.get_type::<InvalidContextError>())?;
    m.add("TaskTimeoutError", task_timeout_class(py)?)?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add(
        "BackendUnavailableError",
        py.get_type::<BackendUnavailableError>(),
    )?;
    m.add("ForkedProcessError", py.get_type::<ForkedProcessError>())?;
    m.add("ShutDownError", py.get_type::<ShutDownError>())?;
    m.add(
        "EventNotPendingError",
        py.get_type::<EventNotPendingError>(),
    )?;
    Ok(())
}
