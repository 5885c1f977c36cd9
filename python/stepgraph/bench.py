"""``python -m stepgraph.bench --templates DIR``: the seed's FFI rows (linear
and diamond, embedded mode) with Python handlers beside the same workflows
with the engine's native Rust handlers. ``stepgraph bench --language python``
runs this with the fixture templates. With ``--worker``, a worker process
serving the same handlers for one namespace (STEPGRAPH_DATABASE_URL and the
other STEPGRAPH_* settings), which ``stepgraph bench --language python
--database-url`` drives beside the Rust worker."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import statistics
import time
from typing import Optional, Sequence

from .engine import Engine
from .handlers import StepHandler, handler
from .worker import Worker

SIX_16 = 6**16
CONCURRENCY = 2
# The last column: the reference system's published FFI P50s, constants
# (not measured here).
ROWS = [("FFI linear", "linear", 4, 312.0), ("FFI diamond", "diamond", 4, 260.0)]


class Square(StepHandler):
    name = "math.square"

    def call(self, ctx):
        deps = list(ctx.dependency_results.values())
        x = int(deps[0]) if deps else ctx.input["even_number"]
        return x * x


@handler("math.multiply_and_square")
def multiply_and_square(ctx):
    product = 1
    for v in ctx.dependency_results.values():
        product *= int(v)
    return product * product


def _p50_us(engine: Engine, name: str, runs: int, warmup: int) -> float:
    samples = []
    # As Engine.run does (with inline_run, the waiting thread runs handlers too).
    serve = engine._pool.serve if engine._inline_run and engine._pool.has_handlers else None
    for i in range(warmup + runs):
        start = time.perf_counter()
        report = engine._native.run("e2e", name, '{"even_number": 6}', 30000, None, None, serve)
        elapsed = time.perf_counter() - start
        task = json.loads(report)
        if task["state"] != "complete" or int(task["result"]) != SIX_16:
            raise SystemExit(f"{name}: task ended {task['state']} with {task.get('result')!r}: {task.get('error')}")
        if i >= warmup:
            samples.append(elapsed * 1e6)
    return statistics.median(samples)


def _native_p50s(text: str) -> dict:
    """``linear=168.2,diamond=150.0`` (µs) as a dict; empty when not given."""
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {name: float(us) for name, us in pairs}


def _fmt(us: float) -> str:
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def serve_as_worker(templates: str, namespace: str, concurrency: int) -> None:
    """Serves the handlers for ``namespace`` until SIGTERM or SIGINT; says so
    on its first line of output once it does."""
    url = os.environ.get("STEPGRAPH_DATABASE_URL")
    if not url:
        raise SystemExit("--worker needs STEPGRAPH_DATABASE_URL")
    worker = Worker(url, templates, [Square(), multiply_and_square], namespaces=[namespace], concurrency=concurrency)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    worker.start()
    print(f"worker serving namespaces [{namespace!r}]", flush=True)
    try:
        stop.wait()
    finally:
        worker.stop()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stepgraph.bench", description=__doc__)
    parser.add_argument("--templates", required=True, help="directory holding the e2e fixture templates")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--worker", action="store_true", help="serve the handlers as a worker process instead")
    parser.add_argument("--namespace", default="e2e", help="with --worker: the namespace served")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="with --worker: handlers at once")
    parser.add_argument(
        "--native-p50-us",
        default="",
        help="stepgraph bench's own P50s of this run (linear=168.2,diamond=150.0), for the Rust column's ratio to them",
    )
    args = parser.parse_args(argv)
    if args.worker:
        serve_as_worker(args.templates, args.namespace, args.concurrency)
        return

    own_p50 = _native_p50s(args.native_p50_us)
    results = []
    for label, name, steps, seed in ROWS:
        # The Rust row: the example Rust handlers in an engine made the same
        # way (same binding, same concurrency).
        with Engine.embedded(args.templates, [], concurrency=CONCURRENCY, builtin_handlers=True) as native:
            rust = _p50_us(native, name, args.runs, args.warmup)
        # The Python handlers take precedence over the built-in ones of the same names.
        with Engine.embedded(
            args.templates,
            [Square(), multiply_and_square],
            concurrency=CONCURRENCY,
            builtin_handlers=True,
            inline_run=True,
        ) as python:
            py = _p50_us(python, name, args.runs, args.warmup)
        results.append((label, steps, rust, py, seed))

    print(
        f"stepgraph bench --language python: embedded mode, {args.runs} runs per row after {args.warmup} warm-up runs,"
        f" concurrency {CONCURRENCY} in both columns; Python handlers with inline_run (run's own thread runs them)"
    )
    print()
    print(
        "| Scenario    | Steps | stepgraph bench P50 | Rust P50 | Rust vs stepgraph bench | Python P50 "
        "| Python overhead/step | Python vs Rust | Reference FFI P50 (published) |"
    )
    print(
        "|-------------|------:|--------------------:|---------:|------------------------:|-----------:"
        "|---------------------:|---------------:|------------------------------:|"
    )
    for (label, steps, rust, py, seed), (_, name, _, _) in zip(results, ROWS):
        own = own_p50.get(name)
        own_col, ratio = (_fmt(own), f"{rust / own:.2f}x") if own else ("-", "-")
        print(
            f"| {label:<11} | {steps:>5} | {own_col:>19} | {_fmt(rust):>8} | {ratio:>23} | {_fmt(py):>10} "
            f"| {_fmt((py - rust) / steps):>20} | {py / rust:>13.2}x | {seed:>26.0f} ms |"
        )


if __name__ == "__main__":
    main()
