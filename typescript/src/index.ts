// stepgraph for TypeScript: step handlers for the stepgraph workflow
// engine, on Bun (C ABI through bun:ffi) and Node (Node-API).

export {
  Batch,
  Context,
  Decision,
  PermanentError,
  RetryableError,
  StepHandler,
  defineHandler,
  type BatchCursor,
  type HandlerFn,
  type HandlerLike,
  type StepEvent,
} from "./handlers.js";
export { DEFAULT_CONCURRENCY, Engine, type EngineOptions, type HostStats, type StepView, type TaskResult } from "./engine.js";
export { Worker, type WorkerOptions } from "./worker.js";
export { ApiError, Client, type CreateTaskOptions } from "./client.js";
export {
  BackendUnavailableError,
  ConfigurationError,
  ConflictError,
  EventNotPendingError,
  ForkedProcessError,
  InvalidContextError,
  ShutDownError,
  StepgraphError,
  TaskNotFoundError,
  TaskTimeoutError,
  TemplateNotFoundError,
  type BackendName,
} from "./native.js";
export { parseJson, stringifyJson } from "./json.js";
export type { PoolStats } from "./pool.js";
