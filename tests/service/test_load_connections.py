"""Issue 10, item 1: no request holds a database connection while it waits. Event streams poll in short
sessions of their own and are capped per tenant; authentication returns the tenant only. On the real
PostgreSQL with the default pool (5 + 10 overflow), one tenant's open streams leave another tenant's
requests answered at once."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from tests.helpers import auth

STREAMS = 30


@contextmanager
def live_server() -> Iterator[str]:
    """The app under a real uvicorn on a loopback socket that listens before the server thread starts (so
    requests queue in the backlog until the app is up; nothing is polled)."""
    import uvicorn

    from service.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def _queued_job(tenant_key: str) -> str:
    from core.db import session_scope
    from core.jobs import create_job
    from core.tenancy import authenticate

    with session_scope() as s:
        return create_job(s, tenant_id=authenticate(s, tenant_key).tenant_id, kind="ingest").id


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_open_event_streams_do_not_starve_another_tenant(
    db: str, api_key: str, other_api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.db import get_engine
    from core.settings import get_settings

    monkeypatch.setenv("TLSERVE_QUEUED_GRACE_S", "3600")  # the in-process reaper leaves the job queued
    get_settings.cache_clear()
    cap = get_settings().max_event_streams_per_tenant
    pool = get_engine().pool
    assert cap + 0 > pool.size() + pool._max_overflow  # type: ignore[attr-defined]  # more streams than connections
    job_id = _queued_job(api_key)

    with live_server() as url, ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=url, timeout=httpx.Timeout(20.0)))
        statuses, codes, readers = [], [], []
        for _ in range(STREAMS):
            resp = stack.enter_context(client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(api_key)))
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                lines = resp.iter_lines()
                readers.append(lines)  # an abandoned line iterator closes its connection: keep each one
                first = next(line for line in lines if line.startswith("data: "))
                assert json.loads(first[6:])["status"] == "queued"  # the stream is open and waiting
            else:
                resp.read()
                codes.append(resp.json()["error"]["code"])
                assert int(resp.headers["Retry-After"]) > 0
        assert statuses.count(200) == cap
        assert codes == ["too_many_streams"] * (STREAMS - cap)

        # While every stream waits, the pool is free: another tenant's list and this tenant's own job are
        # answered. The pool waits up to 30 s for a connection; the 20 s request timeout trips only if blocked.
        other = client.get("/v1/datasets", headers=auth(other_api_key))
        assert other.status_code == 200, other.text
        mine = client.get(f"/v1/jobs/{job_id}", headers=auth(api_key))
        assert mine.status_code == 200, mine.text


def _stream(snapshots: list[dict], *, keepalive_s: float, max_s: float) -> list[str]:
    from service.streams import job_event_stream

    it = iter(snapshots)
    last = snapshots[-1]

    async def collect() -> list[str]:
        out = []
        gen = job_event_stream(
            lambda: next(it, last), snapshots[0], {"succeeded"}, poll_s=0, keepalive_s=keepalive_s, max_s=max_s
        )
        async for chunk in gen:
            out.append(chunk)
            if len(out) >= 6:
                break
        await gen.aclose()
        return out

    return asyncio.run(collect())


def test_event_stream_sends_keep_alives_while_nothing_changes() -> None:
    queued = {"status": "queued"}
    chunks = _stream([queued], keepalive_s=0, max_s=3600)
    assert chunks[0].startswith("event: job\n")
    assert chunks[1:] == [": keep-alive\n\n"] * 5


def test_event_stream_ends_at_its_lifetime_and_at_a_final_status() -> None:
    queued = {"status": "queued"}
    chunks = _stream([queued], keepalive_s=3600, max_s=0)
    assert len(chunks) == 2 and chunks[0].startswith("event: job\n") and "lifetime" in chunks[1]
    done = _stream([queued, {"status": "running"}, {"status": "succeeded"}], keepalive_s=3600, max_s=3600)
    assert [json.loads(c.split("data: ")[1])["status"] for c in done] == ["queued", "running", "succeeded"]
