# frozen_string_literal: true

require_relative "helper"

class EmbeddedTest < Minitest::Test
  # The approval and CSV steps beside the Ruby ones are the built-in Rust handlers.
  def engine(handlers = ALL_HANDLERS, **options, &block)
    Stepgraph::Engine.embedded(templates_dir: TEMPLATES, handlers: handlers, builtin_handlers: true, **options, &block)
  end

  def test_math_shapes_are_exact_integers
    engine do |e|
      { "linear" => SIX_16, "diamond" => SIX_16, "complex_dag" => SIX_64, "tree" => SIX_64 }.each do |name, expected|
        result = e.run("e2e", name, { "even_number" => 6 })
        assert_equal "complete", result.state, result.error.inspect
        assert_equal expected, Integer(result.result)
        assert(result.steps.values.all? { |s| s["state"] == "complete" && s["attempts"] == 1 })
      end
    end
  end

  def test_a_ruby_decision_creates_only_the_chosen_branches
    # The decision is Ruby's; the approval steps are the built-in Rust handlers.
    engine do |e|
      { 500 => %w[auto_approve], 2500 => %w[manager_approval], 7500 => %w[finance_review manager_approval] }
        .each do |amount, branches|
        result = e.run("e2e", "conditional_approval", { "amount" => amount, "requester" => "rb" })
        assert_equal "complete", result.state, result.error.inspect
        created = result.steps.keys & %w[auto_approve manager_approval finance_review]
        assert_equal branches, created.sort
        assert_equal({ "branches" => branches.sort }, result.steps["routing_decision"]["result"].transform_values(&:sort))
      end
    end
  end

  def test_a_ruby_batch_outcome_creates_the_workers
    csv = File.join(ROOT, "tests", "fixtures", "products.csv")
    engine do |e|
      result = e.run("e2e", "csv_batch", { "csv_file_path" => csv })
      assert_equal "complete", result.state, result.error.inspect
      assert_equal 12_745_576_047, result.result["total_inventory_value_cents"]
      assert_equal 5, result.steps.keys.count { |k| k.start_with?("process_csv_batch_") }
    end
  end

  def test_symbol_keys_and_big_integers_cross_as_json
    big = Stepgraph.handler("big") { |_ctx| { total: 2**70, items: [1, 2.5, nil, true, :sym], "größe" => "Mühle" } }
    Dir.mktmpdir do |dir|
      write_templates(dir, "t.yaml" => "namespace: t\nname: b\nversion: \"1\"\nsteps:\n" \
                                       "  - name: only\n    handler: { callable: big }\n")
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [big]) do |e|
        result = e.run("t", "b", {})
        assert_equal({ "total" => (2**70).to_s, "items" => [1, 2.5, nil, true, "sym"], "größe" => "Mühle" },
                     result.result)
        # Keys come back frozen and UTF-8, as Ruby's own Hash literals make them.
        result.result.each_key { |k| assert_equal [Encoding::UTF_8, true], [k.encoding, k.frozen?], k }
        assert_equal Encoding::UTF_8, result.result["größe"].encoding
      end
    end
  end

  # Linear backoff waits 300 then 600 ms; retry_after: 0.4 waits 400 ms
  # instead of the step's 5 s: each wait, timed between the handler's calls,
  # is never early and late by less than any other policy would differ.
  def test_retries_wait_the_backoff_or_the_retry_after_a_handler_gives
    calls = { "linear" => Queue.new, "told" => Queue.new }
    now = -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) }
    raises_twice = Stepgraph.handler("raises_twice") do |ctx|
      calls["linear"] << now.call
      raise ArgumentError, "not yet" if ctx.attempt < 3

      ctx.attempt
    end
    says_when = Stepgraph.handler("says_when") do |ctx|
      calls["told"] << now.call
      raise Stepgraph::RetryableError.new("busy", retry_after: 0.4) if ctx.attempt < 3

      ctx.attempt
    end
    dir = File.join(ROOT, "tests", "fixtures", "retries")
    Stepgraph::Engine.embedded(templates_dir: dir, handlers: [raises_twice, says_when]) do |e|
      result = e.run("t", "waits", {})
      assert_equal "complete", result.state, result.error.inspect
      { "linear" => [300, 600], "told" => [400, 400] }.each do |step, planned|
        recorded = e.get_task(result.task_id).report["transitions"]["steps"]
                         .select { |t| t["step_name"] == step && t["to"] == "waiting_for_retry" }
                         .map { |t| t["metadata"]["backoff_ms"] }
        assert_equal planned, recorded, step
        times = Array.new(calls[step].size) { calls[step].pop }
        waits = times.each_cons(2).map { |a, b| ((b - a) * 1000).round }
        waits.zip(planned).each do |waited, ms|
          assert_includes (ms...(ms + 250)), waited, "#{step}: waited #{waits} ms, planned #{planned}"
        end
      end
    end
  end

  def test_exceptions_retry_with_backoff_and_permanent_errors_do_not
    calls = Hash.new(0)
    flaky = Stepgraph.handler("flaky") do |ctx|
      calls[:flaky] += 1
      raise ArgumentError, "not yet" if ctx.attempt < 3

      "ok after #{ctx.attempt}"
    end
    broken = Stepgraph.handler("broken") do |_ctx|
      calls[:broken] += 1
      raise Stepgraph::PermanentError, "bad input"
    end
    later = Stepgraph.handler("later") do |ctx|
      raise Stepgraph::RetryableError.new("busy", retry_after: 0.05) if ctx.attempt == 1

      ctx.attempt
    end
    Dir.mktmpdir do |dir|
      write_templates(dir,
                      "a.yaml" => "namespace: t\nname: a\nversion: \"1\"\nsteps:\n  - name: f\n    handler: { callable: flaky }\n" \
                                  "    retry: { max_attempts: 3, backoff: exponential, backoff_base_ms: 10 }\n",
                      "b.yaml" => "namespace: t\nname: b\nversion: \"1\"\nsteps:\n  - name: p\n    handler: { callable: broken }\n" \
                                  "    retry: { max_attempts: 5 }\n",
                      "c.yaml" => "namespace: t\nname: c\nversion: \"1\"\nsteps:\n  - name: l\n    handler: { callable: later }\n" \
                                  "    retry: { max_attempts: 2, backoff: none }\n")
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [flaky, broken, later]) do |e|
        ok = e.run("t", "a", {})
        assert_equal "complete", ok.state
        assert_equal "ok after 3", ok.result
        assert_equal 3, ok.steps["f"]["attempts"]

        bad = e.run("t", "b", {})
        assert_equal "error", bad.state
        assert_equal 1, calls[:broken]
        error = bad.steps["p"]["error"]
        assert_equal "permanent", error["kind"]
        assert_equal "bad input", error["message"]
        assert_equal "Stepgraph::PermanentError", error["error_type"]
        assert_match(/test_embedded\.rb/, error["backtrace"])

        waited = e.run("t", "c", {})
        assert_equal "complete", waited.state
        assert_equal 2, waited.result
        assert_equal 2, waited.steps["l"]["attempts"]
      end
    end
    assert_equal 3, calls[:flaky]
  end

  def test_a_value_that_is_not_json_fails_naming_the_step
    weird = Stepgraph.handler("weird") { |_ctx| { "io" => $stdout } }
    Dir.mktmpdir do |dir|
      write_templates(dir, "t.yaml" => "namespace: t\nname: w\nversion: \"1\"\nsteps:\n" \
                                       "  - name: odd_step\n    handler: { callable: weird }\n")
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [weird]) do |e|
        result = e.run("t", "w", {})
        assert_equal "error", result.state
        error = result.steps["odd_step"]["error"]
        assert_equal "permanent", error["kind"]
        assert_match(/step "odd_step" returned a value that is not JSON: \$\.result\.io is a IO/, error["message"])
      end
    end
  end

  def test_a_hung_handler_is_timed_out_and_its_late_result_refused
    released = Queue.new
    late = Queue.new
    hang = Stepgraph.handler("hang") do |ctx|
      if ctx.attempt == 1
        released.pop
        late << :returned
        "too late"
      else
        "second attempt"
      end
    end
    Dir.mktmpdir do |dir|
      write_templates(dir, "t.yaml" => "namespace: t\nname: h\nversion: \"1\"\nsteps:\n" \
                                       "  - name: slow\n    handler: { callable: hang }\n    timeout_seconds: 0.2\n" \
                                       "    retry: { max_attempts: 2, backoff: none }\n")
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [hang], concurrency: 2) do |e|
        result = e.run("t", "h", {})
        assert_equal "complete", result.state
        assert_equal "second attempt", result.result
        assert_equal 2, result.steps["slow"]["attempts"]
        released << :go
        late.pop
        # The late result was refused (the handler thread got an error and
        # went on): the step keeps the second attempt's result.
        assert_equal 0, e.instance_variable_get(:@native).pending_count
      end
    end
  end

  # A handler that hangs past its timeout trips its breaker like one that
  # raises: after two timed-out attempts the third is refused unrun.
  def test_consecutive_timeouts_open_the_breaker
    calls = Queue.new
    hang = Stepgraph.handler("hang") do |ctx|
      calls << ctx.attempt
      sleep 1.0
      1
    end
    hangs = File.join(ROOT, "tests", "fixtures", "hangs")
    Stepgraph::Engine.embedded(templates_dir: hangs, handlers: [hang], breaker_failure_threshold: 2,
                               breaker_cool_down: 60) do |e|
      result = e.run("t", "hangs", {})
      assert_equal "error", result.state
      assert_equal [1, 2], Array.new(calls.size) { calls.pop }
      assert_equal 3, result.steps["call"]["attempts"]
      assert_equal "circuit_open", result.steps["call"]["error"]["code"]
      assert_equal "open", e.breaker_state("hang")
    end
  end

  def test_the_breaker_opens_then_closes_after_a_probe
    calls = []
    api = Stepgraph.handler("api") do |ctx|
      calls << ctx.attempt
      raise "503 from the API" if calls.size <= 2

      "ok"
    end
    Dir.mktmpdir do |dir|
      write_templates(dir, "t.yaml" => "namespace: t\nname: b\nversion: \"1\"\nsteps:\n" \
                                       "  - name: call\n    handler: { callable: api }\n" \
                                       "    retry: { max_attempts: 10, backoff: none }\n")
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [api], breaker_failure_threshold: 2,
                                 breaker_cool_down: 0.3) do |e|
        result = e.run("t", "b", {})
        assert_equal "complete", result.state
        # Attempts 1 and 2 failed in Ruby, 3 was short-circuited by the open breaker, 4 was the probe.
        assert_equal [1, 2, 4], calls
        assert_equal "closed", e.breaker_state("api")
      end
    end
  end

  # 48 trees at once from 12 threads through 8 handler threads: the threads
  # that report results also drive the engine, and no completion is lost or
  # run twice: every step succeeds at its first attempt, nothing is left pending.
  # With inline_run, #run's own thread runs the handlers of its task (no
  # hand-off to the handler threads); a handler there that outlives #run's
  # timeout makes it raise TaskTimeoutError once it returns.
  def test_inline_run_runs_handlers_on_the_waiting_thread
    seen = Queue.new
    square = Stepgraph.handler("math.square") do |ctx|
      seen << Thread.current
      deps = ctx.dependency_results.values
      x = deps.empty? ? ctx.input["even_number"] : Integer(deps.first)
      x * x
    end
    slow = Stepgraph.handler("slow") { |_ctx| sleep 0.3 and 1 }
    Dir.mktmpdir do |dir|
      FileUtils.cp(File.join(TEMPLATES, "linear.yaml"), dir)
      write_templates(dir, "s.yaml" => "namespace: t\nname: s\nversion: \"1\"\nsteps:\n" \
                                       "  - name: only\n    handler: { callable: slow }\n")
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [square, slow], concurrency: 2, inline_run: true) do |e|
        5.times do
          result = e.run("e2e", "linear", { "even_number" => 6 })
          assert_equal "complete", result.state
          assert_equal SIX_16, Integer(result.result)
        end
        start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        error = assert_raises(Stepgraph::TaskTimeoutError) { e.run("t", "s", {}, timeout: 0.05) }
        assert_match(/did not finish/, error.message)
        assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - start, :>=, 0.3
      end
    end
    threads = Array.new(seen.size) { seen.pop }
    assert_equal 20, threads.size
    # A waiting handler thread can take an event before #run's thread comes
    # to drive (the first run); the rest run where they are waited for.
    assert_operator threads.count(Thread.current), :>=, 16, threads.map(&:name).inspect
  end

  def test_concurrent_tasks_lose_no_completion
    engine(ALL_HANDLERS, concurrency: 8) do |e|
      results = Array.new(12) { Thread.new { Array.new(4) { e.run("e2e", "tree", { "even_number" => 6 }) } } }
                     .flat_map(&:value)
      stats = e.host_stats
      assert_equal 48, results.size
      assert_equal 0, stats["pending"]
      results.each do |r|
        assert_equal "complete", r.state
        assert_equal SIX_64, Integer(r.result)
        assert_equal [1] * 8, r.steps.values.map { |s| s["attempts"] }, r.steps.inspect
      end
    end
  end

  def test_handlers_overlap_up_to_the_concurrency
    spans = Queue.new
    nap = Stepgraph.handler("nap") do |ctx|
      start = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      sleep 0.1
      spans << [start, Process.clock_gettime(Process::CLOCK_MONOTONIC)]
      ctx.step_name
    end
    steps = (0...8).map { |i| "  - name: s#{i}\n    handler: { callable: nap }\n" }.join
    Dir.mktmpdir do |dir|
      write_templates(dir, "t.yaml" => "namespace: t\nname: wide\nversion: \"1\"\nsteps:\n#{steps}")
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [nap], concurrency: 8) do |e|
        assert_equal "complete", e.run("t", "wide", {}).state
      end
    end
    all = Array.new(spans.size) { spans.pop }
    assert_equal 8, all.size
    # All eight ran at once: each started before any finished.
    assert_operator all.map(&:first).max, :<, all.map(&:last).min
  end

  def test_waiting_for_events_releases_the_gvl
    engine do |e|
      native = e.instance_variable_get(:@native)
      ticks = 0
      stop = false
      ticker = Thread.new { until stop; ticks += 1; sleep 0.005; end }
      sleep 0.05 until ticks.positive?
      # Nothing to do: it blocks 400 ms. Holding the GVL, no tick could
      # happen meanwhile; released, the ticker goes on every 5 ms.
      before = ticks
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      native.next_events(1, 400)
      blocked = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
      during = ticks - before
      stop = true
      ticker.join
      assert_operator blocked, :>=, 0.3, "next_events did not block"
      assert_operator during, :>=, 10, "only #{during} ticks in #{blocked.round(3)} s: the GVL was held"
    end
  end

  def test_the_engine_refuses_use_in_a_forked_child
    engine do |e|
      native = e.instance_variable_get(:@native)
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        begin
          native.next_events(1, 0)
          writer.write("no error")
        rescue Stepgraph::ForkedProcessError => err
          writer.write(err.message)
        end
        writer.close
        exit!(0)
      end
      writer.close
      message = reader.read
      Process.wait(pid)
      assert_match(/cannot be used in the forked child/, message)
    end
  end

  def test_gc_compaction_and_stress_between_steps_do_not_crash
    gc = Stepgraph.handler("math.square") do |ctx|
      GC.compact if ctx.attempt == 1 && GC.respond_to?(:compact)
      deps = ctx.dependency_results.values.map { |v| Integer(v) }
      x = deps.first || ctx.input.fetch("even_number")
      x * x
    end
    engine([gc, MULTIPLY_AND_SQUARE]) do |e|
      20.times { assert_equal SIX_64, Integer(e.run("e2e", "tree", { "even_number" => 6 }).result) }
      GC.stress = true
      begin
        assert_equal SIX_16, Integer(e.run("e2e", "linear", { "even_number" => 6 }).result)
      ensure
        GC.stress = false
      end
    end
  end

  def test_bad_input_is_a_clear_error
    assert_raises(ArgumentError) { Stepgraph.handler("x") }
    twice = [Stepgraph.handler("math.square") { |_ctx| 1 }, Stepgraph.handler("math.square") { |_ctx| 2 }]
    error = assert_raises(ArgumentError) { Stepgraph.handlers_by_name(twice) }
    assert_match(/two handlers are named "math.square": #<Stepgraph::BlockHandler.* and #<Stepgraph::BlockHandler/,
                 error.message)
    error = assert_raises(Stepgraph::Error) do
      Stepgraph::Engine.embedded(templates_dir: "/no/such/dir", handlers: [])
    end
    assert_match(%r{/no/such/dir}, error.message)
    engine do |e|
      error = assert_raises(Stepgraph::Error) { e.run("e2e", "no_such", {}) }
      assert_match(/no_such/, error.message)
      error = assert_raises(Stepgraph::Error) { e.run("e2e", "linear", { "even_number" => "six" }) }
      assert_match(/even_number|schema/, error.message)
    end
  end

  class SquareNumber < Stepgraph::StepHandler
    def call(_ctx) = 1
  end

  class HTTPFetcher < Stepgraph::StepHandler
    def call(_ctx) = 1
  end

  # Named, checked and printed as in Python and TypeScript.
  def test_handlers_are_named_and_checked_as_in_every_language_and_a_result_prints_on_one_line
    assert_equal %w[square_number http_fetcher], [SquareNumber.new.handler_name, HTTPFetcher.new.handler_name]
    assert_equal 8, Stepgraph::DEFAULT_CONCURRENCY
    # A template step nobody serves: the engine does not start, naming each.
    error = assert_raises(Stepgraph::ConfigurationError) do
      Stepgraph::Engine.embedded(templates_dir: TEMPLATES, handlers: ALL_HANDLERS)
    end
    assert_match(%r{`approval\.finalize` \(e2e/conditional_approval@1\.0\.0 step finalize_approval\)}, error.message)
    refute_match(/math\.square/, error.message)
    engine do |e|
      done = e.run("e2e", "linear", { "even_number" => 6 })
      line = done.inspect
      assert_match(/\A#<Stepgraph::TaskResult #{done.task_id} e2e\/linear@\S+ complete result=2821109907456>\z/, line)
      assert_equal line, done.to_s
      assert_equal %w[step_1 step_2 step_3 step_4], done.steps.keys.sort
    end
    refuses = Stepgraph.handler("math.square") { |_ctx| raise Stepgraph::PermanentError, "no squares today #{'x' * 300}" }
    engine([refuses]) do |e|
      failed = e.run("e2e", "linear", { "even_number" => 6 })
      assert_match(/ error error="step_1: no squares today x+\.\.\.">\z/, failed.inspect)
      assert_operator failed.inspect.length, :<, 200
    end
  end

  ERROR_CLASSES = %w[ConfigurationError TemplateNotFoundError InvalidContextError TaskTimeoutError ConflictError
                     BackendUnavailableError ForkedProcessError ShutDownError EventNotPendingError].freeze

  def test_every_error_class_is_a_stepgraph_error
    ERROR_CLASSES.each do |name|
      assert_operator Stepgraph.const_get(name), :<, Stepgraph::Error, name
    end
  end

  def test_each_kind_of_error_raises_its_own_class
    assert_raises(Stepgraph::ConfigurationError) do
      Stepgraph::Engine.embedded(templates_dir: "/no/such/dir", handlers: [])
    end
    slow = Stepgraph.handler("slow") { |_ctx| sleep 1.0 }
    Dir.mktmpdir do |dir|
      write_templates(dir, "t.yaml" => "namespace: t\nname: s\nversion: \"1\"\n" \
                                       "input_schema: { type: object, required: [n], properties: { n: { type: integer } } }\n" \
                                       "steps:\n  - name: only\n    handler: { callable: slow }\n")
      native = nil
      Stepgraph::Engine.embedded(templates_dir: dir, handlers: [slow]) do |e|
        native = e.instance_variable_get(:@native)
        assert_raises(Stepgraph::TemplateNotFoundError) { e.run("t", "nope", {}) }
        assert_raises(Stepgraph::InvalidContextError) { e.run("t", "s", { "n" => "one" }) }
        error = assert_raises(Stepgraph::TaskTimeoutError) { e.run("t", "s", { "n" => 1 }, timeout: 0.05) }
        assert_match(/did not finish/, error.message)
        # Ruby's own timeout type too, and still a Stepgraph::Error.
        assert_raises(Timeout::Error) { e.run("t", "s", { "n" => 2 }, timeout: 0.05) }
        assert_kind_of Stepgraph::Error, error
        error = assert_raises(Stepgraph::InvalidContextError) { e.run("t", "s", { "n" => 1 }, run_at: "tomorrow") }
        assert_match(/run_at must be an RFC 3339 time/, error.message)
        # Delayed: it waits "scheduled", then runs.
        done = e.run("t", "s", { "n" => 1 }, delay: 0.3)
        assert_equal "complete", done.state
        refute_nil done.report["run_at"]
        refute done.report.key?("transitions")
        audited = e.get_task(done.task_id)
        assert_equal [done.state, done.result, done.steps], [audited.state, audited.result, audited.steps]
        assert_equal %w[scheduled initializing], audited.report["transitions"]["task"].first(2).map { |t| t["to"] }
        assert_raises(Stepgraph::TaskNotFoundError) { e.get_task("00000000-0000-0000-0000-000000000000") }
        error = assert_raises(Stepgraph::ConfigurationError) { e.get_task("tomorrow") }
        assert_match(/not a task id/, error.message)
        assert_raises(Stepgraph::EventNotPendingError) do
          native.complete(10**9, { "status" => "success", "result" => nil })
        end
      end
      assert_raises(Stepgraph::ShutDownError) { native.run("t", "s", {}, 1000, nil, nil, nil) }
      error = assert_raises(Stepgraph::BackendUnavailableError) do
        Stepgraph::Worker.new(database_url: "postgres://postgres@127.0.0.1:1/none", templates_dir: dir,
                              handlers: [slow]).start
      end
      assert_match(/cannot connect/, error.message)
      begin
        ENV["STEPGRAPH_QUEUE"] = "carrier-pigeon"
        error = assert_raises(Stepgraph::ConfigurationError) do
          Stepgraph::Worker.new(database_url: "postgres://postgres@127.0.0.1:1/none", templates_dir: dir,
                                handlers: [slow]).start
        end
        assert_match(/unknown queue backend/, error.message)
      ensure
        ENV.delete("STEPGRAPH_QUEUE")
      end
    end
  end

  def test_handler_names_derive_from_the_class
    klass = Class.new(Stepgraph::StepHandler)
    Object.const_set(:ValidateOrderItems, klass)
    assert_equal "validate_order_items", ValidateOrderItems.handler_name
    assert_equal "math.square", Square.new.handler_name
  end

  def test_roundtrip_measures_a_ruby_handler
    seen = Queue.new
    noop = Stepgraph.handler("noop") do |ctx|
      seen << [ctx.step_name, ctx.dependency("linear_step_1"), ctx.input["even_number"]]
      nil
    end
    engine([noop]) do |e|
      mean = e.roundtrip("noop", 200)
      assert_operator mean, :>, 0
    end
    # Every one of the 200 steps reached the handler, carrying the sample step.
    assert_equal [["linear_step_2", 36, 6]] * 200, Array.new(seen.size) { seen.pop }
    broken = Stepgraph.handler("broken") { |_ctx| raise ArgumentError, "round trip broke" }
    engine([broken]) do |e|
      err = assert_raises(Stepgraph::Error) { e.roundtrip("broken", 3) }
      assert_match(/round trip broke/, err.message)
    end
  end
end
