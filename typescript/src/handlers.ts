// Handler types, the step context, and the conversion of what a handler
// returns or throws into the engine's outcome schema.

import type { BatchRequest, FailureKind, StepEvent, StepFailure, StepResult } from "./boundary.js";
import { checkJson } from "./json.js";

/** Fails the step without retrying. */
export class PermanentError extends Error {
  override name = "PermanentError";
}

/** Fails this attempt; the step is retried (after `retryAfterMs` if given). */
export class RetryableError extends Error {
  override name = "RetryableError";
  readonly retryAfterMs?: number;

  constructor(message = "", options: { retryAfterMs?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** A decision step's result: the names of the branches to create. */
export class Decision {
  readonly branches: string[];

  constructor(branches: string[]) {
    if (!Array.isArray(branches) || branches.some((b) => typeof b !== "string")) {
      throw new TypeError("a Decision takes an array of step names");
    }
    this.branches = [...branches];
  }
}

/** A batch worker's slice of the items. */
export interface BatchCursor {
  batchNo: number;
  start: number;
  end: number;
}

/** A batchable step's result: `totalItems` cut into slices of `batchSize`. */
export class Batch {
  constructor(
    readonly totalItems: number,
    readonly batchSize: number,
  ) {
    if (!Number.isSafeInteger(totalItems) || totalItems < 0) {
      throw new TypeError(`a Batch's totalItems must be a non-negative integer, not ${totalItems}`);
    }
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      throw new TypeError(`a Batch's batchSize must be a positive integer, not ${batchSize}`);
    }
  }

  /** What crosses to the engine, which cuts the cursors. */
  toOutcome(): BatchRequest {
    return { total_items: this.totalItems, batch_size: this.batchSize };
  }
}

/** A step event as the engine sends it (generated from the Rust types). */
export type { StepEvent } from "./boundary.js";

/** What a handler sees of its step. */
export class Context {
  readonly taskId: string;
  readonly stepId: string;
  readonly stepName: string;
  readonly handler: string;
  readonly namespace: string;
  readonly taskName: string;
  readonly attempt: number;
  readonly maxAttempts: number;
  /** The task context. */
  readonly input: any;
  /** `handler.config` from the template. */
  readonly config: Record<string, any>;
  /** The results of the steps this one depends on, by step name. */
  readonly dependencyResults: Record<string, any>;
  /** For a batchable step: the template's `batch.batch_size`. */
  readonly batchSize: number | null;
  /** For a batch worker: its slice of the items. */
  readonly cursor: BatchCursor | null;
  /** Milliseconds the handler has before the engine times the step out. */
  readonly timeoutMs: number;
  /**
   * W3C trace context of the step's handler span when the task is traced
   * (STEPGRAPH_OTLP_ENDPOINT, or a traceparent at creation), else null:
   * spans the handler starts under it join the step's trace.
   */
  readonly traceparent: string | null;

  constructor(event: StepEvent) {
    this.taskId = event.task_id;
    this.stepId = event.step_id;
    this.stepName = event.step_name;
    this.handler = event.handler;
    this.namespace = event.namespace;
    this.taskName = event.task_name;
    this.attempt = event.attempt;
    this.maxAttempts = event.max_attempts;
    this.input = event.input;
    this.config = event.config ?? {};
    this.dependencyResults = event.dependency_results ?? {};
    this.batchSize = event.batch_size ?? null;
    this.cursor = event.cursor
      ? { batchNo: event.cursor.batch_no, start: event.cursor.start, end: event.cursor.end }
      : null;
    this.timeoutMs = event.timeout_ms;
    this.traceparent = event.traceparent ?? null;
  }

  /** The trace's id (32 hex digits) when the task is traced, else null. */
  get traceId(): string | null {
    return this.traceparent ? this.traceparent.slice(3, 35) : null;
  }

  /** The result of dependency `stepName`; throws naming the known ones. */
  dependency(stepName: string): any {
    if (!Object.hasOwn(this.dependencyResults, stepName)) {
      const known = Object.keys(this.dependencyResults).sort().join(", ") || "none";
      throw new Error(`step '${this.stepName}' has no dependency '${stepName}' (it has: ${known})`);
    }
    return this.dependencyResults[stepName];
  }
}

/** A handler class's default name: its name in snake_case (`SquareNumber` -> `square_number`), as in Python and Ruby. */
export function defaultHandlerName(className: string): string {
  return className
    .replace(/([A-Z]+)([A-Z][a-z])/g, "$1_$2")
    .replace(/([a-z\d])([A-Z])/g, "$1_$2")
    .toLowerCase();
}

/**
 * Subclass, implement `call` (sync or async); `static handlerName` is the
 * template's `handler.callable` (default: the class name in snake_case). Return a JSON value (BigInts allowed),
 * a {@link Decision} or a {@link Batch}; throw {@link PermanentError} or
 * {@link RetryableError}; any other error fails the attempt as retryable.
 */
export abstract class StepHandler {
  static handlerName = "";

  /** The template's `handler.callable` this handler serves. */
  get handlerName(): string {
    const cls = this.constructor as typeof StepHandler;
    return cls.handlerName || defaultHandlerName(cls.name);
  }

  abstract call(ctx: Context): unknown;
}

export type HandlerFn = (ctx: Context) => unknown;

class FunctionHandler extends StepHandler {
  readonly #name: string;
  readonly #fn: HandlerFn;

  constructor(name: string, fn: HandlerFn) {
    super();
    this.#name = name;
    this.#fn = fn;
  }

  override get handlerName(): string {
    return this.#name;
  }

  call(ctx: Context): unknown {
    return this.#fn(ctx);
  }
}

/** A handler from a function: `defineHandler("square", async (ctx) => ...)`. */
export function defineHandler(name: string, fn: HandlerFn): StepHandler {
  if (!name) throw new TypeError("defineHandler needs the handler's name");
  if (typeof fn !== "function") throw new TypeError(`handler '${name}' is not a function`);
  return new FunctionHandler(name, fn);
}

/** A handler class (instantiated with no arguments) or instance. */
export type HandlerLike = StepHandler | (new () => StepHandler);

const describe = (h: StepHandler): string =>
  h instanceof FunctionHandler ? `defineHandler('${h.handlerName}')` : `an instance of ${h.constructor.name}`;

/** The handlers by name; throws on a nameless one or a name given twice. */
export function handlersByName(handlers: Iterable<HandlerLike>): Map<string, StepHandler> {
  const byName = new Map<string, StepHandler>();
  for (const h of handlers) {
    const handler = typeof h === "function" ? new h() : h;
    if (!(handler instanceof StepHandler)) {
      throw new TypeError(`${String(h)} is not a StepHandler (subclass it, or use defineHandler)`);
    }
    const name = handler.handlerName;
    if (!name) throw new TypeError(`handler ${handler.constructor.name} has no handlerName`);
    const taken = byName.get(name);
    if (taken) {
      throw new TypeError(`two handlers are named '${name}': ${describe(taken)} and ${describe(handler)}`);
    }
    byName.set(name, handler);
  }
  return byName;
}

/** What a handler's run reports to the engine (generated from the Rust types). */
export type Outcome = StepResult;

function failure(kind: FailureKind, message: string, e: unknown, retryAfterMs?: number): Outcome {
  const error: StepFailure = { kind, message };
  if (e instanceof Error) {
    error.error_type = e.name || e.constructor.name;
    if (e.stack) error.backtrace = e.stack;
  } else {
    error.error_type = typeof e;
  }
  if (retryAfterMs !== undefined) error.retry_after_ms = Math.max(0, Math.round(retryAfterMs));
  return { status: "failure", error };
}

/** The outcome of an error a handler threw (or a Promise rejected with). */
export function errorOutcome(e: unknown): Outcome {
  if (e instanceof PermanentError) return failure("permanent", e.message, e);
  if (e instanceof RetryableError) return failure("retryable", e.message, e, e.retryAfterMs);
  if (e instanceof Error) return failure("retryable", `${e.name}: ${e.message}`, e);
  return failure("retryable", `a non-Error was thrown: ${String(e)}`, e);
}

/** The outcome of a value a handler returned. */
export function valueOutcome(ctx: Context, value: unknown): Outcome {
  if (value instanceof Decision) return { status: "decision", branches: value.branches };
  if (value instanceof Batch) return { status: "batch", batch: value.toOutcome() };
  if (value === undefined) value = null;
  try {
    checkJson(value);
  } catch (e) {
    return failure(
      "permanent",
      `step '${ctx.stepName}' returned a value that is not JSON: ${(e as Error).message}`,
      e,
    );
  }
  return { status: "success", result: value };
}

/** Runs a handler: its outcome, never a rejection. */
export async function runHandler(handler: StepHandler, ctx: Context): Promise<Outcome> {
  try {
    return valueOutcome(ctx, await handler.call(ctx));
  } catch (e) {
    return errorOutcome(e);
  }
}
