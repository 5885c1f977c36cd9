"""A Python handler's own OpenTelemetry span joins its step's trace: an
OTLP/HTTP receiver here decodes what the engine (STEPGRAPH_OTLP_ENDPOINT)
and the handler (the OpenTelemetry SDK, parented with ``ctx.traceparent``)
send, and finds task -> step attempt -> handler run -> the handler's span.

The engine runs in a child process: turning tracing on is for the whole
process, and this one's other tests run untraced."""

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TEMPLATE = """
namespace: py
name: traced
version: "1"
steps:
  - name: first
    handler: { callable: py.traced }
  - name: second
    dependencies: [first]
    handler: { callable: py.traced }
"""

CHILD = textwrap.dedent(
    """
    import json, sys
    import stepgraph
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    endpoint, templates = sys.argv[1], sys.argv[2]
    provider = TracerProvider(resource=Resource.create({"service.name": "python-handler"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces")))
    tracer = provider.get_tracer("handler-test")
    seen = []

    @stepgraph.handler("py.traced")
    def traced(ctx):
        parent = TraceContextTextMapPropagator().extract({"traceparent": ctx.traceparent})
        with tracer.start_as_current_span("handler's own work", context=parent) as span:
            span.set_attribute("step", ctx.step_name)
        seen.append({"step": ctx.step_name, "traceparent": ctx.traceparent, "trace_id": ctx.trace_id})
        return ctx.step_name

    engine = stepgraph.Engine.embedded(templates, [traced])
    result = engine.run("py", "traced", {})
    engine.close()
    print(json.dumps({"task_id": result.task_id, "state": result.state, "seen": seen}))
    """
)


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.spans = []  # (service name, span)
        self.lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/v1/traces", self.path
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            for rs in request.resource_spans:
                service = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
                )
                for ss in rs.scope_spans:
                    self.server.spans.extend((service, s) for s in ss.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_a_handlers_own_span_is_a_child_of_its_steps_span(receiver, tmp_path):
    (tmp_path / "traced.yaml").write_text(TEMPLATE)
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    env = dict(os.environ, STEPGRAPH_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="50")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, endpoint, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["state"] == "complete", report
    seen = report["seen"]
    assert [s["step"] for s in seen] == ["first", "second"]
    trace_id = seen[0]["trace_id"]
    assert len(trace_id) == 32 and all(s["trace_id"] == trace_id for s in seen), seen
    for s in seen:
        assert s["traceparent"].startswith(f"00-{trace_id}-") and s["traceparent"].endswith("-01"), s

    # The engine flushes its spans when it is closed; the handler's are sent as they end.
    deadline = time.monotonic() + 15
    while True:
        with receiver.lock:
            spans = [(svc, s) for svc, s in receiver.spans if s.trace_id.hex() == trace_id]
        names = sorted(s.name for _, s in spans)
        if names.count("handler's own work") == 2 and "task py/traced" in names:
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.05)

    by_id = {s.span_id.hex(): (svc, s) for svc, s in spans}
    task = next(s for _, s in spans if s.name == "task py/traced")
    assert task.parent_span_id == b"", "the task started the trace"
    attrs = {a.key: a.value.string_value for a in task.attributes}
    assert attrs["stepgraph.task_id"] == report["task_id"]
    assert attrs["stepgraph.outcome"] == "complete"
    for svc, own in ((svc, s) for svc, s in spans if s.name == "handler's own work"):
        assert svc == "python-handler"
        step_name = next(a.value.string_value for a in own.attributes if a.key == "step")
        run_svc, run = by_id[own.parent_span_id.hex()]
        assert run.name == "handler py.traced" and run_svc == "stepgraph-embedded", run.name
        _, attempt = by_id[run.parent_span_id.hex()]
        assert attempt.name == f"step {step_name}"
        assert attempt.parent_span_id == task.span_id
        assert run.start_time_unix_nano <= own.start_time_unix_nano <= own.end_time_unix_nano <= run.end_time_unix_nano
        # What the handler was given names the span its own work went under.
        given = next(s["traceparent"] for s in seen if s["step"] == step_name)
        assert given.split("-")[2] == run.span_id.hex()


def test_without_tracing_a_handler_gets_no_trace_context(tmp_path):
    (tmp_path / "traced.yaml").write_text(TEMPLATE)
    child = CHILD.replace("endpoint, templates = sys.argv[1], sys.argv[2]", "endpoint, templates = None, sys.argv[2]")
    child = child.replace(
        "provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint + \"/v1/traces\")))", ""
    )
    env = {k: v for k, v in os.environ.items() if k != "STEPGRAPH_OTLP_ENDPOINT"}
    out = subprocess.run([sys.executable, "-c", child, "-", str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["state"] == "complete", report
    assert [(s["traceparent"], s["trace_id"]) for s in report["seen"]] == [(None, None), (None, None)]
