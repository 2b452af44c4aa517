"""/v1/jobs: status, cancellation and a server-sent event stream of progress."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from core import jobs
from core.db import session_scope
from core.status import JobStatus
from core.storage import get_storage
from service.deps import SessionDep, SettingsDep, TenantDep
from service.pagination import PageDep, set_link_header
from service.schemas import JobOut
from service.streams import SlotResponse, StreamSlots, job_event_stream

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=list[JobOut])
def list_jobs(
    request: Request, response: Response, session: SessionDep, tenant_id: TenantDep, page: PageDep
) -> list[JobOut]:
    """One page of jobs, newest first; the next page's URL is in the ``Link`` header."""
    result = jobs.list_jobs(session, tenant_id, page.limit, page.cursor)
    set_link_header(request, response, result.next_cursor)
    return [JobOut.from_row(j) for j in result.items]


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, tenant_id: TenantDep) -> JobOut:
    return JobOut.from_row(jobs.get_job(session, tenant_id, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, tenant_id: TenantDep) -> JobOut:
    """A queued job is cancelled at once (its upload removed with it); a running one within one batch."""
    job = jobs.request_cancel(session, tenant_id, job_id)
    out = JobOut.from_row(job)
    if job.status == JobStatus.CANCELLED and (prefix := jobs.upload_of(job)) is not None:
        session.commit()  # the upload goes only once the cancel is recorded
        get_storage().delete_prefix(prefix)
    return out


def _snapshot(tenant_id: str, job_id: str) -> dict[str, Any]:
    with session_scope() as s:  # a short session per poll: a waiting stream holds no connection
        return JobOut.from_row(jobs.get_job(s, tenant_id, job_id)).model_dump(mode="json")


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "`job` events, each a JobOut"},
        429: {"description": "too many event streams open for this tenant (`too_many_streams`)"},
    },
)
async def job_events(job_id: str, request: Request, tenant_id: TenantDep, settings: SettingsDep) -> StreamingResponse:
    """One ``job`` event whenever the job changes, the last one when it reaches a final status. A stream
    ends after ``event_stream_max_s`` (reconnect to go on) and sends keep-alive comments meanwhile."""
    first = await run_in_threadpool(_snapshot, tenant_id, job_id)  # 404 before the stream starts
    slots: StreamSlots = request.app.state.streams
    slots.acquire(tenant_id, settings.max_event_streams_per_tenant)
    stream = job_event_stream(
        partial(_snapshot, tenant_id, job_id),
        first,
        jobs.TERMINAL,
        poll_s=settings.job_event_poll_s,
        keepalive_s=settings.event_stream_keepalive_s,
        max_s=settings.event_stream_max_s,
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return SlotResponse(stream, partial(slots.release, tenant_id), media_type="text/event-stream", headers=headers)
