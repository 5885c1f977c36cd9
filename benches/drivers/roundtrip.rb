# frozen_string_literal: true

# The Ruby side of the host round-trip bench (benches/host_roundtrip.rs):
# serves a no-op handler; for each line N on stdin, runs N round trips timed
# in Rust and prints their total nanoseconds.
require "stepgraph"

$stdout.sync = true
noop = Stepgraph.handler("noop") { |_ctx| nil }
Stepgraph::Engine.embedded(templates_dir: ARGV.fetch(0), handlers: [noop], concurrency: 1) do |engine|
  native = engine.instance_variable_get(:@native)
  puts "ready"
  $stdin.each_line { |line| puts native.roundtrip("noop", Integer(line)) }
end
