"""Handler types and the conversion of their results to the engine's schema."""

from __future__ import annotations

import abc
import json
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

_I64_MIN, _U64_MAX = -(2**63), 2**64 - 1


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

    def to_outcome(self) -> dict:
        size = max(1, self.batch_size)
        count = -(-self.total_items // size)
        cursors = [
            {"batch_no": i + 1, "start": i * size, "end": min((i + 1) * size, self.total_items)}
            for i in range(count)
        ]
        return {"worker_count": count, "total_items": self.total_items, "cursors": cursors}


@dataclass(frozen=True)
class Context:
    """What a handler sees of its step."""

    task_id: str
    step_id: str
    step_name: str
    handler: str
    namespace: str
    task_name: str
    attempt: int
    max_attempts: int
    input: Any
    config: Mapping[str, Any]
    dependency_results: Mapping[str, Any]
    batch_size: Optional[int] = None
    cursor: Optional[Mapping[str, int]] = None
    timeout: Optional[float] = field(default=None)

    def dependency(self, step_name: str) -> Any:
        """The result of the dependency ``step_name``; KeyError names the known ones."""
        try:
            return self.dependency_results[step_name]
        except KeyError:
            known = ", ".join(sorted(self.dependency_results)) or "none"
            raise KeyError(f"step {self.step_name!r} has no dependency {step_name!r} (it has: {known})") from None

    @classmethod
    def from_event(cls, e: Mapping[str, Any]) -> "Context":
        return cls(
            task_id=e["task_id"],
            step_id=e["step_id"],
            step_name=e["step_name"],
            handler=e["handler"],
            namespace=e["namespace"],
            task_name=e["task_name"],
            attempt=e["attempt"],
            max_attempts=e["max_attempts"],
            input=e["input"],
            config=e["config"],
            dependency_results=e["dependency_results"],
            batch_size=e.get("batch_size"),
            cursor=e.get("cursor"),
            timeout=e["timeout_ms"] / 1000.0,
        )


class StepHandler(abc.ABC):
    """Subclass, set ``name`` (the template's ``handler.callable``), implement ``call``."""

    name: str = ""

    @abc.abstractmethod
    def call(self, ctx: Context) -> Any:
        """Runs the step; returns its result (JSON value, Decision or Batch)."""


class _FunctionHandler(StepHandler):
    def __init__(self, name: str, fn: Callable[[Context], Any]):
        self.name = name
        self._fn = fn

    def call(self, ctx: Context) -> Any:
        return self._fn(ctx)


def handler(name: str) -> Callable[[Callable[[Context], Any]], StepHandler]:
    """Makes a function a handler: ``@stepgraph.handler("square")``."""

    def wrap(fn: Callable[[Context], Any]) -> StepHandler:
        return _FunctionHandler(name, fn)

    return wrap


def _jsonable(value: Any) -> Any:
    """Integers beyond 64 bits travel as decimal strings."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if _I64_MIN <= value <= _U64_MAX else str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _failure(kind: str, message: str, exc: BaseException, retry_after: Optional[float] = None) -> dict:
    error = {
        "kind": kind,
        "message": message,
        "error_type": type(exc).__name__,
        "backtrace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    if retry_after is not None:
        error["retry_after_ms"] = int(retry_after * 1000)
    return {"status": "failure", "error": error}


def run_handler(h: StepHandler, ctx: Context) -> str:
    """Runs a handler; its outcome as the engine's JSON (never raises)."""
    try:
        value = h.call(ctx)
    except PermanentError as e:
        return json.dumps(_failure("permanent", str(e), e))
    except RetryableError as e:
        return json.dumps(_failure("retryable", str(e), e, e.retry_after))
    except Exception as e:  # noqa: BLE001 - any other exception is a retryable failure
        return json.dumps(_failure("retryable", f"{type(e).__name__}: {e}", e))
    if isinstance(value, Decision):
        outcome = {"status": "decision", "branches": list(value.branches)}
    elif isinstance(value, Batch):
        outcome = {"status": "batch", "batch": value.to_outcome()}
    else:
        outcome = {"status": "success", "result": _jsonable(value)}
    try:
        return json.dumps(outcome, allow_nan=False)
    except (TypeError, ValueError) as e:
        message = f"step {ctx.step_name!r} returned a value that is not JSON: {e}"
        return json.dumps(_failure("permanent", message, e))
