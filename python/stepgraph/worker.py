"""A worker process's Python side: handlers for the steps of some namespaces,
in a PostgreSQL-backed deployment (tasks come from `stepgraph serve`)."""

from __future__ import annotations

import signal
import threading
from typing import Iterable, Optional, Sequence

from ._native import NativeEngine
from .engine import DEFAULT_CONCURRENCY, _HandlerPool, handlers_by_name
from .handlers import StepHandler


class Worker:
    """Serves ``handlers`` for the steps of ``namespaces`` (default: every
    template's): sync handlers on ``concurrency`` threads, ``async def`` ones
    on one asyncio loop, up to ``async_concurrency`` at once. It orchestrates the results of its own steps, so it loads
    ``templates_dir`` too. ``start``/``stop``, or ``run`` until SIGINT/SIGTERM.
    ``queue``: "postgres", "rabbitmq" (with STEPGRAPH_AMQP_URL) or an AMQP URL;
    unset, STEPGRAPH_QUEUE. Every other setting, the AMQP prefix among them,
    comes from the same STEPGRAPH_* variables as ``stepgraph worker``'s.
    ``builtin_handlers``: the example Rust handlers of the fixtures run here too."""

    def __init__(
        self,
        database_url: str,
        templates_dir: str,
        handlers: Iterable[StepHandler],
        namespaces: Optional[Sequence[str]] = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        async_concurrency: int = 64,
        breaker_failure_threshold: int = 5,
        breaker_cool_down: float = 30.0,
        queue: Optional[str] = None,
        builtin_handlers: bool = False,
    ):
        self._handlers = handlers_by_name(handlers)
        self._args = (
            database_url,
            str(templates_dir),
            list(namespaces or []),
            list(self._handlers),
            max(1, concurrency),
            breaker_failure_threshold,
            int(breaker_cool_down * 1000),
            queue,
            builtin_handlers,
        )
        self._concurrency = max(1, concurrency)
        self._async_concurrency = max(1, async_concurrency)
        self._pool: Optional[_HandlerPool] = None

    def start(self) -> "Worker":
        native = NativeEngine.postgres(*self._args)
        self._pool = _HandlerPool(native, self._handlers, self._concurrency, self._async_concurrency)
        self._pool.start()
        return self

    def stop(self) -> None:
        """Stops asking for work; running handlers finish, the rest is redelivered."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def host_stats(self) -> dict[str, int]:
        """What the Rust host holds: ``pending`` (steps out with the handlers
        here); empty before ``start``."""
        return self._pool.host_stats() if self._pool is not None else {}

    def run(self) -> None:
        """Serves until SIGINT or SIGTERM, then stops gracefully."""
        done = threading.Event()
        previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            done.wait()
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
