"""The serving cache against the real database (SQLite and PostgreSQL): two caches stand for two API
processes. A model deleted or replaced through one stops serving in the other within the re-check interval;
simultaneous misses build once; a build racing a delete never puts the model back."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from core.db import session_scope
from core.errors import NotFound
from core.tables import Model
from core.tenancy import get_or_create_tenant
from workers.runtime.serving import PredictorCache, _stamp


class Builds:
    """Counts builds and stands in for loading engines and heads (the row is still read for real)."""

    def __init__(self) -> None:
        self.count = 0
        self.started = threading.Event()
        self.go = threading.Event()
        self.go.set()

    def __call__(self, tenant_id: str, model_id: str) -> Any:
        self.count += 1
        with session_scope() as s:  # like the real build: read the row, then load the artifacts
            prefix = s.get(Model, model_id).storage_prefix
        self.started.set()
        assert self.go.wait(30)
        return ("predictor", prefix, self.count)


def _model(prefix: str = "p1") -> tuple[str, str]:
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        row = Model(
            tenant_id=tenant.id, dataset_id="ds", version_id="dv", backbone="efficientnet_lite0",
            strategy="linear_probe", status="ready", storage_prefix=prefix, lineage={"head": "logistic"},
        )  # fmt: skip
        s.add(row)
        s.flush()
        return tenant.id, row.id


def _poll_until_gone(cache: PredictorCache, tenant_id: str, model_id: str, bound_s: float = 10.0) -> None:
    deadline = time.monotonic() + bound_s
    while True:
        try:
            cache.get(tenant_id, model_id)
        except NotFound:
            return
        assert time.monotonic() < deadline, "the other process still serves the deleted model"


def test_a_model_deleted_through_one_process_stops_serving_in_the_other(db: str) -> None:
    tenant_id, model_id = _model()
    a, b = PredictorCache(Builds(), _stamp), PredictorCache(Builds(), _stamp)
    assert a.get(tenant_id, model_id) == b.get(tenant_id, model_id)
    with session_scope() as s:  # what DELETE /v1/models/{id} does in process A
        s.delete(s.get(Model, model_id))
    a.forget(model_id)
    with pytest.raises(NotFound):
        a.get(tenant_id, model_id)
    _poll_until_gone(b, tenant_id, model_id)
    assert len(b) == 0


def test_a_replaced_artifact_is_rebuilt_in_the_other_process(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_id, model_id = _model("p1")
    builds = Builds()
    b = PredictorCache(builds, _stamp)
    assert b.get(tenant_id, model_id)[1] == "p1"
    with session_scope() as s:
        s.get(Model, model_id).storage_prefix = "p2"
    deadline = time.monotonic() + 10
    while b.get(tenant_id, model_id)[1] != "p2":
        assert time.monotonic() < deadline
    assert builds.count == 2


def test_simultaneous_misses_build_once(db: str) -> None:
    tenant_id, model_id = _model()
    builds = Builds()
    builds.go.clear()
    cache = PredictorCache(builds, _stamp)
    start = threading.Barrier(8)
    got: list[Any] = []

    def ask() -> None:
        start.wait()
        got.append(cache.get(tenant_id, model_id))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    assert builds.started.wait(30)
    builds.go.set()
    for t in threads:
        t.join(30)
    assert len(got) == 8 and len(set(got)) == 1 and builds.count == 1


def test_a_build_racing_a_delete_does_not_put_the_model_back(db: str) -> None:
    tenant_id, model_id = _model()
    builds = Builds()
    builds.go.clear()
    cache = PredictorCache(builds, _stamp)
    caller = threading.Thread(target=cache.get, args=(tenant_id, model_id))
    caller.start()
    assert builds.started.wait(30)  # the build has read the row and is loading the artifacts
    with session_scope() as s:
        s.delete(s.get(Model, model_id))
    cache.forget(model_id)
    builds.go.set()
    caller.join(30)
    assert len(cache) == 0
    with pytest.raises(NotFound):
        cache.get(tenant_id, model_id)


def test_a_database_outage_keeps_serving_what_was_valid(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    from core.settings import reset_settings

    monkeypatch.setenv("TLSERVE_SERVING_REVALIDATE_S", "0")  # re-check on every request
    reset_settings()
    tenant_id, model_id = _model()
    down = threading.Event()

    def stamp(t: str, m: str) -> str:
        if down.is_set():
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return _stamp(t, m)

    cache = PredictorCache(Builds(), stamp)
    first = cache.get(tenant_id, model_id)
    down.set()
    assert cache.get(tenant_id, model_id) is first
    down.clear()
    with session_scope() as s:
        s.delete(s.get(Model, model_id))
    with pytest.raises(NotFound):
        cache.get(tenant_id, model_id)
