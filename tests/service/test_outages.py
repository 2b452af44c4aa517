"""A database that cannot be reached: every request answers 503 database_unavailable with Retry-After (never a
500), /healthz says so, and the service answers normally again once the database is back, without a restart."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from tests.conftest import reset_caches
from tests.helpers import auth


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_database_unreachable_is_503_with_retry_after(db: str, api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.app import create_app

    monkeypatch.setenv("TLSERVE_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/test")
    reset_caches()
    with TestClient(create_app()) as client:
        for method, path in (("GET", "/v1/datasets"), ("GET", "/v1/jobs/job_x"), ("POST", "/v1/features")):
            resp = client.request(method, path, headers=auth(api_key), json={"dataset_id": "ds_x"})
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "database_unavailable"
            assert int(resp.headers["Retry-After"]) > 0
        assert client.get("/healthz").status_code == 503

    monkeypatch.setenv("TLSERVE_DATABASE_URL", db)  # the database is back
    reset_caches()
    with TestClient(create_app()) as client:
        assert client.get("/v1/datasets", headers=auth(api_key)).status_code == 200
        assert client.get("/healthz").status_code == 200
