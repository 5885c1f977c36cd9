// Operating a deployment from TypeScript, against a serve with tokens: a
// failed task found and retried once its cause is fixed, another resolved
// by hand, the TypeScript worker in the registry.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ApiError, Client, PermanentError, defineHandler } from "../dist/index.js";
import { ROOT } from "./fixtures.mjs";
import { withDeployment, withWorker } from "./deployment.mjs";

const EXTRA = path.join(ROOT, "tests", "fixtures", "extra");
const TOKENS = { reader: "r-secret", ops: "o-secret" };
const sha256 = (t) => createHash("sha256").update(t).digest("hex");
const TOKENS_ENV = `reader:read:sha256:${sha256(TOKENS.reader)},ops:admin:sha256:${sha256(TOKENS.ops)}`;

const requireFile = defineHandler("util.require_file", (ctx) => {
  const file = ctx.input.required_file;
  if (!existsSync(file)) throw new PermanentError(`${file} does not exist`);
  return { found: file };
});
const echo = defineHandler("util.echo_dependencies", (ctx) => ({ ...ctx.dependencyResults }));

export function operationsScenarios(test, backend) {
  test(`[${backend}] the Client finds, retries and resolves tasks, and lists the TypeScript worker`, () =>
    withDeployment(
      EXTRA,
      async ({ url, client }) => {
        const ops = new Client(client.url, { token: TOKENS.ops });
        const reader = new Client(client.url, { token: TOKENS.reader });
        await assert.rejects(client.listTasks(), (e) => e instanceof ApiError && e.status === 401);
        const dir = mkdtempSync(path.join(tmpdir(), "sg-ops-"));
        const flag = path.join(dir, "flag");
        const options = { databaseUrl: url, templatesDir: EXTRA, handlers: [requireFile, echo], namespaces: ["e2e"], backend };
        await withWorker(options, async () => {
          const first = await ops.run("e2e", "repairable", { required_file: flag }, { timeoutMs: 30_000 });
          const second = await ops.run("e2e", "repairable", { required_file: path.join(dir, "never") }, { timeoutMs: 30_000 });
          assert.deepEqual([first.state, second.state], ["error", "error"]);
          const page = await reader.listTasks({ state: "error", name: "repairable", limit: 1 });
          assert.deepEqual(page.tasks.map((t) => t.id), [second.taskId]);
          const rest = await reader.listTasks({ state: ["error"], hasFailedStep: true, cursor: page.next_cursor });
          assert.deepEqual(rest.tasks.map((t) => t.id), [first.taskId]);
          assert.equal(rest.next_cursor, null);
          assert.equal((await reader.stats()).recent.failed_tasks, 2);
          await assert.rejects(reader.retry(first.taskId), (e) => e.status === 403 && /needs admin/.test(e.message));

          writeFileSync(flag, "");
          await ops.retry(first.taskId, { reason: "flag restored" });
          let done = await ops.wait(first.taskId, 30_000);
          assert.deepEqual(done.result, { check: { found: flag } });
          await ops.resolve(second.taskId, "check", { found: "by hand" }, { reason: "checked" });
          done = await ops.wait(second.taskId, 30_000);
          assert.deepEqual(done.result, { check: { found: "by hand" } });
          const resolved = done.report.transitions.steps.find((t) => t.to === "resolved_manually");
          assert.deepEqual(resolved.metadata, { action: "resolved", by: "ops", reason: "checked" });
          await assert.rejects(ops.retry(first.taskId, { step: "check" }), (e) => e.status === 409);

          const mine = (await reader.workers()).filter((w) => w.language === "typescript");
          assert.equal(mine.length, 1, JSON.stringify(mine));
          assert.equal(mine[0].state, "live");
          assert.equal(mine[0].pid, process.pid);
          assert.ok(mine[0].handlers.includes("util.require_file"));
        });
        const after = (await reader.workers()).filter((w) => w.language === "typescript");
        assert.deepEqual(after.map((w) => w.state), ["stopped"]);
      },
      { STEPGRAPH_TOKENS: TOKENS_ENV },
    ));
}
