"""One extraction split into shards across workers: each shard a job row and a task under the same leases and
reaper as every job; the feature set is published when every shard has landed, and a SIGKILLed shard re-runs
alone. Real worker processes, a real redis-server of its own, PostgreSQL, default lease and reaper settings."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest

from core.sample_data import class_folder_zip
from tests.conftest import drop_postgres_database, make_postgres_database
from tests.helpers import auth, upload_dataset, wait_for_job
from tests.integration.conftest import Deployment, running_deployment, wait_until
from tests.integration.test_faults import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(1200)]


@pytest.fixture
def sharded(tmp_path, postgres_available: bool) -> Iterator[Deployment]:
    if not postgres_available:
        pytest.skip("PostgreSQL not reachable")
    broker = RedisServer(tmp_path)
    broker.start()
    db_url, pg_name = make_postgres_database()
    try:
        env = {"TLSERVE_EXTRACT_SHARD_IMAGES": "512"}  # one 512-image chunk per shard
        with running_deployment(tmp_path, db_url, broker.url, extra_env=env) as dep:
            yield dep
    finally:
        broker.kill()
        drop_postgres_database(pg_name)


def test_a_killed_shard_reruns_alone_and_the_set_is_published_once_every_shard_landed(sharded) -> None:
    dep, key = sharded, sharded.api_key
    with dep.client() as client:
        resp = upload_dataset(client, key, class_folder_zip("fashion", per_class=120), name="fashion")
        assert wait_for_job(client, resp.json()["job_id"], key)["status"] == "succeeded"
        created = client.post("/v1/features", headers=auth(key), json={"dataset_id": resp.json()["id"]}).json()

        def job(job_id: str) -> dict:
            return client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()

        shard_ids = wait_until(lambda: job(created["job_id"])["metrics"].get("shards"), 120, "the shards to be planned")
        assert len(shard_ids) == 3  # 1200 images, 512 per shard

        def busy_shard() -> str | None:
            for shard_id in shard_ids:
                state = job(shard_id)
                if state["status"] == "running" and state["progress"].get("done", 0) >= 64:
                    return shard_id
            return None

        killed = wait_until(busy_shard, 300, "a shard in the middle of its chunk")
        dep.kill_worker(dep.workers[-1])
        dep.start_worker()
        dep.start_worker()  # two workers now share the remaining shards
        done = wait_for_job(client, created["job_id"], key, timeout=600)
        assert done["status"] == "succeeded", (done, dep.dump_logs())
        shards = {shard_id: job(shard_id) for shard_id in shard_ids}
        assert all(s["status"] == "succeeded" and s["kind"] == "extract_shard" for s in shards.values())
        assert shards[killed]["attempts"] == 2  # the killed shard ran again ...
        assert all(s["attempts"] == 1 for i, s in shards.items() if i != killed)  # ... and only it
        assert 1200 <= done["metrics"]["forward_images"] < 1200 + 512  # at most the killed chunk twice
        download = client.get(f"/v1/features/{created['id']}/download", headers=auth(key))
        with np.load(io.BytesIO(download.content), allow_pickle=False) as z:
            assert z["features"].shape == (1200, 1280) and len(set(z["image_ids"].tolist())) == 1200
            assert np.isfinite(z["features"]).all()


def test_cancelling_a_sharded_extraction_stops_its_shards(sharded) -> None:
    dep, key = sharded, sharded.api_key
    with dep.client() as client:
        resp = upload_dataset(client, key, class_folder_zip("fashion", per_class=120, seed=2), name="fashion")
        assert wait_for_job(client, resp.json()["job_id"], key)["status"] == "succeeded"
        created = client.post("/v1/features", headers=auth(key), json={"dataset_id": resp.json()["id"]}).json()

        def job(job_id: str) -> dict:
            return client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()

        shard_ids = wait_until(lambda: job(created["job_id"])["metrics"].get("shards"), 120, "the shards to be planned")
        wait_until(lambda: any(job(i)["status"] == "running" for i in shard_ids), 300, "a shard to start")
        cancel = client.post(f"/v1/jobs/{created['job_id']}/cancel", headers=auth(key))
        assert cancel.status_code in (200, 202), cancel.text
        assert wait_for_job(client, created["job_id"], key)["status"] == "cancelled"
        # one worker of one process: the other shards were still queued, and none of them runs now
        ended = [wait_for_job(client, i, key, timeout=300)["status"] for i in shard_ids]
        assert set(ended) <= {"cancelled", "succeeded"} and ended.count("cancelled") >= len(shard_ids) - 1
        feature_set = client.get(f"/v1/features/{created['id']}", headers=auth(key)).json()
        assert feature_set["status"] == "cancelled"
