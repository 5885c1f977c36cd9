// `bun dist/bench.js --templates DIR` (or `node dist/bench.js ...`): the
// seed's FFI rows (linear and diamond, embedded mode) with TypeScript
// handlers, through every binding this runtime has, beside the same
// workflows with the engine's native Rust handlers. `stepgraph bench
// --language typescript` runs it under Bun and under Node. With --worker, a
// worker process serving the same handlers for one namespace through one
// binding (STEPGRAPH_DATABASE_URL and the other STEPGRAPH_* settings), which
// `stepgraph bench --language typescript --database-url` drives beside the
// Rust worker.

import { parseArgs } from "node:util";
import { Engine, type EngineOptions } from "./engine.js";
import { StepHandler, defineHandler } from "./handlers.js";
import { isBun, type BackendName } from "./native.js";
import { Worker } from "./worker.js";

const SIX_16 = 6n ** 16n;
// The last column: the reference system's published FFI P50s, constants
// (not measured here).
const ROWS: [string, string, number, number][] = [
  ["FFI linear", "linear", 4, 312],
  ["FFI diamond", "diamond", 4, 260],
];

class Square extends StepHandler {
  static override handlerName = "math.square";

  call(ctx: { dependencyResults: Record<string, unknown>; input: { even_number: number } }): bigint {
    const deps = Object.values(ctx.dependencyResults);
    const x = BigInt((deps.length ? deps[0] : ctx.input.even_number) as number);
    return x * x;
  }
}

const multiplyAndSquare = defineHandler("math.multiply_and_square", (ctx) => {
  let product = 1n;
  for (const v of Object.values(ctx.dependencyResults)) product *= BigInt(v as number);
  return product * product;
});

async function p50(options: EngineOptions, name: string, runs: number, warmup: number): Promise<number> {
  const engine = await Engine.embedded(options);
  try {
    const samples: number[] = [];
    for (let i = 0; i < warmup + runs; i++) {
      const start = performance.now();
      const r = await engine.run("e2e", name, { even_number: 6 });
      const elapsed = performance.now() - start;
      if (r.state !== "complete" || BigInt(r.result) !== SIX_16) {
        throw new Error(`${name}: task ended ${r.state} with ${String(r.result)}: ${JSON.stringify(r.error)}`);
      }
      if (i >= warmup) samples.push(elapsed * 1000);
    }
    samples.sort((a, b) => a - b);
    return samples[Math.floor(samples.length / 2)]!;
  } finally {
    await engine.close();
  }
}

const fmt = (us: number) => (us < 1000 ? `${us.toFixed(0)} µs` : `${(us / 1000).toFixed(2)} ms`);

/** Serves the handlers for `namespace` until SIGTERM or SIGINT; says so on its first line of output once it does. */
async function serveAsWorker(templatesDir: string, namespace: string, concurrency: number, backend?: BackendName): Promise<void> {
  const databaseUrl = process.env.STEPGRAPH_DATABASE_URL;
  if (!databaseUrl) throw new Error("--worker needs STEPGRAPH_DATABASE_URL");
  const worker = new Worker({ databaseUrl, templatesDir, namespaces: [namespace], concurrency, backend, handlers: [Square, multiplyAndSquare] });
  await worker.start();
  process.stdout.write(`worker serving namespaces [${JSON.stringify(namespace)}]\n`);
  await new Promise<void>((resolve) => {
    process.once("SIGTERM", resolve);
    process.once("SIGINT", resolve);
  });
  await worker.stop();
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      templates: { type: "string" },
      runs: { type: "string", default: "1000" },
      warmup: { type: "string", default: "100" },
      worker: { type: "boolean", default: false },
      namespace: { type: "string", default: "e2e" },
      concurrency: { type: "string", default: "2" },
      backend: { type: "string" },
      // stepgraph bench's own P50s of this run (linear=168.2,diamond=150.0), for the Rust column's ratio to them.
      "native-p50-us": { type: "string", default: "" },
    },
  });
  if (!values.templates) throw new Error("--templates DIR is required (the e2e fixture templates)");
  if (values.worker) {
    return serveAsWorker(values.templates, values.namespace!, Number(values.concurrency), values.backend as BackendName | undefined);
  }
  const runs = Number(values.runs);
  const warmup = Number(values.warmup);
  const runtime = isBun ? "Bun" : "Node";
  const backends: BackendName[] = isBun ? ["bun-ffi", "napi"] : ["napi"];
  const base = { templatesDir: values.templates, concurrency: 2 };

  console.log(
    `stepgraph bench --language typescript: ${runtime}, embedded mode, ${runs} runs per row after ${warmup} warm-up runs, ` +
      `concurrency ${base.concurrency}; each Rust P50 on the row's own binding`,
  );
  console.log();
  const own = new Map(
    values["native-p50-us"]!
      .split(",")
      .filter(Boolean)
      .map((pair) => {
        const [name, us] = pair.split("=");
        return [name!, Number(us)] as const;
      }),
  );
  console.log(
    "| Scenario    | Binding        | Steps | stepgraph bench P50 | Rust P50 | Rust vs stepgraph bench | TypeScript P50 | overhead/step | vs Rust | Reference FFI P50 (published) |",
  );
  console.log(
    "|-------------|----------------|------:|--------------------:|---------:|------------------------:|---------------:|--------------:|--------:|------------------------------:|",
  );
  for (const [label, name, steps, seed] of ROWS) {
    for (const backend of backends) {
      // The Rust column: the example Rust handlers in an engine made the
      // same way (same binding, same concurrency).
      const rust = await p50({ ...base, backend, handlers: [], builtinHandlers: true }, name, runs, warmup);
      // The TypeScript handlers take precedence over the built-in ones of the same names.
      const ts = await p50({ ...base, backend, handlers: [Square, multiplyAndSquare], builtinHandlers: true }, name, runs, warmup);
      const binding = `${runtime} ${backend === "napi" ? "napi" : "C ABI"}`;
      const native = own.get(name);
      const ownCol = native ? fmt(native) : "-";
      const ratio = native ? `${(rust / native).toFixed(2)}x` : "-";
      console.log(
        `| ${label.padEnd(11)} | ${binding.padEnd(14)} | ${String(steps).padStart(5)} | ${ownCol.padStart(19)} | ${fmt(rust).padStart(8)} | ${ratio.padStart(23)} | ${fmt(ts).padStart(14)} | ${fmt((ts - rust) / steps).padStart(13)} | ${(ts / rust).toFixed(2).padStart(6)}x | ${String(seed).padStart(26)} ms |`,
      );
    }
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
