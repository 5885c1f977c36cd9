# frozen_string_literal: true

require "json"
require "time"

module Stepgraph
  # Ruby threads, one handler slot each, that pull events from the native
  # host (without the GVL while they wait) and report each handler's outcome.
  class HandlerPool
    def initialize(native, handlers, concurrency)
      @native = native
      @handlers = handlers
      @concurrency = [Integer(concurrency), 1].max
      @stopping = false
      @threads = []
    end

    def start
      @threads = Array.new(@concurrency) do |i|
        Thread.new do
          Thread.current.name = "stepgraph-handler-#{i}"
          serve
        end
      end
      self
    end

    # Graceful: the native side hands out nothing new and waits (its grace
    # period) for the handlers running on these threads.
    def stop
      @stopping = true
      @native.shutdown
      # The native side waited its grace for the running handlers: a handler
      # still running outlived it and is abandoned (its step is redelivered);
      # the threads only have their last call to return from.
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 1.0
      @threads.each { |t| t.join([deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC), 0].max) }
      @threads = []
    end

    # Runs +events+' handlers and reports their outcomes: on this pool's
    # threads, and on a thread that waits in Engine#run.
    def serve_events(events)
      events.each { |event| handle(event) }
    end

    def handlers?
      !@handlers.empty?
    end

    private

    def serve
      until @stopping
        begin
          events = @native.next_events(1, 200)
        rescue Stepgraph::Error
          return
        end
        events.each { |event| handle(event) }
      end
    end

    def handle(event)
      ctx = Context.new(event)
      outcome = Outcome.run(@handlers.fetch(event["handler"]), ctx)
      begin
        @native.complete(event["event_id"], outcome)
      rescue TypeError => e # the result is not JSON; the event is still pending
        @native.complete(event["event_id"], Outcome.not_json(ctx, e))
      end
    rescue Stepgraph::Error
      nil # timed out meanwhile, or shut down: the host refused the late result
    end
  end

  # Handlers running at once in an engine or worker of this process.
  DEFAULT_CONCURRENCY = 8

  # A step's fields in TaskResult#steps, from an engine and a Client alike.
  STEP_FIELDS = %w[name state attempts max_attempts cursor result error].freeze

  # A task: its state, result (or error), and its steps by name (each with
  # the fields of STEP_FIELDS), the same from Engine#run and from a Client's
  # run, wait and get_task. Its inspect is one line; +report+ is the whole
  # view it was made from, as the HTTP API shows a task: its fields, its
  # steps and (but from Engine#run) its audit trail under "transitions".
  TaskResult = Struct.new(:task_id, :state, :result, :error, :steps, :report, keyword_init: true) do
    # A task as the HTTP API (and an engine) shows it.
    def self.from_api(view)
      steps = view.fetch("steps", []).to_h { |s| [s["name"], STEP_FIELDS.to_h { |k| [k, s[k]] }] }
      new(task_id: view["id"], state: view["state"], result: view["result"], error: view["error"], steps: steps,
          report: view)
    end

    def complete?
      state == "complete"
    end

    def inspect
      template = "#{report['namespace']}/#{report['name']}@#{report['version']}"
      outcome = error.nil? ? "result=#{Stepgraph.short(result)}" : "error=#{Stepgraph.error_text(error)}"
      "#<Stepgraph::TaskResult #{task_id} #{template} #{state} #{outcome}>"
    end
    alias_method :to_s, :inspect
  end

  def self.cut(text, width = 60)
    text.length <= width ? text : "#{text[0, width - 3]}..."
  end

  # +value+ as JSON, cut to 60 characters.
  def self.short(value)
    cut(JSON.generate(value))
  rescue JSON::GeneratorError
    cut(value.inspect)
  end

  # A task's error in a few words: "step: message" where it has them.
  def self.error_text(error)
    inner = error.is_a?(Hash) && error["error"].is_a?(Hash) ? error["error"] : error
    return short(error) unless inner.is_a?(Hash) && !inner["message"].nil?

    step = error["step"]
    JSON.generate(cut(step ? "#{step}: #{inner['message']}" : inner["message"].to_s))
  end

  # Runs tasks in this process, with Ruby handlers; needs no services.
  class Engine
    # +builtin_handlers+: the example Rust handlers of the fixture workflows
    # run beside the Ruby ones (which take precedence); off, only +handlers+ run.
    # +inline_run+: a thread waiting in #run runs handlers too, so a task whose
    # steps it runs crosses no other thread (the fastest: a Ruby step then
    # costs about a method call more than a Rust one). A handler running there
    # cannot be interrupted: one that outlives #run's timeout makes it raise
    # TaskTimeoutError only when it returns (its step is still timed out and
    # retried on the handler threads). Off (the default), #run only waits, and
    # its timeout bounds the wait.
    def self.embedded(templates_dir:, handlers:, concurrency: DEFAULT_CONCURRENCY,
                      breaker_failure_threshold: 5, breaker_cool_down: 30.0, builtin_handlers: false,
                      inline_run: false)
      by_name = Stepgraph.handlers_by_name(handlers)
      native = Native::Engine.embedded(templates_dir.to_s, by_name.keys,
                                       breaker_failure_threshold, (breaker_cool_down * 1000).to_i,
                                       builtin_handlers ? true : false)
      engine = new(native, by_name, concurrency, inline_run: inline_run)
      return engine unless block_given?

      begin
        yield engine
      ensure
        engine.close
      end
    end

    def initialize(native, handlers, concurrency, inline_run: false)
      @native = native
      @pool = HandlerPool.new(native, handlers, concurrency).start
      @inline_run = inline_run
    end

    # Creates a task (at once, at +run_at+ (a Time or an RFC 3339 string), or
    # +delay+ seconds from now) and waits for it to end. Its +report+ leaves
    # out the audit trail: get_task has it.
    def run(namespace, name, context, timeout: 300, run_at: nil, delay: nil)
      run_at = run_at.getutc.iso8601(3) if run_at.respond_to?(:getutc)
      # This thread runs handlers while it waits: a task whose steps it runs
      # crosses no other thread.
      serve = @inline_run && @pool.handlers? ? @pool.method(:serve_events) : nil
      TaskResult.from_api(@native.run(namespace.to_s, name.to_s, context, (timeout * 1000).to_i, run_at,
                                      delay && (delay * 1000).round, serve))
    end

    # A task as it is now, with its audit trail (report["transitions"]);
    # TaskNotFoundError when there is none with that id.
    def get_task(task_id)
      TaskResult.from_api(@native.get_task(task_id.to_s))
    end

    # Benchmarks: the mean seconds of one host round trip through +handler+, over +n+.
    def roundtrip(handler, count)
      @native.roundtrip(handler.to_s, count) / 1e9 / [count, 1].max
    end

    # The state of +handler+'s circuit breaker: "closed", "open" or "half_open".
    def breaker_state(handler)
      @native.breaker_state(handler.to_s)
    end

    # What the Rust host holds: "pending" (steps out with the handlers
    # here; never more than the handler slots asked for them).
    def host_stats
      @native.host_stats
    end

    def close
      @pool.stop
    end
  end
end
