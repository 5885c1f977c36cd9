// The native engine, whichever binding carries it: the C ABI through
// bun:ffi under Bun, or the Node-API module under Node (and under Bun when
// asked). Both speak JSON text and never block the event loop: the waits
// resolve Promises.

import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

/** An error from the engine; `code` says which kind, and each kind has a subclass. */
export class StepgraphError extends Error {
  override name = "StepgraphError";
  /**
   * `Config`, `UnknownTemplate`, `TaskNotFound`, `InvalidContext`, `Timeout`, `Conflict`,
   * `Unavailable`, `Forked`, `Closed`, `NotPending`, `InvalidArgument`,
   * `UnknownHandle`, `Panic` or `Error`.
   */
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

/** Options, STEPGRAPH_* settings or templates that cannot work. */
export class ConfigurationError extends StepgraphError {
  override name = "ConfigurationError";
}
/** No template of that namespace and name (and version). */
export class TemplateNotFoundError extends StepgraphError {
  override name = "TemplateNotFoundError";
}
/** No task with that id (never created here, or removed by retention). */
export class TaskNotFoundError extends StepgraphError {
  override name = "TaskNotFoundError";
}
/** The task context does not match the template's input_schema. */
export class InvalidContextError extends StepgraphError {
  override name = "InvalidContextError";
}
/** The task did not end in the time given. */
export class TaskTimeoutError extends StepgraphError {
  override name = "TaskTimeoutError";
}
/** A concurrent change won, or a key is taken. */
export class ConflictError extends StepgraphError {
  override name = "ConflictError";
}
/** The database or the message broker failed or cannot be reached. */
export class BackendUnavailableError extends StepgraphError {
  override name = "BackendUnavailableError";
}
/** The engine was created in another process (before a fork). */
export class ForkedProcessError extends StepgraphError {
  override name = "ForkedProcessError";
}
/** The engine is shut down (or runs no embedded engine). */
export class ShutDownError extends StepgraphError {
  override name = "ShutDownError";
}
/** A completion for an event that is not pending (timed out, say): refused. */
export class EventNotPendingError extends StepgraphError {
  override name = "EventNotPendingError";
}

const CLASSES: Record<string, typeof StepgraphError> = {
  Config: ConfigurationError,
  UnknownTemplate: TemplateNotFoundError,
  TaskNotFound: TaskNotFoundError,
  InvalidContext: InvalidContextError,
  Timeout: TaskTimeoutError,
  Conflict: ConflictError,
  Unavailable: BackendUnavailableError,
  Forked: ForkedProcessError,
  Closed: ShutDownError,
  NotPending: EventNotPendingError,
};

/** The error of `code`'s class: the one place a code becomes a class. */
export function stepgraphError(code: string, message: string): StepgraphError {
  return new (CLASSES[code] ?? StepgraphError)(code, message);
}

export type BackendName = "bun-ffi" | "napi";

export interface NativeEngine {
  readonly backend: BackendName;
  /** Up to `max` step events (JSON text) when some arrive, "[]" after `timeoutMs`. One at a time. */
  nextEvents(max: number, timeoutMs: number): Promise<string>;
  /** Reports an event's outcome (JSON text); throws StepgraphError (`NotPending`, say). */
  complete(eventId: number, outcome: string): void;
  /**
   * Reports an event's outcome and returns, without waiting, up to `max` next
   * events (JSON text, "[]" when none came at once). Not while a nextEvents is out.
   */
  completeAndNext(eventId: number, outcome: string, max: number): string;
  /** Up to `max` events (JSON text) without waiting, after running what is runnable here. Not while a nextEvents is out. */
  pollEvents(max: number): string;
  /** A blocking operation (JSON `{"op": ...}`); resolves with its outcome (parsed, big integers as BigInt). */
  call(request: string): Promise<unknown>;
  /** Releases the engine (after a shutdown call). */
  free(): void;
}

export type NativeOpener = (options: string) => NativeEngine;

export const isBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";

/** Where the built libraries are: $STEPGRAPH_NATIVE_DIR, or the package's `native/`. */
export function nativeDir(): string {
  const dir =
    process.env.STEPGRAPH_NATIVE_DIR ??
    path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "native");
  return path.resolve(dir);
}

export function nativeFile(name: string): string {
  const file = path.join(nativeDir(), name);
  if (!existsSync(file)) {
    throw new StepgraphError(
      "Error",
      `the stepgraph native library ${file} is missing: build it with ./scripts/typescript-deps (or set STEPGRAPH_NATIVE_DIR)`,
    );
  }
  return file;
}

/**
 * The library with the C ABI: `libstepgraph.so` where it is built (a
 * checkout), else the Node-API module, which exports the same `sg_*`
 * functions (the npm package ships that one library for both runtimes).
 */
export function cAbiFile(): string {
  const lib = path.join(nativeDir(), "libstepgraph.so");
  return existsSync(lib) ? lib : nativeFile("stepgraph.node");
}

/**
 * The binding to use: `backend` if given, else $STEPGRAPH_BACKEND, else
 * bun:ffi under Bun and napi elsewhere.
 */
export async function opener(backend?: BackendName): Promise<NativeOpener> {
  const choice = backend ?? (process.env.STEPGRAPH_BACKEND as BackendName | undefined) ?? (isBun ? "bun-ffi" : "napi");
  switch (choice) {
    case "bun-ffi":
      if (!isBun) throw new StepgraphError("InvalidArgument", "the bun-ffi backend needs Bun; under Node use napi");
      return (await import("./bun-ffi.js")).openBunFfi;
    case "napi":
      return (await import("./napi.js")).openNapi;
    default:
      throw new StepgraphError("InvalidArgument", `unknown backend '${choice}' (bun-ffi or napi)`);
  }
}
