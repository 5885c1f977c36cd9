// A worker process's TypeScript side: handlers for the steps of some
// namespaces, in a PostgreSQL-backed deployment (tasks come from
// `stepgraph serve`; steps over PostgreSQL's queue or RabbitMQ).

import { handlersByName, type HandlerLike } from "./handlers.js";
import { DEFAULT_CONCURRENCY, hostOptions } from "./engine.js";
import { opener, type BackendName } from "./native.js";
import { HandlerPool, type PoolStats } from "./pool.js";

export interface WorkerOptions {
  databaseUrl: string;
  /**
   * `postgres`, `rabbitmq` (with STEPGRAPH_AMQP_URL) or an AMQP URL
   * (`amqp://guest:guest@127.0.0.1:5672/%2f`); default STEPGRAPH_QUEUE, else
   * `postgres`. Every other setting, the AMQP prefix among them, comes from the
   * same STEPGRAPH_* variables as `stepgraph worker`'s.
   */
  queue?: string;
  /** The namespaces served; default every template's. */
  namespaces?: string[];
  handlers: Iterable<HandlerLike>;
  /** Handlers running at once. Default {@link DEFAULT_CONCURRENCY} (8). */
  concurrency?: number;
  /** The templates (the worker orchestrates its own steps' results). Default $STEPGRAPH_TEMPLATES_DIR or ./templates. */
  templatesDir?: string;
  breakerFailureThreshold?: number;
  breakerCoolDownMs?: number;
  backend?: BackendName;
  /** Also run the example Rust handlers of the fixture workflows here. Default false. */
  builtinHandlers?: boolean;
}

/** Serves `handlers` until `stop()` (or SIGINT/SIGTERM, under `run()`). */
export class Worker {
  readonly #options: WorkerOptions;
  #pool: HandlerPool | undefined;
  #stopped: Promise<void> | undefined;
  #wakeRun: (() => void) | undefined;

  constructor(options: WorkerOptions) {
    if (!options.databaseUrl) throw new TypeError("a Worker needs databaseUrl");
    this.#options = options;
  }

  get stats(): PoolStats | undefined {
    return this.#pool?.stats;
  }

  /** Connects and starts serving; resolves once it serves. */
  async start(): Promise<this> {
    if (this.#pool) return this;
    const o = this.#options;
    const handlers = handlersByName(o.handlers);
    const templatesDir = o.templatesDir ?? process.env.STEPGRAPH_TEMPLATES_DIR ?? "templates";
    const open = await opener(o.backend);
    const native = open(
      JSON.stringify({
        ...hostOptions({ ...o, templatesDir }, [...handlers.keys()]),
        database_url: o.databaseUrl,
        queue: o.queue,
        namespaces: o.namespaces ?? [],
        concurrency: Math.max(1, o.concurrency ?? DEFAULT_CONCURRENCY),
      }),
    );
    this.#pool = new HandlerPool(native, handlers, o.concurrency ?? DEFAULT_CONCURRENCY);
    this.#pool.start();
    return this;
  }

  /** Stops asking for work; running handlers finish, the rest is redelivered. */
  stop(): Promise<void> {
    this.#wakeRun?.();
    this.#stopped ??= this.#pool?.stop() ?? Promise.resolve();
    return this.#stopped;
  }

  /** Serves until SIGINT or SIGTERM, then stops gracefully. */
  async run(): Promise<void> {
    await this.start();
    await new Promise<void>((resolve) => {
      const done = () => {
        process.off("SIGINT", done);
        process.off("SIGTERM", done);
        resolve();
      };
      process.on("SIGINT", done);
      process.on("SIGTERM", done);
      this.#wakeRun = done;
    });
    await this.stop();
  }
}
