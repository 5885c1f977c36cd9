# frozen_string_literal: true

module Stepgraph
  # Fails the step without retrying.
  class PermanentError < StandardError; end

  # Fails this attempt; the step is retried (after +retry_after+ seconds if given).
  class RetryableError < StandardError
    attr_reader :retry_after

    def initialize(message = nil, retry_after: nil)
      super(message)
      @retry_after = retry_after
    end
  end

  # A decision step's result: the names of the branches to create.
  class Decision
    attr_reader :branches

    def initialize(branches)
      @branches = Array(branches).map(&:to_s)
    end
  end

  # A batchable step's result: +total_items+ cut into slices of +batch_size+.
  class Batch
    attr_reader :total_items, :batch_size

    def initialize(total_items:, batch_size:)
      @total_items = Integer(total_items)
      @batch_size = [Integer(batch_size), 1].max
    end

    # What crosses to the engine, which cuts the cursors.
    def to_outcome
      { "total_items" => total_items, "batch_size" => batch_size }
    end
  end

  # What a handler sees of its step.
  class Context
    attr_reader :task_id, :step_id, :step_name, :handler, :namespace, :task_name, :attempt, :max_attempts,
                :input, :config, :dependency_results, :batch_size, :cursor, :timeout,
                # W3C trace context of the step's handler span when the task is traced
                # (STEPGRAPH_OTLP_ENDPOINT, or a traceparent at creation), else nil:
                # spans the handler starts under it join the step's trace.
                :traceparent

    def initialize(event)
      @task_id = event["task_id"]
      @step_id = event["step_id"]
      @step_name = event["step_name"]
      @handler = event["handler"]
      @namespace = event["namespace"]
      @task_name = event["task_name"]
      @attempt = event["attempt"]
      @max_attempts = event["max_attempts"]
      @input = event["input"]
      @config = event["config"]
      @dependency_results = event["dependency_results"]
      @batch_size = event["batch_size"]
      @cursor = event["cursor"]
      @timeout = event["timeout_ms"] / 1000.0
      @traceparent = event["traceparent"]
    end

    # The trace's id (32 hex digits) when the task is traced, else nil.
    def trace_id
      traceparent && traceparent[3, 32]
    end

    # The result of the dependency +step_name+; KeyError names the known ones.
    def dependency(step_name)
      dependency_results.fetch(step_name.to_s) do
        known = dependency_results.keys.sort.join(", ")
        raise KeyError, "step #{self.step_name.inspect} has no dependency #{step_name.to_s.inspect} " \
                        "(it has: #{known.empty? ? 'none' : known})"
      end
    end

    def inspect
      "#<Stepgraph::Context step_name=#{step_name.inspect} task_id=#{task_id.inspect} attempt=#{attempt}>"
    end
  end

  # Subclass, name it with +handler_name "square"+ (default: the class name
  # in snake_case), implement +call(ctx)+.
  class StepHandler
    class << self
      def handler_name(name = nil)
        @handler_name = name.to_s if name
        @handler_name || default_handler_name
      end

      private

      def default_handler_name
        base = self.name.to_s.split("::").last.to_s
        base.gsub(/([A-Z]+)([A-Z][a-z])/, '\1_\2').gsub(/([a-z\d])([A-Z])/, '\1_\2').downcase
      end
    end

    def handler_name
      self.class.handler_name
    end

    # Runs the step; returns its result (a JSON value, Decision or Batch).
    def call(_ctx)
      raise NotImplementedError, "#{self.class} must implement call(ctx)"
    end
  end

  # A handler made from a block (see Stepgraph.handler).
  class BlockHandler < StepHandler
    attr_reader :handler_name

    def initialize(name, &block)
      super()
      raise ArgumentError, "Stepgraph.handler(#{name.inspect}) needs a block" unless block

      @handler_name = name.to_s
      @block = block
    end

    def call(ctx)
      @block.call(ctx)
    end
  end

  # Makes a block a handler: +Stepgraph.handler("square") { |ctx| ... }+.
  def self.handler(name, &block)
    BlockHandler.new(name, &block)
  end

  # Turns handlers (instances or StepHandler subclasses) into a Hash by name;
  # a nameless one, one without call, or a name given twice is an ArgumentError.
  def self.handlers_by_name(handlers)
    Array(handlers).each_with_object({}) do |h, by_name|
      h = h.new if h.is_a?(Class) && h <= StepHandler
      name = h.respond_to?(:handler_name) ? h.handler_name.to_s : ""
      raise ArgumentError, "handler #{h.inspect} has no name" if name.empty?
      raise ArgumentError, "handler #{h.inspect} has no call(ctx) method" unless h.respond_to?(:call)
      if by_name.key?(name)
        raise ArgumentError, "two handlers are named #{name.inspect}: #{by_name[name].inspect} and #{h.inspect}"
      end

      by_name[name] = h
    end
  end

  # The engine's view of a handler's outcome (never raises).
  module Outcome
    module_function

    def run(handler, ctx)
      of_value(handler.call(ctx))
    rescue PermanentError => e
      failure("permanent", e.message, e)
    rescue RetryableError => e
      failure("retryable", e.message, e, e.retry_after)
    rescue StandardError, ScriptError, NotImplementedError => e
      failure("retryable", "#{e.class}: #{e.message}", e)
    end

    def of_value(value)
      case value
      when Decision then { "status" => "decision", "branches" => value.branches }
      when Batch then { "status" => "batch", "batch" => value.to_outcome }
      else { "status" => "success", "result" => value }
      end
    end

    def failure(kind, message, exception, retry_after = nil)
      error = {
        "kind" => kind,
        "message" => message,
        "error_type" => exception.class.name,
        "backtrace" => Array(exception.backtrace).join("\n")
      }
      error["retry_after_ms"] = (retry_after * 1000).to_i if retry_after
      { "status" => "failure", "error" => error }
    end

    def not_json(ctx, exception)
      failure("permanent", "step #{ctx.step_name.inspect} returned a value that is not JSON: #{exception.message}",
              exception)
    end
  end
end
