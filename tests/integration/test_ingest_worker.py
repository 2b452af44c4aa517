"""Ingestion on a real Celery worker with the real Redis broker, driven over HTTP."""

from __future__ import annotations

import json

import pytest

from core.sample_data import class_folder_zip, default_source
from tests.helpers import auth, upload_dataset, wait_for_job

pytestmark = pytest.mark.integration


def test_real_images_over_http_give_right_counts_and_splits(deployment) -> None:
    with deployment.client() as client:
        resp = upload_dataset(
            client,
            deployment.api_key,
            class_folder_zip(default_source(), per_class=30),
            name="sample",
            val_fraction=0.1,
            test_fraction=0.2,
            seed=1,
        )
        assert resp.status_code == 202, resp.text
        job = wait_for_job(client, resp.json()["job_id"], deployment.api_key)
        assert job["status"] == "succeeded", (job, deployment.dump_logs())
        assert job["attempts"] == 1
        ds = client.get(f"/v1/datasets/{resp.json()['id']}", headers=auth(deployment.api_key)).json()
        assert ds["num_images"] == 300 and len(ds["classes"]) == 10
        assert set(ds["classes"].values()) == {30}
        assert ds["splits"] == {"train": 210, "val": 30, "test": 60}


def test_killed_worker_mid_ingestion_the_job_resumes_without_duplicates(deployment) -> None:
    key = deployment.api_key
    with deployment.client() as client:
        resp = upload_dataset(client, key, class_folder_zip(default_source(), per_class=300), name="big")
        job_id = resp.json()["job_id"]
        worker = deployment.workers[-1]
        # Wait, through the event stream, until the worker is part-way through decoding.
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(key), timeout=120) as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    state = json.loads(line[6:])
                    assert state["status"] not in ("succeeded", "failed"), "finished before it could be killed"
                    if state["progress"].get("stage") == "decode" and state["progress"]["done"] > 0:
                        break
        deployment.kill_worker(worker)
        deployment.start_worker()
        job = wait_for_job(client, job_id, key, timeout=300)
        assert job["status"] == "succeeded", (job, deployment.dump_logs())
        assert job["attempts"] == 2
        ds = client.get(f"/v1/datasets/{resp.json()['id']}", headers=auth(key)).json()
        assert ds["num_images"] == 3000 and sum(ds["splits"].values()) == 3000
