"""Faults under default settings, on the real parts: a separate API process, real Celery worker processes,
a real Redis (the broker outage tests start their own ``redis-server`` on a free port to kill and restart
it) and the real PostgreSQL. Each test asserts that nothing is lost and nothing runs twice; the recovery
times are written to ``test-artifacts/recovery.json`` for the record (they are not asserted)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.sample_data import class_folder_zip
from tests.helpers import auth, upload_dataset, wait_for_job
from tests.integration.conftest import (
    REDIS_URL,
    ROOT,
    Deployment,
    _free_port,
    record_recovery,
    running_deployment,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]


class RedisServer:
    """A throwaway ``redis-server`` without persistence: killing it loses every queued message."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(up, 30, "redis-server to answer")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _health(dep: Deployment) -> int:
    try:
        return httpx.get(f"{dep.base_url}/healthz", timeout=10).status_code
    except httpx.HTTPError:
        return 0


def _job(client: httpx.Client, key: str, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()


def test_broker_down_at_submit_and_a_lost_queue_lose_no_job(tmp_path: Path, postgres_url: str) -> None:
    broker = RedisServer(tmp_path)
    broker.start()
    try:
        with running_deployment(tmp_path, postgres_url, broker.url, worker=False) as dep, dep.client() as client:
            key = dep.api_key
            queued = upload_dataset(client, key, class_folder_zip("digits", per_class=6), name="before")
            assert queued.status_code == 202, queued.text  # its message now sits in the broker's queue

            broker.kill()  # the broker dies and its queue with it
            wait_until(lambda: _health(dep) == 503, 30, "/healthz to report the broker down")
            start = time.monotonic()
            during = upload_dataset(client, key, class_folder_zip("digits", per_class=6, seed=1), name="during")
            submit_s = time.monotonic() - start
            assert during.status_code == 202, during.text  # the row is written; the outbox sends it later
            assert _job(client, key, during.json()["job_id"])["status"] == "queued"
            record_recovery("submit_while_broker_down_s", submit_s)

            broker.start()  # back, empty: both messages are gone
            wait_until(lambda: _health(dep) == 200, 60, "/healthz to recover without a restart")
            start = time.monotonic()
            dep.start_worker()
            done = [wait_for_job(client, r.json()["job_id"], key, timeout=240) for r in (queued, during)]
            record_recovery("lost_queue_recovered_after_worker_start_s", time.monotonic() - start)
            for job in done:
                assert job["status"] == "succeeded", (job, dep.dump_logs())
                assert job["attempts"] == 1  # sent again, run once
            for resp in (queued, during):
                body = client.get(f"/v1/datasets/{resp.json()['id']}", headers=auth(key)).json()
                assert body["status"] == "ready" and body["num_images"] == 60
    finally:
        broker.kill()


def test_cancel_of_each_kind_while_queued_frees_its_resource(tmp_path: Path, postgres_url: str) -> None:
    with running_deployment(tmp_path, postgres_url, REDIS_URL, worker=False) as dep, dep.client() as client:
        key = dep.api_key
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        # ingestion: the version becomes cancelled and the dataset takes new images at once
        first = upload_dataset(client, key, class_folder_zip("digits", per_class=5), name="cancel-me").json()
        uploads = dep.data_dir / "artifacts" / "tenants"
        assert [p.name for p in uploads.glob("*/uploads/*/*")] == ["archive.zip"]
        assert client.post(f"/v1/jobs/{first['job_id']}/cancel", headers=auth(key)).json()["status"] == "cancelled"
        assert list(uploads.glob("*/uploads/*/*")) == []  # its upload went with it, not an hour later
        dataset = client.get(f"/v1/datasets/{first['id']}", headers=auth(key)).json()
        assert dataset["status"] == "cancelled"
        more = client.post(
            f"/v1/datasets/{first['id']}/images",
            headers=auth(key),
            files=[("files", ("a.png", _png(), "image/png"))],
            data={"labels": ["x"]},
        )
        assert more.status_code == 202, more.text

        # a ready dataset for the other kinds (a worker runs it, then leaves)
        worker = dep.start_worker()
        ready = upload_dataset(client, key, class_folder_zip("digits", per_class=8), name="ready").json()
        assert wait_for_job(client, ready["job_id"], key)["status"] == "succeeded"
        assert wait_for_job(client, more.json()["job_id"], key)["status"] == "succeeded"
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)

        # extraction: the feature set is cancelled, and the next request plans a new job
        fs = client.post("/v1/features", headers=auth(key), json={"dataset_id": ready["id"]}).json()
        assert fs["status"] == "queued"
        client.post(f"/v1/jobs/{fs['job_id']}/cancel", headers=auth(key))
        assert client.get(f"/v1/features/{fs['id']}", headers=auth(key)).json()["status"] == "cancelled"
        again = client.post("/v1/features", headers=auth(key), json={"dataset_id": ready["id"]}).json()
        assert again["id"] == fs["id"] and again["job_id"] != fs["job_id"] and again["status"] == "queued"

        # training of both strategies: the model is cancelled, never left queued
        for body in (
            {"dataset_id": ready["id"]},
            {"dataset_id": ready["id"], "backbone": "lenet5", "strategy": "finetune", "finetune": {"epochs": 1}},
        ):
            model = client.post("/v1/models", headers=auth(key), json=body).json()
            client.post(f"/v1/jobs/{model['job_id']}/cancel", headers=auth(key))
            assert client.get(f"/v1/models/{model['id']}", headers=auth(key)).json()["status"] == "cancelled"

        # the re-planned extraction runs once a worker is back; the cancelled jobs never run
        dep.start_worker()
        assert wait_for_job(client, again["job_id"], key, timeout=240)["status"] == "succeeded"
        assert client.get(f"/v1/features/{fs['id']}", headers=auth(key)).json()["status"] == "ready"
        assert _job(client, key, fs["job_id"])["attempts"] == 0


