"""The FastAPI application: routers, the body-size limit, request metrics and the one error handler."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import get_settings
from service.batching import MicroBatcher
from service.errors import install_error_handlers
from service.limits import BodySizeLimit
from service.ratelimit import close_async_limiters
from service.routes import aliases, backbones, datasets, features, health, images, jobs, models, similarity, ui, usage
from service.streams import StreamSlots

REQUESTS = Counter("tlserve_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("tlserve_http_request_seconds", "HTTP request latency", ["method", "route"])
# Label values must come from a fixed set: any token is a valid HTTP method, and each new label value is a
# new time series, so a caller could grow /metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


class RequestMetrics:
    """Count and time every HTTP request by method, route template and status, as plain ASGI middleware
    (Starlette's ``BaseHTTPMiddleware`` runs each request through an extra task and memory stream, which
    costs the predict path a measurable share of its latency)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            method = method_label(scope["method"])
            REQUESTS.labels(method, path, status).inc()
            LATENCY.labels(method, path).observe(time.perf_counter() - start)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    app.state.batcher = MicroBatcher(
        settings.batch_max_size,
        settings.inference_threads,
        settings.batch_window_s,
        queue_size=settings.batch_queue_size,
        deadline_s=settings.batch_deadline_s,
    )
    reaper = sweeper = None
    if settings.broker_is_memory:  # jobs run in this process: so do their reaper and the sweeper
        from core.sweeper import SweepThread
        from workers.reaper import Reaper

        reaper, sweeper = Reaper().start(), SweepThread().start()
    yield
    if reaper is not None:
        reaper.stop()
    if sweeper is not None:
        sweeper.stop()
    app.state.batcher.close()
    await close_async_limiters()
    from core.db import dispose_engines

    dispose_engines()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title="tlserve", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.state.streams = StreamSlots()
    for module in (health, datasets, images, jobs, backbones, features, similarity, models, aliases, usage, ui):
        app.include_router(module.router)
    app.include_router(models.compare_router)

    app.add_middleware(RequestMetrics)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    return app
