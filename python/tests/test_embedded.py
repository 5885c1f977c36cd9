"""The seed's workflow shapes and the failure paths with Python handlers, in
the embedded engine (no services)."""

import asyncio
import os
import pathlib
import threading
import time

import pytest

import stepgraph
from math_handlers import Square, multiply_and_square
from test_errors import ERROR_CLASSES

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "tests" / "fixtures" / "templates"
SIX_16 = 6**16
SIX_64 = 6**64


@stepgraph.handler("approval.routing_decision")
def routing(ctx):
    amount = ctx.input["amount"]
    if amount < 1000:
        return stepgraph.Decision(["auto_approve"])
    if amount < 5000:
        return stepgraph.Decision(["manager_approval"])
    return stepgraph.Decision(["manager_approval", "finance_review"])


@stepgraph.handler("csv.analyze")
def analyze(ctx):
    with open(ctx.input["csv_file_path"]) as f:
        rows = sum(1 for _ in f) - 1
    return stepgraph.Batch(total_items=rows, batch_size=ctx.batch_size)


@pytest.fixture
def engine():
    # The approval and CSV steps beside the Python ones are the built-in Rust handlers.
    e = stepgraph.Engine.embedded(
        TEMPLATES, [Square(), multiply_and_square, routing, analyze], concurrency=4, builtin_handlers=True
    )
    yield e
    e.close()


@pytest.mark.parametrize(
    "name,expected",
    [("linear", SIX_16), ("diamond", SIX_16), ("complex_dag", SIX_64), ("tree", SIX_64)],
)
def test_math_shapes_are_exact(engine, name, expected):
    result = engine.run("e2e", name, {"even_number": 6})
    assert result.state == "complete", result.error
    assert int(result.result) == expected
    assert all(s["state"] == "complete" and s["attempts"] == 1 for s in result.steps.values())


@pytest.mark.parametrize(
    "amount,branches",
    [(500, ["auto_approve"]), (2500, ["manager_approval"]), (7500, ["finance_review", "manager_approval"])],
)
def test_python_decision_creates_only_the_chosen_branches(engine, amount, branches):
    # The decision is Python's; the other approval steps are the built-in Rust handlers.
    result = engine.run("e2e", "conditional_approval", {"amount": amount, "requester": "py"})
    assert result.state == "complete", result.error
    assert result.result == {"approved": True, "approvals": branches}
    assert sorted(result.steps) == sorted(["validate_request", "routing_decision", "finalize_approval", *branches])


def test_python_batch_outcome_creates_the_workers(engine):
    result = engine.run("e2e", "csv_batch", {"csv_file_path": str(ROOT / "tests" / "fixtures" / "products.csv")})
    assert result.state == "complete", result.error
    assert result.result["worker_count"] == 5
    assert result.result["total_inventory_value_cents"] == 12745576047


def write_template(tmp_path, body):
    (tmp_path / "t.yaml").write_text(body)
    return tmp_path


def test_exceptions_retry_and_permanent_errors_do_not(tmp_path):
    calls = {"flaky": 0, "broken": 0}

    @stepgraph.handler("flaky")
    def flaky(ctx):
        calls["flaky"] += 1
        if ctx.attempt < 3:
            raise ConnectionError("the API is down")
        return {"attempt": ctx.attempt}

    @stepgraph.handler("broken")
    def broken(ctx):
        calls["broken"] += 1
        raise stepgraph.PermanentError("card declined")

    templates = write_template(
        tmp_path,
        """
namespace: t
name: retry
version: "1"
steps:
  - name: flaky
    handler: { callable: flaky }
    retry: { max_attempts: 3, backoff: linear, backoff_base_ms: 20, max_backoff_ms: 100 }
  - name: broken
    dependencies: [flaky]
    handler: { callable: broken }
    retry: { max_attempts: 3, backoff: none }
""",
    )
    with stepgraph.Engine.embedded(templates, [flaky, broken]) as e:
        result = e.run("t", "retry", {})
    assert result.state == "error"
    assert result.steps["flaky"]["attempts"] == 3
    assert result.steps["flaky"]["result"] == {"attempt": 3}
    assert calls == {"flaky": 3, "broken": 1}
    error = result.steps["broken"]["error"]
    assert error["kind"] == "permanent"
    assert error["message"] == "card declined"
    assert error["error_type"] == "PermanentError"
    assert "card declined" in error["backtrace"]


