"""Liveness/readiness and Prometheus metrics (behind an API key when ``TLSERVE_METRICS_REQUIRE_KEY`` is set)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from core.db import session_scope
from core.settings import get_settings
from service.deps import require_any_key

router = APIRouter(tags=["health"])


def _check_broker(url: str) -> str | None:
    if url.startswith("memory://"):
        return None
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        return None
    return None


@router.get("/healthz")
def healthz() -> Response:
    settings = get_settings()
    checks: dict[str, Any] = {}
    ok = True
    try:
        with session_scope() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, never raises
        ok, checks["database"] = False, f"error: {type(exc).__name__}"
    try:
        _check_broker(settings.broker_url)
        checks["broker"] = "ok" if not settings.broker_is_memory else "in-process (memory://)"
    except Exception as exc:
        ok, checks["broker"] = False, f"error: {type(exc).__name__}"
    return JSONResponse({"status": "ok" if ok else "degraded", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    if get_settings().metrics_require_key:
        require_any_key(request)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
