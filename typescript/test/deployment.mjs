// The behaviours of the TypeScript package in a PostgreSQL deployment (a
// real `stepgraph serve`, a database per test), as test bodies both
// runners register (see scenarios.mjs).

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import {
  BackendUnavailableError,
  Client,
  ConfigurationError,
  StepgraphError,
  TaskTimeoutError,
  Worker,
  defineHandler,
} from "../dist/index.js";
import {
  POLYGLOT,
  PRODUCTS,
  ROOT,
  SIX_16,
  SIX_64,
  TEMPLATES,
  binary,
  seedHandlers,
  sleep,
} from "./fixtures.mjs";

// ---- PostgreSQL: a real `stepgraph serve`, a database per test ----

const SLEEPY = path.join(ROOT, "tests", "fixtures", "extra");
const ADMIN = ["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc"];
let databases = 0;

function admin(sql) {
  try {
    execFileSync("psql", [...ADMIN, sql], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (e) {
    throw new Error(`PostgreSQL is not reachable on 127.0.0.1:5432 (${e.message}); .ci/run starts it`);
  }
}

/** Starts `stepgraph <args>`; for `serve`, resolves with its address once it listens. */
function start(args, env = {}) {
  const child = spawn(binary(), args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  child.on("error", (e) => {
    throw new Error(`cannot start ${binary()} (build it with cargo build, or set STEPGRAPH_BIN): ${e.message}`);
  });
  return child;
}

function listening(child) {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      if (line.startsWith("listening on http://")) resolve(line.split(" ")[2]);
      else reject(new Error(`stepgraph serve said: ${line}`));
    });
    child.once("exit", (code) => reject(new Error(`stepgraph serve exited with ${code}`)));
  });
}

