"""One hierarchy of domain errors. Each carries its HTTP status and a stable code; the service renders
them as ``{"error": {"code", "message"}}`` in one handler. Nothing outside ``service/`` raises
``HTTPException``."""

from __future__ import annotations

from typing import Any


class TLServeError(Exception):
    status_code: int = 500
    code: str = "internal_error"

    retry_after: int | None = None  # seconds; sent as ``Retry-After`` when set

    def __init__(
        self, message: str, *, code: str | None = None, details: Any = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        if retry_after is not None:
            self.retry_after = max(1, int(retry_after))

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidInput(TLServeError):
    """The client sent something we cannot use; the message says what to fix."""

    status_code = 422
    code = "invalid_input"


class BadRequest(TLServeError):
    status_code = 400
    code = "bad_request"


class Unauthorized(TLServeError):
    status_code = 401
    code = "unauthorized"


class ForbiddenScope(TLServeError):
    """A valid key whose scope does not cover the route (a ``predict`` key outside the prediction routes)."""

    status_code = 403
    code = "forbidden_scope"


class NotFound(TLServeError):
    status_code = 404
    code = "not_found"


class QuotaExceeded(TLServeError):
    """A stored quota is used up: retrying later does not help until something is deleted (no Retry-After)."""

    status_code = 403
    code = "quota_exceeded"


class RateLimited(TLServeError):
    status_code = 429
    code = "rate_limited"
    retry_after = 1


class TooManyStreams(TLServeError):
    status_code = 429
    code = "too_many_streams"
    retry_after = 5


class Conflict(TLServeError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(TLServeError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(TLServeError):
    status_code = 415
    code = "unsupported_media_type"


class ServiceUnavailable(TLServeError):
    status_code = 503
    code = "unavailable"


class Overloaded(TLServeError):
    """Shed at once rather than queued without bound: a model's queue is full or its deadline passed."""

    status_code = 503
    code = "overloaded"
    retry_after = 1


class JobCancelled(TLServeError):
    """Raised inside a job when a cancel request is seen; the task base marks the job cancelled."""

    status_code = 409
    code = "job_cancelled"


class JobReleased(Exception):  # noqa: N818 - a signal, like JobCancelled, not an error of the job
    """Raised inside a job when its worker is draining (SIGTERM): the job goes back to the queue and resumes
    from its last checkpoint or chunk on another worker."""


class LeaseLost(Exception):  # noqa: N818
    """Raised inside a job whose lease was taken over (its heartbeat stopped long enough for the reaper to
    hand it to another worker): this worker stops and touches nothing more."""


class WeightsError(TLServeError):
    """A weights file is missing, fails its checksum or does not fit the architecture."""

    status_code = 422
    code = "weights_error"