def _png() -> bytes:
    from core.sample_data import iter_labelled_pngs

    return next(iter(iter_labelled_pngs("digits", per_class=1, seed=5)))[2]


def test_cancel_of_a_running_extraction_stops_within_a_batch_and_a_duplicate_message_runs_once(
    tmp_path: Path, postgres_url: str
) -> None:
    with running_deployment(tmp_path, postgres_url, REDIS_URL) as dep, dep.client() as client:
        key = dep.api_key
        dep.start_worker()  # two workers racing for the same messages
        ds = upload_dataset(client, key, class_folder_zip("fashion", per_class=60), name="race").json()
        assert wait_for_job(client, ds["job_id"], key)["status"] == "succeeded"

        # the same job sent twice: whichever worker takes the second message finds it leased and drops it
        body = {"dataset_id": ds["id"], "backbone": "mobilenet_v3_small", "allow_random_weights": True}
        fs = client.post("/v1/features", headers=auth(key), json=body).json()
        resend = f"from workers.dispatch import enqueue; enqueue({fs['job_id']!r}, 'extract')"
        subprocess.run([sys.executable, "-c", resend], env=dep.env, cwd=ROOT, check=True, timeout=60)
        job = wait_for_job(client, fs["job_id"], key, timeout=300)
        assert job["status"] == "succeeded", (job, dep.dump_logs())
        assert job["attempts"] == 1 and job["metrics"]["forward_images"] == 600

        # cancel while running: it stops at its next batch
        fs2 = client.post("/v1/features", headers=auth(key), json={"dataset_id": ds["id"]}).json()
        wait_until(
            lambda: (
                (s := _job(client, key, fs2["job_id"]))["progress"].get("stage") == "extract"
                and s["progress"]["done"] >= 64
            ),
            240,
            "the extraction to be under way",
        )
        start = time.monotonic()
        client.post(f"/v1/jobs/{fs2['job_id']}/cancel", headers=auth(key))
        job = wait_for_job(client, fs2["job_id"], key, timeout=120)
        record_recovery("cancel_running_extraction_s", time.monotonic() - start)
        assert job["status"] == "cancelled" and job["progress"]["done"] < 600
        assert client.get(f"/v1/features/{fs2['id']}", headers=auth(key)).json()["status"] == "cancelled"


# Enough epochs that the job is still running when the test sends SIGTERM after the second, on a fast machine too.
EPOCHS = 300


def _epochs_done(job: dict) -> int:
    """Epochs a running fine-tune has finished; a job that ended before the test could act fails the test."""
    assert job["status"] in {"queued", "running"}, f"the fine-tune ended before it could be drained: {job}"
    progress = job["progress"]
    return progress["done"] if progress.get("stage") == "epoch" else 0


def test_sigterm_drains_a_finetune_back_to_the_queue_and_it_resumes(tmp_path: Path, postgres_url: str) -> None:
    with running_deployment(tmp_path, postgres_url, REDIS_URL) as dep, dep.client() as client:
        key = dep.api_key
        ds = upload_dataset(client, key, class_folder_zip("digits", per_class=30), name="drain").json()
        assert wait_for_job(client, ds["job_id"], key)["status"] == "succeeded"
        body = {
            "dataset_id": ds["id"],
            "backbone": "lenet5",
            "strategy": "finetune",
            "finetune": {"epochs": EPOCHS, "early_stopping_patience": 0, "batch_size": 16},
        }
        model = client.post("/v1/models", headers=auth(key), json=body).json()
        wait_until(lambda: _epochs_done(_job(client, key, model["job_id"])) >= 2, 240, "two epochs")
        worker = dep.workers[-1]
        start = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)  # warm shutdown of the worker's main process
        worker.wait(timeout=120)
        record_recovery("sigterm_drain_s", time.monotonic() - start)
        job = _job(client, key, model["job_id"])
        assert job["status"] == "queued" and job["attempts"] == 0, job  # given back, the attempt not counted

        dep.start_worker()
        job = wait_for_job(client, model["job_id"], key, timeout=300)
        assert job["status"] == "succeeded", (job, dep.dump_logs())
        assert [row["epoch"] for row in job["metrics"]["history"]] == list(range(1, EPOCHS + 1))
        assert job["metrics"]["resumed_from_epoch"] >= 2 and job["attempts"] == 1
