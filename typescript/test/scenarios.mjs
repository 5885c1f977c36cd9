// Every behaviour the TypeScript package promises in the embedded engine,
// as test bodies both runners register: `bun test` (for the bun-ffi and
// napi backends) and `node --test` (napi). `test(name, fn, timeoutMs)` is
// the runner's. The PostgreSQL deployment's are in deployment.mjs.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { inspect } from "node:util";
import {
  BackendUnavailableError,
  ConfigurationError,
  ConflictError,
  DEFAULT_CONCURRENCY,
  Engine,
  EventNotPendingError,
  ForkedProcessError,
  InvalidContextError,
  PermanentError,
  ShutDownError,
  StepgraphError,
  TaskNotFoundError,
  TaskTimeoutError,
  TemplateNotFoundError,
  RetryableError,
  StepHandler,
  defineHandler,
} from "../dist/index.js";
import { opener } from "../dist/native.js";
import {
  PRODUCTS,
  ROOT,
  SIX_16,
  SIX_64,
  TEMPLATES,
  seedHandlers,
  sleep,
  until,
  writeTemplate,
} from "./fixtures.mjs";

async function withEngine(options, body) {
  const engine = await Engine.embedded(options);
  try {
    return await body(engine);
  } finally {
    await engine.close();
  }
}

