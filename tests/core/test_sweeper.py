"""The sweeper against real rows (SQLite and PostgreSQL) and a real store (the local folder and an S3 bucket):
what no live row needs goes once it is older than the grace period; what is young, what a live row names,
and what is not the service's own layout stays; a dry run deletes nothing."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from core import keys
from core.db import session_scope
from core.storage import LocalStorage, Storage, get_storage
from core.sweeper import SweepThread, sweep
from core.tables import Dataset, DatasetVersion, FeatureSet, Image, Job, Model
from core.tenancy import get_or_create_tenant
from tests.conftest import S3_CREDENTIALS, make_bucket, reset_caches

GRACE = 3600.0
HOUR_AGO = time.time() - 2 * GRACE


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _image(version_id: str, tenant_id: str, dataset_id: str, sha: str) -> Image:
    return Image(
        version_id=version_id,
        sha256=sha,
        filename=f"{sha[:6]}.png",
        label="cat",
        split="train",
        width=4,
        height=4,
        size_bytes=10,
        format="PNG",
        storage_key=keys.blob_key(tenant_id, dataset_id, sha),
        canonical_key=keys.canonical_key(tenant_id, dataset_id, sha),
    )


def _feature_set(tenant_id: str, cache_key: str, status: str, version_id: str = "dv_x") -> FeatureSet:
    return FeatureSet(
        tenant_id=tenant_id,
        cache_key=cache_key,
        dataset_id="ds_x",
        version_id=version_id,
        backbone="b",
        weights_digest="w",
        engine="onnx",
        status=status,
        storage_prefix=keys.features_prefix(tenant_id, cache_key),
    )


def _model(tenant_id: str, status: str) -> Model:
    model = Model(
        tenant_id=tenant_id, dataset_id="ds_x", version_id="dv_x", backbone="b", strategy="finetune", status=status
    )
    model.storage_prefix = ""
    return model


def _populate(storage: Storage) -> tuple[dict[str, str], dict[str, str]]:
    """Rows and objects of every kind; returns (key → what the sweep must do: "keep"/"delete", key → "young")
    where the young ones are unneeded but written just now."""
    with session_scope() as s:
        t = get_or_create_tenant(s, "acme").id
        live = Dataset(tenant_id=t, name="live")
        busy = Dataset(tenant_id=t, name="busy")
        s.add_all([live, busy])
        s.flush()
        v1 = DatasetVersion(dataset_id=live.id, version=1, status="ready", params={})
        v2 = DatasetVersion(dataset_id=live.id, version=2, status="failed", params={})
        b1 = DatasetVersion(dataset_id=busy.id, version=1, status="processing", params={})
        s.add_all([v1, v2, b1])
        s.flush()
        s.add(_image(v1.id, t, live.id, _sha("held")))
        jobs = {
            status: Job(tenant_id=t, kind="ingest", status=status)
            for status in ("failed", "running", "queued", "succeeded")
        }
        s.add_all(jobs.values())
        models = {status: _model(t, status) for status in ("ready", "failed", "running")}
        s.add_all(models.values())
        s.add_all(
            [
                _feature_set(t, "k-ready", "ready"),
                _feature_set(t, "k-failed", "failed"),
                _feature_set(t, "k-shared", "failed", version_id="dv_a"),
                _feature_set(t, "k-shared", "ready", version_id="dv_b"),  # the same vectors, still used
            ]
        )
        s.flush()
        job_ids = {status: job.id for status, job in jobs.items()}
        model_ids = {status: model.id for status, model in models.items()}
        live_id, busy_id = live.id, busy.id
    held, failed = _sha("held"), _sha("failed ingestion")
    plan = {
        keys.blob_key(t, live_id, held): "keep",
        keys.canonical_key(t, live_id, held): "keep",
        keys.thumbnail_key(t, live_id, held, 128): "keep",
        keys.blob_key(t, live_id, failed): "delete",  # stored by the failed version 2, named by no version
        keys.canonical_key(t, live_id, failed): "delete",
        keys.thumbnail_key(t, live_id, failed, 128): "delete",
        f"{keys.dataset_prefix(t, live_id)}/notes/readme.txt": "keep",  # not an image folder: not ours to judge
        keys.blob_key(t, busy_id, failed): "keep",  # an ingestion under way: its version names it later
        keys.blob_key(t, "ds_deleted", held): "delete",
        keys.upload_key(t, job_ids["failed"]): "delete",
        keys.upload_key(t, job_ids["succeeded"]): "delete",
        keys.upload_key(t, job_ids["running"]): "keep",
        keys.upload_key(t, job_ids["queued"]): "keep",
        keys.upload_key(t, "job_deleted"): "delete",
        keys.chunk_key(keys.features_prefix(t, "k-ready"), 0): "keep",
        keys.chunk_key(keys.features_prefix(t, "k-shared"), 0): "keep",
        keys.chunk_key(keys.features_prefix(t, "k-failed"), 0): "delete",
        keys.chunk_key(keys.features_prefix(t, "k-gone"), 0): "delete",
        f"{keys.model_prefix(t, model_ids['ready'])}/head.npz": "keep",
        f"{keys.model_prefix(t, model_ids['running'])}/checkpoint.pt": "keep",
        f"{keys.model_prefix(t, model_ids['failed'])}/checkpoint.pt": "delete",
        f"{keys.model_prefix(t, 'mdl_deleted')}/head.npz": "delete",
        "engines/b/w/x.onnx": "keep",  # outside tenants/: never swept
        f"tenants/{t}/odd.bin": "keep",
    }
    young = {
        keys.blob_key(t, "ds_deleted", _sha("young")): "young",  # a deleted dataset's job still stopping
        keys.upload_key(t, "job_just_submitted"): "young",  # its job row commits after the upload lands
    }
    for key in [*plan, *young]:
        storage.put_bytes(key, b"x" * 100)
    return plan, young


def _age_local(storage: LocalStorage, keys_: list[str]) -> None:
    for key in keys_:
        os.utime(storage.local_path(key), (HOUR_AGO, HOUR_AGO))


def test_sweep_removes_only_old_objects_no_live_row_needs(db: str) -> None:
    storage = get_storage()
    assert isinstance(storage, LocalStorage)
    plan, young = _populate(storage)
    _age_local(storage, list(plan))
    doomed = sorted(k for k, what in plan.items() if what == "delete")

    dry = sweep(grace_s=GRACE, dry_run=True)
    assert dry.deleted == len(doomed) and dry.deleted_bytes == 100 * len(doomed)
    assert dry.too_young == len(young) and dry.scanned == len(plan) + len(young) - 1  # engines/ is not scanned
    assert all(storage.exists(k) for k in [*plan, *young])  # a dry run deletes nothing

    done = sweep(grace_s=GRACE)
    assert done.as_dict() == {**dry.as_dict(), "dry_run": False}
    assert done.by_kind == {
        "datasets": {"objects": 4, "bytes": 400},
        "features": {"objects": 2, "bytes": 200},
        "models": {"objects": 2, "bytes": 200},
        "uploads": {"objects": 3, "bytes": 300},
    }
    assert [k for k in sorted(plan) if not storage.exists(k)] == doomed
    assert all(storage.exists(k) for k in young)
    gone_model = next(k for k in doomed if "mdl_deleted" in k)
    assert not storage.local_path(gone_model).parent.exists()  # the folders it leaves empty go with it
    assert sweep(grace_s=GRACE).deleted == 0  # a second sweep finds nothing: two at once are harmless

    assert sweep(grace_s=0).deleted == len(young)  # once old enough, the young orphans go too


def test_the_grace_period_defaults_to_the_setting(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = get_storage()
    _, young = _populate(storage)
    assert sweep().deleted == 0 and sweep().too_young > 0  # everything was written just now
    assert sweep(now=time.time() + 2 * GRACE).deleted > len(young)  # ``now`` ages every object at once
    monkeypatch.setenv("TLSERVE_SWEEP_GRACE_S", "0")
    reset_caches()
    assert sweep().grace_s == 0


def test_sweep_on_an_s3_bucket(db: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if db.startswith("postgresql"):
        pytest.skip("the store is what this test varies; the rows' queries are covered on PostgreSQL above")
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TLSERVE_STORAGE_URL", f"s3://{make_bucket(s3_endpoint)}/deploy")
    monkeypatch.setenv("TLSERVE_S3_ENDPOINT_URL", s3_endpoint)
    reset_caches()
    storage = get_storage()
    assert not isinstance(storage, LocalStorage)
    plan, young = _populate(storage)
    infos = storage.scan("tenants")
    assert {i.key for i in infos} == {k for k in [*plan, *young] if k.startswith("tenants/")}
    assert all(i.size == 100 and abs(i.modified - time.time()) < 300 for i in infos)
    assert sweep(grace_s=GRACE).deleted == 0  # every object is new
    summary = sweep(grace_s=GRACE, now=time.time() + 2 * GRACE)
    doomed = {k for k, what in [*plan.items(), *young.items()] if what != "keep"}
    assert summary.deleted == len(doomed)
    assert {k for k in [*plan, *young] if not storage.exists(k)} == doomed
    reset_caches()


def test_the_sweep_thread_runs_every_interval_and_zero_turns_it_off() -> None:
    import threading

    ran = threading.Event()
    thread = SweepThread(interval_s=0.01, run=ran.set).start()
    try:
        assert ran.wait(10)
    finally:
        thread.stop()
    off = SweepThread(interval_s=0, run=ran.set).start()
    assert not off._thread.is_alive()
    off.stop()
