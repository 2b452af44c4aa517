"""Several API processes serve the same models from one PostgreSQL database: a model deleted through one
stops serving in the other within a second or two (each process re-checks a served model's row at most
once a second). Real parts: two uvicorn API processes, a Celery worker on the real Redis, PostgreSQL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.sample_data import class_folder_zip, encode_png, fashion_mnist
from tests.helpers import auth, upload_dataset, wait_for_job
from tests.integration.conftest import REDIS_URL, ROOT, Deployment, _free_port, running_deployment, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def second_api(deployment_pg: Deployment) -> Iterator[str]:
    """Another API process on the same database, storage and broker; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        env=deployment_pg.env,
        cwd=ROOT,
        stdout=(deployment_pg.logs / "api-2.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 60, "the second API process to start")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def deployment_pg(tmp_path: Path, postgres_url: str) -> Iterator[Deployment]:
    with running_deployment(tmp_path, postgres_url, REDIS_URL) as dep:
        yield dep


def _png() -> bytes:
    pixels, _ = fashion_mnist("t10k")
    return encode_png(pixels[0])


def test_a_model_deleted_through_one_api_process_stops_serving_in_the_other(
    deployment_pg: Deployment, second_api: str
) -> None:
    dep, key = deployment_pg, deployment_pg.api_key
    with dep.client() as one, httpx.Client(base_url=second_api, timeout=60) as two:
        body = upload_dataset(one, key, class_folder_zip("fashion", per_class=4)).json()
        assert wait_for_job(one, body["job_id"], key)["status"] == "succeeded"
        made = one.post("/v1/models", headers=auth(key), json={"dataset_id": body["id"], "strategy": "linear_probe"})
        assert made.status_code == 202, made.text
        assert wait_for_job(one, made.json()["job_id"], key)["status"] == "succeeded", dep.dump_logs()
        model_id = made.json()["id"]

        def predict(client: httpx.Client) -> httpx.Response:
            files = [("files", ("x.png", io.BytesIO(_png()), "image/png"))]
            return client.post(f"/v1/models/{model_id}/predict", headers=auth(key), files=files)

        assert predict(one).status_code == 200
        assert predict(two).status_code == 200, dep.dump_logs()  # both processes now hold the predictor
        assert one.delete(f"/v1/models/{model_id}", headers=auth(key)).status_code == 204
        assert predict(one).status_code == 404
        gone = wait_until(lambda: predict(two).status_code == 404, 10, "the second process to stop serving")
        assert gone
