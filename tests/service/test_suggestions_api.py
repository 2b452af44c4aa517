"""Which images to label next, end to end on the real service (in-process API and jobs, real Fashion-MNIST
images, real efficientnet_lite0 features): upload with ``_unlabelled/``, train a probe, get suggestions,
label them, and a new probe trains on the new version."""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.sample_data import iter_labelled_pngs
from tests.conftest import module_service
from tests.helpers import auth, upload_dataset, wait_for_job

pytestmark = pytest.mark.slow

LABELLED, POOLED = 10, 6  # per class
HEAD = {"type": "logistic", "C": 1.0}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, dict, dict, dict[str, str]]]:
    by_class: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for name, label, data in iter_labelled_pngs("fashion", per_class=LABELLED + POOLED, seed=5):
        by_class[label].append((name, data))
    truth: dict[str, str] = {}  # pool file → its real class (kept from the service)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, items in by_class.items():
            for name, data in items[:LABELLED]:
                zf.writestr(f"fashion/{label}/{name}", data)
            for name, data in items[LABELLED:]:
                zf.writestr(f"fashion/_unlabelled/{name}", data)
                truth[f"fashion/_unlabelled/{name}"] = label
    with module_service(tmp_path_factory.mktemp("suggestions")) as (client, key):
        ds = upload_dataset(client, key, buf.getvalue(), name="pool", test_fraction=0.3, val_fraction=0.0).json()
        assert wait_for_job(client, ds["job_id"], key)["status"] == "succeeded"
        body = {"dataset_id": ds["id"], "backbone": "efficientnet_lite0", "strategy": "linear_probe", "head": HEAD}
        model = client.post("/v1/models", headers=auth(key), json=body).json()
        assert wait_for_job(client, model["job_id"], key)["status"] == "succeeded"
        yield client, key, ds, client.get(f"/v1/models/{model['id']}", headers=auth(key)).json(), truth


def _suggest(client: TestClient, key: str, model_id: str, **params) -> dict:
    resp = client.get(f"/v1/models/{model_id}/suggestions", headers=auth(key), params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_the_pool_is_extracted_but_never_trained_on_or_downloaded(env) -> None:
    client, key, ds, model, truth = env
    info = client.get(f"/v1/datasets/{ds['id']}", headers=auth(key)).json()
    assert info["unlabelled"] == len(truth) and "" not in info["classes"]
    assert sum(info["splits"].values()) + info["unlabelled"] == info["num_images"]
    assert "" not in model["metrics"]["labels"] and len(model["labels"]) == 10
    fs_id = model["lineage"]["feature_set_id"]
    fs = client.get(f"/v1/features/{fs_id}", headers=auth(key)).json()
    assert fs["num_images"] == info["num_images"]  # the extraction covers the pool too
    raw = client.get(f"/v1/features/{fs_id}/download?format=npz", headers=auth(key)).content
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        assert len(z["labels"]) == info["num_images"] - len(truth)
        assert "" not in set(z["labels"].tolist()) and "pool" not in set(z["splits"].tolist())


@pytest.mark.parametrize("strategy", ["margin", "entropy", "coreset"])
def test_each_strategy_ranks_distinct_pool_images_best_first(env, strategy: str) -> None:
    client, key, ds, model, truth = env
    body = _suggest(client, key, model["id"], strategy=strategy, k=12)
    assert (body["strategy"], body["k"], body["pool_size"], body["dataset_version"]) == (strategy, 12, len(truth), 1)
    found = body["suggestions"]
    assert len(found) == 12 and len({s["image_id"] for s in found}) == 12
    assert {s["file"] for s in found} <= set(truth)
    assert all(s["label"] in model["labels"] and 0 < s["score"] <= 1 for s in found)
    values = [s["value"] for s in found]
    assert values == (sorted(values) if strategy == "margin" else sorted(values, reverse=True))
    if strategy == "margin":  # the value is the probe's own top-1 minus top-2: never above its top score
        assert all(s["value"] <= s["score"] + 1e-6 for s in found)


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [({"strategy": "random"}, 422, "strategy"), ({"k": 0}, 422, "k"), ({"k": 5000}, 422, "k")],
)
def test_bad_parameters_are_refused(env, params: dict, status: int, words: str) -> None:
    client, key, _, model, _ = env
    resp = client.get(f"/v1/models/{model['id']}/suggestions", headers=auth(key), params=params)
    assert resp.status_code == status and words in resp.text


def test_fine_tuning_ignores_the_pool_and_a_fine_tuned_model_gets_no_suggestions(env) -> None:
    client, key, ds, model, _ = env
    finetune = {"epochs": 1, "unfreeze": "all", "batch_size": 16, "early_stopping_patience": 0}
    body = {"dataset_id": ds["id"], "backbone": "lenet5", "strategy": "finetune", "finetune": finetune}
    resp = client.post("/v1/models", headers=auth(key), json=body)
    assert resp.status_code == 202, resp.text
    assert wait_for_job(client, resp.json()["job_id"], key, timeout=600)["status"] == "succeeded"
    tuned = client.get(f"/v1/models/{resp.json()['id']}", headers=auth(key)).json()
    assert tuned["labels"] == model["labels"] and "" not in tuned["metrics"]["labels"]
    resp = client.get(f"/v1/models/{tuned['id']}/suggestions", headers=auth(key))
    assert resp.status_code == 409 and "linear probe" in resp.json()["error"]["message"]


def test_labelling_suggestions_makes_a_version_a_new_probe_trains_on(env) -> None:
    client, key, ds, model, truth = env
    found = _suggest(client, key, model["id"], strategy="margin", k=10)["suggestions"]
    labels = {s["image_id"]: truth[s["file"]] for s in found}
    resp = client.post(f"/v1/datasets/{ds['id']}/labels", headers=auth(key), json={"labels": labels})
    assert resp.status_code == 202, resp.text
    assert wait_for_job(client, resp.json()["job_id"], key)["status"] == "succeeded"
    v2 = client.get(f"/v1/datasets/{ds['id']}", headers=auth(key)).json()
    v1 = client.get(f"/v1/datasets/{ds['id']}?version=1", headers=auth(key)).json()
    assert v2["version"] == 2 and v2["unlabelled"] == len(truth) - 10
    assert v2["splits"] == {**v1["splits"], "train": v1["splits"]["train"] + 10}

    again = _suggest(client, key, model["id"], strategy="margin", k=100)  # the old probe: labelled ones left out
    assert again["pool_size"] == len(truth) - 10 and not {s["image_id"] for s in again["suggestions"]} & set(labels)

    body = {"dataset_id": ds["id"], "backbone": "efficientnet_lite0", "strategy": "linear_probe", "head": HEAD}
    new = client.post("/v1/models", headers=auth(key), json=body).json()
    assert wait_for_job(client, new["job_id"], key)["status"] == "succeeded"
    new = client.get(f"/v1/models/{new['id']}", headers=auth(key)).json()
    assert new["lineage"]["dataset_version"] == 2
    assert new["params"]["fit"]["forward_images"] == 0  # same images: the features come from the cache
    sizes = new["metrics"]["split_sizes"]
    assert sizes["train"] == model["metrics"]["split_sizes"]["train"] + 10
    assert sizes["test"] == model["metrics"]["split_sizes"]["test"]  # the test split did not move
    assert _suggest(client, key, new["id"], strategy="coreset", k=5)["pool_size"] == len(truth) - 10
