# frozen_string_literal: true

require_relative "helper"
require "open3"
require "socket"
require "digest"
require "tmpdir"
require "fileutils"

# A database of its own per test, and a real `stepgraph serve` on it.
module PostgresSetup
  ADMIN = %w[psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -qc].freeze

  def setup
    @name = "sg_rbtest_#{Process.pid}_#{name.hash.abs % 10_000}"
    admin("DROP DATABASE IF EXISTS #{@name} WITH (FORCE)")
    admin("CREATE DATABASE #{@name}")
    @url = "postgres://postgres@127.0.0.1:5432/#{@name}"
    binary = ENV.fetch("STEPGRAPH_BIN", File.join(ROOT, "target", "debug", "stepgraph"))
    flunk("#{binary} does not exist: build it first (cargo build), or set STEPGRAPH_BIN") unless File.exist?(binary)
    env = { "STEPGRAPH_DATABASE_URL" => @url, "STEPGRAPH_MAX_CONNECTIONS" => "5", "STEPGRAPH_LOG" => "warn" }.merge(server_env)
    @server_in, @server_out, @server = Open3.popen2(env, binary, "serve", "--templates", server_templates,
                                                    "--listen", "127.0.0.1:0")
    line = @server_out.gets.to_s
    assert line.start_with?("listening on http://"), line
    @client = Stepgraph::Client.new(line.split[2])
  end

  def server_templates
    TEMPLATES
  end

  def server_env
    {}
  end

  def teardown
    Process.kill("KILL", @server.pid) if @server
    @server&.join
    admin("DROP DATABASE IF EXISTS #{@name} WITH (FORCE)", check: false)
  end

  def admin(sql, check: true)
    ok = system(*ADMIN, sql, out: File::NULL, err: File::NULL)
    flunk("PostgreSQL is not reachable on 127.0.0.1:5432 (psql: #{sql}); .ci/run starts it") if check && !ok
  end
end

# A Ruby worker in a PostgreSQL deployment: tasks created over the HTTP API
# of a real `stepgraph serve` process, steps run by Ruby handlers.
class PostgresTest < Minitest::Test
  include PostgresSetup

  # The approval and CSV steps beside the Ruby ones are the built-in Rust handlers.
  def worker(**options)
    Stepgraph::Worker.new(database_url: @url, templates_dir: TEMPLATES, handlers: ALL_HANDLERS,
                          builtin_handlers: true, **options)
  end

  def test_every_seed_shape_with_ruby_handlers
    csv = File.join(ROOT, "tests", "fixtures", "products.csv")
    w = worker(concurrency: 4).start
    begin
      { "linear" => SIX_16, "diamond" => SIX_16, "complex_dag" => SIX_64, "tree" => SIX_64 }.each do |name, expected|
        task = @client.run("e2e", name, { "even_number" => 6 }, timeout: 30)
        assert_equal "complete", task.state, task.error.inspect
        assert_equal expected, Integer(task.result)
        assert(task.steps.values.all? { |s| s["state"] == "complete" && s["attempts"] == 1 })
      end
      approval = @client.run("e2e", "conditional_approval", { "amount" => 7500, "requester" => "rb" }, timeout: 30)
      assert_equal "complete", approval.state, approval.error.inspect
      assert_equal 5, approval.steps.size
      batch = @client.run("e2e", "csv_batch", { "csv_file_path" => csv }, timeout: 30)
      assert_equal "complete", batch.state, batch.error.inspect
      assert_equal 12_745_576_047, batch.result["total_inventory_value_cents"]
    ensure
      w.stop
    end
  end

  def test_client_creates_waits_reads_cancels_and_reports_errors
    assert_equal "ok", @client.health["status"]
    assert_includes @client.templates.map { |t| t["name"] }, "linear"
    w = worker.start
    begin
      created = @client.create_task("e2e", "linear", { "even_number" => 6 }, idempotency_key: "rb-1")
      assert_equal true, created["created"]
      assert_equal false, @client.create_task("e2e", "linear", { "even_number" => 6 }, idempotency_key: "rb-1")["created"]
      task = @client.wait(created["task_id"], timeout: 30)
      assert_equal SIX_16, Integer(task.result)
      # The same view as an engine's run: steps by name, one line printed.
      assert_equal created["task_id"], task.task_id
      assert_equal %w[step_1 step_2 step_3 step_4], task.steps.keys
      assert_equal({ "name" => "step_4", "state" => "complete", "attempts" => 1, "max_attempts" => 3, "cursor" => nil,
                     "result" => SIX_16, "error" => nil }, task.steps["step_4"])
      assert_equal "#<Stepgraph::TaskResult #{task.task_id} e2e/linear@1.0.0 complete result=#{SIX_16}>", task.inspect
      # Delayed: stored scheduled, started at its time.
      delayed = @client.create_task("e2e", "linear", { "even_number" => 2 }, run_at: Time.now + 1)
      assert_equal "scheduled", @client.get_task(delayed["task_id"]).state
      done = @client.wait(delayed["task_id"], timeout: 30)
      started = done.report["transitions"]["task"].find { |t| t["from"] == "scheduled" }
      assert Time.iso8601(started["at"]) >= Time.iso8601(done.report["run_at"]), done.inspect
      by_delay = @client.create_task("e2e", "linear", { "even_number" => 2 }, delay: 0.3)
      assert_equal "complete", @client.wait(by_delay["task_id"], timeout: 30).state
      error = assert_raises(Stepgraph::ApiError) do
        @client.create_task("e2e", "linear", { "even_number" => 2 }, run_at: Time.now + 5, delay: 1)
      end
      assert_equal 400, error.status
      assert_match(/run_at or delay_ms/, error.message)
    ensure
      w.stop
    end
    pending = @client.create_task("e2e", "linear", { "even_number" => 6 })
    timed_out = assert_raises(Stepgraph::TaskTimeoutError) { @client.wait(pending["task_id"], timeout: 0.2) }
    assert_kind_of Stepgraph::Error, timed_out
    assert_kind_of Timeout::Error, timed_out
    assert_match(/did not end within/, timed_out.message)
    assert_equal "cancelled", @client.cancel(pending["task_id"])["state"]
    error = assert_raises(Stepgraph::ApiError) { @client.create_task("e2e", "no_such_template", {}) }
    assert_equal 422, error.status
    # A UUIDv4 that was never a task (an old UUIDv7 would be "gone": retention).
    error = assert_raises(Stepgraph::ApiError) { @client.get_task("4b7e0c1e-5f3a-4d2b-9c1e-000000000000") }
    assert_equal 404, error.status
    # The status apart; the message is the server's, as in Python and TypeScript.
    assert_match(/\Atask \S+ not found\z/, error.message)
    assert_raises(Stepgraph::Error) { Stepgraph::Client.new("http://127.0.0.1:1").health }
  end

  def test_a_bad_database_url_or_queue_is_a_clear_error
    error = assert_raises(Stepgraph::Error) do
      Stepgraph::Worker.new(database_url: "postgres://postgres@127.0.0.1:1/none", templates_dir: TEMPLATES,
                            handlers: ALL_HANDLERS).start
    end
    assert_match(/cannot connect/, error.message)
    error = assert_raises(Stepgraph::Error) { worker(queue: "kafka").start }
    assert_match(/unknown queue backend "kafka"/, error.message)
  end
