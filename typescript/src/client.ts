// A client of the HTTP API of `stepgraph serve`: create tasks, read them,
// wait for them (long-polling: the server answers when the task ends),
// find and count them, cancel, retry and resolve them, list the workers.
// Uses fetch; big integers in results are BigInt.

import { TERMINAL, taskResultFromApi, type TaskResult } from "./engine.js";
import { parseJson, stringifyJson } from "./json.js";
import { StepgraphError, TaskTimeoutError } from "./native.js";

/** The server refused a request: `status` is the HTTP status, `message` the server's explanation. */
export class ApiError extends StepgraphError {
  override name = "ApiError";
  readonly status: number;

  constructor(status: number, message: string) {
    super("Api", message);
    this.status = status;
  }
}

export interface CreateTaskOptions {
  version?: string;
  idempotencyKey?: string;
  priority?: number;
  /** Start at this time (a Date, or an RFC 3339 string): the task waits `scheduled`. */
  runAt?: Date | string;
  /** Start this many milliseconds from now. */
  delayMs?: number;
  /** W3C trace context of the caller's span: the task's spans join its trace. */
  traceparent?: string;
}

/** Which tasks `listTasks` finds; every field that is set must match. */
export interface TaskFilter {
  /** One state or several. */
  state?: string | string[];
  namespace?: string;
  name?: string;
  version?: string;
  /** RFC 3339. */
  createdAfter?: string;
  createdBefore?: string;
  idempotencyKey?: string;
  hasFailedStep?: boolean;
  /** Tasks per page (50; at most 500). */
  limit?: number;
  /** The `next_cursor` of the page before. */
  cursor?: string;
}

export class Client {
  readonly url: string;
  readonly timeoutMs: number;
  readonly #token: string | undefined;

