// The C ABI through bun:ffi. The main thread makes only the calls that do
// not wait (creating the engine, completing an event, starting a call);
// the two that do wait run in Bun Workers (bun-waiter.ts) and post their
// results back. No JSCallback is ever handed to Rust.

import { encoder, failure, open, takeText, type Library } from "./bun-abi.js";
import { parseJson } from "./json.js";
import { cAbiFile, StepgraphError, stepgraphError, type NativeEngine } from "./native.js";

let lib: Library | undefined;
let file: string | undefined;

function check(status: number): void {
  if (status !== 0) {
    const { code, message } = failure(lib!, status);
    throw stepgraphError(code, message);
  }
}

function waiter(handle: bigint, kind: "events" | "replies"): Worker {
  const script = import.meta.url.endsWith(".ts") ? "./bun-waiter.ts" : "./bun-waiter.js";
  const worker = new Worker(new URL(script, import.meta.url));
  worker.postMessage({ file, handle, kind });
  return worker;
}

export function openBunFfi(options: string): NativeEngine {
  file ??= cAbiFile();
  lib ??= open(file);
  const out = new BigUint64Array(1);
  const bytes = encoder.encode(options);
  check(lib.sg_engine_new(bytes, bytes.length, out));
  const handle = out[0]!;
  const next = new BigUint64Array(2);

  // Events: one wait at a time, asked for by the main thread.
  let events: Worker | undefined;
  let pendingEvents: { resolve: (t: string) => void; reject: (e: unknown) => void } | undefined;
  const onEvents = (e: MessageEvent) => {
    const p = pendingEvents!;
    pendingEvents = undefined;
    const { text, code, message } = e.data as { text?: string; code?: string; message?: string };
    if (text !== undefined) p.resolve(text);
    else p.reject(stepgraphError(code!, message!));
  };

  // Replies to calls, by ticket; the waiter runs while any call is out.
  let replies: Worker | undefined;
  const calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();
  const onReplies = (e: MessageEvent) => {
    const data = e.data as { text?: string; closed?: boolean; message?: string };
    if (data.closed) {
      for (const c of calls.values()) c.reject(stepgraphError("Closed", data.message ?? "closed"));
      calls.clear();
      replies?.terminate();
      return;
    }
    for (const r of parseJson(data.text!) as { ticket: number; ok?: unknown; error?: string; code?: string }[]) {
      const c = calls.get(r.ticket);
      calls.delete(r.ticket);
      if (!c) continue;
      if (r.error !== undefined) c.reject(stepgraphError(r.code ?? "Error", r.error));
      else c.resolve(r.ok);
    }
    if (calls.size === 0) replies?.unref();
  };

  return {
    backend: "bun-ffi",
    nextEvents(max, timeoutMs) {
      if (pendingEvents) return Promise.reject(new StepgraphError("Error", "nextEvents is already waiting"));
      if (!events) {
        events = waiter(handle, "events");
        events.onmessage = onEvents;
      }
      return new Promise((resolve, reject) => {
        pendingEvents = { resolve, reject };
        events!.postMessage({ max, timeoutMs });
      });
    },
    complete(eventId, outcome) {
      const bytes = encoder.encode(outcome);
      check(lib!.sg_complete(handle, eventId, bytes, bytes.length));
    },
    completeAndNext(eventId, outcome, max) {
      const bytes = encoder.encode(outcome);
      check(lib!.sg_complete_and_next(handle, eventId, bytes, bytes.length, max, next));
      return takeText(lib!, next);
    },
    pollEvents(max) {
      check(lib!.sg_poll_events(handle, max, next));
      return takeText(lib!, next);
    },
    call(request) {
      const bytes = encoder.encode(request);
      const ticket = new BigUint64Array(1);
      try {
        check(lib!.sg_call(handle, bytes, bytes.length, ticket));
      } catch (e) {
        return Promise.reject(e);
      }
      if (!replies) {
        replies = waiter(handle, "replies");
        replies.onmessage = onReplies;
      }
      replies.ref();
      return new Promise((resolve, reject) => calls.set(Number(ticket[0]), { resolve, reject }));
    },
    free() {
      lib!.sg_engine_free(handle);
      // The replies waiter's wait ends with the engine (it is terminated
      // when it says so); the events one idles.
      events?.terminate();
      replies?.unref();
    },
  };
}
