"""A worker SIGKILLed in the middle of a long job: the redelivered task finishes the same job, reusing
what was already stored, without duplicates. Real worker processes, the real Redis broker, over HTTP."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from core.sample_data import class_folder_zip
from tests.helpers import auth, upload_dataset, wait_for_job
from tests.integration.conftest import record_recovery

# Under default settings (a 30 s lease, a 10 s reaper round): each kill costs about 40 s of waiting, so these
# run on PostgreSQL, the database such deployments use; SQLite is covered by the other integration tests.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.parametrize("deployment", ["postgres"], indirect=True),
]


def _kill_when(deployment, client, job_id: str, ready: Callable[[dict[str, Any]], bool], kind: str) -> None:
    """Follow the job's events; SIGKILL the worker (and its pool) as soon as ``ready(state)`` holds."""
    worker = deployment.workers[-1]
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(deployment.api_key), timeout=300) as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                state = json.loads(line[6:])
                assert state["status"] not in ("succeeded", "failed"), f"finished before the kill: {state}"
                if ready(state):
                    break
    deployment.kill_worker(worker)
    start = time.monotonic()
    deployment.start_worker()
    # for the record (not asserted): how long until the job runs again on the new worker
    while time.monotonic() - start < 300:
        state = client.get(f"/v1/jobs/{job_id}", headers=auth(deployment.api_key)).json()
        if state["attempts"] >= 2 or state["status"] in ("succeeded", "failed", "cancelled"):
            record_recovery(f"sigkill_{kind}_running_again_after_worker_start_s", time.monotonic() - start)
            break
        time.sleep(0.5)  # polling another process's state, not synchronising this test's own logic


def _dataset(deployment, client, source: str, per_class: int, seed: int = 0) -> str:
    archive = class_folder_zip(source, per_class=per_class, seed=seed)
    resp = upload_dataset(client, deployment.api_key, archive, name=source)
    assert wait_for_job(client, resp.json()["job_id"], deployment.api_key)["status"] == "succeeded"
    return resp.json()["id"]


def _npz(client, key: str, fs_id: str) -> dict[str, np.ndarray]:
    resp = client.get(f"/v1/features/{fs_id}/download", headers=auth(key))
    with np.load(io.BytesIO(resp.content), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_extraction_resumes_from_its_stored_chunks(deployment) -> None:
    key = deployment.api_key
    with deployment.client() as client:
        dataset_id = _dataset(deployment, client, "fashion", per_class=120)
        first = client.post("/v1/features", headers=auth(key), json={"dataset_id": dataset_id}).json()
        _kill_when(
            deployment,
            client,
            first["job_id"],
            lambda s: s["progress"].get("stage") == "extract" and s["progress"]["done"] >= 600,
            kind="extract",
        )
        job = wait_for_job(client, first["job_id"], key, timeout=300)
        assert job["status"] == "succeeded", (job, deployment.dump_logs())
        assert job["attempts"] == 2
        assert 0 < job["metrics"]["forward_images"] <= 1200 - 512  # the first chunk was reused, not recomputed
        resumed = _npz(client, key, first["id"])

        # The same images through an uninterrupted run (another queue's cache entry, same CPU engine).
        other = client.post("/v1/features", headers=auth(key), json={"dataset_id": dataset_id, "queue": "gpu"}).json()
        assert other["id"] != first["id"]
        assert wait_for_job(client, other["job_id"], key, timeout=300)["status"] == "succeeded"
        clean = _npz(client, key, other["id"])
    assert resumed["features"].shape == (1200, 1280) and len(set(resumed["image_ids"].tolist())) == 1200
    order = np.argsort(resumed["image_ids"]), np.argsort(clean["image_ids"])
    np.testing.assert_array_equal(resumed["image_ids"][order[0]], clean["image_ids"][order[1]])
    np.testing.assert_allclose(resumed["features"][order[0]], clean["features"][order[1]], rtol=0, atol=1e-6)


def test_a_linear_probe_resumes_its_extraction_from_the_stored_chunks(deployment) -> None:
    key = deployment.api_key
    with deployment.client() as client:
        dataset_id = _dataset(deployment, client, "fashion", per_class=120, seed=1)  # images not extracted yet
        body = {"dataset_id": dataset_id, "backbone": "efficientnet_lite0", "head": {"C": 1.0}}
        created = client.post("/v1/models", headers=auth(key), json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        _kill_when(
            deployment,
            client,
            job_id,
            lambda s: s["progress"].get("stage") == "extract" and s["progress"]["done"] >= 600,
            kind="fit",
        )
        job = wait_for_job(client, job_id, key, timeout=300)
        assert job["status"] == "succeeded", (job, deployment.dump_logs())
        assert job["attempts"] == 2
        assert 0 < job["metrics"]["forward_images"] <= 1200 - 512  # the stored chunk was reused
        model = client.get(f"/v1/models/{created.json()['id']}", headers=auth(key)).json()
        assert model["status"] == "ready" and model["metrics"]["split_sizes"]["test"] > 0


def test_finetune_resumes_from_its_last_checkpoint(deployment) -> None:
    key = deployment.api_key
    with deployment.client() as client:
        dataset_id = _dataset(deployment, client, "digits", per_class=40)
        body = {
            "dataset_id": dataset_id,
            "backbone": "mobilenet_v3_small",
            "strategy": "finetune",
            "allow_random_weights": True,
            "finetune": {
                "epochs": 4,
                "unfreeze": "last:1",
                "augment": ["hflip"],
                "batch_size": 32,
                "early_stopping_patience": 0,
            },
        }
        created = client.post("/v1/models", headers=auth(key), json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        _kill_when(
            deployment,
            client,
            job_id,
            # epochs_done stays in the job's metrics; the "epoch" progress stage lasts only until the next
            # epoch's first batch, which a 0.25 s event poll can miss until the last epoch
            lambda s: (s["metrics"] or {}).get("epochs_done", 0) >= 1,
            kind="finetune",
        )
        job = wait_for_job(client, job_id, key, timeout=600)
        assert job["status"] == "succeeded", (job, deployment.dump_logs())
        assert job["attempts"] == 2
        assert [row["epoch"] for row in job["metrics"]["history"]] == [1, 2, 3, 4]
        assert job["metrics"]["resumed_from_epoch"] in (1, 2, 3)
        model = client.get(f"/v1/models/{created.json()['id']}", headers=auth(key)).json()
        assert model["status"] == "ready" and model["metrics"]["split_sizes"]["test"] > 0
