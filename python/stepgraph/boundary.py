"""The language boundary's types. Generated from workers/boundary.schema.json (the Rust types of workers/src/host/schema.rs) by `STEPGRAPH_BLESS=1 cargo test -p stepgraph-worker --lib boundary`; do not edit."""

from typing import Any, Dict, List, Literal, Optional, TypedDict, Union


class BatchRequest(TypedDict):
    """A batchable step's answer: `total_items` cut into slices of `batch_size`."""

    total_items: int
    batch_size: int


class EventCursor(TypedDict):
    """The slice of a batch a batch worker step processes: items `start..end`."""

    batch_no: int
    start: int
    end: int


FailureKind = Literal["retryable", "permanent"]


class _StepEventRequired(TypedDict):
    event_id: int
    task_id: str
    step_id: str
    namespace: str
    task_name: str
    step_name: str
    handler: str
    attempt: int
    max_attempts: int
    #: The task context.
    input: Any
    config: Any
    dependency_results: Dict[str, Any]
    #: How long the language side has before the host times the event out.
    timeout_ms: int


class StepEvent(_StepEventRequired, total=False):
    """A step handed to the language side: everything its handler needs."""

    batch_size: Optional[int]
    cursor: Optional["EventCursor"]
    #: The W3C trace context of the step's handler span when the task is traced (spans the handler makes join it); else null.
    traceparent: Optional[str]


class _StepFailureRequired(TypedDict):
    kind: "FailureKind"
    message: str


class StepFailure(_StepFailureRequired, total=False):
    """Why a handler failed, as its language reports it."""

    backtrace: Optional[str]
    #: A machine-readable reason (`invalid_output`, ...).
    code: Optional[str]
    #: The exception's class in the handler's language.
    error_type: Optional[str]
    #: A retryable failure's wish: not before this many milliseconds.
    retry_after_ms: Optional[int]


class StepResultSuccess(TypedDict):
    status: Literal["success"]
    result: Any


class StepResultDecision(TypedDict):
    status: Literal["decision"]
    branches: List[str]


class StepResultBatch(TypedDict):
    status: Literal["batch"]
    batch: "BatchRequest"


class StepResultFailure(TypedDict):
    status: Literal["failure"]
    error: "StepFailure"


#: What the language side reports for an event: success with a JSON result, a failure (retryable or permanent), a decision, or a batch to cut. Its own type, not the engine's `StepOutcome`: a batch crosses as what the handler asked for, and its cursors are cut here, once for every language.
StepResult = Union[StepResultSuccess, StepResultDecision, StepResultBatch, StepResultFailure]
