"""The Python side of the host round-trip bench (benches/host_roundtrip.rs):
serves a no-op handler; for each line N on stdin, runs N round trips timed
in Rust and prints their total nanoseconds."""

import sys

import stepgraph


@stepgraph.handler("noop")
def noop(ctx):
    return None


with stepgraph.Engine.embedded(sys.argv[1], [noop], concurrency=1) as engine:
    print("ready", flush=True)
    for line in sys.stdin:
        print(engine._native.roundtrip("noop", int(line)), flush=True)