  /**
   * `new Client("http://127.0.0.1:8080", { token })`: `token` is a bearer
   * token of the server's (see `stepgraph tokens new`); without one,
   * STEPGRAPH_TOKEN if set. A refusal rejects with ApiError (401 without a
   * valid token, 403 for a scope too small).
   */
  constructor(url: string, options: { timeoutMs?: number; token?: string } = {}) {
    this.url = (/^https?:\/\//.test(url) ? url : `http://${url}`).replace(/\/+$/, "");
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.#token = options.token ?? (process.env.STEPGRAPH_TOKEN || undefined);
  }

  /** Creates a task: `{task_id, created, ...}` (`created` false when the idempotency key names an existing task). */
  createTask(namespace: string, name: string, context: unknown, options: CreateTaskOptions = {}): Promise<any> {
    const body: Record<string, unknown> = { namespace, name, context };
    if (options.version !== undefined) body.version = options.version;
    if (options.idempotencyKey !== undefined) body.idempotency_key = options.idempotencyKey;
    if (options.priority !== undefined) body.priority = options.priority;
    if (options.runAt !== undefined) {
      body.run_at = options.runAt instanceof Date ? options.runAt.toISOString() : options.runAt;
    }
    if (options.delayMs !== undefined) body.delay_ms = options.delayMs;
    if (options.traceparent !== undefined) body.traceparent = options.traceparent;
    return this.#request("POST", "/v1/tasks", body);
  }

  /**
   * The task, as `Engine.run` returns one: state, result or error, its steps
   * by name; `report` is the API's whole view (the audit trail under `transitions`).
   */
  async getTask(taskId: string): Promise<TaskResult> {
    return taskResultFromApi(await this.#request("GET", `/v1/tasks/${encodeURIComponent(taskId)}`));
  }

  /** Waits until the task ends and returns it (as `getTask`); rejects with a {@link TaskTimeoutError} naming its state. */
  async wait(taskId: string, timeoutMs = 60_000): Promise<TaskResult> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const waitMs = Math.max(0, Math.min(deadline - Date.now(), 25_000));
      const task = await this.#request(
        "GET",
        `/v1/tasks/${encodeURIComponent(taskId)}/wait?timeout_ms=${waitMs}`,
        undefined,
        waitMs + this.timeoutMs,
      );
      if (TERMINAL.has(task.state)) return taskResultFromApi(task);
      if (Date.now() >= deadline) {
        throw new TaskTimeoutError("Timeout", `task ${taskId} did not end within ${timeoutMs} ms (state ${task.state})`);
      }
    }
  }

  /** Creates a task and waits for it. */
  async run(
    namespace: string,
    name: string,
    context: unknown,
    options: CreateTaskOptions & { timeoutMs?: number } = {},
  ): Promise<TaskResult> {
    const created = await this.createTask(namespace, name, context, options);
    return this.wait(created.task_id, options.timeoutMs);
  }

  /** Cancels the task (its running steps finish, nothing new starts). */
  cancel(taskId: string, options: { reason?: string } = {}): Promise<any> {
    const body = options.reason === undefined ? {} : { reason: options.reason };
    return this.#request("POST", `/v1/tasks/${encodeURIComponent(taskId)}/cancel`, body);
  }

  /** Finds tasks, newest first: `{tasks, next_cursor}` (next_cursor null on the last page). */
  listTasks(filter: TaskFilter = {}): Promise<any> {
    const params = new URLSearchParams();
    const states = filter.state === undefined ? [] : Array.isArray(filter.state) ? filter.state : [filter.state];
    for (const s of states) params.append("state", s);
    const fields: [string, unknown][] = [
      ["namespace", filter.namespace],
      ["name", filter.name],
      ["version", filter.version],
      ["created_after", filter.createdAfter],
      ["created_before", filter.createdBefore],
      ["idempotency_key", filter.idempotencyKey],
      ["has_failed_step", filter.hasFailedStep],
      ["limit", filter.limit],
      ["cursor", filter.cursor],
    ];
    for (const [key, value] of fields) if (value !== undefined) params.append(key, String(value));
    const query = params.toString();
    return this.#request("GET", `/v1/tasks${query ? `?${query}` : ""}`);
  }

  /** Tasks and steps by template and state; failures and retries in the last hour. */
  stats(): Promise<any> {
    return this.#request("GET", "/v1/stats");
  }

  /** Retries a failed task's steps in error (or only `step`) with fresh attempts. Needs an admin token. */
  retry(taskId: string, options: { step?: string; reason?: string } = {}): Promise<any> {
    const step = options.step === undefined ? "" : `/steps/${encodeURIComponent(options.step)}`;
    const body = options.reason === undefined ? {} : { reason: options.reason };
    return this.#request("POST", `/v1/tasks/${encodeURIComponent(taskId)}${step}/retry`, body);
  }

  /** Ends `step` by hand with `result`, which its dependents run with. Needs an admin token. */
  resolve(taskId: string, step: string, result: unknown, options: { reason?: string } = {}): Promise<any> {
    const body: Record<string, unknown> = { result };
    if (options.reason !== undefined) body.reason = options.reason;
    return this.#request("POST", `/v1/tasks/${encodeURIComponent(taskId)}/steps/${encodeURIComponent(step)}/resolve`, body);
  }

  /** The workers seen in the last day: `state` live, gone (missed heartbeats) or stopped. */
  async workers(): Promise<any[]> {
    return (await this.#request("GET", "/v1/workers")).workers;
  }

  /** The templates the server knows. */
  async templates(): Promise<any[]> {
    return (await this.#request("GET", "/v1/templates")).templates;
  }

  /** The server's view of its database and queue (rejects with ApiError 503 when unhealthy). */
  health(): Promise<any> {
    return this.#request("GET", "/health");
  }

  async #request(method: string, path: string, body?: unknown, timeoutMs = this.timeoutMs): Promise<any> {
    let response: Response;
    try {
      response = await fetch(this.url + path, {
        method,
        headers: {
          "content-type": "application/json",
          accept: "application/json",
          ...(this.#token ? { authorization: `Bearer ${this.#token}` } : {}),
        },
        body: body === undefined ? undefined : stringifyJson(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (e) {
      throw new StepgraphError("Unreachable", `cannot reach the stepgraph server at ${this.url}: ${(e as Error).message}`);
    }
    const text = await response.text();
    if (!response.ok) {
      let message = text || response.statusText;
      try {
        message = JSON.parse(text).error ?? message;
      } catch {
        // not JSON: the text is the message
      }
      throw new ApiError(response.status, message);
    }
    return parseJson(text);
  }
}
