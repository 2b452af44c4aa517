"""Server-sent event streams of a job that hold no database connection while they wait: each poll opens a
short session of its own. A tenant may hold a bounded number of open streams per API process (429
``too_many_streams`` beyond it); a stream ends after a maximum lifetime (the client reconnects) and sends a
keep-alive comment while nothing changes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core.errors import TooManyStreams


class StreamSlots:
    """Open streams per tenant in this process."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, tenant_id: str, cap: int) -> None:
        with self._lock:
            n = self._open.get(tenant_id, 0)
            if n >= cap:
                raise TooManyStreams(f"{n} event streams are open for this tenant (at most {cap}); close one first")
            self._open[tenant_id] = n + 1

    def release(self, tenant_id: str) -> None:
        with self._lock:
            n = self._open.get(tenant_id, 0) - 1
            if n > 0:
                self._open[tenant_id] = n
            else:
                self._open.pop(tenant_id, None)

    def count(self, tenant_id: str) -> int:
        with self._lock:
            return self._open.get(tenant_id, 0)


class SlotResponse(StreamingResponse):
    """A streaming response that gives its slot back however the stream ends (done, timed out, client gone)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            self._release, release = None, self._release
            release()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


async def job_event_stream(
    snapshot: Callable[[], dict[str, Any]],
    first: dict[str, Any],
    terminal: frozenset[str] | set[str],
    *,
    poll_s: float,
    keepalive_s: float,
    max_s: float,
) -> AsyncIterator[str]:
    """One ``job`` event whenever the snapshot changes, the last one at a final status; ends after ``max_s``."""
    current, last = first, None
    started = last_sent = time.monotonic()
    while True:
        now = time.monotonic()
        if current != last:
            yield f"event: job\ndata: {json.dumps(current)}\n\n"
            last, last_sent = current, now
            if current["status"] in terminal:
                return
        elif now - last_sent >= keepalive_s:
            yield ": keep-alive\n\n"
            last_sent = now
        if now - started >= max_s:
            yield ": stream lifetime reached; reconnect to follow the job\n\n"
            return
        await asyncio.sleep(poll_s)  # the stream's poll interval (a session is opened per poll, not held)
        current = await run_in_threadpool(snapshot)
