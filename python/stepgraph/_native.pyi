"""Type stubs for the PyO3 module `stepgraph._native` (bindings/python)."""

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
    ) -> NativeEngine: ...
    def next_events(self, max: int, timeout_ms: int) -> list[str]: ...
    def complete(self, event_id: int, result: str) -> None: ...
    def run(self, namespace: str, name: str, context: str, timeout_ms: int = 300000) -> str: ...
    def shutdown(self) -> None: ...
