// The Node-API module (napi-rs), for Node and Bun: `nextEvents` runs its
// wait on libuv's thread pool, `call` resolves from the engine's threads.

import { createRequire } from "node:module";
import { parseJson } from "./json.js";
import { nativeFile, stepgraphError, type NativeEngine } from "./native.js";

interface Module {
  NativeEngine: new (options: string) => {
    nextEvents(max: number, timeoutMs: number): Promise<string>;
    complete(eventId: number, outcome: string): void;
    completeAndNext(eventId: number, outcome: string, max: number): string;
    pollEvents(max: number): string;
    call(request: string): Promise<string>;
  };
}

let loaded: Module | undefined;

/** napi errors carry their kind as a "[Code] " prefix of the message. */
function translate(e: unknown): unknown {
  if (!(e instanceof Error)) return e;
  const m = /^\[(\w+)\] ([\s\S]*)$/.exec(e.message);
  return m ? stepgraphError(m[1]!, m[2]!) : e;
}

export function openNapi(options: string): NativeEngine {
  loaded ??= createRequire(import.meta.url)(nativeFile("stepgraph.node")) as Module;
  let engine;
  try {
    engine = new loaded.NativeEngine(options);
  } catch (e) {
    throw translate(e);
  }
  return {
    backend: "napi",
    nextEvents: (max, timeoutMs) => engine.nextEvents(max, timeoutMs).catch((e) => Promise.reject(translate(e))),
    complete(eventId, outcome) {
      try {
        engine.complete(eventId, outcome);
      } catch (e) {
        throw translate(e);
      }
    },
    completeAndNext(eventId, outcome, max) {
      try {
        return engine.completeAndNext(eventId, outcome, max);
      } catch (e) {
        throw translate(e);
      }
    },
    pollEvents(max) {
      try {
        return engine.pollEvents(max);
      } catch (e) {
        throw translate(e);
      }
    },
    call: (request) => engine.call(request).then(parseJson, (e) => Promise.reject(translate(e))),
    free() {},
  };
}
