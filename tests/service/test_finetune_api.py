"""Fine-tuning over the API (in-process job): per-epoch history, honest metrics, predict, cancel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from core.sample_data import class_folder_zip, iter_labelled_pngs
from tests.conftest import module_service
from tests.helpers import assert_export_reproduces_the_service, auth, upload_dataset, wait_for_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, str]]:
    with module_service(tmp_path_factory.mktemp("finetune")) as (client, key):
        archive = class_folder_zip("digits", per_class=20)
        body = upload_dataset(client, key, archive, name="digits", test_fraction=0.25, val_fraction=0.15).json()
        assert wait_for_job(client, body["job_id"], key)["status"] == "succeeded"
        yield client, key, body["id"]


def test_finetune_lenet_reports_epochs_metrics_and_predicts(env) -> None:
    client, key, dataset_id = env
    body = {
        "dataset_id": dataset_id,
        "backbone": "lenet5",
        "strategy": "finetune",
        "finetune": {
            "epochs": 4,
            "unfreeze": "all",
            "lr": 3e-3,
            "batch_size": 16,
            "augment": ["shift"],
            "early_stopping_patience": 0,
        },
    }
    resp = client.post("/v1/models", headers=auth(key), json=body)
    assert resp.status_code == 202, resp.text
    job = wait_for_job(client, resp.json()["job_id"], key, timeout=600)
    assert job["status"] == "succeeded", job
    history = job["metrics"]["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert set(history[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    model = client.get(f"/v1/models/{resp.json()['id']}", headers=auth(key)).json()
    m = model["metrics"]
    assert model["status"] == "ready" and model["strategy"] == "finetune"
    assert set(m) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "labels", "train_accuracy"}
    assert m["accuracy"] > 0.3  # 10 classes: well above chance after 4 epochs on real digits
    files = [("files", (n, d, "image/png")) for n, _, d in list(iter_labelled_pngs("digits", 1, seed=5))[:3]]
    pred = client.post(f"/v1/models/{model['id']}/predict", headers=auth(key), files=files)
    assert pred.status_code == 200, pred.text
    assert all(p["label"] in model["labels"] for p in pred.json()["predictions"])


def test_a_finetuned_model_is_a_backbone_for_features_and_probes(env, tmp_path) -> None:
    client, key, dataset_id = env
    body = {
        "dataset_id": dataset_id,
        "backbone": "lenet5",
        "strategy": "finetune",
        "finetune": {"epochs": 2, "unfreeze": "all", "lr": 3e-3, "batch_size": 16},
    }
    tuned = client.post("/v1/models", headers=auth(key), json=body).json()
    assert wait_for_job(client, tuned["job_id"], key, timeout=600)["status"] == "succeeded"
    name = f"model:{tuned['id']}"
    cards = {b["name"]: b for b in client.get("/v1/backbones", headers=auth(key)).json()}
    assert cards[name]["feature_dim"] == 84 and cards[name]["base"] == "lenet5"

    fs = client.post("/v1/features", headers=auth(key), json={"dataset_id": dataset_id, "backbone": name})
    assert fs.status_code == 202, fs.text
    assert wait_for_job(client, fs.json()["job_id"], key)["status"] == "succeeded"
    assert client.get(f"/v1/features/{fs.json()['id']}", headers=auth(key)).json()["feature_dim"] == 84

    probe = client.post("/v1/models", headers=auth(key), json={"dataset_id": dataset_id, "backbone": name})
    job = wait_for_job(client, probe.json()["job_id"], key)
    assert job["status"] == "succeeded", job
    assert job["metrics"]["forward_images"] == 0  # the features above were reused
    files = [("files", (n, d, "image/png")) for n, _, d in list(iter_labelled_pngs("digits", 1, seed=5))[:2]]
    pred = client.post(f"/v1/models/{probe.json()['id']}/predict", headers=auth(key), files=files)
    assert pred.status_code == 200 and len(pred.json()["predictions"]) == 2

    # both export as one ONNX graph each: the fine-tuned network, and the probe on its features
    images = [(name, data) for name, _, data in iter_labelled_pngs("digits", 1, seed=11)]
    assert_export_reproduces_the_service(client, key, tuned["id"], images, tmp_path)
    assert_export_reproduces_the_service(client, key, probe.json()["id"], images, tmp_path)

    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        other = create_api_key(s, "globex")
    refused = client.post("/v1/embed", headers=auth(other), files=files, data={"backbone": name})
    assert refused.status_code == 422 and "no such model" in refused.json()["error"]["message"]


def test_finetune_request_validation(env) -> None:
    client, key, dataset_id = env
    for finetune, word in [
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"unfreeze": "last:99"}, "last"),
        ({"augment": ["sparkle"]}, "augment"),
        ({"epochs": 0}, "epochs"),
        ({"bogus": 1}, "bogus"),
    ]:
        resp = client.post(
            "/v1/models",
            headers=auth(key),
            json={"dataset_id": dataset_id, "backbone": "lenet5", "strategy": "finetune", "finetune": finetune},
        )
        assert resp.status_code == 422, (finetune, resp.text)
        assert word in resp.json()["error"]["message"]


def test_lpft_starts_from_the_cached_probe_and_reports_it(env) -> None:
    """efficientnet_lite0 (real weights), head only: the probe is fitted on the feature cache (filled by this
    job, then reused by a linear probe), epoch 0 is recorded, the kept model is not worse on validation, and
    the model's metrics carry the probe's test accuracy on the same split."""
    client, key, dataset_id = env
    body = {
        "dataset_id": dataset_id,
        "backbone": "efficientnet_lite0",
        "strategy": "finetune",
        "finetune": {"epochs": 2, "batch_size": 32, "early_stopping_patience": 0},
    }
    resp = client.post("/v1/models", headers=auth(key), json=body)
    assert resp.status_code == 202, resp.text
    job = wait_for_job(client, resp.json()["job_id"], key, timeout=900)
    assert job["status"] == "succeeded", job
    metrics = job["metrics"]
    initial = metrics["initial"]
    assert initial["head_init"] == "probe" and initial["features"] == "cache" and initial["epoch"] == 0
    best = initial if metrics["best_epoch"] == 0 else metrics["history"][metrics["best_epoch"] - 1]
    assert best["val_loss"] <= initial["val_loss"]
    assert metrics["refit_on_val"]  # the kept model is trained again on train + val, or the probe refitted on them
    model = client.get(f"/v1/models/{resp.json()['id']}", headers=auth(key)).json()
    m = model["metrics"]
    refit = metrics["refit"]
    assert (refit is None) == (metrics["best_epoch"] == 0)
    if refit is not None:
        assert refit["epochs"] == metrics["best_epoch"]
        assert refit["images"] == m["split_sizes"]["train"] + m["split_sizes"]["val"]
    assert 0.5 < m["probe_accuracy"] <= 1 and m["accuracy"] > 0.5  # digits on ImageNet features: well above 0.1
    assert model["params"]["finetune"]["head_init"] == "probe"
    assert _served_test_accuracy(model["id"]) == pytest.approx(m["accuracy"], abs=1.01 / m["split_sizes"]["test"])

    probe = client.post(
        "/v1/models", headers=auth(key), json={"dataset_id": dataset_id, "backbone": "efficientnet_lite0"}
    )
    probe_job = wait_for_job(client, probe.json()["job_id"], key, timeout=600)
    assert probe_job["status"] == "succeeded" and probe_job["metrics"]["forward_images"] == 0  # the job's features


def test_finetune_body_takes_lr_auto_and_the_lpft_fields(env) -> None:
    client, key, dataset_id = env
    ok = {"lr": "auto", "head_init": "random", "warmup": 0.2, "bn_eval": False, "monitor": "val_acc", "epochs": 1}
    resp = client.post(
        "/v1/models",
        headers=auth(key),
        json={"dataset_id": dataset_id, "backbone": "lenet5", "strategy": "finetune", "finetune": ok},
    )
    assert resp.status_code == 202, resp.text
    job = wait_for_job(client, resp.json()["job_id"], key, timeout=600)
    assert job["status"] == "succeeded", job
    assert (
        job["metrics"]["lr_find"]["rule"] == "valley" and job["metrics"]["lr"] == job["metrics"]["lr_find"]["suggested"]
    )
    for finetune in ({"lr": "fast"}, {"head_init": "zeros"}, {"warmup": 1.5}, {"monitor": "train_loss"}):
        bad = client.post(
            "/v1/models",
            headers=auth(key),
            json={"dataset_id": dataset_id, "backbone": "lenet5", "strategy": "finetune", "finetune": finetune},
        )
        assert bad.status_code == 422, (finetune, bad.text)


def _served_test_accuracy(model_id: str) -> float:
    """The test-split accuracy of the graph the model is served with (a head-only model's metrics come from the
    feature cache, without a forward pass: they must agree, give or take one near-tie)."""
    import numpy as np

    from core import datasets as ds
    from core.db import session_scope
    from core.storage import get_storage
    from core.tables import Model
    from workers.runtime.preprocess import load_rgb, stack_batch
    from workers.runtime.serving import FinetunedEngine

    with session_scope() as s:
        row = s.get(Model, model_id)
        test = [(r.canonical_key, r.label) for r in ds.version_images(s, row.version_id) if r.split == "test"]
        prefix = row.storage_prefix
    engine = FinetunedEngine(prefix)
    storage = get_storage()
    pixels = stack_batch([load_rgb(storage.get_bytes(key), engine.spec.preprocessing) for key, _ in test])
    served = np.array(engine.labels)[engine.predict_proba(pixels).argmax(axis=1)]
    return float(np.mean(served == np.array([label for _, label in test])))
