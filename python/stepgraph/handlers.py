"""Handler types and the conversion of their results to the engine's schema."""

from __future__ import annotations

import abc
import inspect
import re
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, Optional, Union

from .boundary import BatchRequest, EventCursor, FailureKind, StepEvent, StepFailure, StepResult

class PermanentError(Exception):
    """Fails the step without retrying."""


class RetryableError(Exception):
    """Fails this attempt; the step is retried (after ``retry_after`` seconds if given)."""

    def __init__(self, message: str = "", retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Decision:
    """A decision step's result: the names of the branches to create."""

    branches: list


@dataclass(frozen=True)
class Batch:
    """A batchable step's result: ``total_items`` cut into slices of ``batch_size``."""

    total_items: int
    batch_size: int

    def to_outcome(self) -> BatchRequest:
        """What crosses to the engine, which cuts the cursors."""
        return {"total_items": self.total_items, "batch_size": max(1, self.batch_size)}


class Context:
    """What a handler sees of its step (read-only by convention)."""

    __slots__ = (
        "task_id",
        "step_id",
        "step_name",
        "handler",
        "namespace",
        "task_name",
        "attempt",
        "max_attempts",
        "input",
        "config",
        "dependency_results",
        "batch_size",
        "cursor",
        "timeout",
        "traceparent",
    )

    task_id: str
    step_id: str
    step_name: str
    handler: str
    namespace: str
    task_name: str
    attempt: int
    max_attempts: int
    #: The task context.
    input: Any
    #: ``handler.config`` from the template.
    config: Mapping[str, Any]
    #: The results of the steps this one depends on, by step name.
    dependency_results: Mapping[str, Any]
    #: For a batchable step: the template's ``batch.batch_size``.
    batch_size: Optional[int]
    #: For a batch worker: ``{"batch_no", "start", "end"}`` of its slice.
    cursor: Optional[EventCursor]
    #: Seconds the handler has before the host times the step out.
    timeout: Optional[float]
    #: W3C trace context of the step's handler span when the task is traced
    #: (``STEPGRAPH_OTLP_ENDPOINT``, or a ``traceparent`` at creation), else
    #: None: extract it with OpenTelemetry's propagator and the spans the
    #: handler starts under it join the step's trace.
    traceparent: Optional[str]

    def __init__(self, event: StepEvent):
        self.task_id = event["task_id"]
        self.step_id = event["step_id"]
        self.step_name = event["step_name"]
        self.handler = event["handler"]
        self.namespace = event["namespace"]
        self.task_name = event["task_name"]
        self.attempt = event["attempt"]
        self.max_attempts = event["max_attempts"]
        self.input = event["input"]
        self.config = event["config"]
        self.dependency_results = event["dependency_results"]
        self.batch_size = event.get("batch_size")
        self.cursor = event.get("cursor")
        self.timeout = event["timeout_ms"] / 1000.0
        self.traceparent = event.get("traceparent")

    @property
    def trace_id(self) -> Optional[str]:
        """The trace's id (32 hex digits) when the task is traced, else None."""
        return self.traceparent[3:35] if self.traceparent else None

    def dependency(self, step_name: str) -> Any:
        """The result of the dependency ``step_name``; KeyError names the known ones."""
        try:
            return self.dependency_results[step_name]
        except KeyError:
            known = ", ".join(sorted(self.dependency_results)) or "none"
            raise KeyError(f"step {self.step_name!r} has no dependency {step_name!r} (it has: {known})") from None

    @classmethod
    def from_event(cls, event: StepEvent) -> "Context":
        return cls(event)

    def __repr__(self) -> str:
        return f"Context(step_name={self.step_name!r}, task_id={self.task_id!r}, attempt={self.attempt})"


def default_name(class_name: str) -> str:
    """A handler class's default name: its name in snake_case
    (``SquareNumber`` -> ``square_number``), as in Ruby and TypeScript."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", class_name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


class StepHandler(abc.ABC):
    """Subclass, implement ``call``; ``name`` is the template's
    ``handler.callable`` (default: the class name in snake_case)."""

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = default_name(cls.__name__)

    @abc.abstractmethod
    def call(self, ctx: Context) -> Any:
        """Runs the step; returns its result (JSON value, Decision or Batch).
        May be ``async def``: it then runs on the engine's event loop."""


class _FunctionHandler(StepHandler):
    def __init__(self, name: str, fn: Callable[[Context], Any]):
        self.name = name
        self._fn = fn

    def call(self, ctx: Context) -> Any:
        return self._fn(ctx)


def handler(name: Union[str, Callable[[Context], Any]]) -> Any:
    """Makes a function a handler: ``@stepgraph.handler("square")``, or
    ``@stepgraph.handler`` to name it after the function."""
    if callable(name):
        return _FunctionHandler(name.__name__, name)

    def wrap(fn: Callable[[Context], Any]) -> StepHandler:
        return _FunctionHandler(name, fn)

    return wrap


def _failure(kind: FailureKind, message: str, exc: BaseException, retry_after: Optional[float] = None) -> StepResult:
    """A failure outcome carrying the exception's type and traceback."""
    error: StepFailure = {
        "kind": kind,
        "message": message,
        "error_type": type(exc).__name__,
        "backtrace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    if retry_after is not None:
        error["retry_after_ms"] = int(retry_after * 1000)
    return {"status": "failure", "error": error}


def _exception_outcome(e: BaseException) -> StepResult:
    if isinstance(e, PermanentError):
        return _failure("permanent", str(e), e)
    if isinstance(e, RetryableError):
        return _failure("retryable", str(e), e, e.retry_after)
    return _failure("retryable", f"{type(e).__name__}: {e}", e)


def _value_outcome(value: Any) -> StepResult:
    if isinstance(value, Decision):
        return {"status": "decision", "branches": list(value.branches)}
    if isinstance(value, Batch):
        return {"status": "batch", "batch": value.to_outcome()}
    return {"status": "success", "result": value}


def not_json(ctx: Context, e: Exception) -> StepResult:
    """The outcome of a step whose result the engine cannot take."""
    return _failure("permanent", f"step {ctx.step_name!r} returned a value that is not JSON: {e}", e)


def start_handler(h: StepHandler, ctx: Context) -> Union[StepResult, Awaitable[Any]]:
    """Calls a handler: its outcome for the engine, or, for an ``async def``
    handler, the awaitable to finish with :func:`finish_async`. Never raises."""
    try:
        value = h.call(ctx)
    except Exception as e:  # noqa: BLE001 - every exception becomes a failure
        return _exception_outcome(e)
    if inspect.isawaitable(value):
        return value
    return _value_outcome(value)


async def finish_async(awaitable: Awaitable[Any]) -> StepResult:
    """Awaits an async handler's result; its outcome for the engine."""
    try:
        value = await awaitable
    except Exception as e:  # noqa: BLE001 - every exception becomes a failure
        return _exception_outcome(e)
    return _value_outcome(value)
