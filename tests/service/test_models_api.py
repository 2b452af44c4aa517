"""Linear probes, prediction and backbone comparison over the API, on real Fashion-MNIST images."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.sample_data import class_folder_zip, iter_labelled_pngs
from tests.conftest import module_service
from tests.helpers import assert_export_reproduces_the_service, auth, upload_dataset, wait_for_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, str]]:
    with module_service(tmp_path_factory.mktemp("models")) as (client, key):
        archive = class_folder_zip("fashion", per_class=20, seed=7)
        body = upload_dataset(client, key, archive, name="fm", test_fraction=0.25, val_fraction=0.1).json()
        assert wait_for_job(client, body["job_id"], key)["status"] == "succeeded"
        yield client, key, body["id"]


@pytest.fixture(scope="module")
def probe(env) -> dict:
    client, key, dataset_id = env
    resp = client.post("/v1/models", headers=auth(key), json={"dataset_id": dataset_id, "strategy": "linear_probe"})
    assert resp.status_code == 202, resp.text
    job = wait_for_job(client, resp.json()["job_id"], key)
    assert job["status"] == "succeeded", job
    return client.get(f"/v1/models/{resp.json()['id']}", headers=auth(key)).json()


def test_linear_probe_reports_honest_test_metrics_and_lineage(probe) -> None:
    m = probe["metrics"]
    assert probe["status"] == "ready" and probe["strategy"] == "linear_probe"
    assert m["split_sizes"]["test"] == 50 and len(m["labels"]) == 10
    assert np.array(m["confusion_matrix"]).sum() == 50
    assert 0.5 < m["accuracy"] <= 1.0 and 0.0 < m["macro_f1"] <= 1.0
    assert m["train_accuracy"] >= m["accuracy"] - 0.05  # training error beside generalisation error
    assert set(m["per_class"]) == set(m["labels"])
    lineage = probe["lineage"]
    assert lineage["dataset_version"] == 1 and lineage["backbone"] == "efficientnet_lite0"
    assert len(lineage["weights_digest"]) == 64 and "scikit-learn" in lineage["libraries"]
    assert probe["params"]["fit"]["chosen"]["C"] > 0


def test_a_second_probe_reuses_the_cached_features(env, probe) -> None:
    client, key, dataset_id = env
    body = {"dataset_id": dataset_id, "strategy": "linear_probe", "head": {"type": "ridge", "C": 1.0}}
    resp = client.post("/v1/models", headers=auth(key), json=body)
    job = wait_for_job(client, resp.json()["job_id"], key)
    assert job["status"] == "succeeded", job
    assert job["metrics"]["forward_images"] == 0
    assert job["metrics"]["feature_set_id"] == probe["params"]["fit"]["feature_set_id"]


def _test_images(n: int) -> list[tuple[str, str, bytes]]:
    return list(iter_labelled_pngs("fashion", 1, seed=99))[:n]


def test_predict_on_good_and_bad_files(env, probe) -> None:
    client, key, _ = env
    images = _test_images(4)
    files = [("files", (name, data, "image/png")) for name, _, data in images]
    files.insert(2, ("files", ("bad.png", b"GIF89a not really", "image/png")))
    resp = client.post(f"/v1/models/{probe['id']}/predict", headers=auth(key), files=files, data={"top_k": "3"})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert [p["file"] for p in preds] == [f[1][0] for f in files]
    assert "error" in preds[2]
    for p in preds[:2] + preds[3:]:
        assert p["label"] in probe["labels"] and len(p["top_k"]) == 3
        scores = [t["score"] for t in p["top_k"]]
        assert scores == sorted(scores, reverse=True) and 0.0 < sum(scores) <= 1.0 + 1e-6
        assert p["top_k"][0]["label"] == p["label"] and p["score"] == scores[0]


def test_an_overloaded_model_answers_503_overloaded_at_once(env, probe) -> None:
    """The predict route sheds through the error contract: JSON body, 503 ``overloaded``, Retry-After."""
    from service.batching import MicroBatcher

    client, key, _ = env
    app = client.app
    kept = app.state.batcher
    app.state.batcher = MicroBatcher(deadline_s=1e-9)  # nothing can be answered within a nanosecond
    try:
        name, _, data = _test_images(1)[0]
        resp = client.post(f"/v1/models/{probe['id']}/predict", headers=auth(key), files=[("files", (name, data))])
    finally:
        app.state.batcher.close()
        app.state.batcher = kept
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "overloaded" and int(resp.headers["Retry-After"]) >= 1
    again = client.post(f"/v1/models/{probe['id']}/predict", headers=auth(key), files=[("files", (name, data))])
    assert again.status_code == 200, again.text


def test_a_prediction_waiting_in_the_batcher_holds_no_database_connection(env, probe) -> None:
    """Issue 10, item 1: authentication and the predictor lookup close their sessions before the request
    waits for its batch, so waiting predictions cannot drain the pool."""
    import threading

    from core.db import get_engine
    from service.batching import MicroBatcher

    client, key, _ = env
    started, release = threading.Event(), threading.Event()

    class Gated(MicroBatcher):
        async def submit(self, key_, batch, runner):  # type: ignore[no-untyped-def]
            def gated(x: np.ndarray) -> np.ndarray:
                started.set()
                release.wait(60)
                return runner(x)

            return await super().submit(key_, batch, gated)

        async def run_alone(self, key_, job):  # type: ignore[no-untyped-def]
            def gated():  # type: ignore[no-untyped-def]
                started.set()
                release.wait(60)
                return job()

            return await super().run_alone(key_, gated)

    app = client.app
    kept, app.state.batcher = app.state.batcher, Gated()
    name, _, data = _test_images(1)[0]
    answers: list[int] = []
    request = threading.Thread(
        target=lambda: answers.append(
            client.post(
                f"/v1/models/{probe['id']}/predict", headers=auth(key), files=[("files", (name, data))]
            ).status_code
        )
    )
    request.start()
    try:
        assert started.wait(60)  # the request is inside the batcher now, waiting for its forward pass
        assert get_engine().pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        release.set()
        request.join(60)
        app.state.batcher.close()
        app.state.batcher = kept
    assert answers == [200]


def test_models_are_scoped_to_their_tenant(env, probe) -> None:
    client, key, _ = env
    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        other = create_api_key(s, "globex")
    name, _, data = _test_images(1)[0]
    assert client.get(f"/v1/models/{probe['id']}", headers=auth(other)).status_code == 404
    resp = client.post(f"/v1/models/{probe['id']}/predict", headers=auth(other), files=[("files", (name, data))])
    assert resp.status_code == 404
    assert client.delete(f"/v1/models/{probe['id']}", headers=auth(other)).status_code == 404
    assert client.get("/v1/models", headers=auth(other)).json() == []


def test_bad_training_requests_get_422(env) -> None:
    client, key, dataset_id = env
    for body, word in [
        ({"dataset_id": dataset_id, "head": {"type": "forest"}}, "head"),
        ({"dataset_id": dataset_id, "head": {"C": -1}}, "C"),
        ({"dataset_id": dataset_id, "backbone": "resnet18"}, "allow_random_weights"),
        ({"dataset_id": dataset_id, "strategy": "magic"}, "strategy"),
    ]:
        resp = client.post("/v1/models", headers=auth(key), json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert word in resp.json()["error"]["message"]
    assert client.post("/v1/models", headers=auth(key), json={"dataset_id": "ds_nope"}).status_code == 404


def test_compare_returns_a_leaderboard(env) -> None:
    client, key, dataset_id = env
    body = {
        "dataset_id": dataset_id,
        "backbones": ["efficientnet_lite0", "lenet5"],
        "allow_random_weights": True,
        "head": {"C": 1.0},
    }
    resp = client.post("/v1/compare", headers=auth(key), json=body)
    assert resp.status_code == 202, resp.text
    job = wait_for_job(client, resp.json()["job_id"], key)
    assert job["status"] == "succeeded", job
    board = job["metrics"]["leaderboard"]
    assert [r["rank"] for r in board] == [1, 2]
    assert {r["backbone"] for r in board} == {"efficientnet_lite0", "lenet5"}
    assert board[0]["test_accuracy"] >= board[1]["test_accuracy"]
    lite = next(r for r in board if r["backbone"] == "efficientnet_lite0")
    assert lite["features_from_cache"] is True and lite["extraction_seconds"] >= 0


def test_micro_batcher_returns_each_caller_its_own_rows() -> None:
    from service.batching import MicroBatcher

    batcher = MicroBatcher(max_batch=64)
    calls: list[int] = []

    def runner(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2

    async def main() -> list[np.ndarray]:
        inputs = [np.full((i % 3 + 1, 2, 2, 1), i, dtype=np.uint8) for i in range(20)]
        outs = await asyncio.gather(*(batcher.submit("m", x, runner) for x in inputs))
        for i, (x, out) in enumerate(zip(inputs, outs, strict=True)):
            assert out.shape == (len(x), 1) and (out == i * 4 * 2).all()
        return outs

    asyncio.run(main())
    assert sum(calls) == sum(i % 3 + 1 for i in range(20)) and len(calls) < 20  # merged, nothing lost
    batcher.close()


def test_micro_batcher_passes_errors_to_every_caller() -> None:
    from service.batching import MicroBatcher

    batcher = MicroBatcher()

    def runner(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("engine exploded")

    async def main() -> None:
        results = await asyncio.gather(
            *(batcher.submit("m", np.zeros((1, 1)), runner) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(main())
    batcher.close()


def test_delete_model_then_predict_is_404(env) -> None:
    client, key, dataset_id = env
    resp = client.post("/v1/models", headers=auth(key), json={"dataset_id": dataset_id, "head": {"C": 0.5}})
    wait_for_job(client, resp.json()["job_id"], key)
    assert client.delete(f"/v1/models/{resp.json()['id']}", headers=auth(key)).status_code == 204
    name, _, data = _test_images(1)[0]
    gone = client.post(f"/v1/models/{resp.json()['id']}/predict", headers=auth(key), files=[("files", (name, data))])
    assert gone.status_code == 404


def test_batch_prediction_job_gives_csv_and_json(env, probe) -> None:
    client, key, _ = env
    from tests.helpers import zip_bytes

    images = _test_images(5)
    archive = zip_bytes({**{f"any/folder/{n}": d for n, _, d in images}, "bad.png": b"nope", "../evil.png": b"x"})
    resp = client.post(
        f"/v1/models/{probe['id']}/predictions",
        headers=auth(key),
        files={"archive": ("imgs.zip", archive, "application/zip")},
        data={"top_k": "2"},
    )
    assert resp.status_code == 202, resp.text
    job = wait_for_job(client, resp.json()["job_id"], key)
    assert job["status"] == "succeeded", job
    assert job["metrics"] == {"predicted": 5, "errors": 2}
    url = f"/v1/models/{probe['id']}/predictions/{resp.json()['job_id']}"
    rows = client.get(url, headers=auth(key)).json()["predictions"]
    good = [r for r in rows if "label" in r]
    assert len(good) == 5 and all(r["label"] in probe["labels"] and len(r["top_k"]) == 2 for r in good)
    assert {r["file"] for r in rows if "error" in r} == {"bad.png", "../evil.png"}
    text = client.get(url, headers=auth(key), params={"format": "csv"}).text
    assert text.splitlines()[0] == "file,label,score,top_k,error" and len(text.splitlines()) == 8
    assert client.get(url.replace(probe["id"], "mdl_nope"), headers=auth(key)).status_code == 404


def test_the_api_process_serves_a_prediction_without_torch(env, probe) -> None:
    """Whether the API stays torch-free is a run-time fact: a fresh process imports the app and serves one
    prediction of the probe (its backbone from the stored ONNX graph), and torch is never imported."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    client, key, _ = env
    code = f"""
import io, sys
from fastapi.testclient import TestClient
from core.sample_data import iter_labelled_pngs
from service.app import create_app
png = next(iter(iter_labelled_pngs("fashion", per_class=1, seed=3)))[2]
with TestClient(create_app()) as client:
    resp = client.post("/v1/models/{probe["id"]}/predict", headers={{"Authorization": "Bearer {key}"}},
                       files=[("files", ("a.png", png, "image/png"))])
assert resp.status_code == 200, resp.text
assert resp.json()["predictions"][0]["label"], resp.text
assert "torch" not in sys.modules, "torch was imported"
"""
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("TLSERVE_") or k in ("PATH", "HOME")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[2], env=env_vars, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_aliases_point_repoint_and_follow_their_model(env, probe) -> None:
    client, key, dataset_id = env
    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        other = create_api_key(s, "initech")
    first = client.put("/v1/aliases/prod", headers=auth(key), json={"model_id": probe["id"]})
    assert first.status_code == 201 and first.json()["model_id"] == probe["id"]
    body = {"dataset_id": dataset_id, "head": {"type": "ridge", "C": 1.0}}
    resp = client.post("/v1/models", headers=auth(key), json=body).json()
    assert wait_for_job(client, resp["job_id"], key)["status"] == "succeeded"
    png = next(iter(iter_labelled_pngs("fashion", per_class=1, seed=3)))[2]
    files = [("files", ("a.png", png, "image/png"))]
    served = client.post("/v1/aliases/prod/predict", headers=auth(key), files=files)
    assert served.status_code == 200 and served.json()["model_id"] == probe["id"], served.text
    by_id = client.post(f"/v1/models/{probe['id']}/predict", headers=auth(key), files=files).json()
    assert served.json()["predictions"] == by_id["predictions"]
    again = client.put("/v1/aliases/prod", headers=auth(key), json={"model_id": resp["id"]})
    assert again.status_code == 200 and again.json()["model_id"] == resp["id"]
    served = client.post("/v1/aliases/prod/predict", headers=auth(key), files=files)
    assert served.status_code == 200 and served.json()["model_id"] == resp["id"]  # the next request follows
    assert client.post("/v1/aliases/nope/predict", headers=auth(key), files=files).status_code == 404
    assert [a["name"] for a in client.get("/v1/aliases", headers=auth(key)).json()] == ["prod"]

    assert client.put("/v1/aliases/Bad Name!", headers=auth(key), json={"model_id": probe["id"]}).status_code == 422
    assert client.put("/v1/aliases/x", headers=auth(key), json={"model_id": "mdl_nope"}).status_code == 404
    assert client.get("/v1/aliases/prod", headers=auth(other)).status_code == 404  # another tenant's name space
    assert client.put("/v1/aliases/prod", headers=auth(other), json={"model_id": probe["id"]}).status_code == 404

    assert client.delete(f"/v1/models/{resp['id']}", headers=auth(key)).status_code == 204
    assert client.get("/v1/aliases/prod", headers=auth(key)).status_code == 404  # gone with its model
    client.put("/v1/aliases/tmp", headers=auth(key), json={"model_id": probe["id"]})
    assert client.delete("/v1/aliases/tmp", headers=auth(key)).status_code == 204
    assert client.get("/v1/aliases", headers=auth(key)).json() == []


