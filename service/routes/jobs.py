"""/v1/jobs: status, cancellation and a server-sent event stream of progress."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from core import jobs
from core.db import session_scope
from service.deps import SessionDep, SettingsDep, TenantDep
from service.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut])
def list_jobs(session: SessionDep, tenant_id: TenantDep) -> list[JobOut]:
    return [JobOut.from_row(j) for j in jobs.list_jobs(session, tenant_id)]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, tenant_id: TenantDep) -> JobOut:
    return JobOut.from_row(jobs.get_job(session, tenant_id, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, tenant_id: TenantDep) -> JobOut:
    return JobOut.from_row(jobs.request_cancel(session, tenant_id, job_id))


def _snapshot(tenant_id: str, job_id: str) -> dict[str, Any]:
    with session_scope() as s:
        return JobOut.from_row(jobs.get_job(s, tenant_id, job_id)).model_dump(mode="json")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "`job` events, each a JobOut"}},
)
async def job_events(job_id: str, tenant_id: TenantDep, settings: SettingsDep) -> StreamingResponse:
    """One ``job`` event whenever the job changes, the last one when it reaches a final status."""
    first = await run_in_threadpool(_snapshot, tenant_id, job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        snapshot, last, idle = first, None, 0.0
        while True:
            if snapshot != last:
                yield f"event: job\ndata: {json.dumps(snapshot)}\n\n"
                last, idle = snapshot, 0.0
                if snapshot["status"] in jobs.TERMINAL:
                    return
            elif idle >= 15.0:
                yield ": keep-alive\n\n"
                idle = 0.0
            await asyncio.sleep(settings.job_event_poll_s)
            idle += settings.job_event_poll_s
            snapshot = await run_in_threadpool(_snapshot, tenant_id, job_id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
