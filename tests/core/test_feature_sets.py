"""Feature sets belong to a dataset version; their stored vectors are shared by content. Deleting a dataset
removes only what no other dataset uses, and stops the extraction nothing else waits on."""

from __future__ import annotations

import io

import numpy as np

from core import datasets as ds
from core import features as fsets
from core.db import session_scope
from core.tables import FeatureSet, Image, Job
from core.tenancy import get_or_create_tenant

EXTRACTOR = fsets.Extractor("efficientnet_lite0", "w" * 64, "pre", "pool", "onnx", 1280)


def _dataset(s, tenant_id: str, name: str, labels: list[str]) -> str:  # type: ignore[no-untyped-def]
    """A ready dataset of three images (the same bytes in every dataset), labelled ``labels``."""
    dataset, version = ds.create_dataset(s, tenant_id, name, {})
    version.status = "ready"
    for i, label in enumerate(labels):
        s.add(
            Image(
                version_id=version.id, sha256=f"{i:064d}", filename=f"{i}.png", label=label, split="train",
                width=8, height=8, size_bytes=10, format="png", storage_key="k", canonical_key="k",
            )
        )  # fmt: skip
    s.flush()
    return dataset.id


def test_each_version_gets_its_own_row_sharing_the_stored_vectors(db: str) -> None:
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme").id
        a = _dataset(s, tenant, "a", ["x", "y", "z"])
        b = _dataset(s, tenant, "b", ["p", "p", "q"])
        pa = fsets.plan_extraction(s, tenant, a, EXTRACTOR)
        pb = fsets.plan_extraction(s, tenant, b, EXTRACTOR)
        assert pa.job is not None and pb.job is None  # one extraction for both
        assert pa.feature_set.id != pb.feature_set.id and pb.feature_set.dataset_id == b
        assert pb.feature_set.storage_prefix == pa.feature_set.storage_prefix
        assert pb.feature_set.job_id == pa.job.id and pb.feature_set.status == "queued"
        job_id, fa, fb = pa.job.id, pa.feature_set.id, pb.feature_set.id
    with session_scope() as s:  # A goes: its extraction is handed to B's row, and the vectors stay
        prefixes = ds.delete_dataset(s, tenant, a)
    assert pa.feature_set.storage_prefix not in prefixes
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert s.get(FeatureSet, fa) is None
        assert job.status == "queued" and job.resource_id == fb and job.params["feature_set_id"] == fb
    with session_scope() as s:  # B goes: nothing waits on the extraction any more, and the vectors go
        prefixes = ds.delete_dataset(s, tenant, b)
    assert pa.feature_set.storage_prefix in prefixes
    with session_scope() as s:
        assert s.get(Job, job_id).status == "cancelled"
        assert s.get(FeatureSet, fb) is None


def test_a_ready_row_makes_another_versions_row_ready_without_a_job(db: str) -> None:
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme").id
        a = _dataset(s, tenant, "a", ["x", "y", "z"])
        b = _dataset(s, tenant, "b", ["p", "p", "q"])
        pa = fsets.plan_extraction(s, tenant, a, EXTRACTOR)
        fsets.mark_ready(s, tenant, pa.feature_set.cache_key, {"seconds": 1.0}, 3)
        pb = fsets.plan_extraction(s, tenant, b, EXTRACTOR)
        assert pb.cached and pb.job is None and pb.feature_set.status == "ready"
        again = fsets.plan_extraction(s, tenant, b, EXTRACTOR)
        assert again.feature_set.id == pb.feature_set.id and again.cached


def test_the_npz_download_is_built_chunk_by_chunk_and_loads_like_savez(db: str, api_key: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Five stored vectors in chunks of two, two of them another dataset's: the streamed download holds the
    version's three rows with the members ``np.savez(**labelled_features(...))`` would write."""
    from fastapi.testclient import TestClient

    from core.keys import chunk_key
    from core.storage import get_storage
    from service.app import create_app
    from tests.helpers import auth

    monkeypatch.setattr(fsets, "CHUNK_SIZE", 2)
    monkeypatch.setattr(fsets, "NPZ_SPOOL_BYTES", 1024)  # built on disk
    stored = np.random.default_rng(0).normal(size=(5, 1280)).astype(np.float32)
    hashes = np.array([f"{i:064d}" for i in (0, 7, 1, 2, 8)])  # 7 and 8: not images of this version
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme").id
        planned = fsets.plan_extraction(s, tenant, _dataset(s, tenant, "a", ["x", "y", "z"]), EXTRACTOR)
        for index in range(3):
            buf = io.BytesIO()
            rows = slice(2 * index, 2 * index + 2)
            np.savez(buf, features=stored[rows], sha256=hashes[rows])
            get_storage().put_bytes(chunk_key(planned.feature_set.storage_prefix, index), buf.getvalue())
        fsets.mark_ready(s, tenant, planned.feature_set.cache_key, {}, 5)
        fs = planned.feature_set
        expected = fsets.labelled_features(s, fs, fs.version_id)
        fs_id = fs.id

    def whole_matrix(*_: object) -> None:
        raise AssertionError("the download must not load every chunk at once")

    monkeypatch.setattr(fsets, "load_features", whole_matrix)
    with TestClient(create_app()) as client:
        resp = client.get(f"/v1/features/{fs_id}/download?format=npz", headers=auth(api_key))
    assert resp.status_code == 200, resp.text
    assert int(resp.headers["content-length"]) == len(resp.content)
    with np.load(io.BytesIO(resp.content), allow_pickle=False) as z:
        assert z.files == list(expected)
        for name, array in expected.items():
            np.testing.assert_array_equal(z[name], array)
            assert z[name].dtype == array.dtype
    assert expected["sha256"].tolist() == [f"{i:064d}" for i in (0, 1, 2)]
    np.testing.assert_array_equal(expected["features"], stored[[0, 2, 3]])
