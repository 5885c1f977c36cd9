"""A Python worker in a PostgreSQL deployment: tasks created over the HTTP API
of a real `stepgraph serve` process, steps run by Python handlers."""

import datetime
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

import stepgraph
from math_handlers import Square, multiply_and_square

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "tests" / "fixtures" / "templates"
ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"]


def binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("STEPGRAPH_BIN", ROOT / "target" / "debug" / "stepgraph"))
    if not path.exists():
        pytest.fail(f"{path} does not exist: build it first (cargo build), or set STEPGRAPH_BIN")
    return path


@pytest.fixture
def database():
    name = f"sg_pytest_{os.getpid()}"
    try:
        subprocess.run(ADMIN + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=True)
        subprocess.run(ADMIN + [f"CREATE DATABASE {name}"], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({e}); .ci/run starts it")
    yield f"postgres://postgres@127.0.0.1:5432/{name}"
    subprocess.run(ADMIN + [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)


def start_server(database):
    """A `stepgraph serve` with this process's environment; its address and process."""
    env = dict(os.environ, STEPGRAPH_DATABASE_URL=database, STEPGRAPH_MAX_CONNECTIONS="5", STEPGRAPH_LOG="warn")
    proc = subprocess.Popen(
        [binary(), "serve", "--templates", str(TEMPLATES), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    if not line.startswith("listening on http://"):
        proc.kill()
        pytest.fail(f"serve did not start: {line!r}")
    return line.split()[2].removeprefix("http://"), proc


@pytest.fixture
def server(database):
    addr, proc = start_server(database)
    yield addr
    proc.kill()
    proc.wait()


def http(addr, method, path, body=None):
    req = urllib.request.Request(f"http://{addr}{path}", method=method, data=json.dumps(body).encode() if body else None)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("name,expected", [("linear", 6**16), ("diamond", 6**16), ("tree", 6**64)])
def test_python_worker_runs_tasks_created_over_http(database, server, name, expected):
    with stepgraph.Worker(database, TEMPLATES, [Square(), multiply_and_square], concurrency=4):
        created = http(server, "POST", "/v1/tasks", {"namespace": "e2e", "name": name, "context": {"even_number": 6}})
        task = http(server, "GET", f"/v1/tasks/{created['task_id']}/wait?timeout_ms=30000")
    assert task["state"] == "complete", task.get("error")
    assert int(task["result"]) == expected
    assert all(s["state"] == "complete" and s["attempts"] == 1 for s in task["steps"])


def test_a_python_worker_honours_the_stepgraph_settings_of_serve(database, monkeypatch):
    """The queue, the AMQP URL and the AMQP prefix come from the same
    STEPGRAPH_* variables as the server's: with a prefix of this test's own,
    the server sends to queues only a worker with that prefix consumes. On a
    virtual host of this test's own, deleted at the end with its queues."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
    except OSError as e:
        pytest.fail(f"RabbitMQ is not reachable on 127.0.0.1:5672 ({e}); .ci/run starts it")

    def rabbitmqctl(*args):
        return subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True).stdout

    vhost, prefix = f"sg-pytest-{os.getpid()}", f"sg-pytest-{os.getpid()}."
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    settings = {
        "STEPGRAPH_QUEUE": "rabbitmq",
        "STEPGRAPH_AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "STEPGRAPH_AMQP_PREFIX": prefix,
    }
    for k, v in settings.items():
        monkeypatch.setenv(k, v)
    try:
        addr, proc = start_server(database)
        try:
            # No queue argument: STEPGRAPH_QUEUE and the AMQP settings apply.
            with stepgraph.Worker(database, TEMPLATES, [Square(), multiply_and_square], concurrency=2):
                created = http(addr, "POST", "/v1/tasks", {"namespace": "e2e", "name": "linear", "context": {"even_number": 6}})
                task = http(addr, "GET", f"/v1/tasks/{created['task_id']}/wait?timeout_ms=30000")
        finally:
            proc.kill()
            proc.wait()
        queues = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name").split()
    finally:
        rabbitmqctl("delete_vhost", vhost)
    assert task["state"] == "complete", task
    assert int(task["result"]) == 6**16
    assert f"{prefix}worker.e2e" in queues, queues


def test_a_bad_database_url_is_a_clear_error():
    with pytest.raises(stepgraph.StepgraphError, match="cannot connect"):
        stepgraph.Worker("postgres://postgres@127.0.0.1:1/none", TEMPLATES, [Square()]).start()


def _time(text: str) -> datetime.datetime:
    """An RFC 3339 time as the server writes it (nanoseconds cut to microseconds)."""
    return datetime.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))


def test_client_creates_waits_reads_and_cancels(database, server):
    client = stepgraph.Client(f"http://{server}")
    assert client.health()["status"] == "ok"
    assert {(t["namespace"], t["name"]) for t in client.templates()} >= {("e2e", "linear"), ("e2e", "diamond")}
    with stepgraph.Worker(database, TEMPLATES, [Square(), multiply_and_square]):
        created = client.create_task("e2e", "linear", {"even_number": 6}, idempotency_key="order-1")
        assert created["created"] is True
        again = client.create_task("e2e", "linear", {"even_number": 6}, idempotency_key="order-1")
        assert again == {**created, "created": False}
        task = client.wait(created["task_id"], timeout=30)
        assert task.state == "complete" and int(task.result) == 6**16
        # The same view as an engine's run: steps by name, one line printed.
        assert task.task_id == created["task_id"] and list(task.steps) == ["step_1", "step_2", "step_3", "step_4"]
        assert task.steps["step_4"] == {
            "name": "step_4", "state": "complete", "attempts": 1, "max_attempts": 3, "cursor": None,
            "result": 6**16, "error": None,
        }
        assert repr(task) == f"<TaskResult {task.task_id} e2e/linear@1.0.0 complete result={6**16}>"
        assert client.get_task(created["task_id"]).state == "complete"
        # Delayed: stored scheduled, started at its time.
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        delayed = client.create_task("e2e", "linear", {"even_number": 2}, run_at=later)
        assert client.get_task(delayed["task_id"]).state == "scheduled"
        done = client.wait(delayed["task_id"], timeout=30)
        started = next(t for t in done.report["transitions"]["task"] if t["from"] == "scheduled")
        assert _time(started["at"]) >= _time(done.report["run_at"]), done
        by_delay = client.create_task("e2e", "linear", {"even_number": 2}, delay=0.3)
        assert client.wait(by_delay["task_id"], timeout=30).state == "complete"
        with pytest.raises(ValueError, match="timezone-aware"):
            client.create_task("e2e", "linear", {"even_number": 2}, run_at=datetime.datetime.now())
        with pytest.raises(stepgraph.ApiError, match="run_at or delay_ms"):
            client.create_task("e2e", "linear", {"even_number": 2}, run_at=later, delay=1)
    # No worker serves this one: it waits, is cancelled, and says so.
    pending = client.create_task("e2e", "linear", {"even_number": 6})
    # The engine's timeout class, which is also Python's own TimeoutError.
    with pytest.raises(stepgraph.TaskTimeoutError, match="did not end") as timed_out:
        client.wait(pending["task_id"], timeout=0.2)
    assert isinstance(timed_out.value, TimeoutError) and isinstance(timed_out.value, stepgraph.StepgraphError)
    assert client.cancel(pending["task_id"])["state"] == "cancelled"
    assert client.wait(pending["task_id"], timeout=5).state == "cancelled"


def test_client_errors_carry_the_status_and_the_servers_message(server):
    client = stepgraph.Client(server)
    with pytest.raises(stepgraph.ApiError) as e:
        # A UUIDv4 that was never a task (an old UUIDv7 would be "gone": retention).
        client.get_task("4b7e0c1e-5f3a-4d2b-9c1e-000000000000")
    # The status apart; the message is the server's, as in Ruby and TypeScript.
    assert e.value.status == 404
    assert e.value.message == str(e.value) and e.value.message.endswith(" not found"), e.value.message
    with pytest.raises(stepgraph.ApiError) as e:
        client.create_task("e2e", "no_such_template", {})
    assert e.value.status == 422 and "no_such_template" in e.value.message
    with pytest.raises(stepgraph.ApiError) as e:
        client.create_task("e2e", "linear", {"even_number": "six"})
    assert e.value.status == 422
    with pytest.raises(stepgraph.ApiError) as e:
        client.get_task("not-a-uuid")
    assert e.value.status == 400
    with pytest.raises(stepgraph.StepgraphError, match="cannot reach"):
        stepgraph.Client("http://127.0.0.1:1").health()


SLEEPY = ROOT / "tests" / "fixtures" / "extra"
SLEEPY_WORKER = """
import sys, time, stepgraph

@stepgraph.handler("util.sleep")
def nap(ctx):
    time.sleep(ctx.input["sleep_ms"] / 1000)
    return {"slept_ms": ctx.input["sleep_ms"]}

stepgraph.Worker(sys.argv[1], sys.argv[2], [nap], concurrency=2).run()
"""


def sleepy_worker(database, **settings):
    env = dict(os.environ, **{f"STEPGRAPH_{k.upper()}": str(v) for k, v in settings.items()})
    return subprocess.Popen([sys.executable, "-c", SLEEPY_WORKER, database, str(SLEEPY)], env=env)


def await_running(addr, task_id, step, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = http(addr, "GET", f"/v1/tasks/{task_id}")
        if next(s for s in task["steps"] if s["name"] == step)["state"] == "in_progress":
            return task
        time.sleep(0.02)
    pytest.fail(f"step {step} never started")


def completions(task, step):
    return sum(1 for t in task["transitions"]["steps"] if t["step_name"] == step and t["to"] == "complete")


def sleepy_server(database):
    env = dict(os.environ, STEPGRAPH_DATABASE_URL=database, STEPGRAPH_MAX_CONNECTIONS="5", STEPGRAPH_LOG="warn")
    proc = subprocess.Popen(
        [binary(), "serve", "--templates", str(SLEEPY), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=env
    )
    return proc.stdout.readline().split()[2].removeprefix("http://"), proc


def finish_with_another_worker(addr, database, task_id, **settings):
    """Starts a second worker, waits for the task to end, stops the worker."""
    rescuer = sleepy_worker(database, **settings)
    try:
        return http(addr, "GET", f"/v1/tasks/{task_id}/wait?timeout_ms=60000")
    finally:
        rescuer.send_signal(signal.SIGTERM)
        rescuer.wait(timeout=30)


def sigterm_mid_step(database, sleep_ms, **settings):
    """serve and a sleepy worker with ``settings``; a task whose first step
    sleeps ``sleep_ms``, SIGTERM to the worker once that step runs, and the
    task finished by another worker. The task before and after, how long
    the worker took to exit and its exit code."""
    addr, serve = sleepy_server(database)
    try:
        worker = sleepy_worker(database, **settings)
        created = http(addr, "POST", "/v1/tasks", {"namespace": "e2e", "name": "sleepy", "context": {"sleep_ms": sleep_ms}})
        task_id = created["task_id"]
        await_running(addr, task_id, "nap")
        start = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=15)
        took = time.monotonic() - start
        before = http(addr, "GET", f"/v1/tasks/{task_id}")
        visibility = {k: v for k, v in settings.items() if k == "worker_visibility_timeout_ms"}
        after = finish_with_another_worker(addr, database, task_id, **visibility)
    finally:
        serve.kill()
        serve.wait()
    return before, after, took, code


def test_sigterm_lets_a_running_python_step_finish_and_record_it(database):
    """SIGTERM while a handler runs: the worker takes no new work, lets it
    finish and records it within the grace, then exits 0; another worker
    runs the next step; nothing runs twice."""
    before, task, _, code = sigterm_mid_step(database, 1500, worker_shutdown_grace_ms=20000)
    assert code == 0
    nap = next(s for s in before["steps"] if s["name"] == "nap")
    assert (nap["state"], nap["attempts"]) == ("complete", 1)
    assert task["state"] == "complete", task
    assert task["result"] == {"slept_ms": 1500}
    assert completions(task, "nap") == 1 and completions(task, "after") == 1


def test_a_python_step_that_outlives_the_grace_is_redelivered_and_completes_elsewhere(database):
    """With a 300 ms grace the worker exits long before its 4 s handler
    would end; the step comes back after the visibility timeout and
    another worker completes it, once."""
    before, task, took, _ = sigterm_mid_step(
        database, 4000, worker_shutdown_grace_ms=300, worker_visibility_timeout_ms=2500
    )
    assert took < 3, f"exited after {took:.1f} s: the grace is 300 ms"
    assert completions(before, "nap") == 0
    assert task["state"] == "complete", task
    assert task["result"] == {"slept_ms": 4000}
    assert completions(task, "nap") == 1


EXTRA = ROOT / "tests" / "fixtures" / "extra"


def test_client_finds_retries_and_resolves_tasks_and_lists_the_python_worker(database, tmp_path):
    """Against a serve with tokens: a failed task is found, retried once its
    cause is fixed, another resolved by hand; a worker registers as Python."""
    tokens = {"reader": "r-secret", "ops": "o-secret"}
    env_tokens = ",".join(
        f"{name}:{'admin' if name == 'ops' else 'read'}:sha256:{hashlib.sha256(t.encode()).hexdigest()}"
        for name, t in tokens.items()
    )
    env = dict(os.environ, STEPGRAPH_DATABASE_URL=database, STEPGRAPH_MAX_CONNECTIONS="5", STEPGRAPH_TOKENS=env_tokens)
    proc = subprocess.Popen(
        [binary(), "serve", "--templates", str(EXTRA), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        addr = proc.stdout.readline().split()[2].removeprefix("http://")
        ops = stepgraph.Client(addr, token=tokens["ops"])
        reader = stepgraph.Client(addr, token=tokens["reader"])
        with pytest.raises(stepgraph.ApiError) as e:
            stepgraph.Client(addr).list_tasks()
        assert e.value.status == 401

        @stepgraph.handler("util.require_file")
        def require_file(ctx):
            path = ctx.input["required_file"]
            if not os.path.exists(path):
                raise stepgraph.PermanentError(f"{path} does not exist")
            return {"found": path}

        @stepgraph.handler("util.echo_dependencies")
        def echo(ctx):
            return dict(ctx.dependency_results)

        flag = tmp_path / "flag"
        with stepgraph.Worker(database, EXTRA, [require_file, echo], namespaces=["e2e"]):
            first = ops.run("e2e", "repairable", {"required_file": str(flag)}, timeout=30)
            second = ops.run("e2e", "repairable", {"required_file": str(tmp_path / "never")}, timeout=30)
            assert first.state == second.state == "error"
            page = reader.list_tasks(state="error", name="repairable", limit=1)
            assert [t["id"] for t in page["tasks"]] == [second.task_id]
            rest = reader.list_tasks(state=["error"], has_failed_step=True, cursor=page["next_cursor"])
            assert [t["id"] for t in rest["tasks"]] == [first.task_id] and rest["next_cursor"] is None
            stats = reader.stats()
            assert stats["recent"]["failed_tasks"] == 2
            with pytest.raises(stepgraph.ApiError) as e:
                reader.retry(first.task_id)
            assert e.value.status == 403 and "needs admin" in e.value.message

            flag.write_text("")
            assert ops.retry(first.task_id, reason="flag restored")["task_id"] == first.task_id
            done = ops.wait(first.task_id, timeout=30)
            assert done.state == "complete" and done.result == {"check": {"found": str(flag)}}
            ops.resolve(second.task_id, "check", {"found": "by hand"}, reason="checked")
            done = ops.wait(second.task_id, timeout=30)
            assert done.result == {"check": {"found": "by hand"}}
            resolved = [t for t in done.report["transitions"]["steps"] if t["to"] == "resolved_manually"]
            assert resolved[0]["metadata"] == {"action": "resolved", "by": "ops", "reason": "checked"}
            with pytest.raises(stepgraph.ApiError) as e:
                ops.retry(first.task_id, step="check")
            assert e.value.status == 409
            later = ops.create_task("e2e", "repairable", {"required_file": str(flag)}, delay=600)["task_id"]
            assert ops.cancel(later, reason="not needed")["state"] == "cancelled"
            cancelled = [t for t in ops.get_task(later).report["transitions"]["task"] if t["to"] == "cancelled"]
            assert cancelled[0]["metadata"] == {"action": "cancelled", "by": "ops", "reason": "not needed"}

            workers = reader.workers()
            python = [w for w in workers if w["language"] == "python"]
            assert len(python) == 1 and python[0]["state"] == "live", workers
            assert set(python[0]["handlers"]) >= {"util.require_file", "util.echo_dependencies"}
            assert python[0]["pid"] == os.getpid()
        assert [w["state"] for w in reader.workers() if w["language"] == "python"] == ["stopped"]
    finally:
        proc.kill()
        proc.wait()


FAILING_WORKER = """
import os, sys, stepgraph

@stepgraph.handler("util.require_file")
def require_file(ctx):
    raise stepgraph.PermanentError("no such file: " + ctx.input["required_file"])

@stepgraph.handler("util.echo_dependencies")
def echo(ctx):
    return dict(ctx.dependency_results)

stepgraph.Worker(sys.argv[1], sys.argv[2], [require_file, echo]).run()
"""


def test_a_python_worker_logs_its_steps_like_stepgraph_worker(database, tmp_path):
    """The Rust side of a language worker logs where `stepgraph worker` does:
    stderr, at info, as JSON lines when asked."""
    env = dict(os.environ, STEPGRAPH_DATABASE_URL=database, STEPGRAPH_MAX_CONNECTIONS="5", STEPGRAPH_LOG="warn")
    serve = subprocess.Popen(
        [binary(), "serve", "--templates", str(EXTRA), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=env
    )
    log = tmp_path / "worker.log"
    worker_env = dict(os.environ, STEPGRAPH_LOG_FORMAT="json")
    worker_env.pop("STEPGRAPH_LOG", None)
    with open(log, "w") as err:
        worker = subprocess.Popen(
            [sys.executable, "-c", FAILING_WORKER, database, str(EXTRA)], env=worker_env, stderr=err
        )
    try:
        addr = serve.stdout.readline().split()[2].removeprefix("http://")
        client = stepgraph.Client(addr)
        task = client.run("e2e", "repairable", {"required_file": "/nope"}, timeout=30)
        assert task.state == "error"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            failed = [line for line in lines if line.get("message") == "step failed"]
            if failed:
                break
            time.sleep(0.05)
        assert failed, log.read_text()
        assert failed[0]["task"] == task.task_id and failed[0]["handler"] == "util.require_file", failed
        assert failed[0]["attempt"] == 1 and "no such file" in failed[0]["error"]
        assert any(line.get("message") == "task failed" and line["task"] == task.task_id for line in lines)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        serve.kill()
        serve.wait()


def test_a_python_worker_serves_the_metrics_of_what_it_ran(database, server, monkeypatch):
    """STEPGRAPH_WORKER_METRICS_LISTEN: the worker's /metrics counts its
    steps by template, handler and outcome, read by Prometheus's own parser."""
    import socket

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STEPGRAPH_WORKER_METRICS_LISTEN", f"127.0.0.1:{port}")
    client = stepgraph.Client(f"http://{server}")
    with stepgraph.Worker(database, TEMPLATES, [Square(), multiply_and_square]):
        created = client.create_task("e2e", "linear", {"even_number": 2})
        assert client.wait(created["task_id"], timeout=30).state == "complete"
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    attempts = {
        (s.labels["handler"], s.labels["outcome"]): s.value
        for s in families["stepgraph_step_attempts"].samples
        if s.labels.get("template") == "e2e/linear"
    }
    assert attempts == {("math.square", "completed"): 4.0}, text
    ended = [s for s in families["stepgraph_tasks_ended"].samples if s.labels["template"] == "e2e/linear"]
    assert [(s.labels["outcome"], s.value) for s in ended] == [("completed", 1.0)], text


def test_a_thousand_steps_at_once_through_a_python_worker_lose_no_completion(database, server):
    """250 linear tasks created at once (1,000 steps) through one Python
    worker of 8 handler threads, whose threads also drive its engine: every
    step completes once, at its first attempt, with the exact result, and
    nothing is left out with the Python side."""
    from concurrent.futures import ThreadPoolExecutor

    with stepgraph.Worker(database, TEMPLATES, [Square(), multiply_and_square], concurrency=8) as worker:
        with ThreadPoolExecutor(16) as pool:
            body = {"namespace": "e2e", "name": "linear", "context": {"even_number": 6}}
            ids = list(pool.map(lambda _: http(server, "POST", "/v1/tasks", body)["task_id"], range(250)))
            tasks = list(pool.map(lambda i: http(server, "GET", f"/v1/tasks/{i}/wait?timeout_ms=60000"), ids))
        stats = worker.host_stats()
    assert len(set(ids)) == 250
    for task in tasks:
        assert task["state"] == "complete", task.get("error")
        assert int(task["result"]) == 6**16
        assert [s["attempts"] for s in task["steps"]] == [1] * 4, task["steps"]
    assert stats["pending"] == 0