def test_repointing_an_alias_under_load_fails_no_request(env, probe) -> None:
    """Predictions through an alias keep answering 200 while it is repointed back and forth; each answer
    comes from one of the two models, and once a repoint has returned, every later request uses it."""
    from concurrent.futures import ThreadPoolExecutor

    client, key, dataset_id = env
    body = {"dataset_id": dataset_id, "head": {"type": "ridge", "C": 0.5}}
    other = client.post("/v1/models", headers=auth(key), json=body).json()
    assert wait_for_job(client, other["job_id"], key)["status"] == "succeeded"
    models = [probe["id"], other["id"]]
    assert client.put("/v1/aliases/live", headers=auth(key), json={"model_id": models[0]}).status_code in (200, 201)
    png = next(iter(iter_labelled_pngs("fashion", per_class=1, seed=5)))[2]
    files = [("files", ("a.png", png, "image/png"))]

    def one(_: int) -> tuple[int, str]:
        resp = client.post("/v1/aliases/live/predict", headers=auth(key), files=files)
        return resp.status_code, resp.json().get("model_id", resp.text)

    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(one, i) for i in range(160)]
        for i in range(1, 9):  # repoint while the predictions are in flight
            target = models[i % 2]
            assert client.put("/v1/aliases/live", headers=auth(key), json={"model_id": target}).status_code == 200
            assert one(0) == (200, target)  # the next request after the switch serves the new model
        answers = [f.result() for f in pending]
    assert {status for status, _ in answers} == {200}
    assert {model for _, model in answers} <= set(models)


