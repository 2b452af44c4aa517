"""Errors raised by the client: each carries the API's error ``code`` and ``message``."""

from __future__ import annotations

from typing import Any


class TLServeError(Exception):
    """Any failure the client reports. ``code`` is the API's error code (or the client's own, below)."""

    def __init__(self, code: str, message: str, status: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} ({self.code})" if self.code else self.message


class APIError(TLServeError):
    """The service answered with an error body ``{"error": {"code", "message"}}`` and a 4xx/5xx status."""

    def __init__(
        self, code: str, message: str, status: int, details: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(code, message, status, details)
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status} {self.code})"


class ServiceUnreachable(TLServeError):
    """No answer from the service: refused connection, DNS failure or a timeout."""


class JobFailed(TLServeError):
    """A job ended ``failed`` or ``cancelled``; ``job`` is its last state, ``code``/``message`` its error."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        status = job.get("status", "failed")
        code = error.get("code") or f"job_{status}"
        message = error.get("message") or f"job {job.get('id')} ended {status}"
        super().__init__(code, f"{job.get('kind', 'job')} job {job.get('id')} {status}: {message}")
        self.job = job


class JobTimeout(TLServeError):
    """``wait()`` gave up before the job reached a final status; ``job`` is its last known state."""

    def __init__(self, job_id: str, timeout: float, job: dict[str, Any] | None) -> None:
        status = (job or {}).get("status", "unknown")
        super().__init__("wait_timeout", f"job {job_id} still {status} after {timeout:g}s")
        self.job = job