def test_retries_wait_the_backoff_or_the_retry_after_a_handler_gives():
    """Linear backoff waits 300 then 600 ms; ``retry_after=0.4`` waits 400 ms
    instead of the step's 5 s: each wait, timed between the handler's calls,
    is never early and late by less than any other policy would differ."""
    calls = {"linear": [], "told": []}

    @stepgraph.handler("raises_twice")
    def raises_twice(ctx):
        calls["linear"].append(time.monotonic())
        if ctx.attempt < 3:
            raise ValueError("not yet")
        return ctx.attempt

    @stepgraph.handler("says_when")
    def says_when(ctx):
        calls["told"].append(time.monotonic())
        if ctx.attempt < 3:
            raise stepgraph.RetryableError("busy", retry_after=0.4)
        return ctx.attempt

    with stepgraph.Engine.embedded(ROOT / "tests" / "fixtures" / "retries", [raises_twice, says_when]) as e:
        result = e.run("t", "waits", {})
        audited = e.get_task(result.task_id)
    assert result.state == "complete", result.error
    for step, planned in (("linear", [300, 600]), ("told", [400, 400])):
        recorded = [
            t["metadata"]["backoff_ms"]
            for t in audited.report["transitions"]["steps"]
            if t["step_name"] == step and t["to"] == "waiting_for_retry"
        ]
        assert recorded == planned, step
        times = calls[step]
        waits = [round((b - a) * 1000) for a, b in zip(times, times[1:])]
        for waited, ms in zip(waits, planned):
            assert ms <= waited < ms + 250, f"{step}: waited {waits} ms, planned {planned}"


def test_a_value_that_is_not_json_fails_naming_the_step(tmp_path):
    @stepgraph.handler("sock")
    def sock(ctx):
        return threading.Lock()

    templates = write_template(
        tmp_path, 'namespace: t\nname: s\nversion: "1"\nsteps:\n  - name: give_lock\n    handler: { callable: sock }\n'
    )
    with stepgraph.Engine.embedded(templates, [sock]) as e:
        result = e.run("t", "s", {})
    assert result.state == "error"
    message = result.steps["give_lock"]["error"]["message"]
    assert message.startswith("step 'give_lock' returned a value that is not JSON"), message


def test_a_hung_handler_is_timed_out(tmp_path):
    release = threading.Event()

    @stepgraph.handler("hang")
    def hang(ctx):
        release.wait(5)
        return 1

    templates = write_template(
        tmp_path,
        'namespace: t\nname: h\nversion: "1"\nsteps:\n  - name: stuck\n    handler: { callable: hang }\n'
        "    timeout_seconds: 0.2\n    retry: { retryable: false, max_attempts: 1 }\n",
    )
    # `run` only waits (no inline_run), and comes back at the timeout.
    with stepgraph.Engine.embedded(templates, [hang]) as e:
        result = e.run("t", "h", {})
        released_before = release.is_set()
        release.set()
    assert not released_before
    assert result.state == "error"
    assert result.steps["stuck"]["error"]["code"] == "timeout"


def test_waiting_for_events_releases_the_gil(engine):
    # Four handler threads block in next_events; this thread still runs.
    counted = 0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        counted += 1
    assert counted > 10_000


def test_the_engine_refuses_use_in_a_forked_child(engine):
    pid = os.fork()
    if pid == 0:
        try:
            engine._native.next_events(1, 0)
            code = 1
        except stepgraph.ForkedProcessError:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_stubs_match_the_module():
    import inspect

    from stepgraph import _native

    stub = (pathlib.Path(stepgraph.__file__).parent / "_native.pyi").read_text()
    for name in ("embedded", "postgres", "next_events", "complete", "run", "roundtrip", "host_stats", "shutdown"):
        assert hasattr(_native.NativeEngine, name), name
        assert f"def {name}(" in stub, name
    for name in ERROR_CLASSES + ("StepgraphError",):
        assert inspect.isclass(getattr(_native, name))
        assert f"class {name}(" in stub


def test_sync_handlers_overlap_up_to_the_concurrency(tmp_path):
    spans = []
    lock = threading.Lock()

    @stepgraph.handler("nap")
    def nap(ctx):
        start = time.monotonic()
        time.sleep(0.1)
        with lock:
            spans.append((start, time.monotonic()))
        return ctx.step_name

    steps = "".join(f"  - name: s{i}\n    handler: {{ callable: nap }}\n" for i in range(8))
    templates = write_template(tmp_path, f'namespace: t\nname: wide\nversion: "1"\nsteps:\n{steps}')
    with stepgraph.Engine.embedded(templates, [nap], concurrency=8) as e:
        result = e.run("t", "wide", {})
    assert result.state == "complete"
    assert len(spans) == 8
    # All eight ran at once: each started before any finished.
    assert max(s for s, _ in spans) < min(f for _, f in spans)


