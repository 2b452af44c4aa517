"""Shared fixtures: an isolated data folder and database per test (SQLite and the real PostgreSQL),
API keys, and helpers that build zips of real images."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

POSTGRES_ADMIN_URL = os.environ.get("TLSERVE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "tlserve-test",
    "AWS_SECRET_ACCESS_KEY": "tlserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on loopback: moto's server mode on a free port, buckets kept in memory.

    It speaks the S3 protocol over HTTP, so s3fs (and boto3) in this process and in subprocesses reach it
    as they would MinIO. Restart workers around it, never it: its buckets live in its memory."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def make_bucket(endpoint: str) -> str:
    """A new empty bucket on the endpoint; returns its name."""
    import boto3

    name = f"tlserve-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    return name


def _postgres_reachable() -> bool:
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    ok = _postgres_reachable()
    if not ok and IN_CI:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}; CI must run the PostgreSQL tests")
    return ok


def make_postgres_database() -> tuple[str, str]:
    """Create an empty database for one test or module; returns (url, name)."""
    import psycopg

    name = f"tlserve_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tlserve.db'}"
        return
    if not request.getfixturevalue("postgres_available"):
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    url, name = make_postgres_database()
    try:
        yield url
    finally:
        from core.db import dispose_engines

        dispose_engines()
        drop_postgres_database(name)


def reset_caches() -> None:
    from core import storage
    from core.db import dispose_engines
    from core.settings import reset_settings

    reset_settings()
    dispose_engines()
    storage._storage_for.cache_clear()
    storage._remote_storage.cache_clear()
    # Loaded engines and predictors belong to the old data folder.
    if "workers.runtime.engines" in sys.modules:
        sys.modules["workers.runtime.engines"].clear_engine_cache()
    if "workers.runtime.serving" in sys.modules:
        sys.modules["workers.runtime.serving"].PREDICTORS.clear()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated data folder, SQLite database and in-process broker; no migration run."""
    path = tmp_path / "data"
    monkeypatch.setenv("TLSERVE_DATA_DIR", str(path))
    monkeypatch.setenv("TLSERVE_BROKER_URL", "memory://")
    monkeypatch.delenv("TLSERVE_DATABASE_URL", raising=False)
    reset_caches()
    yield path
    reset_caches()


@pytest.fixture
def db(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Settings pointing at a freshly migrated database (SQLite and PostgreSQL) and a tmp data folder."""
    monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TLSERVE_DATABASE_URL", database_url)
    monkeypatch.setenv("TLSERVE_BROKER_URL", "memory://")
    reset_caches()
    from core.migrate import upgrade

    upgrade(database_url)
    yield database_url
    reset_caches()


@pytest.fixture
def api_key(db: str) -> str:
    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        return create_api_key(s, "acme")


@pytest.fixture
def other_api_key(db: str) -> str:
    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        return create_api_key(s, "globex")


@contextmanager
def module_service(root: Path) -> Iterator[tuple[Any, str]]:
    """An in-process API (jobs in a thread) on its own data folder and SQLite database, shared by a test
    module so that expensive artifacts (ONNX exports, features) are made once. Yields (client, api key)."""
    from fastapi.testclient import TestClient

    names = ("TLSERVE_DATA_DIR", "TLSERVE_BROKER_URL", "TLSERVE_DATABASE_URL")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update({"TLSERVE_DATA_DIR": str(root), "TLSERVE_BROKER_URL": "memory://"})
    os.environ.pop("TLSERVE_DATABASE_URL", None)
    reset_caches()
    try:
        from core.db import session_scope
        from core.migrate import upgrade
        from core.tenancy import create_api_key
        from service.app import create_app

        upgrade()
        with session_scope() as s:
            key = create_api_key(s, "acme")
        with TestClient(create_app()) as client:
            yield client, key
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_caches()