end

# Rust, Python and Ruby steps in one workflow: a Rust `stepgraph worker`, a
# Python worker process and this process's Ruby worker, each on its queue.
class PolyglotTest < Minitest::Test
  include PostgresSetup

  POLYGLOT = File.join(ROOT, "tests", "fixtures", "polyglot")
  PYTHON_WORKER = <<~PY
    import sys, stepgraph
    double = stepgraph.handler("py.double")(lambda ctx: {"value": int(ctx.dependency("square")) * 2, "by": "python"})
    stepgraph.Worker(sys.argv[1], sys.argv[2], [double], namespaces=["python"]).run()
  PY

  def test_one_task_runs_rust_python_and_ruby_steps
    binary = ENV.fetch("STEPGRAPH_BIN", File.join(ROOT, "target", "debug", "stepgraph"))
    serve_in, serve_out, serve = Open3.popen2({ "STEPGRAPH_DATABASE_URL" => @url }, binary, "serve",
                                              "--templates", POLYGLOT, "--listen", "127.0.0.1:0")
    client = Stepgraph::Client.new(serve_out.gets.to_s.split[2])
    rust = spawn(binary, "worker", "--database-url", @url, "--templates", POLYGLOT, "--namespace", "polyglot")
    python = spawn("python3", "-c", PYTHON_WORKER, @url, POLYGLOT)
    add_one = Stepgraph.handler("rb.add_one") do |ctx|
      { "value" => ctx.dependency("double").fetch("value") + 1, "by" => "ruby" }
    end
    ruby = Stepgraph::Worker.new(database_url: @url, templates_dir: POLYGLOT, handlers: [add_one],
                                 namespaces: ["ruby"]).start
    begin
      task = client.run("polyglot", "mixed", { "even_number" => 6 }, timeout: 60)
      assert_equal "complete", task.state, task.error.inspect
      steps = task.steps.transform_values { |s| s["result"] }
      assert_equal 36, steps["square"]
      assert_equal({ "value" => 72, "by" => "python" }, steps["double"])
      assert_equal({ "value" => 73, "by" => "ruby" }, steps["add_one"])
    ensure
      ruby.stop
      [rust, python].each { |pid| Process.kill("TERM", pid) rescue nil } # rubocop:disable Style/RescueModifier
      [rust, python].each { |pid| Process.wait(pid) }
      Process.kill("KILL", serve.pid)
      serve.join
      serve_in.close
    end
  end