export async function withDeployment(templates, body, serveEnv = {}) {
  const name = `sg_tstest_${process.pid}_${++databases}`;
  admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  admin(`CREATE DATABASE ${name}`);
  const url = `postgres://postgres@127.0.0.1:5432/${name}`;
  const serve = start(["serve", "--templates", templates, "--listen", "127.0.0.1:0"], {
    STEPGRAPH_DATABASE_URL: url,
    STEPGRAPH_MAX_CONNECTIONS: "5",
    STEPGRAPH_LOG: "warn",
    ...serveEnv,
  });
  try {
    const address = await listening(serve);
    return await body({ url, client: new Client(address) });
  } finally {
    serve.kill("SIGKILL");
    admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
}

export async function withWorker(options, body) {
  const worker = await new Worker(options).start();
  try {
    return await body(worker);
  } finally {
    await worker.stop();
  }
}

export function postgresScenarios(test, backend) {
  test(`[${backend}] every seed shape over PostgreSQL with a TypeScript worker`, () =>
    withDeployment(TEMPLATES, ({ url, client }) =>
      // The approval and CSV steps beside the TypeScript ones are the built-in Rust handlers.
      withWorker({ databaseUrl: url, templatesDir: TEMPLATES, handlers: seedHandlers(), backend, builtinHandlers: true }, async () => {
        const cases = [
          ["linear", { even_number: 6 }, (r) => assert.equal(BigInt(r), SIX_16)],
          ["diamond", { even_number: 6 }, (r) => assert.equal(BigInt(r), SIX_16)],
          ["complex_dag", { even_number: 6 }, (r) => assert.equal(BigInt(r), SIX_64)],
          ["tree", { even_number: 6 }, (r) => assert.equal(BigInt(r), SIX_64)],
          [
            "conditional_approval",
            { amount: 7500, requester: "ts" },
            (r) => assert.deepEqual(r, { approved: true, approvals: ["finance_review", "manager_approval"] }),
          ],
          ["csv_batch", { csv_file_path: PRODUCTS }, (r) => assert.equal(r.total_inventory_value_cents, 12745576047)],
        ];
        const tasks = await Promise.all(cases.map(([name, ctx]) => client.run("e2e", name, ctx, { timeoutMs: 60_000 })));
        tasks.forEach((task, i) => {
          assert.equal(task.state, "complete", `${cases[i][0]}: ${JSON.stringify(task.error)}`);
          cases[i][2](task.result);
          for (const s of Object.values(task.steps)) assert.equal(s.attempts, 1, `${cases[i][0]}.${s.name}`);
        });
      }),
    ));

  test(`[${backend}] the Client creates, waits, reads, cancels and reports errors`, () =>
    withDeployment(TEMPLATES, async ({ url, client }) => {
      assert.equal((await client.health()).status, "ok");
      const names = (await client.templates()).map((t) => `${t.namespace}/${t.name}`);
      assert.ok(names.includes("e2e/linear"), names.join(","));
      await withWorker({ databaseUrl: url, templatesDir: TEMPLATES, handlers: seedHandlers(), backend }, async () => {
        const created = await client.createTask("e2e", "linear", { even_number: 6 }, { idempotencyKey: "order-1" });
        assert.equal(created.created, true);
        const again = await client.createTask("e2e", "linear", { even_number: 6 }, { idempotencyKey: "order-1" });
        assert.deepEqual(again, { ...created, created: false });
        const task = await client.wait(created.task_id, 30_000);
        assert.equal(task.state, "complete");
        assert.equal(BigInt(task.result), SIX_16);
        // The same view as an engine's run: steps by name, one line printed.
        assert.equal(task.taskId, created.task_id);
        assert.deepEqual(Object.keys(task.steps), ["step_1", "step_2", "step_3", "step_4"]);
        assert.deepEqual(Object.keys(task.steps.step_4), ["name", "state", "attempts", "maxAttempts", "cursor", "result", "error"]);
        assert.equal(String(task), `TaskResult ${task.taskId} e2e/linear@1.0.0 complete result=${SIX_16}`);
        // Delayed: stored scheduled, started at its time.
        const delayed = await client.createTask("e2e", "linear", { even_number: 2 }, { runAt: new Date(Date.now() + 1000) });
        assert.equal((await client.getTask(delayed.task_id)).state, "scheduled");
        const done = await client.wait(delayed.task_id, 30_000);
        const started = done.report.transitions.task.find((t) => t.from === "scheduled");
        assert.ok(new Date(started.at) >= new Date(done.report.run_at), JSON.stringify(done.report.transitions.task));
        const byDelay = await client.createTask("e2e", "linear", { even_number: 2 }, { delayMs: 300 });
        assert.equal((await client.wait(byDelay.task_id, 30_000)).state, "complete");
        await assert.rejects(
          client.createTask("e2e", "linear", { even_number: 2 }, { runAt: new Date(Date.now() + 5000), delayMs: 1 }),
          (e) => e.status === 400 && /run_at or delay_ms/.test(e.message),
        );
      });
      const pending = await client.createTask("e2e", "linear", { even_number: 6 });
      await assert.rejects(
        client.wait(pending.task_id, 200),
        (e) => e instanceof TaskTimeoutError && e instanceof StepgraphError && /did not end within 200 ms/.test(e.message),
      );
      assert.equal((await client.cancel(pending.task_id)).state, "cancelled");
      // The status apart; the message is the server's, as in Python and Ruby.
      await assert.rejects(
        // A UUIDv4 that was never a task (an old UUIDv7 would be "gone": retention).
        client.getTask("4b7e0c1e-5f3a-4d2b-9c1e-000000000000"),
        (e) => e.status === 404 && /^task \S+ not found$/.test(e.message),
      );
      await assert.rejects(client.createTask("e2e", "no_such_template", {}), (e) => e.status === 422 && /no_such_template/.test(e.message));
      await assert.rejects(client.createTask("e2e", "linear", { even_number: "six" }), (e) => e.status === 422);
      await assert.rejects(client.getTask("not-a-uuid"), (e) => e.status === 400);
      await assert.rejects(new Client("http://127.0.0.1:1").health(), /cannot reach/);
    }));

  test(`[${backend}] a bad database URL is a clear error`, async () => {
    const worker = new Worker({ databaseUrl: "postgres://postgres@127.0.0.1:1/none", templatesDir: TEMPLATES, handlers: seedHandlers(), backend });
    await assert.rejects(worker.start(), (e) => e instanceof BackendUnavailableError && e.code === "Unavailable" && /cannot connect/.test(e.message));
    const bad = new Worker({ databaseUrl: "postgres://postgres@127.0.0.1:1/none", queue: "carrier-pigeon", templatesDir: TEMPLATES, handlers: seedHandlers(), backend });
    await assert.rejects(bad.start(), (e) => e instanceof ConfigurationError && /unknown queue backend/.test(e.message));
  });

  test(`[${backend}] one task runs Rust, Python, Ruby and TypeScript steps`, () =>
    withDeployment(POLYGLOT, async ({ url, client }) => {
      const children = [
        start(["worker", "--database-url", url, "--templates", POLYGLOT, "--namespace", "polyglot"]),
        spawn(
          "python3",
          [
            "-c",
            `import sys, stepgraph
double = stepgraph.handler("py.double")(lambda ctx: {"value": int(ctx.dependency("square")) * 2, "by": "python"})
stepgraph.Worker(sys.argv[1], sys.argv[2], [double], namespaces=["python"]).run()`,
            url,
            POLYGLOT,
          ],
          { stdio: "inherit" },
        ),
        spawn(
          "ruby",
          [
            "-e",
            `require "stepgraph"
add_one = Stepgraph.handler("rb.add_one") { |ctx| { "value" => ctx.dependency("double").fetch("value") + 1, "by" => "ruby" } }
Stepgraph::Worker.new(database_url: ARGV[0], templates_dir: ARGV[1], handlers: [add_one], namespaces: ["ruby"]).run`,
            url,
            POLYGLOT,
          ],
          { stdio: "inherit" },
        ),
      ];
      const describe = defineHandler("ts.describe", (ctx) => ({
        text: `${ctx.dependency("add_one").value} ${ctx.config.unit}`,
        by: "typescript",
      }));
      try {
        await withWorker({ databaseUrl: url, templatesDir: POLYGLOT, namespaces: ["typescript"], handlers: [describe], backend }, async () => {
          const task = await client.run("polyglot", "four", { even_number: 6 }, { timeoutMs: 60_000 });
          assert.equal(task.state, "complete", JSON.stringify(task.error));
          const results = Object.fromEntries(Object.values(task.steps).map((s) => [s.name, s.result]));
          assert.equal(results.square, 36);
          assert.deepEqual(results.double, { value: 72, by: "python" });
          assert.deepEqual(results.add_one, { value: 73, by: "ruby" });
          assert.deepEqual(results.describe, { text: "73 widgets", by: "typescript" });
        });
      } finally {
        for (const child of children) child.kill("SIGTERM");
        await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((r) => c.once("exit", r)) : null)));
      }
    }));

  // A worker process of this runtime and binding whose util.sleep handler
  // sleeps sleep_ms, on the sleepy template.
  const sleepyWorker = (url, settings = {}) => {
    const dir = mkdtempSync(path.join(tmpdir(), "sg-ts-worker-"));
    const script = path.join(dir, "worker.mjs");
    writeFileSync(
      script,
      `import { Worker, defineHandler } from ${JSON.stringify(path.join(ROOT, "typescript", "dist", "index.js"))};
const nap = defineHandler("util.sleep", async (ctx) => {
  await new Promise((r) => setTimeout(r, ctx.input.sleep_ms));
  return { slept_ms: ctx.input.sleep_ms };
});
await new Worker({ databaseUrl: process.argv[2], templatesDir: process.argv[3], handlers: [nap], backend: ${JSON.stringify(backend)} }).run();
// Stopped: a handler abandoned after the grace must not keep the process.
process.exit(0);
`,
    );
    const env = { ...process.env };
    for (const [k, v] of Object.entries(settings)) env[`STEPGRAPH_${k}`] = String(v);
    return spawn(process.execPath, [script, url, SLEEPY], { env, stdio: "inherit" });
  };
  const exited = (child) => new Promise((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once("exit", resolve)));
  const awaitRunning = async (client, id, step) => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const task = await client.getTask(id);
      if (task.steps[step].state === "in_progress") return task;
      if (Date.now() > deadline) throw new Error(`step ${step} never started`);
      await sleep(20);
    }
  };
  const completions = (task, step) => task.report.transitions.steps.filter((t) => t.step_name === step && t.to === "complete").length;

  // SIGTERM while a handler runs: the worker takes no new work, lets it
  // finish and records it within the grace, then exits 0; another worker
  // runs the next step; nothing runs twice.
  test(`[${backend}] SIGTERM lets a running TypeScript step finish and record it`, () =>
    withDeployment(SLEEPY, async ({ url, client }) => {
      const worker = sleepyWorker(url, { WORKER_SHUTDOWN_GRACE_MS: 20_000 });
      const { task_id: id } = await client.createTask("e2e", "sleepy", { sleep_ms: 1500 });
      await awaitRunning(client, id, "nap");
      worker.kill("SIGTERM");
      assert.equal(await exited(worker), 0);
      const nap = (await client.getTask(id)).steps.nap;
      assert.deepEqual([nap.state, nap.attempts], ["complete", 1]);
      const rescuer = sleepyWorker(url);
      try {
        const task = await client.wait(id, 30_000);
        assert.equal(task.state, "complete", JSON.stringify(task.error));
        assert.deepEqual(task.result, { slept_ms: 1500 });
        assert.deepEqual([completions(task, "nap"), completions(task, "after")], [1, 1]);
      } finally {
        rescuer.kill("SIGTERM");
        await exited(rescuer);
      }
    }));

  // With a 300 ms grace the worker exits long before its 4 s handler would
  // end; the step comes back after the visibility timeout and another
  // worker completes it, once.
  test(`[${backend}] a TypeScript step that outlives the grace is redelivered and completes elsewhere`, () =>
    withDeployment(SLEEPY, async ({ url, client }) => {
      const quick = { WORKER_VISIBILITY_TIMEOUT_MS: 2500 };
      const worker = sleepyWorker(url, { ...quick, WORKER_SHUTDOWN_GRACE_MS: 300 });
      const { task_id: id } = await client.createTask("e2e", "sleepy", { sleep_ms: 4000 });
      await awaitRunning(client, id, "nap");
      const start = Date.now();
      worker.kill("SIGTERM");
      await exited(worker);
      const took = Date.now() - start;
      assert.ok(took < 3000, `exited after ${took} ms: the grace is 300 ms`);
      assert.equal(completions(await client.getTask(id), "nap"), 0);
      const rescuer = sleepyWorker(url, quick);
      try {
        const task = await client.wait(id, 60_000);
        assert.equal(task.state, "complete", JSON.stringify(task.error));
        assert.deepEqual(task.result, { slept_ms: 4000 });
        assert.equal(completions(task, "nap"), 1);
      } finally {
        rescuer.kill("SIGTERM");
        await exited(rescuer);
      }
    }));

  // Steps over RabbitMQ (state in PostgreSQL), on a virtual host of this
  // test's own, deleted at the end with every queue it made.
  test(`[${backend}] a TypeScript worker over RabbitMQ`, async () => {
    const vhost = `sg-tstest-${process.pid}-${backend}`;
    const ctl = (...args) => execFileSync("rabbitmqctl", args, { encoding: "utf8" });
    try {
      ctl("add_vhost", vhost);
    } catch (e) {
      throw new Error(`RabbitMQ is not reachable (rabbitmqctl: ${e.message}); .ci/run starts it`);
    }
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*");
    const amqp = `amqp://guest:guest@127.0.0.1:5672/${vhost}`;
    try {
      await withDeployment(
        TEMPLATES,
        ({ url, client }) =>
          withWorker({ databaseUrl: url, templatesDir: TEMPLATES, handlers: seedHandlers(), backend, queue: amqp }, async () => {
            const task = await client.run("e2e", "diamond", { even_number: 6 }, { timeoutMs: 60_000 });
            assert.equal(task.state, "complete", JSON.stringify(task.error));
            assert.equal(BigInt(task.result), SIX_16);
            for (const s of Object.values(task.steps)) assert.equal(s.attempts, 1, s.name);
            const queues = ctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name").split(/\s+/);
            assert.ok(queues.includes("stepgraph.worker.e2e"), queues.join(","));
          }),
        { STEPGRAPH_QUEUE: "rabbitmq", STEPGRAPH_AMQP_URL: amqp },
      );
    } finally {
      ctl("delete_vhost", vhost);
    }
  });
}
