// The handlers' side of the host: pulls events with as many credits as
// there are free slots, runs each handler (sync or async) on this thread's
// event loop, and reports its outcome. A handler that outlives its step's
// timeout gives its slot back when the engine times the step out; if it
// settles later, the engine refuses that result and `refused` counts it.
//
// A handler that ends while no wait is out reports with `completeAndNext`,
// which runs the step's commit on this thread and hands back the events it
// made ready: a chain of quick steps never leaves the event loop's thread.
// The loop gives such handlers one turn of the event loop before it waits
// on another thread for events.

import { Context, runHandler, type Outcome, type StepEvent, type StepHandler } from "./handlers.js";
import { parseJson, stringifyJson } from "./json.js";
import { StepgraphError, type NativeEngine } from "./native.js";

/** How long one wait for events lasts before it is renewed. */
const WAIT_MS = 1000;

/** Steps reported with completeAndNext in a row before the event loop gets a turn. */
const INLINE_CHAIN = 64;

export interface PoolStats {
  /** Handlers running now. */
  running: number;
  /** Steps whose outcome was reported. */
  completed: number;
  /** Late outcomes the engine refused (their step had timed out). */
  refused: number;
  /** Events that came back with a step's report (completeAndNext), not from a wait. */
  inline: number;
}

export class HandlerPool {
  readonly #native: NativeEngine;
  readonly #handlers: Map<string, StepHandler>;
  readonly #concurrency: number;
  #running = 0;
  #completed = 0;
  #refused = 0;
  #inline = 0;
  #slotFreed: (() => void) | undefined;
  #stopping = false;
  #loop: Promise<void> | undefined;
  #idle: (() => void) | undefined;
  /** A nextEvents is out (its slots are counted: completeAndNext must not count them again). */
  #waiting = false;
  /** completeAndNext calls since the loop last had a turn. */
  #chain = 0;
  /** Engine.run calls waiting for their task here. */
  #runs = 0;
  /** Steps reported or tasks started on this thread since the loop's last turn. */
  #active = false;

  constructor(native: NativeEngine, handlers: Map<string, StepHandler>, concurrency: number) {
    this.#native = native;
    this.#handlers = handlers;
    this.#concurrency = Math.max(1, Math.floor(concurrency));
  }

  get stats(): PoolStats {
    return { running: this.#running, completed: this.#completed, refused: this.#refused, inline: this.#inline };
  }

  start(): void {
    this.#loop ??= this.#pull();
  }

  async #pull(): Promise<void> {
    while (!this.#stopping) {
      if (this.#running >= this.#concurrency) {
        await new Promise<void>((resolve) => (this.#slotFreed = resolve));
        continue;
      }
      if (this.#running > 0) {
        // While runs of this process keep ending and starting on this
        // thread, the loop keeps out of the way: a wait of its own would
        // take the driving to another thread. A run's reply comes a turn
        // after its task ends, and its caller may start the next one then.
        do {
          this.#active = false;
          await new Promise<void>((resolve) => setImmediate(resolve));
          this.#chain = 0;
        } while (!this.#stopping && this.#running === 0 && this.#runs > 0 && this.#active);
        if (this.#stopping) return;
        if (this.#running >= this.#concurrency) continue;
      }
      let text: string;
      this.#waiting = true;
      try {
        text = await this.#native.nextEvents(this.#concurrency - this.#running, WAIT_MS);
      } catch (e) {
        if (e instanceof StepgraphError && e.code === "Closed") return;
        throw e;
      } finally {
        this.#waiting = false;
      }
      for (const event of parseJson(text) as StepEvent[]) this.#dispatch(event);
    }
  }

  /**
   * Engine.run's start: takes the new task's first events on this thread
   * (running what is runnable when nothing else drives) unless a wait is
   * out, which gets them; the returned function marks the run's end.
   */
  runStarted(): () => void {
    this.#runs++;
    this.#active = true;
    if (!this.#waiting && !this.#stopping && this.#running < this.#concurrency) {
      try {
        const next = parseJson(this.#native.pollEvents(this.#concurrency - this.#running)) as StepEvent[];
        this.#inline += next.length;
        for (const e of next) this.#dispatch(e);
      } catch (e) {
        // The run itself reports a closed or forked engine.
        if (!(e instanceof StepgraphError)) throw e;
      }
    }
    return () => {
      this.#runs--;
    };
  }

  #dispatch(event: StepEvent): void {
    this.#running++;
    const ctx = new Context(event);
    const handler = this.#handlers.get(event.handler)!;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.#running--;
      const wake = this.#slotFreed;
      this.#slotFreed = undefined;
      wake?.();
      if (this.#running === 0) this.#idle?.();
    };
    // The engine fails the step at its deadline; the slot comes back then too.
    const deadline = setTimeout(release, event.timeout_ms + 50);
    const report = (outcome: Outcome) => {
      let next: StepEvent[] = [];
      try {
        const text = stringifyJson(outcome);
        if (!this.#waiting && !this.#stopping) {
          this.#chain++;
          this.#active = true;
          const free = this.#concurrency - this.#running + (released ? 0 : 1);
          next = parseJson(this.#native.completeAndNext(event.event_id, text, free)) as StepEvent[];
          this.#inline += next.length;
        } else {
          this.#native.complete(event.event_id, text);
        }
        this.#completed++;
      } catch (e) {
        if (!(e instanceof StepgraphError)) throw e;
        if (e.code === "NotPending") this.#refused++;
        else if (e.code !== "Closed") console.error(`stepgraph: reporting step ${ctx.stepName}: ${e.message}`);
      } finally {
        release();
      }
      for (const e of next) this.#dispatch(e);
    };
    runHandler(handler, ctx).then((outcome) => {
      clearTimeout(deadline);
      if (this.#chain < INLINE_CHAIN) return report(outcome);
      // A long chain of steps that end at once gives the event loop a turn.
      setImmediate(() => {
        this.#chain = 0;
        report(outcome);
      });
    });
  }

  /** Resolves when no handler is running (or after `timeoutMs`). */
  idle(timeoutMs: number): Promise<void> {
    if (this.#running === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.#idle = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /**
   * Graceful: the engine hands out nothing new, the handlers running here
   * finish and their outcomes are recorded, then the engine stops.
   */
  async stop(): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    const wake = this.#slotFreed;
    this.#slotFreed = undefined;
    wake?.();
    await this.#native.call(JSON.stringify({ op: "shutdown" }));
    await this.#loop;
    this.#native.free();
  }
}
