"""Similarity search and train/test leakage over the API, on real Fashion-MNIST images and the real
efficientnet_lite0 features: a dataset with planted near-duplicates (the same photo saved again as a JPEG)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.sample_data import iter_labelled_pngs
from tests.conftest import module_service
from tests.helpers import auth, upload_dataset, wait_for_job
from workers.runtime.similarity import LEAK_THRESHOLD

pytestmark = pytest.mark.slow

PLANTED = 20  # images uploaded twice: as the PNG, and again as a JPEG under another name


def _jpeg(png: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, dict, dict[str, str]]]:
    images = list(iter_labelled_pngs("fashion", per_class=15, seed=21))
    buf = io.BytesIO()
    twins: dict[str, str] = {}  # copy's file name → original's
    with zipfile.ZipFile(buf, "w") as zf:
        for i, (name, label, data) in enumerate(images):
            zf.writestr(f"{label}/{name}", data)
            if i % (len(images) // PLANTED) == 0 and len(twins) < PLANTED:
                copy = name.replace(".png", "-again.jpg")
                zf.writestr(f"{label}/{copy}", _jpeg(data))
                twins[f"{label}/{copy}"] = f"{label}/{name}"
    with module_service(tmp_path_factory.mktemp("similarity")) as (client, key):
        ds = upload_dataset(client, key, buf.getvalue(), name="twins", test_fraction=0.3, val_fraction=0.1).json()
        assert wait_for_job(client, ds["job_id"], key)["status"] == "succeeded"
        fs = client.post("/v1/features", headers=auth(key), json={"dataset_id": ds["id"]}).json()
        assert wait_for_job(client, fs["job_id"], key)["status"] == "succeeded"
        yield client, key, fs, twins


def _images(client: TestClient, key: str, dataset_id: str) -> dict[str, dict]:
    rows = client.get(f"/v1/datasets/{dataset_id}/images", headers=auth(key), params={"limit": 200}).json()
    return {r["file"]: r for r in rows}


def test_an_image_of_the_set_finds_its_twin_first_and_never_itself(env) -> None:
    client, key, fs, twins = env
    images = _images(client, key, fs["dataset_id"])
    for copy, original in list(twins.items()):
        resp = client.post(
            f"/v1/features/{fs['id']}/search", headers=auth(key), data={"image_id": images[copy]["id"], "k": 5}
        )
        assert resp.status_code == 200, resp.text
        (result,) = resp.json()["results"]
        found = result["neighbours"]
        assert len(found) == 5 and images[copy]["id"] not in {n["image_id"] for n in found}
        assert found[0]["file"] == original and found[0]["label"] == images[original]["label"]
        distances = [n["distance"] for n in found]
        assert distances == sorted(distances) and distances[0] < LEAK_THRESHOLD < distances[1]


def test_uploaded_images_are_searched_with_the_sets_own_backbone(env) -> None:
    client, key, fs, twins = env
    original = next(iter(twins.values()))
    label, name = original.split("/")
    data = next(d for n, lbl, d in iter_labelled_pngs("fashion", per_class=15, seed=21) if n == name)
    files = [("files", ("query.png", data, "image/png")), ("files", ("broken.png", b"not an image", "image/png"))]
    resp = client.post(f"/v1/features/{fs['id']}/search", headers=auth(key), files=files, data={"k": 3})
    assert resp.status_code == 200, resp.text
    good, bad = resp.json()["results"]
    assert good["file"] == "query.png" and good["neighbours"][0]["file"] == original
    assert good["neighbours"][0]["distance"] < 1e-5 and good["neighbours"][0]["label"] == label
    assert bad["file"] == "broken.png" and "error" in bad and "neighbours" not in bad


def test_near_duplicates_across_train_and_test_are_reported(env) -> None:
    client, key, fs, twins = env
    images = _images(client, key, fs["dataset_id"])
    crossing = {
        frozenset((a, b))
        for a, b in twins.items()
        if {images[a]["split"], images[b]["split"]} == {"train", "test"}
    }
    assert crossing, "no planted pair straddles the split: change the seed"
    resp = client.get(f"/v1/features/{fs['id']}/near-duplicates", headers=auth(key))
    assert resp.status_code == 200, resp.text
    pairs = resp.json()["pairs"]
    reported = {frozenset((p["test"]["file"], p["train"]["file"])) for p in pairs}
    assert reported == crossing  # every planted leak, and nothing else among distinct photos
    assert all(p["test"]["split"] == "test" and p["train"]["split"] == "train" for p in pairs)


def test_search_refuses_what_it_cannot_answer(env) -> None:
    client, key, fs, _ = env
    url = f"/v1/features/{fs['id']}/search"
    assert client.post(url, headers=auth(key), data={"k": 3}).status_code == 422  # no query
    assert client.post(url, headers=auth(key), data={"image_id": "img_nope", "k": 3}).status_code == 404
    assert client.post(url, headers=auth(key), data={"image_id": "x", "k": 0}).status_code == 422
    assert client.post(url, headers=auth(key), data={"image_id": "x", "k": 101}).status_code == 422
    nope = client.post("/v1/features/fs_nope/search", headers=auth(key), data={"image_id": "x"})
    assert nope.status_code == 404
    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        other = create_api_key(s, "initech")
    assert client.get(f"/v1/features/{fs['id']}/near-duplicates", headers=auth(other)).status_code == 404


def test_a_deleted_dataset_is_no_longer_searchable(env) -> None:
    client, key, _, _ = env
    from core.sample_data import class_folder_zip

    ds = upload_dataset(client, key, class_folder_zip("fashion", per_class=4, seed=5), name="short-lived").json()
    assert wait_for_job(client, ds["job_id"], key)["status"] == "succeeded"
    fs = client.post("/v1/features", headers=auth(key), json={"dataset_id": ds["id"]}).json()
    assert fs["status"] == "ready" or wait_for_job(client, fs["job_id"], key)["status"] == "succeeded"
    url = f"/v1/features/{fs['id']}/near-duplicates"
    assert client.get(url, headers=auth(key)).status_code == 200  # its index is now in this process's cache
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth(key)).status_code == 204
    assert client.get(url, headers=auth(key)).status_code == 404
