"""The embedded engine: orchestrator, in-memory state and queue, and this
process's handlers on a pool of threads that pull work from the Rust host."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional

from ._native import NativeEngine, StepgraphError
from .boundary import StepEvent, StepResult
from .handlers import Context, StepHandler, finish_async, not_json, start_handler

#: Handlers running at once in an engine or worker of this process (an
#: ``async def`` handler's coroutines overlap up to ``async_concurrency``).
DEFAULT_CONCURRENCY = 8


def _cut(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _short(value: Any) -> str:
    return _cut(json.dumps(value, default=str))


def _error_text(error: Any) -> str:
    """A task's error in a few words: ``"step: message"`` where it has them."""
    if isinstance(error, dict):
        inner = error["error"] if isinstance(error.get("error"), dict) else error
        if inner.get("message") is not None:
            step = error.get("step")
            return json.dumps(_cut(f"{step}: {inner['message']}" if step else str(inner["message"])))
    return _short(error)


#: A step's fields in :attr:`TaskResult.steps`, from an engine and a Client alike.
STEP_FIELDS = ("name", "state", "attempts", "max_attempts", "cursor", "result", "error")


@dataclass(frozen=True)
class TaskResult:
    """A task: its state, result (or error), and its steps by name (each
    with the fields of :data:`STEP_FIELDS`), the same from an
    :class:`Engine`'s ``run`` and ``get_task`` and from a :class:`Client`'s
    ``run``, ``wait`` and ``get_task``. Its repr is one line; ``report`` is
    the whole view it was made from, as the HTTP API shows a task: its
    fields, its steps and (but from ``Engine.run``) its audit trail under
    ``transitions``."""

    task_id: str
    state: str
    result: Any
    error: Any
    steps: dict
    report: dict

    @classmethod
    def from_api(cls, view: dict) -> "TaskResult":
        """A task as the HTTP API (and an engine) shows it."""
        steps = {s["name"]: {k: s.get(k) for k in STEP_FIELDS} for s in view.get("steps", [])}
        return cls(view["id"], view["state"], view.get("result"), view.get("error"), steps, view)

    def __repr__(self) -> str:
        view = self.report
        template = f"{view.get('namespace')}/{view.get('name')}@{view.get('version')}"
        outcome = f"error={_error_text(self.error)}" if self.error is not None else f"result={_short(self.result)}"
        return f"<TaskResult {self.task_id} {template} {self.state} {outcome}>"

    __str__ = __repr__


class _HandlerPool:
    """Threads, one handler slot each, that pull events from the native host
    (without the GIL while they wait) and report each handler's outcome.

    An ``async def`` handler's coroutine goes to one long-lived asyncio loop
    (its own thread), where up to ``async_concurrency`` of them run at once;
    the thread that pulled it goes back for more work."""

    def __init__(self, native: NativeEngine, handlers: dict, concurrency: int, async_concurrency: int = 64):
        self._native = native
        self._handlers = handlers
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, name=f"stepgraph-handler-{i}", daemon=True)
            for i in range(max(1, concurrency))
        ]
        self._async_slots = threading.BoundedSemaphore(max(1, async_concurrency))
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="stepgraph-asyncio", daemon=True)
        self._in_flight: set = set()

    def start(self) -> None:
        self._loop_thread.start()
        for t in self._threads:
            t.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._native.next_events(1, 200)
            except StepgraphError:
                return
            self.serve(events)

    @property
    def has_handlers(self) -> bool:
        return bool(self._handlers)

    def serve(self, events: List[StepEvent]) -> None:
        """Runs the handlers of ``events`` and reports their outcomes: on
        this pool's threads, and on a thread that waits in ``Engine.run``."""
        for event in events:
            ctx = Context(event)
            outcome = start_handler(self._handlers[event["handler"]], ctx)
            if isinstance(outcome, dict):
                self._complete(event["event_id"], outcome, ctx)
            else:
                self._async_slots.acquire()
                future = asyncio.run_coroutine_threadsafe(self._finish(event["event_id"], outcome, ctx), self._loop)
                self._in_flight.add(future)
                future.add_done_callback(self._in_flight.discard)

    async def _finish(self, event_id: int, awaitable: Any, ctx: Context) -> None:
        try:
            self._complete(event_id, await finish_async(awaitable), ctx)
        finally:
            self._async_slots.release()

    def _complete(self, event_id: int, outcome: StepResult, ctx: Context) -> None:
        try:
            try:
                self._native.complete(event_id, outcome)
            except ValueError as e:  # the result is not JSON; the event is still pending
                self._native.complete(event_id, not_json(ctx, e))
        except StepgraphError:
            pass  # timed out meanwhile, or shut down: the host refused the late result

    def host_stats(self) -> dict[str, int]:
        return self._native.host_stats()

    def stop(self) -> None:
        """Graceful: the native side hands out nothing new and waits (its
        grace period) for the handlers running here, threads and coroutines."""
        self._stop.set()
        self._native.shutdown()
        # The native side waited its grace for the running handlers: a
        # handler still running outlived it and is abandoned (its step is
        # redelivered); the threads only have their last call to return from.
        deadline = time.monotonic() + 1.0
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=max(0.0, deadline - time.monotonic()))
        concurrent.futures.wait(list(self._in_flight), timeout=max(0.0, deadline - time.monotonic()))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=5)
        if not self._loop_thread.is_alive():
            self._loop.close()