def test_a_probe_exports_as_one_onnx_graph_that_reproduces_the_service(env, probe, tmp_path) -> None:
    client, key, _ = env
    images = [(f"{i}.png", data) for i, (_, _, data) in enumerate(iter_labelled_pngs("fashion", per_class=1, seed=9))]
    rows = assert_export_reproduces_the_service(client, key, probe["id"], images, tmp_path)
    assert len(rows) == 10 and set(rows[0]["probabilities"]) == set(probe["labels"])
    assert client.get("/v1/models/mdl_nope/export", headers=auth(key)).status_code == 404
    other = client.get(f"/v1/models/{probe['id']}/export", headers=auth(key), params={"format": "tflite"})
    assert other.status_code == 422


def test_an_idle_model_decodes_and_predicts_in_one_trip(env, probe, monkeypatch) -> None:
    """With its predictor loaded and nothing of the model queued, a request's decoding and forward pass go
    to the inference thread together (nothing in the thread pool), and answer as the pooled way does,
    per-file errors included."""
    from core.settings import get_settings
    from service.routes import models as routes
    from workers.runtime.serving import PREDICTORS

    client, key, _ = env
    monkeypatch.setattr(get_settings(), "serving_revalidate_s", 3600.0)  # no re-check due in this test
    (name, _, data), (other, _, data2) = _test_images(2)
    url = f"/v1/models/{probe['id']}/predict"
    bodies = {
        "one": [("files", (name, data))],
        "mixed": [("files", ("bad.png", b"not an image")), ("files", (other, data2))],
        "all bad": [("files", ("bad.png", b"not an image"))],
    }
    with monkeypatch.context() as m:
        m.setattr(PREDICTORS, "fresh", lambda *_: None)  # the pooled way: lookup and decoding in the pool
        pooled = {k: client.post(url, headers=auth(key), files=v, data={"top_k": "2"}) for k, v in bodies.items()}
    assert all(r.status_code == 200 for r in pooled.values()), pooled
    assert PREDICTORS.fresh(_tenant_of(key), probe["id"]) is not None  # loaded, confirmed just now

    trips: list[str] = []
    real = routes.run_in_threadpool

    async def counting(fn, *args):  # type: ignore[no-untyped-def]
        trips.append(fn.__name__)
        return await real(fn, *args)

    monkeypatch.setattr(routes, "run_in_threadpool", counting)
    ran = client.app.state.batcher.batches_run
    alone = {k: client.post(url, headers=auth(key), files=v, data={"top_k": "2"}) for k, v in bodies.items()}
    assert trips == [] and client.app.state.batcher.batches_run == ran + 3
    for k in bodies:
        assert alone[k].status_code == 200 and alone[k].json() == pooled[k].json(), k
    assert "error" in alone["mixed"].json()["predictions"][0] and "label" in alone["mixed"].json()["predictions"][1]


def _tenant_of(key: str) -> str:
    from service import deps

    return deps._authenticate(key).tenant_id
