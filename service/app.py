"""The FastAPI application: routers, the body-size limit, request metrics and the one error handler."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import Counter, Histogram

from core.settings import get_settings
from service.batching import MicroBatcher
from service.errors import install_error_handlers
from service.limits import BodySizeLimit
from service.routes import aliases, backbones, datasets, features, health, images, jobs, models, similarity, ui, usage
from service.streams import StreamSlots

REQUESTS = Counter("tlserve_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("tlserve_http_request_seconds", "HTTP request latency", ["method", "route"])
# Label values must come from a fixed set: any token is a valid HTTP method, and each new label value is a
# new time series, so a caller could grow /metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


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

    @app.middleware("http")
    async def _metrics(request: Request, call_next):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        method = method_label(request.method)
        REQUESTS.labels(method, path, response.status_code).inc()
        LATENCY.labels(method, path).observe(time.perf_counter() - start)
        return response

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    return app
