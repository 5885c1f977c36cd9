"""Type stubs for the PyO3 module `stepgraph._native` (bindings/python)."""

from typing import Any, Callable, Optional, final

from .boundary import StepEvent, StepResult

__all__ = [
    "NativeEngine",
    "StepgraphError",
    "ConfigurationError",
    "TemplateNotFoundError",
    "TaskNotFoundError",
    "InvalidContextError",
    "TaskTimeoutError",
    "ConflictError",
    "BackendUnavailableError",
    "ForkedProcessError",
    "ShutDownError",
    "EventNotPendingError",
]

class StepgraphError(Exception): ...
class ConfigurationError(StepgraphError): ...
class TemplateNotFoundError(StepgraphError): ...
class TaskNotFoundError(StepgraphError): ...
class InvalidContextError(StepgraphError): ...
class TaskTimeoutError(StepgraphError, TimeoutError): ...
class ConflictError(StepgraphError): ...
class BackendUnavailableError(StepgraphError): ...
class ForkedProcessError(StepgraphError): ...
class ShutDownError(StepgraphError): ...
class EventNotPendingError(StepgraphError): ...

# A PyO3 class: it cannot be subclassed.
@final
class NativeEngine:
    @staticmethod
    def embedded(
        templates_dir: str,
        handlers: list[str],
        failure_threshold: int = 5,
        cool_down_ms: int = 30000,
        builtin_handlers: bool = False,
    ) -> NativeEngine: ...
    @staticmethod
    def postgres(
        database_url: str,
        templates_dir: str,
        namespaces: list[str],
        handlers: list[str],
        concurrency: int = 4,
        failure_threshold: int = 5,
        cool_down_ms: int = 30000,
        queue: str | None = None,
        builtin_handlers: bool = False,
    ) -> NativeEngine: ...
    def next_events(self, max: int, timeout_ms: int) -> list[StepEvent]: ...
    def complete(self, event_id: int, outcome: StepResult) -> None: ...
    def run(
        self,
        namespace: str,
        name: str,
        context: str,
        timeout_ms: int = 300000,
        run_at: Optional[str] = None,
        delay_ms: Optional[int] = None,
        serve: Optional[Callable[[list[StepEvent]], None]] = None,
    ) -> str: ...
    def get_task(self, task_id: str) -> str: ...
    def roundtrip(self, handler: str, n: int) -> int: ...
    def host_stats(self) -> dict[str, int]: ...
    def shutdown(self) -> None: ...
