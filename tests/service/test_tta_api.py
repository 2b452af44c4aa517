"""Test-time augmentation over the API (``tta`` form field), for a linear probe and a fine-tuned network on
real digits: the averaged probabilities equal the mean of predicting the image and its mirror, the variants
travel through the micro-batcher as extra rows, aliases and batch jobs take the same field, and an unknown
value is refused with the allowed ones."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from core.sample_data import class_folder_zip, iter_labelled_pngs
from tests.conftest import module_service
from tests.helpers import auth, upload_dataset, wait_for_job, zip_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str, dict[str, str]]]:
    """A digits dataset at 32×32 (LeNet-5's size, so preprocessing keeps every pixel), a linear probe on
    LeNet-5's (random) features and a fine-tuned LeNet-5."""
    with module_service(tmp_path_factory.mktemp("tta")) as (client, key):
        archive = class_folder_zip("digits", per_class=12, side=32)
        body = upload_dataset(client, key, archive, name="digits", test_fraction=0.25, val_fraction=0.15).json()
        assert wait_for_job(client, body["job_id"], key)["status"] == "succeeded"
        requests = {
            "linear_probe": {"backbone": "lenet5", "allow_random_weights": True},
            "finetune": {
                "backbone": "lenet5",
                "strategy": "finetune",
                "finetune": {"epochs": 1, "unfreeze": "all", "lr": 3e-3, "batch_size": 16},
            },
        }
        models = {}
        for name, extra in requests.items():
            resp = client.post("/v1/models", headers=auth(key), json={"dataset_id": body["id"], **extra})
            assert resp.status_code == 202, resp.text
            assert wait_for_job(client, resp.json()["job_id"], key, timeout=600)["status"] == "succeeded"
            models[name] = resp.json()["id"]
        yield client, key, models


def _images(n: int = 2) -> list[tuple[str, bytes]]:
    return [(name, data) for name, _, data in list(iter_labelled_pngs("digits", 1, seed=21, side=32))[:n]]


def _flipped(data: bytes, flip=ImageOps.mirror) -> bytes:
    buf = io.BytesIO()
    flip(Image.open(io.BytesIO(data))).save(buf, format="PNG")
    return buf.getvalue()


def _predict(client: TestClient, key: str, path: str, images: list[tuple[str, bytes]], tta: list[str] | None = None):
    files = [("files", (name, data, "image/png")) for name, data in images]
    form = {"top_k": "10", **({"tta": tta} if tta is not None else {})}
    return client.post(path, headers=auth(key), files=files, data=form)


def _probs(body: dict) -> np.ndarray:
    """Every class's probability per file, in label order (``top_k`` = all ten classes)."""
    return np.array([[dict((t["label"], t["score"]) for t in p["top_k"])[str(c)] for c in range(10)] for p in body])


@pytest.mark.parametrize("strategy", ["linear_probe", "finetune"])
def test_hflip_answers_the_mean_of_the_image_and_its_mirror(env, strategy: str) -> None:
    client, key, models = env
    path = f"/v1/models/{models[strategy]}/predict"
    images = _images()
    plain = _predict(client, key, path, images)
    assert plain.status_code == 200, plain.text
    assert "tta" not in plain.json()  # no augmentation: the answer is as before
    mirrored = _predict(client, key, path, [(f"m-{n}", _flipped(d)) for n, d in images]).json()["predictions"]
    resp = _predict(client, key, path, images, ["hflip"])
    assert resp.status_code == 200, resp.text
    assert resp.json()["tta"] == ["hflip"]
    preds = resp.json()["predictions"]
    want = (_probs(plain.json()["predictions"]) + _probs(mirrored)) / 2
    assert not np.allclose(_probs(mirrored), _probs(plain.json()["predictions"]), atol=1e-3)  # a test that can fail
    np.testing.assert_allclose(_probs(preds), want, atol=1e-5)
    assert [p["label"] for p in preds] == [str(int(i)) for i in want.argmax(axis=1)]
    assert [p["file"] for p in preds] == [n for n, _ in images]


def test_both_flips_average_three_variants_and_a_bad_file_keeps_its_own_error(env) -> None:
    client, key, models = env
    path = f"/v1/models/{models['linear_probe']}/predict"
    (name, data) = _images(1)[0]
    parts = [_predict(client, key, path, [(name, d)]).json()["predictions"] for d in (data, _flipped(data))]
    parts.append(_predict(client, key, path, [(name, _flipped(data, ImageOps.flip))]).json()["predictions"])
    resp = _predict(client, key, path, [("bad.png", b"not an image"), (name, data)], ["hflip", "vflip"])
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert "error" in preds[0] and resp.json()["tta"] == ["hflip", "vflip"]
    np.testing.assert_allclose(_probs(preds[1:]), sum(_probs(p) for p in parts) / 3, atol=1e-5)


def test_the_variants_go_through_the_micro_batcher_as_extra_rows(env, monkeypatch) -> None:
    import threading

    from service.batching import MicroBatcher
    from workers.runtime.serving import Predictor

    client, key, models = env
    rows: list[tuple[int, str]] = []
    forward = Predictor.predict_proba

    def counting(self: Predictor, pixels: np.ndarray) -> np.ndarray:
        rows.append((len(pixels), threading.current_thread().name.split("_")[0]))
        return forward(self, pixels)

    monkeypatch.setattr(Predictor, "predict_proba", counting)
    app = client.app
    kept, app.state.batcher = app.state.batcher, MicroBatcher()
    try:
        path = f"/v1/models/{models['finetune']}/predict"
        assert _predict(client, key, path, _images(3)).status_code == 200
        assert _predict(client, key, path, _images(3), ["hflip"]).status_code == 200
        assert _predict(client, key, path, _images(3), ["hflip", "vflip"]).status_code == 200
        batches = app.state.batcher.batches_run
    finally:
        app.state.batcher.close()
        app.state.batcher = kept
    # one forward pass per request, on the batcher's thread: the original rows, then each variant's
    assert rows == [(3, "tlserve-infer"), (6, "tlserve-infer"), (9, "tlserve-infer")] and batches == 3


def test_an_unknown_augmentation_is_refused_with_the_allowed_values(env) -> None:
    client, key, models = env
    for value in (["rotate"], ["hflip", "HFLIP"], [""]):
        resp = _predict(client, key, f"/v1/models/{models['linear_probe']}/predict", _images(1), value)
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["code"] == "invalid_input"
        assert "allowed values are hflip, vflip" in error["message"], error


def test_an_alias_predicts_with_tta_and_says_so(env) -> None:
    client, key, models = env
    assert client.put("/v1/aliases/tta", headers=auth(key), json={"model_id": models["finetune"]}).status_code == 201
    direct = _predict(client, key, f"/v1/models/{models['finetune']}/predict", _images(), ["hflip"]).json()
    via = _predict(client, key, "/v1/aliases/tta/predict", _images(), ["hflip"]).json()
    assert via["tta"] == ["hflip"] and via["model_id"] == models["finetune"]
    np.testing.assert_allclose(_probs(via["predictions"]), _probs(direct["predictions"]), atol=1e-5)


def test_a_batch_job_takes_tta_and_the_in_process_helper_answers_the_same(env) -> None:
    from core.db import session_scope
    from core.tenancy import get_or_create_tenant
    from workers.runtime.inference import predict_images
    from workers.runtime.serving import PREDICTORS

    client, key, models = env
    model_id = models["linear_probe"]
    images = _images(3)
    sync = _predict(client, key, f"/v1/models/{model_id}/predict", images, ["hflip"]).json()["predictions"]
    archive = zip_bytes(dict(images))
    resp = client.post(
        f"/v1/models/{model_id}/predictions",
        headers=auth(key),
        files={"archive": ("images.zip", archive, "application/zip")},
        data={"top_k": "10", "tta": ["hflip"]},
    )
    assert resp.status_code == 202, resp.text
    assert wait_for_job(client, resp.json()["job_id"], key)["status"] == "succeeded"
    results = client.get(f"/v1/models/{model_id}/predictions/{resp.json()['job_id']}", headers=auth(key)).json()
    by_file = {p["file"]: p for p in results["predictions"]}
    np.testing.assert_allclose(_probs([by_file[n] for n, _ in images]), _probs(sync), atol=1e-5)

    with session_scope() as s:
        tenant_id = get_or_create_tenant(s, "acme").id
    probs = predict_images(PREDICTORS.get(tenant_id, model_id), [d for _, d in images], ["hflip"])
    np.testing.assert_allclose(probs, _probs(sync), atol=1e-5)

    bad = client.post(
        f"/v1/models/{model_id}/predictions",
        headers=auth(key),
        files={"archive": ("images.zip", archive, "application/zip")},
        data={"tta": ["mirror"]},
    )
    assert bad.status_code == 422 and "hflip, vflip" in bad.json()["error"]["message"]
