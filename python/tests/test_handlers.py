"""Handlers as a Python user gives them to an engine or a worker: checked
when they are given (a class or an instance; a name given twice, a nameless
handler, one without call(ctx) refused at once), named by default as in Ruby
and TypeScript; an engine refuses to start with template steps nobody
serves; a result prints on one line."""

import inspect
import pathlib

import pytest

import stepgraph
from math_handlers import Square, multiply_and_square

TEMPLATES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "templates"


def test_handlers_are_checked_when_they_are_given():
    """A StepHandler subclass is made into an instance (as in Ruby and
    TypeScript) and runs; a name given twice, a nameless handler or one
    without call(ctx) is refused at once, naming it."""
    e = stepgraph.Engine.embedded(TEMPLATES, [Square, multiply_and_square], concurrency=2, builtin_handlers=True)
    try:
        assert int(e.run("e2e", "linear", {"even_number": 2}).result) == 2**16
    finally:
        e.close()
    with pytest.raises(ValueError, match="two handlers are named 'math.square'"):
        stepgraph.Engine.embedded(TEMPLATES, [Square(), Square])
    with pytest.raises(ValueError, match="has no name"):
        stepgraph.Engine.embedded(TEMPLATES, [object()])

    class NoCall:
        name = "no.call"

    with pytest.raises(ValueError, match="'no.call'.*no call"):
        stepgraph.Engine.embedded(TEMPLATES, [NoCall()])


def test_default_names_are_the_class_or_function_name():
    class SquareNumber(stepgraph.StepHandler):
        def call(self, ctx):
            return 1

    class HTTPFetcher(stepgraph.StepHandler):
        def call(self, ctx):
            return 1

    class Named(stepgraph.StepHandler):
        name = "explicit.name"

        def call(self, ctx):
            return 1

    @stepgraph.handler
    def fetch_price(ctx):
        return 1

    assert [SquareNumber().name, HTTPFetcher().name, Named().name, fetch_price.name] == [
        "square_number",
        "http_fetcher",
        "explicit.name",
        "fetch_price",
    ]


def test_an_engine_does_not_start_with_template_steps_nobody_serves():
    with pytest.raises(stepgraph.ConfigurationError) as e:
        stepgraph.Engine.embedded(TEMPLATES, [Square, multiply_and_square])
    message = str(e.value)
    # Each missing handler by name, with where it is used.
    assert "`approval.finalize` (e2e/conditional_approval@1.0.0 step finalize_approval)" in message, message
    assert "`csv.analyze` (e2e/csv_batch@" in message, message
    assert "math.square" not in message, message


def test_a_result_prints_on_one_line_and_keeps_the_full_view():
    @stepgraph.handler("math.square")
    def refuses(ctx):
        raise stepgraph.PermanentError("no squares today " + "x" * 300)

    with stepgraph.Engine.embedded(TEMPLATES, [Square], builtin_handlers=True) as e:
        done = e.run("e2e", "linear", {"even_number": 6})
    with stepgraph.Engine.embedded(TEMPLATES, [refuses], builtin_handlers=True) as e:
        failed = e.run("e2e", "linear", {"even_number": 6})
    text = repr(done)
    assert "\n" not in text and len(text) < 200, text
    assert text == str(done)
    assert text.startswith(f"<TaskResult {done.task_id} e2e/linear@") and " complete result=2821109907456>" in text
    assert "error=" in repr(failed) and len(repr(failed)) < 200, repr(failed)
    assert failed.state == "error" and "no squares today" in repr(failed)
    assert set(done.steps) == {"step_1", "step_2", "step_3", "step_4"}
    assert done.report["id"] == done.task_id and "transitions" not in done.report


def test_engines_and_workers_share_one_default_concurrency():
    defaults = {
        inspect.signature(stepgraph.Engine.embedded).parameters["concurrency"].default,
        inspect.signature(stepgraph.Worker).parameters["concurrency"].default,
    }
    assert defaults == {8}
