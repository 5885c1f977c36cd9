"""Handlers as a Python user gives them to an engine or a worker: checked
when they are given (a class or an instance; a name given twice, a nameless
handler, one without call(ctx) refused at once)."""

import pathlib

import pytest

import stepgraph
from math_handlers import Square, multiply_and_square

TEMPLATES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "templates"


def test_handlers_are_checked_when_they_are_given():
    """A StepHandler subclass is made into an instance (as in Ruby and
    TypeScript) and runs; a name given twice, a nameless handler or one
    without call(ctx) is refused at once, naming it."""
    e = stepgraph.Engine.embedded(TEMPLATES, [Square, multiply_and_square], concurrency=2)
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