def test_consecutive_timeouts_open_the_breaker():
    """A handler that hangs past its timeout trips its breaker like one that
    raises: after two timed-out attempts the third is refused unrun."""
    calls = []

    @stepgraph.handler("hang")
    def hang(ctx):
        calls.append(ctx.attempt)
        time.sleep(1.0)
        return 1

    hangs = ROOT / "tests" / "fixtures" / "hangs"
    with stepgraph.Engine.embedded(hangs, [hang], breaker_failure_threshold=2, breaker_cool_down=60) as e:
        result = e.run("t", "hangs", {})
    assert result.state == "error"
    assert calls == [1, 2]
    step = result.steps["call"]
    assert step["attempts"] == 3
    assert step["error"]["code"] == "circuit_open", step["error"]


def test_the_breaker_opens_then_closes_after_a_probe(tmp_path):
    calls = []

    @stepgraph.handler("api")
    def api(ctx):
        calls.append(ctx.attempt)
        if len(calls) <= 2:
            raise RuntimeError("503 from the API")
        return "ok"

    templates = write_template(
        tmp_path,
        'namespace: t\nname: b\nversion: "1"\nsteps:\n  - name: call\n    handler: { callable: api }\n'
        "    retry: { max_attempts: 10, backoff: none }\n",
    )
    with stepgraph.Engine.embedded(templates, [api], breaker_failure_threshold=2, breaker_cool_down=0.3) as e:
        result = e.run("t", "b", {})
    assert result.state == "complete"
    # Attempts 1 and 2 failed in Python, attempt 3 was short-circuited by the
    # open breaker, attempt 4 was the probe.
    assert calls == [1, 2, 4]
    assert result.steps["call"]["attempts"] == 4


def test_inline_run_runs_handlers_on_the_waiting_thread(tmp_path):
    """With inline_run, run's own thread runs the handlers of its task
    (no hand-off to the handler threads); a handler there that outlives
    run's timeout makes it raise TaskTimeoutError once it returns."""
    seen = []

    @stepgraph.handler("math.square")
    def square(ctx):
        seen.append(threading.current_thread().name)
        deps = list(ctx.dependency_results.values())
        x = int(deps[0]) if deps else ctx.input["even_number"]
        return x * x

    @stepgraph.handler("slow")
    def slow(ctx):
        time.sleep(0.3)
        return 1

    (tmp_path / "s.yaml").write_text(
        'namespace: t\nname: s\nversion: "1"\nsteps:\n  - name: only\n    handler: { callable: slow }\n'
    )
    import shutil

    shutil.copy(TEMPLATES / "linear.yaml", tmp_path / "linear.yaml")
    with stepgraph.Engine.embedded(tmp_path, [square, slow], concurrency=2, inline_run=True) as e:
        for _ in range(5):
            result = e.run("e2e", "linear", {"even_number": 6})
            assert result.state == "complete" and int(result.result) == SIX_16
        start = time.monotonic()
        with pytest.raises(stepgraph.TaskTimeoutError, match="did not finish"):
            e.run("t", "s", {}, timeout=0.05)
        waited = time.monotonic() - start
    assert len(seen) == 20
    # A waiting handler thread can take an event before run's thread comes
    # to drive (the first run); the rest run where they are waited for.
    assert seen.count(threading.current_thread().name) >= 16, seen
    assert waited >= 0.3, "run waited for the handler it was running"


