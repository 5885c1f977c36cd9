"""Type stubs for the PyO3 module `stepgraph._native` (bindings/python)."""

from typing import Any

class StepgraphError(Exception): ...
class ForkedProcessError(StepgraphError): ...

class NativeEngine:
    @staticmethod
    def embedded(
        templates_dir: str,
        handlers: list[str],
        completion_capacity: int = 1024,
        failure_threshold: int = 5,
        cool_down_ms: int = 30000,
    ) -> NativeEngine: ...
    @staticmethod
    def postgres(
        database_url: str,
        templates_dir: str,
        namespaces: list[str],
        handlers: list[str],
        concurrency: int = 4,
        completion_capacity: int = 1024,
        failure_threshold: int = 5,
        cool_down_ms: int = 30000,
        queue: str = "postgres",
    ) -> NativeEngine: ...
    def next_events(self, max: int, timeout_ms: int) -> list[dict[str, Any]]: ...
    def complete(self, event_id: int, outcome: dict[str, Any]) -> None: ...
    def run(self, namespace: str, name: str, context: str, timeout_ms: int = 300000) -> str: ...
    def roundtrip(self, handler: str, n: int) -> int: ...
    def shutdown(self) -> None: ...
