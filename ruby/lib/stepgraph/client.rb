# frozen_string_literal: true

require "json"
require "time"
require "net/http"
require "uri"

module Stepgraph
  # The server refused a request: +status+ is the HTTP status, +message+
  # the server's explanation.
  class ApiError < StepgraphError
    attr_reader :status

    def initialize(status, message)
      super(message)
      @status = status
    end
  end

  # A client of the HTTP API of `stepgraph serve`. +token+ is a bearer token
  # of the server's (see `stepgraph tokens new`); without one,
  # STEPGRAPH_TOKEN if set. A refusal raises ApiError (401 without a valid
  # token, 403 for a scope too small).
  class Client
    TERMINAL = %w[complete error cancelled resolved_manually].freeze

    def initialize(url, timeout: 30, token: nil)
      url = "http://#{url}" unless url.to_s.start_with?("http://", "https://")
      @uri = URI(url.to_s.chomp("/"))
      @timeout = timeout
      @token = token || ENV.fetch("STEPGRAPH_TOKEN", nil)
      @token = nil if @token.to_s.empty?
    end

    # Creates a task; returns {"task_id" => ..., "created" => bool}.
    # With +run_at+ (a Time, or an RFC 3339 string) or +delay+ (seconds) the
    # task is stored "scheduled" and starts then. +traceparent+ (W3C trace
    # context) makes the task's spans part of the caller's trace.
    def create_task(namespace, name, context, version: nil, idempotency_key: nil, priority: nil,
                    run_at: nil, delay: nil, traceparent: nil)
      run_at = run_at.getutc.iso8601(3) if run_at.respond_to?(:getutc)
      body = { namespace: namespace, name: name, context: context, version: version,
               idempotency_key: idempotency_key, priority: priority, run_at: run_at,
               delay_ms: delay && (delay * 1000).round, traceparent: traceparent }.compact
      request(:post, "/v1/tasks", body)
    end

    # The task, as Engine#run returns one (a TaskResult): state, result or
    # error, its steps by name; +report+ is the API's whole view (with the
    # audit trail under "transitions").
    def get_task(task_id)
      TaskResult.from_api(request(:get, "/v1/tasks/#{escape(task_id)}"))
    end

    # Waits (long-polling) until the task ends and returns it (as get_task);
    # Stepgraph::TaskTimeoutError (naming the task's state) if it has not
    # after +timeout+ seconds.
    def wait(task_id, timeout: 60)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      loop do
        left = [deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC), 0].max
        wait_ms = ([left, 25].min * 1000).to_i
        task = request(:get, "/v1/tasks/#{escape(task_id)}/wait?timeout_ms=#{wait_ms}", nil, wait_ms / 1000.0)
        return TaskResult.from_api(task) if TERMINAL.include?(task["state"])
        if Process.clock_gettime(Process::CLOCK_MONOTONIC) >= deadline
          raise TaskTimeoutError, "task #{task_id} did not end within #{timeout}s (state #{task['state']})"
        end
      end
    end

    def run(namespace, name, context, timeout: 60, **options)
      wait(create_task(namespace, name, context, **options).fetch("task_id"), timeout: timeout)
    end

    def cancel(task_id, reason: nil)
      request(:post, "/v1/tasks/#{escape(task_id)}/cancel", { reason: reason }.compact)
    end

    # Finds tasks, newest first: {"tasks" => [...], "next_cursor" => ...}.
    # +state+ is one state or an array of them; +created_after+ and
    # +created_before+ RFC 3339 times; pass +next_cursor+ as +cursor+ for the
    # next page (nil when this one was the last).
    def list_tasks(state: nil, namespace: nil, name: nil, version: nil, created_after: nil, created_before: nil,
                   idempotency_key: nil, has_failed_step: nil, limit: nil, cursor: nil)
      params = Array(state).map { |s| ["state", s] }
      { namespace: namespace, name: name, version: version, created_after: created_after,
        created_before: created_before, idempotency_key: idempotency_key, limit: limit, cursor: cursor }
        .each { |key, value| params << [key.to_s, value.to_s] unless value.nil? }
      params << ["has_failed_step", has_failed_step ? "true" : "false"] unless has_failed_step.nil?
      query = URI.encode_www_form(params)
      request(:get, query.empty? ? "/v1/tasks" : "/v1/tasks?#{query}")
    end

    # Tasks and steps by template and state; failures and retries in the last hour.
    def stats
      request(:get, "/v1/stats")
    end

    # Retries a failed task's steps in error (or only +step+) with fresh
    # attempts; +reason+ goes into the audit trail. Needs an admin token.
    def retry_task(task_id, step: nil, reason: nil)
      path = "/v1/tasks/#{escape(task_id)}#{step ? "/steps/#{escape(step)}" : ''}/retry"
      request(:post, path, { reason: reason }.compact)
    end

    # Ends +step+ by hand with +result+, which its dependents run with. Needs an admin token.
    def resolve(task_id, step, result, reason: nil)
      request(:post, "/v1/tasks/#{escape(task_id)}/steps/#{escape(step)}/resolve",
              { result: result, reason: reason }.compact)
    end

    # The workers seen in the last day; "state" live, gone (missed heartbeats) or stopped.
    def workers
      request(:get, "/v1/workers").fetch("workers")
    end

    def templates
      request(:get, "/v1/templates").fetch("templates")
    end

    def health
      request(:get, "/health")
    end

    private

    def escape(id)
      URI.encode_www_form_component(id.to_s)
    end

    def request(method, path, body = nil, extra_timeout = 0)
      http = Net::HTTP.new(@uri.host, @uri.port)
      http.use_ssl = @uri.scheme == "https"
      http.open_timeout = @timeout
      http.read_timeout = @timeout + extra_timeout
      klass = method == :post ? Net::HTTP::Post : Net::HTTP::Get
      req = klass.new(@uri.path + path, "Content-Type" => "application/json", "Accept" => "application/json")
      req["Authorization"] = "Bearer #{@token}" if @token
      req.body = JSON.generate(body) if body
      response = http.request(req)
      parsed = response.body.to_s.empty? ? {} : JSON.parse(response.body)
      return parsed if response.is_a?(Net::HTTPSuccess)

      raise ApiError.new(response.code.to_i, parsed.is_a?(Hash) ? parsed.fetch("error", response.body) : response.body)
    rescue JSON::ParserError
      raise ApiError.new(response.code.to_i, response.body.to_s)
    rescue SystemCallError, IOError, Net::OpenTimeout, SocketError => e
      raise BackendUnavailableError, "cannot reach the stepgraph server at #{@uri}: #{e.message}"
    end
  end
end