export function embeddedScenarios(test, backend) {
  const seed = (body, extra = {}) =>
    // The approval and CSV steps beside the TypeScript ones are the built-in Rust handlers.
    withEngine({ templatesDir: TEMPLATES, handlers: seedHandlers(), backend, builtinHandlers: true, ...extra }, body);

  test(`[${backend}] the math shapes are exact, big integers as BigInt`, () =>
    seed(async (engine) => {
      assert.equal(engine.backend, backend);
      for (const [name, expected] of [
        ["linear", SIX_16],
        ["diamond", SIX_16],
        ["complex_dag", SIX_64],
        ["tree", SIX_64],
      ]) {
        const r = await engine.run("e2e", name, { even_number: 6 });
        assert.equal(r.state, "complete", JSON.stringify(r.error));
        assert.equal(BigInt(r.result), expected, name);
        for (const s of Object.values(r.steps)) {
          assert.equal(s.state, "complete");
          assert.equal(s.attempts, 1);
        }
      }
    }));

  test(`[${backend}] a decision creates only the chosen branches`, () =>
    seed(async (engine) => {
      for (const [amount, branches] of [
        [500, ["auto_approve"]],
        [2500, ["manager_approval"]],
        [7500, ["finance_review", "manager_approval"]],
      ]) {
        const r = await engine.run("e2e", "conditional_approval", { amount, requester: "ts" });
        assert.equal(r.state, "complete", JSON.stringify(r.error));
        assert.deepEqual(r.result, { approved: true, approvals: branches });
        assert.deepEqual(
          Object.keys(r.steps).sort(),
          ["validate_request", "routing_decision", "finalize_approval", ...branches].sort(),
        );
      }
    }));

  test(`[${backend}] a batch outcome creates the batch workers`, () =>
    seed(async (engine) => {
      const r = await engine.run("e2e", "csv_batch", { csv_file_path: PRODUCTS });
      assert.equal(r.state, "complete", JSON.stringify(r.error));
      assert.equal(r.result.worker_count, 5);
      assert.equal(r.result.total_inventory_value_cents, 12745576047);
    }));

  test(`[${backend}] the context carries input, config, dependencies and attempt`, async () => {
    const seen = {};
    const first = defineHandler("first", () => ({ n: 2n ** 70n }));
    class Second extends StepHandler {
      static handlerName = "second";
      call(ctx) {
        Object.assign(seen, {
          input: ctx.input,
          config: ctx.config,
          first: ctx.dependency("first"),
          deps: Object.keys(ctx.dependencyResults),
          attempt: ctx.attempt,
          maxAttempts: ctx.maxAttempts,
          stepName: ctx.stepName,
          taskName: ctx.taskName,
          namespace: ctx.namespace,
          taskId: ctx.taskId,
        });
        try {
          ctx.dependency("zeroth");
        } catch (e) {
          seen.missing = e.message;
        }
        return "ok";
      }
    }
    const dir = writeTemplate(`namespace: t
name: ctx
version: "1"
steps:
  - name: first
    handler: { callable: first }
  - name: second
    dependencies: [first]
    handler: { callable: second, config: { unit: cents } }
    retry: { max_attempts: 4 }
`);
    await withEngine({ templatesDir: dir, handlers: [first, Second], backend }, async (engine) => {
      const r = await engine.run("t", "ctx", { order: 7 });
      assert.equal(r.state, "complete", JSON.stringify(r.error));
      // 2^70 went out as the engine's decimal string and came back exact.
      assert.equal(BigInt(r.steps.first.result.n), 2n ** 70n);
      assert.deepEqual(seen.input, { order: 7 });
      assert.deepEqual(seen.config, { unit: "cents" });
      assert.equal(BigInt(seen.first.n), 2n ** 70n);
      assert.deepEqual(seen.deps, ["first"]);
      assert.equal(seen.attempt, 1);
      assert.equal(seen.maxAttempts, 4);
      assert.equal(seen.stepName, "second");
      assert.equal(seen.taskName, "ctx");
      assert.equal(seen.namespace, "t");
      assert.equal(seen.taskId, r.taskId);
      assert.equal(seen.missing, "step 'second' has no dependency 'zeroth' (it has: first)");
    });
  });

  // Linear backoff waits 300 then 600 ms; retryAfterMs 400 waits 400 ms
  // instead of the step's 5 s: each wait, timed between the handler's calls,
  // is never early and late by less than any other policy would differ.
  test(`[${backend}] retries wait the backoff or the retryAfterMs a handler gives`, async () => {
    const calls = { linear: [], told: [] };
    const raisesTwice = defineHandler("raises_twice", (ctx) => {
      calls.linear.push(performance.now());
      if (ctx.attempt < 3) throw new TypeError("not yet");
      return ctx.attempt;
    });
    const saysWhen = defineHandler("says_when", (ctx) => {
      calls.told.push(performance.now());
      if (ctx.attempt < 3) throw new RetryableError("busy", { retryAfterMs: 400 });
      return ctx.attempt;
    });
    const dir = path.join(ROOT, "tests", "fixtures", "retries");
    await withEngine({ templatesDir: dir, handlers: [raisesTwice, saysWhen], backend }, async (engine) => {
      const r = await engine.run("t", "waits", {});
      assert.equal(r.state, "complete", JSON.stringify(r.error));
      for (const [step, planned] of [
        ["linear", [300, 600]],
        ["told", [400, 400]],
      ]) {
        const recorded = (await engine.getTask(r.taskId)).report.transitions.steps
          .filter((t) => t.step_name === step && t.to === "waiting_for_retry")
          .map((t) => Number(t.metadata.backoff_ms));
        assert.deepEqual(recorded, planned, step);
        const times = calls[step];
        const waits = times.slice(1).map((t, i) => Math.round(t - times[i]));
        waits.forEach((waited, i) =>
          assert.ok(planned[i] <= waited && waited < planned[i] + 250, `${step}: waited ${waits} ms, planned ${planned}`),
        );
      }
    });
  });

  test(`[${backend}] errors retry, permanent errors do not, retryAfterMs is honoured`, async () => {
    const calls = { flaky: 0, broken: 0, later: [] };
    const flaky = defineHandler("flaky", async (ctx) => {
      calls.flaky++;
      if (ctx.attempt < 3) throw new TypeError("the API is down");
      return { attempt: ctx.attempt };
    });
    const later = defineHandler("later", (ctx) => {
      calls.later.push(Date.now());
      if (ctx.attempt === 1) throw new RetryableError("rate limited", { retryAfterMs: 300 });
      return "done";
    });
    const broken = defineHandler("broken", async () => {
      calls.broken++;
      throw new PermanentError("card declined");
    });
    const dir = writeTemplate(`namespace: t
name: retry
version: "1"
steps:
  - name: flaky
    handler: { callable: flaky }
    retry: { max_attempts: 3, backoff: linear, backoff_base_ms: 20, max_backoff_ms: 100 }
  - name: later
    dependencies: [flaky]
    handler: { callable: later }
    retry: { max_attempts: 2, backoff: none }
  - name: broken
    dependencies: [later]
    handler: { callable: broken }
    retry: { max_attempts: 3, backoff: none }
`);
    await withEngine({ templatesDir: dir, handlers: [flaky, later, broken], backend }, async (engine) => {
      const r = await engine.run("t", "retry", {});
      assert.equal(r.state, "error");
      assert.equal(r.steps.flaky.attempts, 3);
      assert.deepEqual(r.steps.flaky.result, { attempt: 3 });
      assert.equal(calls.flaky, 3);
      assert.equal(calls.broken, 1);
      assert.equal(calls.later.length, 2);
      assert.ok(calls.later[1] - calls.later[0] >= 290, `retried after ${calls.later[1] - calls.later[0]} ms`);
      const error = r.steps.broken.error;
      assert.equal(error.kind, "permanent");
      assert.equal(error.message, "card declined");
      assert.equal(error.error_type, "PermanentError");
      assert.match(error.backtrace, /card declined/);
    });
  });

  test(`[${backend}] a Promise that never settles is timed out, and its late settle refused`, async () => {
    let settle;
    const hang = defineHandler("hang", () => new Promise((resolve) => (settle = resolve)));
    const dir = writeTemplate(`namespace: t
name: h
version: "1"
steps:
  - name: stuck
    handler: { callable: hang }
    timeout_seconds: 0.3
    retry: { retryable: false, max_attempts: 1 }
`);
    await withEngine({ templatesDir: dir, handlers: [hang], backend, concurrency: 1 }, async (engine) => {
      const r = await engine.run("t", "h", {});
      assert.equal(r.state, "error");
      assert.equal(r.steps.stuck.error.code, "timeout");
      assert.equal(engine.stats.refused, 0);
      settle(42);
      await until(() => engine.stats.refused === 1, "the late result was refused");
      assert.equal(engine.stats.running, 0);
      // The slot came back: the engine still serves (concurrency 1).
      const again = await engine.run("t", "h", {});
      settle(43);
      assert.equal(again.steps.stuck.error.code, "timeout");
    });
  });

  test(`[${backend}] a value that is not JSON fails the step, naming it and the part`, async () => {
    const give = defineHandler("give", (ctx) => (ctx.input.kind === "map" ? { when: new Map() } : [1, NaN]));
    const dir = writeTemplate(`namespace: t
name: s
version: "1"
steps:
  - name: give_garbage
    handler: { callable: give }
`);
    await withEngine({ templatesDir: dir, handlers: [give], backend }, async (engine) => {
      const map = await engine.run("t", "s", { kind: "map" });
      assert.equal(map.state, "error");
      assert.equal(
        map.steps.give_garbage.error.message,
        "step 'give_garbage' returned a value that is not JSON: $.when is a Map, which is not a JSON value",
      );
      assert.equal(map.steps.give_garbage.attempts, 1, "permanent: not retried");
      const nan = await engine.run("t", "s", { kind: "nan" });
      assert.match(nan.steps.give_garbage.error.message, /\$\[1\] is NaN/);
    });
  });

  // A handler that hangs past its timeout trips its breaker like one that
  // raises: after two timed-out attempts the third is refused unrun.
  test(`[${backend}] consecutive timeouts open the breaker`, async () => {
    const calls = [];
    const hang = defineHandler("hang", async (ctx) => {
      calls.push(ctx.attempt);
      await sleep(1000);
      return 1;
    });
    const options = {
      templatesDir: path.join(ROOT, "tests", "fixtures", "hangs"),
      handlers: [hang],
      backend,
      breakerFailureThreshold: 2,
      breakerCoolDownMs: 60_000,
    };
    await withEngine(options, async (engine) => {
      const r = await engine.run("t", "hangs", {});
      assert.equal(r.state, "error");
      assert.deepEqual(calls, [1, 2]);
      assert.equal(r.steps.call.attempts, 3);
      assert.equal(r.steps.call.error.code, "circuit_open");
    });
  });

  test(`[${backend}] the breaker opens, then a probe closes it`, async () => {
    const calls = [];
    const api = defineHandler("api", (ctx) => {
      calls.push(ctx.attempt);
      if (calls.length <= 2) throw new Error("503 from the API");
      return "ok";
    });
    const dir = writeTemplate(`namespace: t
name: b
version: "1"
steps:
  - name: call
    handler: { callable: api }
    retry: { max_attempts: 10, backoff: none }
`);
    const options = { templatesDir: dir, handlers: [api], backend, breakerFailureThreshold: 2, breakerCoolDownMs: 300 };
    await withEngine(options, async (engine) => {
      const r = await engine.run("t", "b", {});
      assert.equal(r.state, "complete");
      // Attempts 1 and 2 failed here, 3 was refused by the open breaker, 4 was the probe.
      assert.deepEqual(calls, [1, 2, 4]);
      assert.equal(r.steps.call.attempts, 4);
    });
  });

  // 48 trees at once through 8 handler slots: no completion is lost or run
  // twice (every step succeeds at its first attempt, each counted once) and
  // nothing is left pending.
  test(`[${backend}] concurrent tasks lose no completion`, () =>
    seed(
      async (engine) => {
        const runs = Array.from({ length: 48 }, () => engine.run("e2e", "tree", { even_number: 6 }));
        for (const r of await Promise.all(runs)) {
          assert.equal(r.state, "complete");
          assert.equal(BigInt(r.result), SIX_64);
          assert.deepEqual(Object.values(r.steps).map((s) => s.attempts), Array(8).fill(1));
        }
        const stats = await engine.hostStats();
        assert.equal(stats.pending, 0);
        assert.equal(engine.stats.completed, 48 * 8, "every step of every tree, once");
      },
      { concurrency: 8 },
    ));

  // Handlers that return at once report with completeAndNext, which runs
  // the commit on the event loop's thread and hands back the next events:
  // most steps after a task's first never wait on another thread.
  test(`[${backend}] quick handlers take their task's next steps with their report`, () =>
    seed(async (engine) => {
      for (let i = 0; i < 20; i++) {
        const r = await engine.run("e2e", i % 2 ? "diamond" : "linear", { even_number: 6 });
        assert.equal(BigInt(r.result), SIX_16);
      }
      const { completed, inline } = engine.stats;
      assert.equal(completed, 20 * 4);
      // 60 events follow a task's first, which `run` itself may take; a
      // loaded machine that deschedules the event loop for over a
      // millisecond leaves some to the driver.
      assert.ok(inline >= 30 && inline <= 80, `${inline} of 80 events came back with a report or a run`);
    }));

  test(`[${backend}] completeAndNext refuses what complete refuses`, async () => {
    const native = (await opener(backend))(JSON.stringify({ templates_dir: TEMPLATES, handlers: ["math.square"], builtin_handlers: true }));
    try {
      assert.throws(() => native.completeAndNext(12345, JSON.stringify({ status: "success", result: 1 }), 1), (e) =>
        e instanceof EventNotPendingError && /12345/.test(e.message),
      );
      assert.throws(() => native.completeAndNext(1, "{not json", 1), (e) =>
        e instanceof StepgraphError && e.code === "InvalidArgument" && /outcome of event 1 is not a step outcome/.test(e.message),
      );
    } finally {
      await native.call(JSON.stringify({ op: "shutdown" }));
      native.free();
    }
  });

  test(`[${backend}] async handlers overlap up to the concurrency`, async () => {
    const spans = [];
    let running = 0;
    let peak = 0;
    const nap = defineHandler("nap", async (ctx) => {
      running++;
      peak = Math.max(peak, running);
      const start = performance.now();
      await sleep(100);
      spans.push([start, performance.now()]);
      running--;
      return ctx.stepName;
    });
    const steps = Array.from({ length: 12 }, (_, i) => `  - name: s${i}\n    handler: { callable: nap }\n`).join("");
    const dir = writeTemplate(`namespace: t\nname: wide\nversion: "1"\nsteps:\n${steps}`);
    await withEngine({ templatesDir: dir, handlers: [nap], backend, concurrency: 8 }, async (engine) => {
      const r = await engine.run("t", "wide", {});
      assert.equal(r.state, "complete");
      assert.equal(r.steps.s7.result, "s7");
    });
    assert.equal(spans.length, 12);
    assert.equal(peak, 8, "eight at once, never more");
    const first = [...spans].sort((a, b) => a[0] - b[0]).slice(0, 8);
    assert.ok(Math.max(...first.map((s) => s[0])) < Math.min(...first.map((s) => s[1])), "the first eight overlapped");
  });

  test(`[${backend}] the event loop keeps running while the engine waits for events`, () =>
    seed(async (engine) => {
      let ticks = 0;
      const timer = setInterval(() => ticks++, 10);
      await sleep(300);
      clearInterval(timer);
      assert.ok(ticks >= 10, `a 10 ms timer fired ${ticks} times in 300 ms`);
      // And the engine still answers.
      const r = await engine.run("e2e", "linear", { even_number: 2 });
      assert.equal(r.result, 65536);
    }));

  test(`[${backend}] bad input is refused with a message naming it`, async () => {
    await seed(async (engine) => {
      await assert.rejects(engine.run("e2e", "no_such_template", {}), /no_such_template/);
      await assert.rejects(engine.run("e2e", "linear", { even_number: "six" }), /even_number|schema/);
    });
    await assert.rejects(
      Engine.embedded({ templatesDir: "/nonexistent/stepgraph", handlers: [], backend }),
      /nonexistent/,
    );
    await assert.rejects(
      Engine.embedded({ templatesDir: TEMPLATES, handlers: [defineHandler("a", () => 1), defineHandler("a", () => 2)], backend }),
      /two handlers are named 'a': defineHandler\('a'\) and defineHandler\('a'\)/,
    );
    await assert.rejects(
      Engine.embedded({ templatesDir: TEMPLATES, handlers: [{ call() {} }], backend }),
      /is not a StepHandler/,
    );
  });

  test(`[${backend}] handlers are named and checked as in Python and Ruby; a result prints on one line`, async () => {
    class SquareNumber extends StepHandler {
      call() {
        return 1;
      }
    }
    class HTTPFetcher extends StepHandler {
      call() {
        return 1;
      }
    }
    assert.deepEqual([new SquareNumber().handlerName, new HTTPFetcher().handlerName], ["square_number", "http_fetcher"]);
    assert.equal(DEFAULT_CONCURRENCY, 8);
    // A template step nobody serves: the engine does not start, naming each.
    await assert.rejects(
      Engine.embedded({ templatesDir: TEMPLATES, handlers: seedHandlers(), backend }),
      (e) =>
        e instanceof ConfigurationError &&
        /`approval\.finalize` \(e2e\/conditional_approval@1\.0\.0 step finalize_approval\)/.test(e.message) &&
        !/math\.square/.test(e.message),
    );
    const refuses = defineHandler("math.square", () => {
      throw new PermanentError(`no squares today ${"x".repeat(300)}`);
    });
    await seed(async (engine) => {
      const done = await engine.run("e2e", "linear", { even_number: 6 });
      const line = String(done);
      assert.ok(line.startsWith(`TaskResult ${done.taskId} e2e/linear@`) && line.endsWith(" complete result=2821109907456"), line);
      assert.equal(inspect(done), `<${line}>`);
      assert.deepEqual(Object.keys(done.steps).sort(), ["step_1", "step_2", "step_3", "step_4"]);
    });
    await withEngine({ templatesDir: TEMPLATES, handlers: [refuses], backend, builtinHandlers: true }, async (engine) => {
      const failed = await engine.run("e2e", "linear", { even_number: 6 });
      const line = String(failed);
      assert.ok(/ error error="step_1: no squares today x+\.\.\."$/.test(line) && line.length < 200, line);
      assert.ok(!inspect(failed).includes("\n"));
    });
  });

  test(`[${backend}] each kind of error is its own class, with its code`, async () => {
    for (const [cls, code] of [
      [ConfigurationError, "Config"],
      [TemplateNotFoundError, "UnknownTemplate"],
      [InvalidContextError, "InvalidContext"],
      [TaskTimeoutError, "Timeout"],
      [ConflictError, "Conflict"],
      [BackendUnavailableError, "Unavailable"],
      [ForkedProcessError, "Forked"],
      [ShutDownError, "Closed"],
      [EventNotPendingError, "NotPending"],
    ]) {
      const e = new cls(code, "m");
      assert.ok(e instanceof StepgraphError && e instanceof Error, cls.name);
      assert.notEqual(cls, StepgraphError);
    }
    const is = (cls, code, pattern) => (e) => e instanceof cls && e.code === code && pattern.test(e.message);
    await assert.rejects(
      Engine.embedded({ templatesDir: "/nonexistent/stepgraph", handlers: [], backend }),
      is(ConfigurationError, "Config", /nonexistent/),
    );
    const slow = defineHandler("slow", async () => {
      await sleep(1000);
      return 1;
    });
    const dir = writeTemplate(
      'namespace: t\nname: s\nversion: "1"\n' +
        "input_schema: { type: object, required: [n], properties: { n: { type: integer } } }\n" +
        "steps:\n  - name: only\n    handler: { callable: slow }\n",
    );
    const engine = await Engine.embedded({ templatesDir: dir, handlers: [slow], backend });
    try {
      await assert.rejects(engine.run("t", "nope", {}), is(TemplateNotFoundError, "UnknownTemplate", /no template t\/nope/));
      await assert.rejects(engine.run("t", "s", { n: "one" }), is(InvalidContextError, "InvalidContext", /input_schema/));
      await assert.rejects(engine.run("t", "s", { n: 1 }, { timeoutMs: 50 }), is(TaskTimeoutError, "Timeout", /did not finish/));
      await assert.rejects(
        engine.run("t", "s", { n: 1 }, { runAt: "tomorrow" }),
        is(InvalidContextError, "InvalidContext", /run_at must be an RFC 3339 time/),
      );
      // Delayed: it waits `scheduled`, then runs.
      const done = await engine.run("t", "s", { n: 1 }, { delayMs: 300 });
      assert.equal(done.state, "complete");
      assert.ok(done.report.run_at, JSON.stringify(done.report));
      assert.equal(done.report.transitions, undefined);
      const audited = await engine.getTask(done.taskId);
      assert.deepEqual([audited.state, audited.result, audited.steps], [done.state, done.result, done.steps]);
      assert.deepEqual(audited.report.transitions.task.slice(0, 2).map((t) => t.to), ["scheduled", "initializing"]);
      await assert.rejects(engine.getTask("00000000-0000-0000-0000-000000000000"), is(TaskNotFoundError, "TaskNotFound", /not found/));
      await assert.rejects(engine.getTask("tomorrow"), is(ConfigurationError, "Config", /not a task id/));
    } finally {
      await engine.close();
    }
    // Closed: napi keeps the engine object, shut down; the C ABI has freed its handle.
    await assert.rejects(
      engine.run("t", "s", { n: 1 }),
      (e) => (e instanceof ShutDownError && e.code === "Closed") || (e instanceof StepgraphError && e.code === "UnknownHandle"),
    );
  });

  test(`[${backend}] roundtrip measures a TypeScript handler`, async () => {
    const seen = [];
    const noop = defineHandler("noop", (ctx) => {
      seen.push([ctx.stepName, ctx.dependencyResults.linear_step_1, ctx.input.even_number]);
      return null;
    });
    const broken = defineHandler("broken", () => {
      throw new Error("round trip broke");
    });
    // One slot: the pool's loop never gets a turn of its own while a handler runs.
    const options = { templatesDir: TEMPLATES, handlers: [noop, broken], backend, builtinHandlers: true, concurrency: 1 };
    await withEngine(options, async (engine) => {
      const us = await engine.roundtrip("noop", 200);
      assert.ok(us > 0 && Number.isFinite(us), String(us));
      // Every one of the 200 steps reached the handler, carrying the sample step.
      assert.deepEqual(seen, Array(200).fill(["linear_step_2", 36, 6]));
      // A chain longer than the pool runs without yielding to the event loop
      // stays on the fast path after each yield: most steps came back inline.
      assert.ok(engine.stats.inline >= 100, `${engine.stats.inline} of 199 steps came back with a report`);
      await assert.rejects(engine.roundtrip("broken", 3), /round trip broke/);
    });
  });

  // Tracing is per process (STEPGRAPH_OTLP_ENDPOINT): each engine runs in a child.
  const traced = async (endpoint) => {
    const templates = writeTemplate(`
namespace: ts
name: traced
version: "1"
steps:
  - name: first
    handler: { callable: ts.traced }
  - name: second
    dependencies: [first]
    handler: { callable: ts.traced }
`);
    const script = path.join(templates, "child.mjs");
    writeFileSync(
      script,
      `import { Engine, defineHandler } from ${JSON.stringify(path.join(ROOT, "typescript", "dist", "index.js"))};
const seen = [];
const h = defineHandler("ts.traced", (ctx) => { seen.push([ctx.stepName, ctx.traceparent, ctx.traceId]); return 1; });
const engine = await Engine.embedded({ templatesDir: ${JSON.stringify(templates)}, handlers: [h], backend: ${JSON.stringify(backend)} });
const r = await engine.run("ts", "traced", {});
await engine.close();
console.log(JSON.stringify({ state: r.state, seen }));
`,
    );
    const env = { ...process.env };
    delete env.STEPGRAPH_OTLP_ENDPOINT;
    if (endpoint) env.STEPGRAPH_OTLP_ENDPOINT = endpoint;
    const out = execFileSync(process.execPath, [script], { env, encoding: "utf8" });
    const report = JSON.parse(out.trim().split("\n").pop());
    assert.equal(report.state, "complete");
    return report.seen;
  };

  test(`[${backend}] a traced handler gets its step's trace context, an untraced one none`, async () => {
    // Nothing listens there: spans that cannot be delivered do not concern the handlers.
    const seen = await traced("http://127.0.0.1:9");
    assert.deepEqual(seen.map(([step]) => step), ["first", "second"]);
    const traceId = seen[0][2];
    assert.match(traceId, /^[0-9a-f]{32}$/);
    for (const [, traceparent, id] of seen) {
      assert.match(traceparent, new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
      assert.equal(id, traceId);
    }
    assert.notEqual(seen[0][1], seen[1][1], "each step's handler runs in its own span");
    assert.deepEqual(await traced(undefined), [
      ["first", null, null],
      ["second", null, null],
    ]);
  });
}
