// The seed's handlers written as a TypeScript user would, and helpers the
// Bun and Node suites share.

import { mkdtempSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Batch, Decision, StepHandler, defineHandler } from "../dist/index.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const TEMPLATES = path.join(ROOT, "tests", "fixtures", "templates");
export const POLYGLOT = path.join(ROOT, "tests", "fixtures", "polyglot");
export const PRODUCTS = path.join(ROOT, "tests", "fixtures", "products.csv");
export const SIX_16 = 6n ** 16n;
export const SIX_64 = 6n ** 64n;

export class Square extends StepHandler {
  static handlerName = "math.square";

  async call(ctx) {
    const deps = Object.values(ctx.dependencyResults);
    const x = BigInt(deps.length ? deps[0] : ctx.input.even_number);
    return x * x;
  }
}

export const multiplyAndSquare = defineHandler("math.multiply_and_square", (ctx) => {
  let product = 1n;
  for (const v of Object.values(ctx.dependencyResults)) product *= BigInt(v);
  return product * product;
});

export const routing = defineHandler("approval.routing_decision", (ctx) => {
  const amount = ctx.input.amount;
  if (amount < 1000) return new Decision(["auto_approve"]);
  if (amount < 5000) return new Decision(["manager_approval"]);
  return new Decision(["manager_approval", "finance_review"]);
});

export const analyze = defineHandler("csv.analyze", (ctx) => {
  const rows = readFileSync(ctx.input.csv_file_path, "utf8").trim().split("\n").length - 1;
  return new Batch(rows, ctx.batchSize);
});

export const seedHandlers = () => [Square, multiplyAndSquare, routing, analyze];

/** A templates directory holding one template. */
export function writeTemplate(body) {
  const dir = mkdtempSync(path.join(tmpdir(), "sg-ts-"));
  writeFileSync(path.join(dir, "t.yaml"), body);
  return dir;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `condition` every 5 ms until it holds; fails naming `what` after `ms`. */
export async function until(condition, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(5);
  }
}

/** The `stepgraph` binary the PostgreSQL tests start. */
export function binary() {
  const file = process.env.STEPGRAPH_BIN ?? path.join(ROOT, "target", "debug", "stepgraph");
  return file;
}
