// The TypeScript side of the host round-trip bench (benches/host_roundtrip.rs),
// under Node or Bun: `roundtrip.mjs <bun-ffi|napi> <templates>`. Serves a
// no-op handler; for each line N on stdin, runs N round trips timed in Rust
// and prints their total nanoseconds.

import { createInterface } from "node:readline";
import { Engine, defineHandler } from "../../typescript/dist/index.js";

const [backend, templatesDir] = process.argv.slice(2);
const noop = defineHandler("noop", () => null);
const engine = await Engine.embedded({ templatesDir, handlers: [noop], backend, concurrency: 1 });
console.log("ready");
for await (const line of createInterface({ input: process.stdin })) {
  const n = Number(line);
  const micros = await engine.roundtrip("noop", n);
  console.log(String(Math.round(micros * 1000 * n)));
}
await engine.close();
