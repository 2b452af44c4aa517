"""Unlabelled images (the pool) over the API, and labelling them into a new version: in-process jobs, on
SQLite and PostgreSQL, with real digit images."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.sample_data import iter_labelled_pngs
from tests.helpers import auth, upload_dataset, wait_for_job, zip_bytes


@pytest.fixture
def client(db: str) -> TestClient:
    from service.app import create_app

    with TestClient(create_app()) as c:
        yield c


def _images() -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str, bytes]]]:
    """(labelled, pool): digits 0–2, 8 images each, and 6 images of 3 and 4."""
    pngs = list(iter_labelled_pngs("digits", 10, seed=1))
    return [p for p in pngs if p[1] in {"0", "1", "2"}][:24], [p for p in pngs if p[1] in {"3", "4"}][:6]


def _upload_with_pool(client: TestClient, key: str) -> dict:
    """Digits 0–2, 8 labelled images each, and 6 more (of other classes) in ``_unlabelled/``."""
    labelled, pool = _images()
    entries = {f"digits/{lb}/{n}": d for n, lb, d in labelled} | {f"digits/_unlabelled/{n}": d for n, _, d in pool}
    body = upload_dataset(client, key, zip_bytes(entries), test_fraction=0.25, val_fraction=0.0).json()
    assert wait_for_job(client, body["job_id"], key)["status"] == "succeeded"
    return client.get(f"/v1/datasets/{body['id']}", headers=auth(key)).json()


def _pool(client: TestClient, key: str, dataset_id: str, version: int | None = None) -> list[dict]:
    query = f"&version={version}" if version else ""
    resp = client.get(f"/v1/datasets/{dataset_id}/images?split=pool&limit=500{query}", headers=auth(key))
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_an_unlabelled_folder_is_a_pool_outside_classes_and_splits(client: TestClient, api_key: str) -> None:
    ds = _upload_with_pool(client, api_key)
    assert ds["num_images"] == 30 and ds["unlabelled"] == 6
    assert ds["classes"] == {"0": 8, "1": 8, "2": 8}
    assert sum(ds["splits"].values()) == 24 and ds["splits"]["test"] == 6
    pool = _pool(client, api_key, ds["id"])
    assert len(pool) == 6 and {(img["label"], img["split"]) for img in pool} == {("", "pool")}


def test_files_added_without_labels_join_the_pool(client: TestClient, api_key: str) -> None:
    ds = _upload_with_pool(client, api_key)
    extra = [p for p in iter_labelled_pngs("digits", 3, seed=7) if p[1] == "9"]
    files = [("files", (n, d, "image/png")) for n, _, d in extra]
    resp = client.post(f"/v1/datasets/{ds['id']}/images", headers=auth(api_key), files=files)
    assert resp.status_code == 202, resp.text
    assert wait_for_job(client, resp.json()["job_id"], api_key)["status"] == "succeeded"
    v2 = client.get(f"/v1/datasets/{ds['id']}", headers=auth(api_key)).json()
    assert v2["unlabelled"] == 6 + len(extra) and v2["classes"] == ds["classes"] and v2["splits"] == ds["splits"]

    labelled, pool = _images()  # a labelled image again without a label, a pool image again with one
    again = [("files", ("old-labelled.png", labelled[0][2], "image/png"))]
    resp = client.post(f"/v1/datasets/{ds['id']}/images", headers=auth(api_key), files=again)
    assert wait_for_job(client, resp.json()["job_id"], api_key)["status"] == "succeeded"
    again = [("files", ("old-pool.png", pool[0][2], "image/png"))]
    resp = client.post(f"/v1/datasets/{ds['id']}/images", headers=auth(api_key), files=again, data={"labels": "3"})
    assert wait_for_job(client, resp.json()["job_id"], api_key)["status"] == "succeeded"
    v3 = client.get(f"/v1/datasets/{ds['id']}?version=3", headers=auth(api_key)).json()
    v4 = client.get(f"/v1/datasets/{ds['id']}", headers=auth(api_key)).json()
    reason = f"same content as an image already in the dataset, labelled {labelled[0][1]!r}"
    assert v3["rejected"] == [{"file": "old-labelled.png", "reason": reason}]
    assert "label it with POST /v1/datasets/" in v4["rejected"][0]["reason"]
    assert v4["unlabelled"] == v2["unlabelled"] and v4["classes"] == ds["classes"]


def test_labelling_pool_images_makes_a_new_version_and_moves_nothing_else(client: TestClient, api_key: str) -> None:
    ds = _upload_with_pool(client, api_key)
    pool = _pool(client, api_key, ds["id"])
    v1_images = client.get(f"/v1/datasets/{ds['id']}/images?limit=500", headers=auth(api_key)).json()
    chosen = {pool[0]["id"]: "3", pool[1]["id"]: "4", pool[2]["id"]: "0"}
    resp = client.post(f"/v1/datasets/{ds['id']}/labels", headers=auth(api_key), json={"labels": chosen})
    assert resp.status_code == 202, resp.text
    assert resp.json()["version"] == 2
    assert wait_for_job(client, resp.json()["job_id"], api_key)["status"] == "succeeded"

    v2 = client.get(f"/v1/datasets/{ds['id']}", headers=auth(api_key)).json()
    assert v2["version"] == 2 and v2["num_images"] == 30 and v2["unlabelled"] == 3
    assert v2["classes"] == {"0": 9, "1": 8, "2": 8, "3": 1, "4": 1}
    assert v2["splits"] == {**ds["splits"], "train": ds["splits"]["train"] + 3}  # picked images train only
    listed = client.get(f"/v1/datasets/{ds['id']}/images?limit=500", headers=auth(api_key)).json()
    after = {img["file"]: img for img in listed}
    for img in v1_images:  # every image labelled before keeps its label and split (test never moves)
        if img["split"] != "pool":
            assert (after[img["file"]]["label"], after[img["file"]]["split"]) == (img["label"], img["split"])
    files = {img["id"]: img["file"] for img in pool}
    now = {(after[files[i]]["label"], after[files[i]]["split"]) for i in chosen}
    assert now == {("3", "train"), ("4", "train"), ("0", "train")}
    v1 = client.get(f"/v1/datasets/{ds['id']}?version=1", headers=auth(api_key)).json()
    assert v1["unlabelled"] == 6 and v1["classes"] == ds["classes"]  # the old version is immutable

    # ids of version 1 still name their images: label one more of them on top of version 2, stratified
    resp = client.post(
        f"/v1/datasets/{ds['id']}/labels",
        headers=auth(api_key),
        json={"labels": {pool[3]["id"]: "3"}, "split": "stratified"},
    )
    assert resp.status_code == 202, resp.text
    assert wait_for_job(client, resp.json()["job_id"], api_key)["status"] == "succeeded"
    v3 = client.get(f"/v1/datasets/{ds['id']}", headers=auth(api_key)).json()
    assert v3["unlabelled"] == 2 and v3["classes"]["3"] == 2 and sum(v3["splits"].values()) == 28


@pytest.mark.parametrize(
    ("labels", "status", "words"),
    [
        ({}, 422, "labels is empty"),
        ({"img_nope": "3"}, 422, "no such image"),
        ("LABELLED", 422, "already labelled"),
        ("POOL_BLANK", 422, "label for image"),
    ],
)
def test_bad_labels_are_refused_with_what_to_fix(
    client: TestClient, api_key: str, labels: dict | str, status: int, words: str
) -> None:
    ds = _upload_with_pool(client, api_key)
    if labels == "LABELLED":
        img = client.get(f"/v1/datasets/{ds['id']}/images?split=train&limit=1", headers=auth(api_key)).json()[0]
        labels = {img["id"]: "3"}
    elif labels == "POOL_BLANK":
        labels = {_pool(client, api_key, ds["id"])[0]["id"]: "  "}
    resp = client.post(f"/v1/datasets/{ds['id']}/labels", headers=auth(api_key), json={"labels": labels})
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"]["message"]
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth(api_key)).json()["version"] == 1  # nothing made
