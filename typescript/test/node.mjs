// `node --test`: every scenario through the Node-API module under Node.

import { test } from "node:test";
import { embeddedScenarios } from "./scenarios.mjs";
import { postgresScenarios } from "./deployment.mjs";
import { operationsScenarios } from "./operations.mjs";

const register = (name, fn, timeoutMs = 90_000) => test(name, { timeout: timeoutMs }, fn);

embeddedScenarios(register, "napi");
postgresScenarios(register, "napi");
operationsScenarios(register, "napi");
