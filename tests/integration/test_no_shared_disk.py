"""No shared disk: the API and a worker with different local data folders, PostgreSQL, the real Redis and an
S3 endpoint on loopback (moto's server mode, reached over HTTP through s3fs as MinIO would be). Every mission
path runs: upload → features → linear probe → predict → fine-tune, with a worker SIGKILLed mid-fine-tune that
resumes from the checkpoint in the bucket. Afterwards neither local folder holds anything but its bounded
cache. Default settings (a 30 s lease, a 10 s reaper round)."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest

from core.sample_data import class_folder_zip, iter_labelled_pngs
from tests.conftest import S3_CREDENTIALS, drop_postgres_database, make_bucket, make_postgres_database
from tests.helpers import auth, upload_dataset, wait_for_job
from tests.integration.conftest import Deployment, running_deployment
from tests.integration.test_faults import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def split_deployment(
    tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str, postgres_available: bool
) -> Iterator[tuple[Deployment, str]]:
    if not postgres_available:
        pytest.skip("PostgreSQL not reachable")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log, one line per S3 call
    root = tmp_path_factory.mktemp("no-shared-disk")
    broker = RedisServer(root)  # a real redis-server of its own: no other test's worker takes these jobs
    broker.start()
    bucket = make_bucket(s3_endpoint)
    db_url, pg_name = make_postgres_database()
    shared = {
        **S3_CREDENTIALS,
        "TLSERVE_STORAGE_URL": f"s3://{bucket}/tlserve",
        "TLSERVE_S3_ENDPOINT_URL": s3_endpoint,
    }
    worker_only = {"TLSERVE_DATA_DIR": str(root / "worker-data")}
    try:
        with running_deployment(root, db_url, broker.url, extra_env=shared, worker_env=worker_only) as dep:
            yield dep, bucket
    finally:
        broker.kill()
        drop_postgres_database(pg_name)


def _objects(endpoint: str, bucket: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def _files_outside_cache(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] != "cache"
    )


def test_every_path_runs_with_no_shared_disk(split_deployment, s3_endpoint: str) -> None:
    dep, bucket = split_deployment
    key = dep.api_key
    api_folder, worker_folder = Path(dep.env["TLSERVE_DATA_DIR"]), Path(dep.worker_env["TLSERVE_DATA_DIR"])
    assert api_folder != worker_folder
    with dep.client() as client:
        # upload: the API writes the archive to the bucket, the worker ingests it from there
        resp = upload_dataset(client, key, class_folder_zip("fashion", per_class=30), name="fashion")
        assert resp.status_code == 202, resp.text
        job = wait_for_job(client, resp.json()["job_id"], key)
        assert job["status"] == "succeeded", (job, dep.dump_logs())
        dataset_id = resp.json()["id"]

        # features: written by the worker, downloaded through the API
        fs = client.post("/v1/features", headers=auth(key), json={"dataset_id": dataset_id}).json()
        job = wait_for_job(client, fs["job_id"], key, timeout=300)
        assert job["status"] == "succeeded", (job, dep.dump_logs())
        download = client.get(f"/v1/features/{fs['id']}/download", headers=auth(key))
        assert download.status_code == 200
        with np.load(io.BytesIO(download.content), allow_pickle=False) as z:
            assert z["features"].shape == (300, 1280)

        # linear probe on the stored features; its head is read back by the API to predict
        body = {"dataset_id": dataset_id, "backbone": "efficientnet_lite0", "head": {"C": 1.0}}
        probe = client.post("/v1/models", headers=auth(key), json=body).json()
        job = wait_for_job(client, probe["job_id"], key, timeout=300)
        assert job["status"] == "succeeded", (job, dep.dump_logs())
        images = [(name, data) for name, _, data in iter_labelled_pngs("fashion", 1, seed=5)][:4]
        files = [("files", (name, data, "image/png")) for name, data in images]
        predicted = client.post(f"/v1/models/{probe['id']}/predict", files=files, headers=auth(key))
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["predictions"]) == len(images)

        # fine-tune, SIGKILL the worker after a checkpoint landed in the bucket, resume on a new worker
        digits = upload_dataset(client, key, class_folder_zip("digits", per_class=60), name="digits").json()
        assert wait_for_job(client, digits["job_id"], key)["status"] == "succeeded"
        epochs = 20  # lenet5 runs an epoch in seconds: room between the first checkpoint and the end
        body = {
            "dataset_id": digits["id"],
            "backbone": "lenet5",
            "strategy": "finetune",
            "finetune": {
                "epochs": epochs,
                "unfreeze": "all",
                "augment": ["rotate"],
                "batch_size": 32,
                "early_stopping_patience": 0,
            },
        }
        created = client.post("/v1/models", headers=auth(key), json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(key), timeout=300) as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    state = json.loads(line[6:])
                    assert state["status"] not in ("succeeded", "failed"), f"finished before the kill: {state}"
                    if (state.get("metrics") or {}).get("epochs_done", 0) >= 1:  # its checkpoint is stored
                        break
        dep.kill_worker(dep.workers[-1])
        checkpoints = [k for k in _objects(s3_endpoint, bucket) if k.endswith("/checkpoint.pt")]
        assert len(checkpoints) == 1  # the only copy of the progress is in the bucket
        dep.start_worker()  # a fresh process: nothing of the killed one survives but what is in the bucket
        job = wait_for_job(client, job_id, key, timeout=600)
        assert job["status"] == "succeeded", (job, dep.dump_logs())
        assert job["attempts"] == 2
        assert [row["epoch"] for row in job["metrics"]["history"]] == list(range(1, epochs + 1))
        assert job["metrics"]["resumed_from_epoch"] in range(1, epochs)
        model = client.get(f"/v1/models/{created.json()['id']}", headers=auth(key)).json()
        assert model["status"] == "ready" and model["metrics"]["split_sizes"]["test"] > 0
        predicted = client.post(f"/v1/models/{model['id']}/predict", files=files, headers=auth(key))
        assert predicted.status_code == 200, predicted.text

    stored = _objects(s3_endpoint, bucket)
    assert all(k.startswith("tlserve/") for k in stored)
    assert not [k for k in stored if k.endswith("/checkpoint.pt")]  # removed once the model was stored
    # the API's and the worker's local folders hold nothing but their bounded caches
    assert _files_outside_cache(api_folder) == []
    assert _files_outside_cache(worker_folder) == []
    assert os.listdir(worker_folder) in ([], ["cache"])
