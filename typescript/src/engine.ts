// The embedded engine: orchestrator, in-memory state and queue, and this
// process's TypeScript handlers, in one process with no services.

import { handlersByName, type HandlerLike } from "./handlers.js";
import { stringifyJson } from "./json.js";
import { opener, type BackendName, type NativeEngine } from "./native.js";
import { HandlerPool, type PoolStats } from "./pool.js";

export const TERMINAL = new Set(["complete", "error", "cancelled", "resolved_manually"]);

/** A step as users see it: its latest outcome split into result and error. */
export interface StepView {
  name: string;
  state: string;
  attempts: number;
  maxAttempts: number;
  cursor: { batch_no: number; start: number; end: number } | null;
  result: any;
  error: any;
}

/** Handlers running at once in an engine or worker of this process. */
export const DEFAULT_CONCURRENCY = 8;

/**
 * A task: its state, result (or error), and its steps by name, the same from
 * an `Engine`'s `run` and `getTask` and from a `Client`'s `run`, `wait` and
 * `getTask`.
 */
export interface TaskResult {
  taskId: string;
  state: string;
  result: any;
  error: any;
  steps: Record<string, StepView>;
  /**
   * The whole view it was made from, as the HTTP API shows a task: its
   * fields, its steps and (but from `Engine.run`) its audit trail under
   * `transitions`.
   */
  report: any;
}

const cut = (text: string, width = 60): string => (text.length <= width ? text : `${text.slice(0, width - 3)}...`);

/** A task's error in a few words: `"step: message"` where it has them. */
const errorText = (error: any): string => {
  const inner = error && typeof error.error === "object" && error.error !== null ? error.error : error;
  if (inner && typeof inner === "object" && inner.message != null) {
    return JSON.stringify(cut(error.step ? `${error.step}: ${inner.message}` : String(inner.message)));
  }
  return short(error);
};

const short = (value: unknown): string => {
  try {
    return cut(stringifyJson(value));
  } catch {
    return cut(String(value));
  }
};

/** Printed (`String(r)`, `console.log(r)`, `util.inspect(r)`) in one line; the fields hold the full view. */
class FinishedTask implements TaskResult {
  constructor(
    readonly taskId: string,
    readonly state: string,
    readonly result: any,
    readonly error: any,
    readonly steps: Record<string, StepView>,
    readonly report: any,
  ) {}

  toString(): string {
    const t = this.report ?? {};
    const outcome = this.error == null ? `result=${short(this.result)}` : `error=${errorText(this.error)}`;
    return `TaskResult ${this.taskId} ${t.namespace}/${t.name}@${t.version} ${this.state} ${outcome}`;
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `<${this.toString()}>`;
  }
}

/** A task as the HTTP API (and an engine) shows it. */
export function taskResultFromApi(view: any): TaskResult {
  const steps: Record<string, StepView> = {};
  for (const s of view.steps ?? []) {
    steps[s.name] = {
      name: s.name,
      state: s.state,
      attempts: s.attempts,
      maxAttempts: s.max_attempts,
      cursor: s.cursor ?? null,
      result: s.result ?? null,
      error: s.error ?? null,
    };
  }
  return new FinishedTask(view.id, view.state, view.result, view.error, steps, view);
}

/** What the Rust host holds ({@link Engine.hostStats}). */
export interface HostStats {
  /** Steps out with the handlers of this process (never more than the handler slots that asked for them). */
  pending: number;
}

export interface EngineOptions {
  /** The directory of task templates (YAML). */
  templatesDir: string;
  handlers: Iterable<HandlerLike>;
  /** Handlers running at once (async ones overlap on the event loop). Default {@link DEFAULT_CONCURRENCY} (8). */
  concurrency?: number;
  /** Consecutive failures that open a handler's circuit breaker. Default 5. */
  breakerFailureThreshold?: number;
  /** How long an open breaker refuses its handler's steps. Default 30000. */
  breakerCoolDownMs?: number;
  /** `bun-ffi` or `napi`; default: bun-ffi under Bun, napi under Node. */
  backend?: BackendName;
  /**
   * Also run the example Rust handlers of the fixture workflows beside
   * `handlers` (which take precedence). Default false: only `handlers` run.
   */
  builtinHandlers?: boolean;
}

export function hostOptions(options: EngineOptions, names: string[]): Record<string, unknown> {
  return {
    templates_dir: options.templatesDir,
    handlers: names,
    builtin_handlers: options.builtinHandlers ?? false,
    failure_threshold: options.breakerFailureThreshold ?? 5,
    cool_down_ms: options.breakerCoolDownMs ?? 30_000,
    language: "typescript",
  };
}

/** Runs tasks in this process with TypeScript handlers; needs no services. */
export class Engine {
  readonly #pool: HandlerPool;
  readonly #native: NativeEngine;

  private constructor(native: NativeEngine, pool: HandlerPool) {
    this.#native = native;
    this.#pool = pool;
    pool.start();
  }

  static async embedded(options: EngineOptions): Promise<Engine> {
    const handlers = handlersByName(options.handlers);
    const open = await opener(options.backend);
    const native = open(JSON.stringify(hostOptions(options, [...handlers.keys()])));
    return new Engine(native, new HandlerPool(native, handlers, options.concurrency ?? DEFAULT_CONCURRENCY));
  }

  /** Which binding carries this engine. */
  get backend(): BackendName {
    return this.#native.backend;
  }

  get stats(): PoolStats {
    return this.#pool.stats;
  }

  /**
   * Creates a task (at once, at `runAt`, or `delayMs` from now) and waits for
   * it to end. Its `report` leaves out the audit trail: `getTask` has it.
   */
  async run(
    namespace: string,
    name: string,
    context: unknown,
    options: { timeoutMs?: number; runAt?: Date | string; delayMs?: number } = {},
  ): Promise<TaskResult> {
    const runAt = options.runAt instanceof Date ? options.runAt.toISOString() : options.runAt;
    const request = stringifyJson({
      op: "run",
      namespace,
      name,
      context,
      timeout_ms: options.timeoutMs ?? 300_000,
      run_at: runAt,
      delay_ms: options.delayMs,
    });
    const reply = this.#native.call(request);
    const ended = this.#pool.runStarted();
    try {
      return taskResultFromApi(await reply);
    } finally {
      ended();
    }
  }

  /** A task as it is now, with its audit trail (`report.transitions`); TaskNotFoundError when there is none with that id. */
  async getTask(taskId: string): Promise<TaskResult> {
    return taskResultFromApi(await this.#native.call(JSON.stringify({ op: "get_task", task_id: String(taskId) })));
  }

  /**
   * Benchmarks: the mean microseconds of one host round trip (the step
   * handed to `handler` here, run, its result back in Rust), over `n`.
   */
  async roundtrip(handler: string, n: number): Promise<number> {
    const nanos = await this.#native.call(JSON.stringify({ op: "roundtrip", handler, n }));
    return Number(nanos) / 1000 / Math.max(1, n);
  }

  /** What the Rust host holds: `pending` (steps out with the handlers here). */
  async hostStats(): Promise<HostStats> {
    const s = (await this.#native.call(JSON.stringify({ op: "stats" }))) as Record<string, number | bigint>;
    return { pending: Number(s.pending) };
  }

  /** Graceful: running handlers finish and are recorded, then the engine stops. */
  close(): Promise<void> {
    return this.#pool.stop();
  }
}
