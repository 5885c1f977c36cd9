"""Errors: every error class is a StepgraphError, and each kind of failure
an embedded engine or worker can meet raises its own class."""

import time

import pytest

import stepgraph


def write_template(tmp_path, body):
    (tmp_path / "t.yaml").write_text(body)
    return tmp_path


ERROR_CLASSES = (
    "ConfigurationError",
    "TemplateNotFoundError",
    "InvalidContextError",
    "TaskTimeoutError",
    "ConflictError",
    "BackendUnavailableError",
    "ForkedProcessError",
    "ShutDownError",
    "EventNotPendingError",
)


def test_every_error_class_is_a_stepgraph_error():
    for name in ERROR_CLASSES:
        cls = getattr(stepgraph, name)
        assert issubclass(cls, stepgraph.StepgraphError), name
        assert cls is not stepgraph.StepgraphError


def test_each_kind_of_error_raises_its_own_class(tmp_path, monkeypatch):
    with pytest.raises(stepgraph.ConfigurationError, match="cannot read"):
        stepgraph.Engine.embedded(tmp_path / "missing", [])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "t.yaml").write_text("namespace: t\nname: c\nversion: '1'\nsteps:\n  - name: a\n    handler: { callable: h }\n    dependencies: [a]\n")
    with pytest.raises(stepgraph.ConfigurationError, match="dependency cycle"):
        stepgraph.Engine.embedded(bad, [])
    import shutil

    shutil.rmtree(bad)  # the templates below are loaded from tmp_path, subfolders included

    @stepgraph.handler("slow")
    def slow(ctx):
        time.sleep(1.0)
        return 1

    templates = write_template(
        tmp_path,
        """
namespace: t
name: s
version: "1"
input_schema: { type: object, required: [n], properties: { n: { type: integer } } }
steps:
  - name: only
    handler: { callable: slow }
""",
    )
    e = stepgraph.Engine.embedded(templates, [slow])
    try:
        with pytest.raises(stepgraph.TemplateNotFoundError, match="no template t/nope"):
            e.run("t", "nope", {})
        with pytest.raises(stepgraph.InvalidContextError, match="input_schema"):
            e.run("t", "s", {"n": "not a number"})
        # Also Python's own TimeoutError, as the Client's wait is.
        with pytest.raises(TimeoutError, match="did not finish") as timed_out:
            e.run("t", "s", {"n": 1}, timeout=0.05)
        assert isinstance(timed_out.value, stepgraph.TaskTimeoutError)
        assert isinstance(timed_out.value, stepgraph.StepgraphError)
        with pytest.raises(stepgraph.InvalidContextError, match="run_at must be an RFC 3339 time"):
            e.run("t", "s", {"n": 1}, run_at="tomorrow")
        with pytest.raises(stepgraph.InvalidContextError, match="run_at or delay_ms"):
            e.run("t", "s", {"n": 1}, run_at="2999-01-01T00:00:00Z", delay=1)
        # Delayed: it waits `scheduled`, then runs.
        done = e.run("t", "s", {"n": 1}, delay=0.3)
        assert done.state == "complete"
        assert done.report["run_at"] is not None
        audited = e.get_task(done.task_id)
        assert (audited.state, audited.result, audited.steps) == (done.state, done.result, done.steps)
        assert [t["to"] for t in audited.report["transitions"]["task"]][:2] == ["scheduled", "initializing"]
        with pytest.raises(stepgraph.TaskNotFoundError, match="not found"):
            e.get_task("00000000-0000-0000-0000-000000000000")
        with pytest.raises(stepgraph.ConfigurationError, match="not a task id"):
            e.get_task("tomorrow")
        with pytest.raises(stepgraph.EventNotPendingError, match="not pending"):
            e._native.complete(10**9, {"status": "success", "result": None})
    finally:
        e.close()
    with pytest.raises(stepgraph.ShutDownError):
        e._native.run("t", "s", "{}", 1000)

    with pytest.raises(stepgraph.BackendUnavailableError, match="cannot connect"):
        stepgraph.Worker("postgres://postgres@127.0.0.1:1/none", templates, [slow]).start()
    monkeypatch.setenv("STEPGRAPH_QUEUE", "carrier-pigeon")
    with pytest.raises(stepgraph.ConfigurationError, match="unknown queue backend"):
        stepgraph.Worker("postgres://postgres@127.0.0.1:1/none", templates, [slow]).start()

