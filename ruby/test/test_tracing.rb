# frozen_string_literal: true

require_relative "helper"
require "open3"
require "json"
require "socket"

# With tracing on (STEPGRAPH_OTLP_ENDPOINT) a Ruby handler gets its step's
# W3C trace context, to parent the spans it makes with OpenTelemetry; without
# it, none. Each engine runs in a child process: tracing is per process.
class TracingTest < Minitest::Test
  TEMPLATE = <<~YAML
    namespace: rb
    name: traced
    version: "1"
    steps:
      - name: first
        handler: { callable: rb.traced }
      - name: second
        dependencies: [first]
        handler: { callable: rb.traced }
  YAML

  CHILD = <<~RUBY
    require "stepgraph"
    require "json"
    seen = []
    traced = Stepgraph.handler("rb.traced") do |ctx|
      seen << { "step" => ctx.step_name, "traceparent" => ctx.traceparent, "trace_id" => ctx.trace_id }
      ctx.step_name
    end
    Stepgraph::Engine.embedded(templates_dir: ARGV[0], handlers: [traced]) do |e|
      result = e.run("rb", "traced", {})
      puts JSON.generate("state" => result.state, "seen" => seen)
    end
  RUBY

  def run_child(env)
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "traced.yaml"), TEMPLATE)
      out, err, status = Open3.capture3(env, RbConfig.ruby, "-e", CHILD, dir)
      assert status.success?, err
      report = JSON.parse(out.lines.last)
      assert_equal "complete", report["state"], report.inspect
      report["seen"]
    end
  end

  # An address nothing listens on: the spans cannot be delivered, which
  # does not concern the handlers.
  def unused_endpoint
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    server.close
    "http://127.0.0.1:#{port}"
  end

  def test_a_traced_handler_gets_its_steps_trace_context
    seen = run_child("STEPGRAPH_OTLP_ENDPOINT" => unused_endpoint)
    assert_equal %w[first second], seen.map { |s| s["step"] }
    trace_id = seen.first["trace_id"]
    assert_match(/\A\h{32}\z/, trace_id)
    seen.each do |s|
      assert_match(/\A00-#{trace_id}-\h{16}-01\z/, s["traceparent"])
      assert_equal trace_id, s["trace_id"]
    end
    refute_equal seen[0]["traceparent"], seen[1]["traceparent"], "each step's handler runs in its own span"
  end

  def test_an_untraced_handler_gets_none
    seen = run_child("STEPGRAPH_OTLP_ENDPOINT" => nil)
    assert_equal [[nil, nil], [nil, nil]], seen.map { |s| [s["traceparent"], s["trace_id"]] }
  end
end
