"""The seed's math handlers, written as a Python user would, shared by the tests."""

import stepgraph


class Square(stepgraph.StepHandler):
    name = "math.square"

    def call(self, ctx):
        deps = [int(v) for v in ctx.dependency_results.values()]
        x = deps[0] if deps else ctx.input["even_number"]
        return x * x


@stepgraph.handler("math.multiply_and_square")
def multiply_and_square(ctx):
    product = 1
    for v in ctx.dependency_results.values():
        product *= int(v)
    return product * product
