// The language boundary's types. Generated from workers/boundary.schema.json (the Rust types of workers/src/host/schema.rs) by `STEPGRAPH_BLESS=1 cargo test -p stepgraph-worker --lib boundary`; do not edit.

/** A batchable step's answer: `total_items` cut into slices of `batch_size`. */
export interface BatchRequest {
  total_items: number;
  batch_size: number;
}

/** The slice of a batch a batch worker step processes: items `start..end`. */
export interface EventCursor {
  batch_no: number;
  start: number;
  end: number;
}

/** Whether a failed step may run again (its retries permitting). */
export type FailureKind = "retryable" | "permanent";

/** A step handed to the language side: everything its handler needs. */
export interface StepEvent {
  event_id: number;
  task_id: string;
  step_id: string;
  namespace: string;
  task_name: string;
  step_name: string;
  handler: string;
  attempt: number;
  max_attempts: number;
  /** The task context. */
  input: unknown;
  config: unknown;
  dependency_results: Record<string, unknown>;
  /** How long the language side has before the host times the event out. */
  timeout_ms: number;
  batch_size?: number | null;
  cursor?: EventCursor | null;
  /** The W3C trace context of the step's handler span when the task is traced (spans the handler makes join it); else null. */
  traceparent?: string | null;
}

/** Why a handler failed, as its language reports it. */
export interface StepFailure {
  kind: FailureKind;
  message: string;
  backtrace?: string | null;
  /** A machine-readable reason (`invalid_output`, ...). */
  code?: string | null;
  /** The exception's class in the handler's language. */
  error_type?: string | null;
  /** A retryable failure's wish: not before this many milliseconds. */
  retry_after_ms?: number | null;
}

/** What the language side reports for an event: success with a JSON result, a failure (retryable or permanent), a decision, or a batch to cut. Its own type, not the engine's `StepOutcome`: a batch crosses as what the handler asked for, and its cursors are cut here, once for every language. */
export type StepResult =
  | { status: "success"; result: unknown }
  | { status: "decision"; branches: string[] }
  | { status: "batch"; batch: BatchRequest }
  | { status: "failure"; error: StepFailure };