end

# A Ruby worker whose steps travel over RabbitMQ (state still in PostgreSQL).
class RabbitTest < Minitest::Test
  include PostgresSetup

  # A virtual host of this test's own, deleted at the end with every queue
  # the test made; the default `stepgraph.` queues are never touched.
  def test_a_ruby_worker_over_rabbitmq
    flunk("RabbitMQ is not reachable on 127.0.0.1:5672; .ci/run starts it") unless port_open?(5672)
    vhost = "sg-rbtest-#{Process.pid}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    amqp_url = "amqp://guest:guest@127.0.0.1:5672/#{vhost}"
    binary = ENV.fetch("STEPGRAPH_BIN", File.join(ROOT, "target", "debug", "stepgraph"))
    env = { "STEPGRAPH_DATABASE_URL" => @url, "STEPGRAPH_QUEUE" => "rabbitmq", "STEPGRAPH_AMQP_URL" => amqp_url }
    serve_in, serve_out, serve = Open3.popen2(env, binary, "serve", "--templates", TEMPLATES, "--listen", "127.0.0.1:0")
    client = Stepgraph::Client.new(serve_out.gets.to_s.split[2])
    worker = Stepgraph::Worker.new(database_url: @url, templates_dir: TEMPLATES, handlers: ALL_HANDLERS,
                                   queue: amqp_url).start
    begin
      task = client.run("e2e", "diamond", { "even_number" => 6 }, timeout: 60)
      assert_equal "complete", task.state, task.error.inspect
      assert_equal SIX_16, Integer(task.result)
      queues = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name").split
      assert_includes queues, "stepgraph.worker.e2e", "the steps went through this test's virtual host"
    ensure
      worker.stop
      Process.kill("KILL", serve.pid)
      serve.join
      serve_in.close
      rabbitmqctl("delete_vhost", vhost)
    end
  end

  def rabbitmqctl(*args)
    out, status = Open3.capture2e("rabbitmqctl", *args)
    raise "rabbitmqctl #{args.join(' ')} failed: #{out}" unless status.success?

    out
  end

  def port_open?(port)
    Socket.tcp("127.0.0.1", port, connect_timeout: 2).close
    true
  rescue SystemCallError
    false
  end
end

# SIGTERM to a Ruby worker process while its handler runs.
class GracefulShutdownTest < Minitest::Test
  include PostgresSetup

  SLEEPY = File.join(ROOT, "tests", "fixtures", "extra")
  WORKER = <<~RUBY
    require "stepgraph"
    nap = Stepgraph.handler("util.sleep") do |ctx|
      sleep ctx.input["sleep_ms"] / 1000.0
      { "slept_ms" => ctx.input["sleep_ms"] }
    end
    Stepgraph::Worker.new(database_url: ARGV[0], templates_dir: ARGV[1], handlers: [nap], concurrency: 2).run
  RUBY

  def server_templates
    SLEEPY
  end

  def sleepy_worker(**settings)
    env = settings.to_h { |k, v| ["STEPGRAPH_#{k.to_s.upcase}", v.to_s] }
    spawn(env, RbConfig.ruby, "-e", WORKER, @url, SLEEPY)
  end

  def await_running(id, step)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30
    loop do
      task = @client.get_task(id)
      return task if task.steps.fetch(step)["state"] == "in_progress"
      flunk("step #{step} never started") if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.02
    end
  end

  def completions(task, step)
    task.report["transitions"]["steps"].count { |t| t["step_name"] == step && t["to"] == "complete" }
  end

  def stop(pid)
    Process.kill("TERM", pid)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    status = Process.wait2(pid)[1]
    [status, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started]
  end

  # The worker takes no new work, lets the handler finish and records it
  # within the grace, then exits 0; another worker runs the next step.
  def test_sigterm_lets_a_running_ruby_step_finish_and_record_it
    worker = sleepy_worker(worker_shutdown_grace_ms: 20_000)
    id = @client.create_task("e2e", "sleepy", { "sleep_ms" => 1500 })["task_id"]
    await_running(id, "nap")
    status, = stop(worker)
    assert status.success?, status.inspect
    nap = @client.get_task(id).steps.fetch("nap")
    assert_equal %w[complete 1], [nap["state"], nap["attempts"].to_s]
    rescuer = sleepy_worker
    task = @client.wait(id, timeout: 30)
    stop(rescuer)
    assert_equal "complete", task.state, task.inspect
    assert_equal({ "slept_ms" => 1500 }, task.result)
    assert_equal [1, 1], [completions(task, "nap"), completions(task, "after")]
  end

  # With a 300 ms grace the worker exits long before its 4 s handler would
  # end; the step comes back after the visibility timeout and another
  # worker completes it, once.
  def test_a_ruby_step_that_outlives_the_grace_is_redelivered_and_completes_elsewhere
    worker = sleepy_worker(worker_shutdown_grace_ms: 300, worker_visibility_timeout_ms: 2500)
    id = @client.create_task("e2e", "sleepy", { "sleep_ms" => 4000 })["task_id"]
    await_running(id, "nap")
    _, took = stop(worker)
    assert_operator took, :<, 3, "exited after #{took.round(1)} s: the grace is 300 ms"
    assert_equal 0, completions(@client.get_task(id), "nap")
    rescuer = sleepy_worker(worker_visibility_timeout_ms: 2500)
    task = @client.wait(id, timeout: 60)
    stop(rescuer)
    assert_equal "complete", task.state, task.inspect
    assert_equal({ "slept_ms" => 4000 }, task.result)
    assert_equal 1, completions(task, "nap")
  end
