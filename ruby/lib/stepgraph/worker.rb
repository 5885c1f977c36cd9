# frozen_string_literal: true

module Stepgraph
  # Serves +handlers+ for the steps of +namespaces+ (default: every
  # template's) in a PostgreSQL deployment (tasks come from `stepgraph
  # serve`), on +concurrency+ Ruby threads. It orchestrates the results of
  # its own steps, so it loads +templates_dir+ too (default:
  # STEPGRAPH_TEMPLATES_DIR, else ./templates). +queue+: "postgres",
  # "rabbitmq" (with STEPGRAPH_AMQP_URL) or an AMQP URL; nil: STEPGRAPH_QUEUE.
  # Every other setting, the AMQP prefix among them, comes from the same
  # STEPGRAPH_* variables as `stepgraph worker`'s. +builtin_handlers+: the
  # example Rust handlers of the fixtures run here too.
  class Worker
    def initialize(database_url:, handlers:, templates_dir: ENV.fetch("STEPGRAPH_TEMPLATES_DIR", "templates"),
                   queue: nil, namespaces: [], concurrency: DEFAULT_CONCURRENCY,
                   breaker_failure_threshold: 5, breaker_cool_down: 30.0,
                   builtin_handlers: false)
      @handlers = Stepgraph.handlers_by_name(handlers)
      @args = [database_url.to_s, queue&.to_s, templates_dir.to_s, Array(namespaces).map(&:to_s), @handlers.keys,
               [Integer(concurrency), 1].max, breaker_failure_threshold,
               (breaker_cool_down * 1000).to_i, builtin_handlers ? true : false]
      @concurrency = [Integer(concurrency), 1].max
      @pool = nil
    end

    def start
      native = Native::Engine.worker(*@args)
      @pool = HandlerPool.new(native, @handlers, @concurrency).start
      self
    end

    # Stops asking for work; running handlers finish, the rest is redelivered.
    def stop
      @pool&.stop
      @pool = nil
    end

    def running?
      !@pool.nil?
    end

    # Serves until INT or TERM, then stops gracefully.
    def run
      signals = Queue.new
      previous = %w[INT TERM].to_h { |s| [s, Signal.trap(s) { signals << s }] }
      start
      signals.pop
    ensure
      stop
      previous&.each { |s, handler| Signal.trap(s, handler || "DEFAULT") }
    end
  end
end