def test_concurrent_tasks_lose_no_completion():
    """48 trees at once from 12 threads through 8 handler threads: the
    threads that report results also drive the engine, and no completion is
    lost or run twice: every step succeeds at its first attempt and nothing
    is left pending."""
    handlers = [Square(), multiply_and_square, routing, analyze]
    with stepgraph.Engine.embedded(TEMPLATES, handlers, concurrency=8, builtin_handlers=True) as e:
        results = []

        def run_four():
            for _ in range(4):
                results.append(e.run("e2e", "tree", {"even_number": 6}))

        threads = [threading.Thread(target=run_four) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = e.host_stats()
    assert stats["pending"] == 0
    assert len(results) == 48
    for r in results:
        assert r.state == "complete" and int(r.result) == SIX_64
        assert [s["attempts"] for s in r.steps.values()] == [1] * 8, r.steps


def test_async_handlers_overlap_on_one_long_lived_loop(tmp_path):
    spans, loops = [], set()

    @stepgraph.handler("nap")
    async def nap(ctx):
        loops.add(id(asyncio.get_running_loop()))
        start = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((start, time.monotonic()))
        return ctx.step_name

    class Double(stepgraph.StepHandler):
        name = "double"

        async def call(self, ctx):
            await asyncio.sleep(0)
            loops.add(id(asyncio.get_running_loop()))
            return len(ctx.dependency_results) * 2

    steps = "".join(f"  - name: s{i}\n    handler: {{ callable: nap }}\n" for i in range(8))
    deps = ", ".join(f"s{i}" for i in range(8))
    steps += f"  - name: total\n    dependencies: [{deps}]\n    handler: {{ callable: double }}\n"
    templates = write_template(tmp_path, f'namespace: t\nname: wide\nversion: "1"\nsteps:\n{steps}')
    # One handler thread: the eight coroutines still run at once, on the loop.
    with stepgraph.Engine.embedded(templates, [nap, Double()], concurrency=1) as e:
        first = e.run("t", "wide", {})
        second = e.run("t", "wide", {})
    assert first.state == second.state == "complete", first.error
    assert first.steps["total"]["result"] == 16
    assert len(spans) == 16
    first_run = spans[:8]
    assert max(s for s, _ in first_run) < min(f for _, f in first_run)
    assert len(loops) == 1, "every coroutine ran on the same loop"


def test_async_handler_errors_are_failures_like_sync_ones(tmp_path):
    @stepgraph.handler("flaky")
    async def flaky(ctx):
        await asyncio.sleep(0)
        if ctx.attempt == 1:
            raise ValueError("not yet")
        if ctx.attempt == 2:
            raise stepgraph.RetryableError("later", retry_after=0.01)
        return {"attempt": ctx.attempt}

    @stepgraph.handler("broken")
    async def broken(ctx):
        raise stepgraph.PermanentError("bad input")

    templates = write_template(
        tmp_path,
        'namespace: t\nname: a\nversion: "1"\nsteps:\n  - name: f\n    handler: { callable: flaky }\n'
        "    retry: { max_attempts: 3, backoff: none }\n",
    )
    (pathlib.Path(templates) / "b.yaml").write_text(
        'namespace: t\nname: b\nversion: "1"\nsteps:\n  - name: p\n    handler: { callable: broken }\n'
        "    retry: { max_attempts: 3, backoff: none }\n"
    )
    with stepgraph.Engine.embedded(templates, [flaky, broken]) as e:
        ok = e.run("t", "a", {})
        bad = e.run("t", "b", {})
    assert ok.state == "complete" and ok.steps["f"]["result"] == {"attempt": 3}
    assert bad.state == "error"
    assert bad.steps["p"]["attempts"] == 1
    assert bad.steps["p"]["error"]["kind"] == "permanent"
    assert bad.steps["p"]["error"]["message"] == "bad input"


def test_close_lets_running_handlers_finish(tmp_path):
    started, finished = threading.Event(), []

    @stepgraph.handler("slow")
    def slow(ctx):
        started.set()
        time.sleep(0.3)
        finished.append(ctx.step_name)
        return 1

    templates = write_template(
        tmp_path, 'namespace: t\nname: s\nversion: "1"\nsteps:\n  - name: only\n    handler: { callable: slow }\n'
    )
    e = stepgraph.Engine.embedded(templates, [slow])
    outcome = []

    def run():
        try:
            outcome.append(e.run("t", "s", {}, timeout=5).state)
        except stepgraph.StepgraphError as err:
            outcome.append(str(err))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    assert started.wait(5)
    e.close()
    runner.join(5)
    # The handler that was running when close() began ran to its end.
    assert finished == ["only"]
    assert outcome == ["complete"]


def test_roundtrip_measures_a_python_handler(tmp_path):
    seen = []

    @stepgraph.handler("noop")
    def noop(ctx):
        seen.append((ctx.step_name, ctx.dependency("linear_step_1"), ctx.input["even_number"]))
        return None

    # A round trip needs no template: none are loaded.
    with stepgraph.Engine.embedded(tmp_path, [noop]) as e:
        mean = e.roundtrip("noop", 200)
    # Every one of the 200 steps reached the handler, carrying the sample step.
    assert seen == [("linear_step_2", 36, 6)] * 200
    assert mean > 0

    @stepgraph.handler("broken")
    def broken(ctx):
        raise ValueError("round trip broke")

    with stepgraph.Engine.embedded(tmp_path, [broken]) as e:
        with pytest.raises(stepgraph.StepgraphError, match="round trip broke"):
            e.roundtrip("broken", 3)