end

# Operating a deployment from Ruby, against a serve with tokens: a failed
# task found and retried once its cause is fixed, another resolved by hand,
# the Ruby worker in the registry.
class OperationsTest < Minitest::Test
  include PostgresSetup

  EXTRA = File.join(ROOT, "tests", "fixtures", "extra")
  TOKENS = { "reader" => "r-secret", "ops" => "o-secret" }.freeze

  def server_templates
    EXTRA
  end

  def server_env
    list = TOKENS.map do |name, token|
      "#{name}:#{name == 'ops' ? 'admin' : 'read'}:sha256:#{Digest::SHA256.hexdigest(token)}"
    end
    { "STEPGRAPH_TOKENS" => list.join(",") }
  end

  def test_client_finds_retries_resolves_and_lists_the_ruby_worker
    address = @client.instance_variable_get(:@uri).to_s
    ops = Stepgraph::Client.new(address, token: TOKENS["ops"])
    reader = Stepgraph::Client.new(address, token: TOKENS["reader"])
    assert_equal 401, assert_raises(Stepgraph::ApiError) { @client.list_tasks }.status
    dir = Dir.mktmpdir
    flag = File.join(dir, "flag")
    require_file = Stepgraph.handler("util.require_file") do |ctx|
      path = ctx.input["required_file"]
      raise Stepgraph::PermanentError, "#{path} does not exist" unless File.exist?(path)

      { "found" => path }
    end
    echo = Stepgraph.handler("util.echo_dependencies") { |ctx| ctx.dependency_results.to_h }
    w = Stepgraph::Worker.new(database_url: @url, templates_dir: EXTRA, handlers: [require_file, echo],
                              namespaces: ["e2e"]).start
    begin
      first = ops.run("e2e", "repairable", { "required_file" => flag }, timeout: 30)
      second = ops.run("e2e", "repairable", { "required_file" => File.join(dir, "never") }, timeout: 30)
      assert_equal %w[error error], [first.state, second.state]
      page = reader.list_tasks(state: "error", name: "repairable", limit: 1)
      assert_equal [second.task_id], page["tasks"].map { |t| t["id"] }
      rest = reader.list_tasks(state: ["error"], has_failed_step: true, cursor: page["next_cursor"])
      assert_equal [first.task_id], rest["tasks"].map { |t| t["id"] }
      assert_nil rest["next_cursor"]
      assert_equal 2, reader.stats["recent"]["failed_tasks"]
      denied = assert_raises(Stepgraph::ApiError) { reader.retry_task(first.task_id) }
      assert_equal 403, denied.status

      File.write(flag, "")
      ops.retry_task(first.task_id, reason: "flag restored")
      done = ops.wait(first.task_id, timeout: 30)
      assert_equal({ "check" => { "found" => flag } }, done.result)
      ops.resolve(second.task_id, "check", { "found" => "by hand" }, reason: "checked")
      done = ops.wait(second.task_id, timeout: 30)
      assert_equal({ "check" => { "found" => "by hand" } }, done.result)
      resolved = done.report["transitions"]["steps"].find { |t| t["to"] == "resolved_manually" }
      assert_equal({ "action" => "resolved", "by" => "ops", "reason" => "checked" }, resolved["metadata"])
      assert_equal 409, assert_raises(Stepgraph::ApiError) { ops.retry_task(first.task_id, step: "check") }.status

      ruby = reader.workers.select { |x| x["language"] == "ruby" }
      assert_equal 1, ruby.size, reader.workers.inspect
      assert_equal "live", ruby[0]["state"]
      assert_equal Process.pid, ruby[0]["pid"]
      assert_includes ruby[0]["handlers"], "util.require_file"
    ensure
      w.stop
      FileUtils.rm_rf(dir)
    end
    assert_equal ["stopped"], reader.workers.select { |x| x["language"] == "ruby" }.map { |x| x["state"] }
  end
end
