"""Scenario 1 and 3 over the API with the real efficientnet_lite0 ImageNet weights (in-process jobs)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.sample_data import class_folder_zip, encode_png
from tests.conftest import module_service
from tests.helpers import auth, upload_dataset, wait_for_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    """One data folder for the module so the ONNX export is made once."""
    with module_service(tmp_path_factory.mktemp("features")) as (client, key):
        yield client, key


def _photo(name: str) -> bytes:
    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_backbones_listing_says_which_are_pretrained(env) -> None:
    client, key = env
    rows = {b["name"]: b for b in client.get("/v1/backbones", headers=auth(key)).json()}
    assert {"efficientnet_lite0", "resnet18", "lenet5", "vgg16", "mobilenet_v3_large"} <= set(rows)
    lite0 = rows["efficientnet_lite0"]
    assert lite0["pretrained"] is True and lite0["feature_dim"] == 1280 and lite0["input_size"] == 224
    assert lite0["license"] == "Apache-2.0"
    assert rows["lenet5"]["pretrained"] is False
    assert set(lite0) >= {"name", "feature_dim", "input_size", "weights", "license", "pretrained"}


def test_classify_real_photos_with_a_bad_file_beside_them(env) -> None:
    client, key = env
    files = [
        ("files", ("coffee.jpg", _photo("coffee"), "image/jpeg")),
        ("files", ("broken.jpg", b"not an image at all", "image/jpeg")),
        ("files", ("chelsea.jpg", _photo("chelsea"), "image/jpeg")),
    ]
    resp = client.post("/v1/backbones/efficientnet_lite0/classify", headers=auth(key), files=files, data={"top_k": "3"})
    assert resp.status_code == 200, resp.text
    coffee, broken, cat = resp.json()["predictions"]
    assert coffee["label"] == "espresso"
    assert "error" in broken and broken["file"] == "broken.jpg"
    assert any("cat" in p["label"] for p in cat["top_k"])
    refused = client.post("/v1/backbones/lenet5/classify", headers=auth(key), files=files[:1])
    assert refused.status_code == 422


def test_embed_gives_declared_dim_and_refuses_random_weights_unless_asked(env) -> None:
    client, key = env
    files = [("files", ("coffee.jpg", _photo("coffee"), "image/jpeg"))]
    resp = client.post("/v1/embed", headers=auth(key), files=files, data={"backbone": "efficientnet_lite0"})
    assert resp.status_code == 200, resp.text
    vec = np.array(resp.json()["embeddings"][0]["embedding"])
    assert vec.shape == (1280,) and np.isfinite(vec).all() and vec.std() > 0
    refused = client.post("/v1/embed", headers=auth(key), files=files, data={"backbone": "resnet18"})
    assert refused.status_code == 422 and "allow_random_weights" in refused.json()["error"]["message"]
    unknown = client.post("/v1/embed", headers=auth(key), files=files, data={"backbone": "nope"})
    assert unknown.status_code == 422 and "efficientnet_lite0" in unknown.json()["error"]["message"]


def test_features_are_extracted_once_then_served_from_the_cache(env) -> None:
    client, key = env
    body = upload_dataset(client, key, class_folder_zip("fashion", per_class=6), name="fm").json()
    assert wait_for_job(client, body["job_id"], key)["status"] == "succeeded"

    first = client.post("/v1/features", headers=auth(key), json={"dataset_id": body["id"]})
    assert first.status_code == 202, first.text
    job = wait_for_job(client, first.json()["job_id"], key)
    assert job["status"] == "succeeded", job
    assert job["metrics"]["forward_images"] == 60

    second = client.post("/v1/features", headers=auth(key), json={"dataset_id": body["id"]})
    assert second.status_code == 200 and second.json()["cached"] is True
    assert second.json()["id"] == first.json()["id"] and second.json()["status"] == "ready"

    npz = client.get(f"/v1/features/{first.json()['id']}/download?format=npz", headers=auth(key))
    assert npz.status_code == 200
    with np.load(io.BytesIO(npz.content), allow_pickle=False) as z:
        features, labels, ids = z["features"], z["labels"], z["image_ids"]
    assert features.shape == (60, 1280) and features.dtype == np.float32
    assert sorted(set(labels.tolist())) == sorted(
        ["ankle_boot", "bag", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "trouser", "tshirt_top"]
    )
    assert len(set(ids.tolist())) == 60


def test_extracted_features_match_the_engine_on_the_same_image(env) -> None:
    client, key = env
    png = encode_png(np.asarray(__import__("skimage.data", fromlist=["camera"]).camera()))
    from tests.helpers import zip_bytes

    body = upload_dataset(client, key, zip_bytes({"a/camera.png": png, "b/coffee.jpg": _photo("coffee")})).json()
    wait_for_job(client, body["job_id"], key)
    fs = client.post("/v1/features", headers=auth(key), json={"dataset_id": body["id"]}).json()
    wait_for_job(client, fs["job_id"], key)
    with np.load(io.BytesIO(client.get(f"/v1/features/{fs['id']}/download", headers=auth(key)).content)) as z:
        stored = dict(zip(z["labels"].tolist(), z["features"], strict=True))
    direct = client.post("/v1/embed", headers=auth(key), files=[("files", ("c.jpg", _photo("coffee"), "image/jpeg"))])
    vec = np.array(direct.json()["embeddings"][0]["embedding"], dtype=np.float32)
    # The stored feature comes from the canonical (resized, lossless) copy; the direct one from the JPEG.
    cos = float(stored["b"] @ vec / np.linalg.norm(stored["b"]) / np.linalg.norm(vec))
    assert cos > 0.98


def test_features_of_another_tenant_are_404(env) -> None:
    client, key = env
    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        other = create_api_key(s, "globex")
    listed = client.get("/v1/features", headers=auth(key)).json()
    assert listed
    assert client.get(f"/v1/features/{listed[0]['id']}", headers=auth(other)).status_code == 404
    assert client.get(f"/v1/features/{listed[0]['id']}/download", headers=auth(other)).status_code == 404
    assert client.get("/v1/features", headers=auth(other)).json() == []


def _relabelled(archive: bytes, mapping: dict[str, str]) -> bytes:
    """The same images under other class folders: same content, other labels."""
    import zipfile

    out = {}
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        for name in zf.namelist():
            label, _, rest = name.partition("/")
            out[f"{mapping[label]}/{rest}"] = zf.read(name)
    from tests.helpers import zip_bytes

    return zip_bytes(out)


def _npz(client: TestClient, key: str, fs_id: str) -> dict[str, np.ndarray]:
    resp = client.get(f"/v1/features/{fs_id}/download?format=npz", headers=auth(key))
    assert resp.status_code == 200, resp.text
    with np.load(io.BytesIO(resp.content), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_same_images_other_labels_share_vectors_never_labels_splits_or_lifetime(env) -> None:
    from core.datasets import version_images
    from core.db import session_scope
    from core.keys import chunk_key
    from core.storage import get_storage
    from core.tables import FeatureSet

    client, key = env
    archive = class_folder_zip("fashion", per_class=3, seed=3)
    tops = {"tshirt_top", "pullover", "coat", "shirt", "dress"}
    mapping = {
        c: ("top" if c in tops else "other")
        for c in [
            "ankle_boot",
            "bag",
            "coat",
            "dress",
            "pullover",
            "sandal",
            "shirt",
            "sneaker",
            "trouser",
            "tshirt_top",
        ]
    }
    a = upload_dataset(client, key, archive, name="a", seed=1).json()
    b = upload_dataset(client, key, _relabelled(archive, mapping), name="b", seed=2).json()
    for body in (a, b):
        assert wait_for_job(client, body["job_id"], key)["status"] == "succeeded"

    fa = client.post("/v1/features", headers=auth(key), json={"dataset_id": a["id"]})
    assert wait_for_job(client, fa.json()["job_id"], key)["status"] == "succeeded"
    fb = client.post("/v1/features", headers=auth(key), json={"dataset_id": b["id"]})
    # B's own feature set, ready at once from A's stored vectors (no second extraction)...
    assert fb.status_code == 200 and fb.json()["cached"] is True, fb.text
    fa, fb = fa.json(), fb.json()
    assert fb["id"] != fa["id"] and fb["dataset_id"] == b["id"] and fb["status"] == "ready"
    assert fb["cache_key"] == fa["cache_key"]
    # ...whose download carries B's labels and B's splits.
    za, zb = _npz(client, key, fa["id"]), _npz(client, key, fb["id"])
    assert set(zb["labels"].tolist()) == {"top", "other"}
    assert set(za["labels"].tolist()) == set(mapping)
    with session_scope() as s:
        b_splits = {img.sha256: img.split for img in version_images(s, fb["version_id"])}
    assert dict(zip(zb["sha256"].tolist(), zb["splits"].tolist(), strict=True)) == b_splits
    order = {h: i for i, h in enumerate(za["sha256"].tolist())}
    np.testing.assert_array_equal(zb["features"], za["features"][[order[h] for h in zb["sha256"].tolist()]])

    # A probe on B learns B's labels.
    probe = client.post("/v1/models", headers=auth(key), json={"dataset_id": b["id"], "strategy": "linear_probe"})
    assert wait_for_job(client, probe.json()["job_id"], key)["status"] == "succeeded"
    model = client.get(f"/v1/models/{probe.json()['id']}", headers=auth(key)).json()
    assert sorted(model["labels"]) == ["other", "top"]

    # Deleting A keeps what B uses; deleting B too removes the stored vectors.
    assert client.delete(f"/v1/datasets/{a['id']}", headers=auth(key)).status_code == 204
    assert client.get(f"/v1/features/{fa['id']}", headers=auth(key)).status_code == 404
    assert client.get(f"/v1/features/{fb['id']}", headers=auth(key)).json()["status"] == "ready"
    np.testing.assert_array_equal(_npz(client, key, fb["id"])["features"], zb["features"])
    with session_scope() as s:
        prefix = s.get(FeatureSet, fb["id"]).storage_prefix
    assert get_storage().exists(chunk_key(prefix, 0))
    assert client.delete(f"/v1/datasets/{b['id']}", headers=auth(key)).status_code == 204
    assert not get_storage().exists(chunk_key(prefix, 0))


def test_an_extraction_stops_when_its_dataset_is_deleted(env) -> None:
    client, key = env
    body = upload_dataset(client, key, class_folder_zip("fashion", per_class=30, seed=5), name="gone").json()
    assert wait_for_job(client, body["job_id"], key)["status"] == "succeeded"
    fs = client.post("/v1/features", headers=auth(key), json={"dataset_id": body["id"]}).json()
    assert fs["status"] == "queued"
    assert client.delete(f"/v1/datasets/{body['id']}", headers=auth(key)).status_code == 204
    job = wait_for_job(client, fs["job_id"], key)
    assert job["status"] == "cancelled", job
    assert client.get(f"/v1/features/{fs['id']}", headers=auth(key)).status_code == 404
