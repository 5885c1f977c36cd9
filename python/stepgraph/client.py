"""A client of the HTTP API of `stepgraph serve`: create tasks, read them,
wait for them (long-polling: the server answers when the task ends), find
them, count them, cancel, retry and resolve them, list the workers.
Standard library only."""

from __future__ import annotations

import datetime
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from ._native import StepgraphError, TaskTimeoutError
from .engine import TaskResult

TERMINAL = frozenset({"complete", "error", "cancelled", "resolved_manually"})


class ApiError(StepgraphError):
    """The server refused a request: ``status`` is the HTTP status,
    ``message`` (and the exception's text) the server's explanation."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Client:
    """``Client("http://127.0.0.1:8080", token=...)``; every call raises
    :class:`ApiError` for a refusal (401 without a valid token, 403 for a
    scope too small) and :class:`StepgraphError` when the server is
    unreachable. ``token`` is a bearer token of the server's (see
    ``stepgraph tokens new``); without one, ``STEPGRAPH_TOKEN`` if set."""

    def __init__(self, url: str, timeout: float = 30.0, token: Optional[str] = None):
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            self.url = "http://" + self.url
        self.timeout = timeout
        self.token = token if token is not None else (os.environ.get("STEPGRAPH_TOKEN") or None)

    def create_task(
        self,
        namespace: str,
        name: str,
        context: Any,
        version: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        priority: Optional[int] = None,
        run_at: Optional[datetime.datetime] = None,
        delay: Optional[float] = None,
        traceparent: Optional[str] = None,
    ) -> dict:
        """Creates a task; returns ``{"task_id": ..., "created": bool, ...}``
        (``created`` is false when the idempotency key names an existing task).
        With ``run_at`` (an aware ``datetime``, or an RFC 3339 string) or
        ``delay`` (seconds) the task is stored ``scheduled`` and starts then.
        ``traceparent`` (W3C trace context, e.g. from OpenTelemetry's
        ``propagate.inject``) makes the task's spans part of the caller's trace."""
        body: dict = {"namespace": namespace, "name": name, "context": context}
        if run_at is not None:
            if isinstance(run_at, datetime.datetime):
                if run_at.tzinfo is None:
                    raise ValueError("run_at must be timezone-aware (e.g. datetime.now(timezone.utc))")
                body["run_at"] = run_at.isoformat()
            else:
                body["run_at"] = run_at
        if delay is not None:
            body["delay_ms"] = int(delay * 1000)
        if version is not None:
            body["version"] = version
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if priority is not None:
            body["priority"] = priority
        if traceparent is not None:
            body["traceparent"] = traceparent
        return self._request("POST", "/v1/tasks", body)

    def get_task(self, task_id: str) -> TaskResult:
        """The task, as ``Engine.run`` returns one: state, result or error,
        its steps by name; ``report`` is the API's whole view (with the
        audit trail under ``transitions``)."""
        return TaskResult.from_api(self._request("GET", f"/v1/tasks/{_quote(task_id)}"))

    def wait(self, task_id: str, timeout: float = 60.0) -> TaskResult:
        """Waits until the task ends and returns it (as :meth:`get_task`);
        raises :class:`TaskTimeoutError` (a :class:`StepgraphError` and a
        built-in ``TimeoutError``, naming the task's state) if it has not
        ended after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            wait_ms = int(min(left, 25.0) * 1000)
            task = self._request(
                "GET", f"/v1/tasks/{_quote(task_id)}/wait?timeout_ms={wait_ms}", timeout=wait_ms / 1000 + self.timeout
            )
            if task["state"] in TERMINAL:
                return TaskResult.from_api(task)
            if time.monotonic() >= deadline:
                raise TaskTimeoutError(f"task {task_id} did not end within {timeout}s (state {task['state']})")

    def run(self, namespace: str, name: str, context: Any, timeout: float = 60.0, **kwargs: Any) -> TaskResult:
        """Creates a task and waits for it."""
        created = self.create_task(namespace, name, context, **kwargs)
        return self.wait(created["task_id"], timeout)

    def cancel(self, task_id: str, reason: Optional[str] = None) -> dict:
        """Cancels the task (its running steps finish, nothing new starts);
        ``reason`` is kept in its audit trail."""
        return self._request("POST", f"/v1/tasks/{_quote(task_id)}/cancel", {"reason": reason} if reason is not None else {})

    def list_tasks(
        self,
        state: Any = None,
        namespace: Optional[str] = None,
        name: Optional[str] = None,
        version: Optional[str] = None,
        created_after: Optional[str] = None,
        created_before: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        has_failed_step: Optional[bool] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> dict:
        """Finds tasks, newest first: ``{"tasks": [...], "next_cursor": ...}``.
        ``state`` is one state or a list of them; ``created_after`` and
        ``created_before`` are RFC 3339 times; pass ``next_cursor`` as
        ``cursor`` for the next page (None when this one was the last)."""
        params: list = []
        states = [state] if isinstance(state, str) else list(state or [])
        params.extend(("state", s) for s in states)
        for key, value in (
            ("namespace", namespace),
            ("name", name),
            ("version", version),
            ("created_after", created_after),
            ("created_before", created_before),
            ("idempotency_key", idempotency_key),
            ("limit", limit),
            ("cursor", cursor),
        ):
            if value is not None:
                params.append((key, str(value)))
        if has_failed_step is not None:
            params.append(("has_failed_step", "true" if has_failed_step else "false"))
        query = urllib.parse.urlencode(params)
        return self._request("GET", "/v1/tasks" + (f"?{query}" if query else ""))

    def stats(self) -> dict:
        """Tasks and steps by template and state; failures and retries in the last hour."""
        return self._request("GET", "/v1/stats")

    def retry(self, task_id: str, step: Optional[str] = None, reason: Optional[str] = None) -> dict:
        """Retries a failed task's steps in error (or only ``step``) with fresh
        attempts; ``reason`` goes into the audit trail. Needs an admin token."""
        path = f"/v1/tasks/{_quote(task_id)}" + (f"/steps/{_quote(step)}" if step else "") + "/retry"
        return self._request("POST", path, {"reason": reason} if reason is not None else {})

    def resolve(self, task_id: str, step: str, result: Any, reason: Optional[str] = None) -> dict:
        """Ends ``step`` by hand with ``result``, which its dependents run with.
        Needs an admin token."""
        body: dict = {"result": result}
        if reason is not None:
            body["reason"] = reason
        return self._request("POST", f"/v1/tasks/{_quote(task_id)}/steps/{_quote(step)}/resolve", body)

    def workers(self) -> list:
        """The workers seen in the last day: ``state`` live, gone (missed heartbeats) or stopped."""
        return self._request("GET", "/v1/workers")["workers"]

    def templates(self) -> list:
        """The templates the server knows."""
        return self._request("GET", "/v1/templates")["templates"]

    def health(self) -> dict:
        """The server's view of its database and queue (raises ApiError 503 when unhealthy)."""
        return self._request("GET", "/health")

    def _request(self, method: str, path: str, body: Any = None, timeout: Optional[float] = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, method=method, data=data)
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace") or e.reason
            raise ApiError(e.code, message) from None
        except (urllib.error.URLError, OSError) as e:
            raise StepgraphError(f"cannot reach the stepgraph server at {self.url}: {e}") from None


def _quote(task_id: str) -> str:
    return urllib.parse.quote(str(task_id), safe="")