def handlers_by_name(handlers: Iterable[Any]) -> dict:
    """The handlers by name: instances, or StepHandler subclasses (made with
    no arguments, as in Ruby and TypeScript). A nameless handler, one without
    ``call``, or a name given twice is a ValueError here, not a failed step later."""
    by_name: dict = {}
    for h in handlers:
        if isinstance(h, type) and issubclass(h, StepHandler):
            h = h()
        name = getattr(h, "name", "")
        if not name:
            raise ValueError(f"handler {h!r} has no name")
        if not callable(getattr(h, "call", None)):
            raise ValueError(f"handler {name!r} ({h!r}) has no call(ctx) method")
        if name in by_name:
            raise ValueError(f"two handlers are named {name!r}: {by_name[name]!r} and {h!r}")
        by_name[name] = h
    return by_name


class Engine:
    """Runs tasks in this process, with Python handlers; needs no services."""

    def __init__(
        self, native: NativeEngine, handlers: dict, concurrency: int, async_concurrency: int = 64, inline_run: bool = False
    ):
        self._native = native
        self._pool = _HandlerPool(native, handlers, concurrency, async_concurrency)
        self._pool.start()
        self._inline_run = inline_run

    @classmethod
    def embedded(
        cls,
        templates_dir: str,
        handlers: Iterable[StepHandler],
        concurrency: int = DEFAULT_CONCURRENCY,
        async_concurrency: int = 64,
        breaker_failure_threshold: int = 5,
        breaker_cool_down: float = 30.0,
        builtin_handlers: bool = False,
        inline_run: bool = False,
    ) -> "Engine":
        """An engine in this process with ``handlers``; with
        ``builtin_handlers`` the example Rust handlers of the fixture
        workflows run beside them (the Python ones take precedence).

        With ``inline_run``, a thread waiting in ``run`` runs handlers too,
        so a task whose steps it runs crosses no other thread (the fastest:
        a Python step then costs about a function call more than a Rust
        one). A handler running there cannot be interrupted: one that
        outlives ``run``'s timeout makes it raise TaskTimeoutError only when
        it returns (its step is still timed out and retried on the handler
        threads). Off (the default), ``run`` only waits, and its timeout is
        a bound on the wait."""
        by_name = handlers_by_name(handlers)
        native = NativeEngine.embedded(
            str(templates_dir),
            list(by_name),
            breaker_failure_threshold,
            int(breaker_cool_down * 1000),
            builtin_handlers,
        )
        return cls(native, by_name, concurrency, async_concurrency, inline_run)

    def run(
        self,
        namespace: str,
        name: str,
        context: Any,
        timeout: float = 300.0,
        run_at: Any = None,
        delay: Optional[float] = None,
    ) -> TaskResult:
        """Creates a task (at once, at ``run_at``, an aware ``datetime`` or an
        RFC 3339 string, or ``delay`` seconds from now) and waits for it to
        end. Its ``report`` leaves out the audit trail: :meth:`get_task` has it."""
        if hasattr(run_at, "isoformat"):
            if run_at.tzinfo is None:
                raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
            run_at = run_at.isoformat()
        delay_ms = None if delay is None else int(delay * 1000)
        # This thread runs handlers while it waits: a task whose steps it
        # runs crosses no other thread.
        serve = self._pool.serve if self._inline_run and self._pool.has_handlers else None
        view = self._native.run(namespace, name, json.dumps(context), int(timeout * 1000), run_at, delay_ms, serve)
        return TaskResult.from_api(json.loads(view))

    def get_task(self, task_id: str) -> TaskResult:
        """A task as it is now, with its audit trail (``report["transitions"]``);
        :class:`TaskNotFoundError` when there is none with that id."""
        return TaskResult.from_api(json.loads(self._native.get_task(str(task_id))))

    def roundtrip(self, handler: str, n: int) -> float:
        """Benchmarks: the mean seconds of one host round trip (the step
        handed to ``handler`` here, run, its result back in Rust), over ``n``."""
        return self._native.roundtrip(handler, n) / 1e9 / max(1, n)

    def host_stats(self) -> dict[str, int]:
        """What the Rust host holds: ``pending`` (steps out with the handlers
        here; never more than the handler slots asked for them)."""
        return self._native.host_stats()

    def close(self) -> None:
        self._pool.stop()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
