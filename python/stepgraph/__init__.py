"""stepgraph: step handlers in Python, orchestrated by a Rust engine.

Write handlers as subclasses of :class:`StepHandler` or with the
:func:`handler` decorator, then run tasks with :meth:`Engine.embedded` (no
services needed). A handler receives a :class:`Context` and returns a JSON
value, a :class:`Decision` or a :class:`Batch`; it raises
:class:`PermanentError` to fail without retrying or :class:`RetryableError`
to ask for a retry (any other exception is retried too). Handlers may be
``async def``: they run on one long-lived asyncio loop. :class:`Worker` serves
handlers in a PostgreSQL deployment; :class:`Client` talks to its HTTP API.
"""

from ._native import (
    BackendUnavailableError,
    ConfigurationError,
    ConflictError,
    EventNotPendingError,
    ForkedProcessError,
    InvalidContextError,
    ShutDownError,
    StepgraphError,
    TaskNotFoundError,
    TaskTimeoutError,
    TemplateNotFoundError,
)
from .client import ApiError, Client
from .engine import Engine, TaskResult
from .worker import Worker
from .handlers import (
    Batch,
    Context,
    Decision,
    PermanentError,
    RetryableError,
    StepHandler,
    handler,
)

__all__ = [
    "BackendUnavailableError",
    "ConfigurationError",
    "ConflictError",
    "EventNotPendingError",
    "ForkedProcessError",
    "InvalidContextError",
    "ShutDownError",
    "StepgraphError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "TemplateNotFoundError",
    "ApiError",
    "Client",
    "Batch",
    "Context",
    "Decision",
    "Engine",
    "PermanentError",
    "RetryableError",
    "StepHandler",
    "TaskResult",
    "Worker",
    "handler",
]
