# frozen_string_literal: true

require "stepgraph"
require "optparse"

module Stepgraph
  # `stepgraph bench --language ruby`: the seed's FFI rows (linear and
  # diamond, embedded mode) with Ruby handlers beside the same workflows with
  # the engine's native Rust handlers. With --worker, a worker process serving
  # the same handlers for one namespace (STEPGRAPH_DATABASE_URL and the other
  # STEPGRAPH_* settings), which `stepgraph bench --language ruby
  # --database-url` drives beside the Rust worker.
  module Bench
    # The last column: the reference system's published FFI P50s, constants
    # (not measured here).
    ROWS = [["FFI linear", "linear", 4, 312.0], ["FFI diamond", "diamond", 4, 260.0]].freeze
    CONCURRENCY = 2

    # The seed's math handlers in Ruby.
    class Square < StepHandler
      handler_name "math.square"

      def call(ctx)
        deps = ctx.dependency_results.values
        x = deps.empty? ? ctx.input.fetch("even_number") : Integer(deps.first)
        x * x
      end
    end

    MULTIPLY_AND_SQUARE = Stepgraph.handler("math.multiply_and_square") do |ctx|
      product = ctx.dependency_results.values.map { |v| Integer(v) }.reduce(1, :*)
      product * product
    end

    module_function

    def p50_us(engine, name, runs, warmup)
      native = engine.instance_variable_get(:@native)
      # As Engine#run does (with inline_run, the waiting thread runs handlers too).
      pool = engine.instance_variable_get(:@pool)
      inline = engine.instance_variable_get(:@inline_run)
      serve = inline && pool.handlers? ? pool.method(:serve_events) : nil
      samples = []
      (warmup + runs).times do |i|
        start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        task = native.run("e2e", name, { "even_number" => 6 }, 30_000, nil, nil, serve)
        elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - start
        unless task["state"] == "complete" && Integer(task["result"]) == 6**16
          abort("#{name}: task ended #{task['state']} with #{task['result'].inspect}: #{task['error'].inspect}")
        end
        samples << elapsed * 1e6 if i >= warmup
      end
      samples.sort[samples.size / 2]
    end

    def fmt(micros)
      micros < 1000 ? format("%.0f µs", micros) : format("%.2f ms", micros / 1000)
    end

    # Serves the handlers for +namespace+ until TERM or INT; says so on its
    # first line of output once it does.
    def serve_as_worker(templates, namespace, concurrency)
      url = ENV.fetch("STEPGRAPH_DATABASE_URL") { abort("--worker needs STEPGRAPH_DATABASE_URL") }
      worker = Worker.new(database_url: url, templates_dir: templates, handlers: [Square, MULTIPLY_AND_SQUARE],
                          namespaces: [namespace], concurrency: concurrency)
      signals = Queue.new
      %w[INT TERM].each { |s| Signal.trap(s) { signals << s } }
      worker.start
      $stdout.puts "worker serving namespaces [#{namespace.inspect}]"
      $stdout.flush
      signals.pop
    ensure
      worker&.stop
    end

    def main(argv)
      options = { runs: 1000, warmup: 100, namespace: "e2e", concurrency: CONCURRENCY }
      OptionParser.new do |o|
        o.on("--templates DIR") { |v| options[:templates] = v }
        o.on("--runs N", Integer) { |v| options[:runs] = v }
        o.on("--warmup N", Integer) { |v| options[:warmup] = v }
        o.on("--worker", "serve the handlers as a worker process instead") { options[:worker] = true }
        o.on("--namespace NS", "with --worker: the namespace served") { |v| options[:namespace] = v }
        o.on("--concurrency N", Integer, "with --worker: handlers at once") { |v| options[:concurrency] = v }
        o.on("--native-p50-us LIST", "stepgraph bench's own P50s of this run (linear=168.2,diamond=150.0)") do |v|
          options[:native] = v.split(",").to_h { |pair| name, us = pair.split("=", 2); [name, Float(us)] }
        end
      end.parse!(argv)
      abort("--templates DIR is required") unless options[:templates]
      return serve_as_worker(options[:templates], options[:namespace], options[:concurrency]) if options[:worker]
      results = ROWS.map do |label, name, steps, seed|
        # The Rust row: the example Rust handlers in an engine made the same
        # way (same binding, same concurrency).
        rust = Engine.embedded(templates_dir: options[:templates], handlers: [], builtin_handlers: true,
                               concurrency: CONCURRENCY) do |e|
          p50_us(e, name, options[:runs], options[:warmup])
        end
        # The Ruby handlers take precedence over the built-in ones of the same names.
        ruby = Engine.embedded(templates_dir: options[:templates], handlers: [Square, MULTIPLY_AND_SQUARE],
                               builtin_handlers: true, concurrency: CONCURRENCY, inline_run: true) do |e|
          p50_us(e, name, options[:runs], options[:warmup])
        end
        [label, steps, rust, ruby, seed]
      end
      puts "stepgraph bench --language ruby: embedded mode, #{options[:runs]} runs per row after " \
           "#{options[:warmup]} warm-up runs, concurrency #{CONCURRENCY} in both columns; " \
           "Ruby handlers with inline_run (run's own thread runs them)"
      puts
      puts "| Scenario    | Steps | stepgraph bench P50 | Rust P50 | Rust vs stepgraph bench | Ruby P50 " \
           "| Ruby overhead/step | Ruby vs Rust | Reference FFI P50 (published) |"
      puts "|-------------|------:|--------------------:|---------:|------------------------:|---------:" \
           "|-------------------:|-------------:|------------------------------:|"
      results.zip(ROWS).each do |(label, steps, rust, ruby, seed), (_, name)|
        own = options.fetch(:native, {})[name]
        own_col, ratio = own ? [fmt(own), format("%.2fx", rust / own)] : %w[- -]
        puts format("| %-11s | %5d | %19s | %8s | %23s | %8s | %18s | %11.2fx | %26.0f ms |", label, steps, own_col,
                    fmt(rust), ratio, fmt(ruby), fmt((ruby - rust) / steps), ruby / rust, seed)
      end
    end
  end
end
