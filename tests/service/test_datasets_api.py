"""The datasets resource over the API (in-process jobs), on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from core.sample_data import class_folder_zip, encode_png, iter_labelled_pngs
from tests.helpers import auth, upload_dataset, wait_for_job, zip_bytes


@pytest.fixture
def client(db: str) -> TestClient:
    from service.app import create_app

    with TestClient(create_app()) as c:
        yield c


def _real_pngs(n_per_class: int, seed: int = 0) -> list[tuple[str, str, bytes]]:
    return list(iter_labelled_pngs("digits", n_per_class, seed))


def test_upload_gives_class_counts_and_stratified_splits(client: TestClient, api_key: str) -> None:
    archive = class_folder_zip("digits", per_class=30, root="digits")
    resp = upload_dataset(client, api_key, archive, name="digits", val_fraction=0.1, test_fraction=0.2, seed=3)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert set(body) >= {"id", "job_id", "status"}
    job = wait_for_job(client, body["job_id"], api_key)
    assert job["status"] == "succeeded", job

    ds = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()
    assert ds["status"] == "ready"
    assert ds["num_images"] == 300
    assert ds["classes"] == {str(d): 30 for d in range(10)}
    assert ds["splits"] == {"train": 210, "val": 30, "test": 60}
    assert ds["rejected"] == []
    listed = client.get("/v1/datasets", headers=auth(api_key)).json()
    assert [d["id"] for d in listed] == [body["id"]]


def test_duplicates_are_stored_once_and_reported(client: TestClient, api_key: str) -> None:
    (n1, l1, png1), (n2, l2, png2) = _real_pngs(1)[:2]
    archive = zip_bytes(
        {
            f"{l1}/{n1}": png1,
            f"{l1}/copy.png": png1,
            f"{l2}/{n2}": png2,
            f"{l2}/again.png": png2,
            f"{l2}/conflict.png": png1,
        }
    )
    body = upload_dataset(client, api_key, archive).json()
    assert wait_for_job(client, body["job_id"], api_key)["status"] == "succeeded"
    ds = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()
    assert ds["num_images"] == 2
    assert {d["file"] for d in ds["duplicates"]} == {f"{l1}/copy.png", f"{l2}/again.png"}
    assert [r["file"] for r in ds["rejected"]] == [f"{l2}/conflict.png"]
    assert "labelled" in ds["rejected"][0]["reason"]


def test_hostile_archive_keeps_good_images_and_explains_each_rejection(
    client: TestClient, api_key: str, tmp_path
) -> None:
    good = _real_pngs(3)
    entries = {f"{label}/{name}": data for name, label, data in good}
    entries["0/../../escape.png"] = good[0][2]
    entries["1/notes.png"] = b"<html>definitely not an image</html>"
    entries["2/empty.png"] = b""
    entries["3/truncated.png"] = good[1][2][: len(good[1][2]) // 2]
    entries["4/inner.zip"] = zip_bytes({"x.png": good[2][2]})
    entries["orphan.png"] = good[3][2]
    body = upload_dataset(client, api_key, zip_bytes(entries)).json()
    job = wait_for_job(client, body["job_id"], api_key)
    assert job["status"] == "succeeded", job
    ds = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()
    assert ds["num_images"] == len(good)
    reasons = {r["file"]: r["reason"] for r in ds["rejected"]}
    assert set(reasons) == {
        "0/../../escape.png",
        "1/notes.png",
        "2/empty.png",
        "3/truncated.png",
        "4/inner.zip",
        "orphan.png",
    }
    expected_words = {
        "0/../../escape.png": "outside",
        "1/notes.png": "image",
        "2/empty.png": "empty",
        "3/truncated.png": "truncated",
        "4/inner.zip": "nested",
        "orphan.png": "class folder",
    }
    for file, word in expected_words.items():
        assert word in reasons[file], (file, reasons[file])
    data_dir = tmp_path / "data"
    outside = [p for p in tmp_path.rglob("*escape*")]
    assert outside == []
    assert not (data_dir.parent / "escape.png").exists()
    assert client.get("/healthz").status_code == 200


def test_archive_of_only_bad_files_fails_the_version_and_says_why(client: TestClient, api_key: str) -> None:
    body = upload_dataset(client, api_key, zip_bytes({"a/x.png": b"nope", "b/y.jpg": b"nope"})).json()
    job = wait_for_job(client, body["job_id"], api_key)
    assert job["status"] == "failed"
    assert "no usable images" in job["error"]["message"]
    ds = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()
    assert ds["status"] == "failed" and len(ds["rejected"]) == 2


def test_adding_images_makes_a_new_immutable_version(client: TestClient, api_key: str) -> None:
    pngs = _real_pngs(6)
    first, extra = pngs[:40], pngs[40:]
    body = upload_dataset(client, api_key, zip_bytes({f"{lb}/{n}": d for n, lb, d in first}), test_fraction=0.25).json()
    assert wait_for_job(client, body["job_id"], api_key)["status"] == "succeeded"
    v1 = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()

    files = [("files", (n, d, "image/png")) for n, _, d in extra] + [("files", ("dup.png", first[0][2], "image/png"))]
    labels = {"labels": [lb for _, lb, _ in extra] + [first[0][1]]}
    resp = client.post(f"/v1/datasets/{body['id']}/images", headers=auth(api_key), files=files, data=labels)
    assert resp.status_code == 202, resp.text
    assert resp.json()["version"] == 2
    assert wait_for_job(client, resp.json()["job_id"], api_key)["status"] == "succeeded"

    v2 = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()
    assert v2["version"] == 2 and v2["num_images"] == v1["num_images"] + len(extra)
    assert [d["file"] for d in v2["duplicates"]] == ["dup.png"]
    again_v1 = client.get(f"/v1/datasets/{body['id']}?version=1", headers=auth(api_key)).json()
    assert again_v1["num_images"] == v1["num_images"] and again_v1["splits"] == v1["splits"]
    assert sum(v2["splits"].values()) == v2["num_images"]
    assert v2["splits"]["test"] >= v1["splits"]["test"]


def test_other_tenant_gets_404_and_no_key_gets_401(client: TestClient, api_key: str, other_api_key: str) -> None:
    body = upload_dataset(client, api_key, class_folder_zip("digits", per_class=2)).json()
    wait_for_job(client, body["job_id"], api_key)
    for path in (f"/v1/datasets/{body['id']}", f"/v1/jobs/{body['job_id']}"):
        resp = client.get(path, headers=auth(other_api_key))
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"
        missing = client.get(path.rsplit("/", 1)[0] + "/does_not_exist", headers=auth(other_api_key))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.delete(f"/v1/datasets/{body['id']}", headers=auth(other_api_key)).status_code == 404
    assert client.get("/v1/datasets", headers=auth(other_api_key)).json() == []
    assert client.get("/v1/datasets").status_code == 401
    bad = client.get("/v1/datasets", headers=auth("tls_nothere_" + "x" * 40))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).status_code == 200


def test_delete_removes_rows_and_files(client: TestClient, api_key: str, tmp_path) -> None:
    body = upload_dataset(client, api_key, class_folder_zip("digits", per_class=2)).json()
    wait_for_job(client, body["job_id"], api_key)
    blobs = list((tmp_path / "data").rglob(f"*{body['id']}*"))
    assert blobs
    assert client.delete(f"/v1/datasets/{body['id']}", headers=auth(api_key)).status_code == 204
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).status_code == 404
    assert not list((tmp_path / "data").rglob(f"*{body['id']}*"))


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"val_fraction": "0.6", "test_fraction": "0.5"}, "leave images for training"),
        ({"test_fraction": "-0.1"}, "test_fraction"),
        ({"seed": "abc"}, "seed"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_form_values_get_422_with_a_message(client: TestClient, api_key: str, form, message) -> None:
    data = {"name": "x", **form}
    resp = client.post(
        "/v1/datasets",
        headers=auth(api_key),
        data=data,
        files={"archive": ("a.zip", zip_bytes({"a/b.png": b"x"}), "application/zip")},
    )
    assert resp.status_code == 422, resp.text
    assert message in resp.json()["error"]["message"]
    assert client.get("/v1/datasets", headers=auth(api_key)).json() == []


def test_not_a_zip_is_refused_at_once(client: TestClient, api_key: str) -> None:
    resp = client.post(
        "/v1/datasets",
        headers=auth(api_key),
        data={"name": "x"},
        files={"archive": ("a.zip", encode_png(__import__("numpy").zeros((4, 4), "uint8")), "application/zip")},
    )
    assert resp.status_code == 415
    assert "not a zip archive" in resp.json()["error"]["message"]
    empty = client.post(
        "/v1/datasets", headers=auth(api_key), data={"name": "x"}, files={"archive": ("a.zip", b"", "application/zip")}
    )
    assert empty.status_code == 422


def test_huge_body_gets_413_and_the_service_stays_healthy(client: TestClient, api_key: str, monkeypatch) -> None:
    from core.settings import get_settings

    limit = get_settings().max_upload_bytes
    monkeypatch.setattr(get_settings(), "max_upload_bytes", limit)  # the app was built with this limit
    resp = client.post("/v1/datasets", headers={**auth(api_key), "Content-Length": str(limit + 1)}, content=b"x")
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"
    assert client.get("/healthz").status_code == 200


def test_streamed_body_over_the_limit_gets_413(db: str, api_key: str, monkeypatch) -> None:
    monkeypatch.setenv("TLSERVE_MAX_UPLOAD_BYTES", "100000")
    from core.settings import reset_settings
    from service.app import create_app

    reset_settings()
    with TestClient(create_app()) as small:

        def chunks():  # a well-formed multipart file part that never ends, sent without Content-Length
            yield (
                b'--b\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n'
                b"Content-Type: application/zip\r\n\r\nPK\x03\x04"
            )
            for _ in range(50):
                yield b"x" * 10_000

        resp = small.post(
            "/v1/datasets",
            headers={**auth(api_key), "Content-Type": "multipart/form-data; boundary=b"},
            content=chunks(),
        )
        assert resp.status_code == 413
        assert small.get("/healthz").status_code == 200


def test_a_thousand_and_one_form_fields_get_400(client: TestClient, api_key: str) -> None:
    data = {f"f{i}": "v" for i in range(1001)}
    resp = client.post(
        "/v1/datasets",
        headers=auth(api_key),
        data=data,
        files={"archive": ("a.zip", zip_bytes({"a/b.png": b"x"}), "application/zip")},
    )
    assert resp.status_code == 400
    assert "error" in resp.json() and "fields" in resp.json()["error"]["message"].lower()


def test_mismatched_labels_for_added_files_get_422(client: TestClient, api_key: str) -> None:
    pngs = _real_pngs(1)
    body = upload_dataset(client, api_key, zip_bytes({f"{lb}/{n}": d for n, lb, d in pngs})).json()
    wait_for_job(client, body["job_id"], api_key)
    files = [("files", (n, d, "image/png")) for n, _, d in pngs[:3]]
    resp = client.post(
        f"/v1/datasets/{body['id']}/images", headers=auth(api_key), files=files, data={"labels": ["a", "b"]}
    )
    assert resp.status_code == 422
    ds = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()
    assert ds["version"] == 1 and ds["num_images"] == len(pngs)


def test_zip_files_listing_is_not_trusted_for_paths(client: TestClient, api_key: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("/etc/passwd.png")
        zf.writestr(info, _real_pngs(1)[0][2])
        zf.writestr("5/ok.png", _real_pngs(1)[1][2])
    body = upload_dataset(client, api_key, buf.getvalue()).json()
    assert wait_for_job(client, body["job_id"], api_key)["status"] == "succeeded"
    ds = client.get(f"/v1/datasets/{body['id']}", headers=auth(api_key)).json()
    assert ds["num_images"] == 1 and len(ds["rejected"]) == 1


def test_file_names_of_any_length_are_stored_shortened_and_kept_apart(client: TestClient, api_key: str) -> None:
    """A 600-character path used to fail the whole upload on PostgreSQL (``String(500)``)."""
    (n1, l1, png1), (n2, l2, png2), (n3, l3, png3) = _real_pngs(1)[:3]
    stem = "x" * 590
    archive = zip_bytes({f"{l1}/{stem}1.png": png1, f"{l2}/{stem}2.png": png2, f"{l3}/{n3}": png3})
    body = upload_dataset(client, api_key, archive).json()
    job = wait_for_job(client, body["job_id"], api_key)
    assert job["status"] == "succeeded", job
    images = client.get(f"/v1/datasets/{body['id']}/images", headers=auth(api_key)).json()
    names = sorted(img["file"] for img in images)
    assert len(names) == 3 and len(set(names)) == 3
    assert f"{l3}/{n3}" in names  # short names are kept as they were
    long = [n for n in names if n.startswith(f"{l1}/xxx") or n.startswith(f"{l2}/xxx")]
    assert len(long) == 2 and all(len(n) <= 500 and n.endswith(".png") for n in long)


def test_a_failed_ingestion_removes_its_upload_and_the_dataset_still_deletes(client: TestClient, api_key: str) -> None:
    from core.db import session_scope
    from core.keys import upload_prefix
    from core.storage import get_storage
    from core.tables import Job

    body = upload_dataset(client, api_key, zip_bytes({"a/x.png": b"nope", "b/y.jpg": b"nope"})).json()
    with session_scope() as s:
        prefix = upload_prefix(s.get(Job, body["job_id"]).tenant_id, body["job_id"])
    job = wait_for_job(client, body["job_id"], api_key)
    assert job["status"] == "failed"
    assert not get_storage().list(prefix)  # a failed job is never run again: its archive goes at once
    assert client.delete(f"/v1/datasets/{body['id']}", headers=auth(api_key)).status_code == 204
    assert not get_storage().list(prefix)


def test_cancelling_a_queued_ingestion_removes_its_upload(client: TestClient, api_key: str) -> None:
    from core import jobs
    from core.db import session_scope
    from core.keys import upload_key
    from core.storage import get_storage
    from core.tenancy import get_or_create_tenant

    with session_scope() as s:  # a job row that no worker has taken yet
        tenant_id = get_or_create_tenant(s, "acme").id
        job = jobs.create_job(s, tenant_id=tenant_id, kind="ingest")
        job.params = {"mode": "archive", "upload_key": upload_key(tenant_id, job.id)}
        job_id, key = job.id, job.params["upload_key"]
    get_storage().put_bytes(key, b"PK\x03\x04 an archive")
    resp = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(api_key))
    assert resp.status_code == 202 and resp.json()["status"] == "cancelled", resp.text
    assert not get_storage().exists(key)
