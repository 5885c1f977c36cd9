"""A client of the HTTP API of `stepgraph serve`: create tasks, read them,
wait for them (long-polling: the server answers when the task ends), cancel
them. Standard library only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from ._native import StepgraphError

TERMINAL = frozenset({"complete", "error", "cancelled", "resolved_manually"})


class ApiError(StepgraphError):
    """The server refused a request: ``status`` is the HTTP status, the
    message is the server's explanation."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Client:
    """``Client("http://127.0.0.1:8080")``; every call raises :class:`ApiError`
    for a refusal and :class:`StepgraphError` when the server is unreachable."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            self.url = "http://" + self.url
        self.timeout = timeout

    def create_task(
        self,
        namespace: str,
        name: str,
        context: Any,
        version: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        priority: Optional[int] = None,
    ) -> dict:
        """Creates a task; returns ``{"task_id": ..., "created": bool, ...}``
        (``created`` is false when the idempotency key names an existing task)."""
        body: dict = {"namespace": namespace, "name": name, "context": context}
        if version is not None:
            body["version"] = version
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        if priority is not None:
            body["priority"] = priority
        return self._request("POST", "/v1/tasks", body)

    def get_task(self, task_id: str) -> dict:
        """The task: state, result or error, its steps and its timeline."""
        return self._request("GET", f"/v1/tasks/{_quote(task_id)}")

    def wait(self, task_id: str, timeout: float = 60.0) -> dict:
        """Waits until the task ends and returns it; raises ``TimeoutError``
        (with the task's state) if it has not ended after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(0.0, deadline - time.monotonic())
            wait_ms = int(min(left, 25.0) * 1000)
            task = self._request(
                "GET", f"/v1/tasks/{_quote(task_id)}/wait?timeout_ms={wait_ms}", timeout=wait_ms / 1000 + self.timeout
            )
            if task["state"] in TERMINAL:
                return task
            if time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} did not end within {timeout}s (state {task['state']})")

    def run(self, namespace: str, name: str, context: Any, timeout: float = 60.0, **kwargs: Any) -> dict:
        """Creates a task and waits for it."""
        created = self.create_task(namespace, name, context, **kwargs)
        return self.wait(created["task_id"], timeout)

    def cancel(self, task_id: str) -> dict:
        """Cancels the task (its running steps finish, nothing new starts)."""
        return self._request("POST", f"/v1/tasks/{_quote(task_id)}/cancel")

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
