// `bun test`: every scenario through the C ABI (bun:ffi) and through the
// Node-API module, both under Bun.

import { test } from "bun:test";
// @ts-ignore - plain JavaScript shared with the Node suite
import { embeddedScenarios } from "./scenarios.mjs";
// @ts-ignore - plain JavaScript shared with the Node suite
import { postgresScenarios } from "./deployment.mjs";
// @ts-ignore - plain JavaScript shared with the Node suite
import { operationsScenarios } from "./operations.mjs";

const register = (name: string, fn: () => Promise<unknown>, timeoutMs = 90_000) => test(name, fn, timeoutMs);

for (const backend of ["bun-ffi", "napi"]) {
  embeddedScenarios(register, backend);
  postgresScenarios(register, backend);
  operationsScenarios(register, backend);
}
