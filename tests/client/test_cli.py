"""The command line against a scripted transport: the output contract (the new id alone on stdout's last
line, tables and progress on stderr, ``--format json``), one-line errors, login's config file."""

from __future__ import annotations

import functools
import json
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from tlserve_client import Client
from tlserve_client import cli as cli_module

from tests.client.test_client import job, multipart, sse, write_class_folders

DATASET = {
    "id": "ds_1",
    "name": "digits",
    "version": 1,
    "status": "ready",
    "num_images": 4,
    "classes": {"0": 2, "1": 2},
    "splits": {"train": 2, "val": 0, "test": 2},
    "rejected": [{"file": ".DS_Store", "reason": "not an image: unknown format"}],
    "duplicates": [],
}
MODEL = {
    "id": "m_1",
    "status": "ready",
    "strategy": "linear_probe",
    "backbone": "efficientnet_lite0",
    "dataset_id": "ds_1",
    "labels": ["0", "1"],
    "metrics": {
        "accuracy": 0.75,
        "macro_f1": 0.7333,
        "train_accuracy": 1.0,
        "per_class": {
            "0": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2},
            "1": {"precision": 0.6667, "recall": 1.0, "f1": 0.8, "support": 2},
        },
        "confusion_matrix": [[1, 1], [0, 2]],
        "labels": ["0", "1"],
    },
}


class FakeAPI:
    """Answers like the service for the paths the tests touch; records what was asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        self.requests.append((method, path))
        if request.headers.get("authorization") == "Bearer tls_predict_key" and not path.endswith("/predict"):
            message = "this API key's scope is 'predict'; GET /v1/jobs needs a key of scope 'all'"
            return httpx.Response(403, json={"error": {"code": "forbidden_scope", "message": message}})
        if request.headers.get("authorization") not in ("Bearer tls_good_key", "Bearer tls_predict_key"):
            return httpx.Response(
                401, json={"error": {"code": "unauthorized", "message": "missing or invalid API key"}}
            )
        if (method, path) == ("POST", "/v1/datasets"):
            self.bodies.append(multipart(request))
            return httpx.Response(202, json={"id": "ds_1", "job_id": "job_1", "status": "processing", "version": 1})
        if path.startswith("/v1/jobs/") and path.endswith("/events"):
            job_id = path.split("/")[3]
            if job_id == "job_bad":
                failed = job("failed", id=job_id, error={"code": "no_images", "message": "no readable image"})
                return httpx.Response(200, content=sse(failed))
            history = [{"epoch": 1, "train_loss": 0.9, "train_acc": 0.6, "val_loss": 0.8, "val_acc": 0.7, "seconds": 1}]
            running = job("running", id=job_id, progress={"stage": "epoch", "done": 1, "total": 2})
            running["metrics"] = {"history": history}
            done = job("succeeded", id=job_id, progress={"stage": "done", "done": 2, "total": 2})
            return httpx.Response(200, content=sse(running, done))
        if (method, path) == ("GET", "/v1/datasets/ds_1"):
            return httpx.Response(200, json=DATASET)
        if (method, path) == ("GET", "/v1/models/m_1"):
            return httpx.Response(200, json=MODEL)
        if (method, path) == ("POST", "/v1/models"):
            self.bodies.append(json.loads(request.read()))
            return httpx.Response(202, json={"id": "m_1", "job_id": "job_2", "status": "queued"})
        if (method, path) == ("POST", "/v1/models/m_1/predict"):
            self.bodies.append(multipart(request))
            files = self.bodies[-1]["files"]
            preds = [{"file": n, "label": "1", "score": 0.8, "top_k": [{"label": "1", "score": 0.8}]} for n, _ in files]
            return httpx.Response(200, json={"model_id": "m_1", "predictions": preds})
        if (method, path) == ("POST", "/v1/models/m_1/predictions"):
            self.bodies.append(multipart(request))
            return httpx.Response(202, json={"job_id": "job_3", "status": "queued"})
        if (method, path) == ("GET", "/v1/models/m_1/predictions/job_3"):
            return httpx.Response(
                200, json={"predictions": [{"file": "x.png", "label": "0", "score": 0.6, "top_k": []}]}
            )
        if (method, path) == ("GET", "/v1/models/m_1/suggestions"):
            self.bodies.append(dict(request.url.params))
            found = [{"image_id": "img_1", "file": "_unlabelled/a.png", "label": "1", "score": 0.51, "value": 0.02}]
            body = {"model_id": "m_1", "dataset_id": "ds_1", "dataset_version": 1, "k": 1, "pool_size": 3}
            return httpx.Response(200, json=body | {"strategy": request.url.params["strategy"], "suggestions": found})
        if (method, path) == ("POST", "/v1/datasets/ds_1/labels"):
            self.bodies.append(json.loads(request.read()))
            return httpx.Response(202, json={"id": "ds_1", "job_id": "job_4", "status": "processing", "version": 2})
        if (method, path) == ("GET", "/v1/jobs"):
            return httpx.Response(200, json=[job("succeeded")])
        return httpx.Response(404, json={"error": {"code": "not_found", "message": f"no such thing: {path}"}})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeAPI:
    fake = FakeAPI()
    monkeypatch.setattr(cli_module, "Client", functools.partial(Client, transport=httpx.MockTransport(fake)))
    monkeypatch.setenv("TLSERVE_CONFIG", str(tmp_path / "config" / "tlserve.json"))
    monkeypatch.setenv("TLSERVE_URL", "http://tlserve.test")
    monkeypatch.setenv("TLSERVE_API_KEY", "tls_good_key")
    return fake


def run(*args: str) -> Any:
    return CliRunner().invoke(cli_module.cli, list(args), prog_name="tlserve-client")


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_upload_prints_classes_and_rejected_files_on_stderr_and_the_id_last_on_stdout(api: FakeAPI, tmp_path: Path):
    folder = write_class_folders(tmp_path / "digits")
    result = run("datasets", "upload", str(folder), "--name", "digits", "--val-fraction", "0", "--wait")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "ds_1"
    assert ".DS_Store" in result.stderr and "not an image" in result.stderr  # rejected files with reasons
    assert "classes" in result.stderr
    fields = api.bodies[0]
    assert fields["name"][0][1] == b"digits" and fields["val_fraction"][0][1] == b"0.0"


def test_format_json_prints_the_resource(api: FakeAPI, tmp_path: Path) -> None:
    folder = write_class_folders(tmp_path / "digits")
    result = run("datasets", "upload", str(folder), "--wait", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["classes"] == {"0": 2, "1": 2}


def test_models_show_prints_metrics_the_per_class_table_and_the_confusion_matrix(api: FakeAPI) -> None:
    result = run("models", "show", "m_1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "accuracy 0.750" in out and "macro-F1 0.733" in out
    assert "per class" in out and "0.667" in out
    matrix = out.split("confusion matrix", 1)[1]
    cells = [[c.strip() for c in line.strip("│ ").split("│")] for line in matrix.splitlines() if line.startswith("│")]
    assert cells == [["0", "1", "1"], ["1", "0", "2"]]  # rows = true label, then the counts per predicted label


def test_train_builds_the_finetune_body_from_flags_and_prints_epoch_rows(api: FakeAPI) -> None:
    result = run(
        "models", "train", "--dataset", "ds_1", "--epochs", "2", "--unfreeze", "last:1",
        "--augment", "hflip", "--augment", "crop", "--head", "logistic", "--wait",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert api.bodies[-1] == {
        "dataset_id": "ds_1",
        "backbone": "efficientnet_lite0",
        "strategy": "finetune",
        "head": {"type": "logistic"},
        "finetune": {"epochs": 2, "unfreeze": "last:1", "augment": ["hflip", "crop"]},
    }
    assert "train loss" in result.stderr and "0.900" in result.stderr  # the per-epoch row
    assert result.stdout.strip().splitlines()[-1] == "m_1"


def test_lr_takes_a_number_or_auto(api: FakeAPI) -> None:
    assert run("models", "train", "--dataset", "ds_1", "--epochs", "1", "--lr", "auto").exit_code == 0
    assert api.bodies[-1]["finetune"] == {"epochs": 1, "lr": "auto"}
    assert run("models", "train", "--dataset", "ds_1", "--epochs", "1", "--lr", "3e-4").exit_code == 0
    assert api.bodies[-1]["finetune"] == {"epochs": 1, "lr": 3e-4}
    result = run("models", "train", "--dataset", "ds_1", "--lr", "fast")
    assert result.exit_code == 2 and "auto" in one_error_line(result)


def test_bad_finetune_json_is_one_line(api: FakeAPI) -> None:
    result = run("models", "train", "--dataset", "ds_1", "--finetune", "{epochs: 2")
    assert result.exit_code == 2
    assert "--finetune" in one_error_line(result)
    assert ("POST", "/v1/models") not in api.requests


def test_predict_prints_predictions_only(api: FakeAPI, tmp_path: Path) -> None:
    folder = write_class_folders(tmp_path / "imgs", classes=(1,), per_class=2)
    result = run("predict", "m_1", str(folder), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["predictions"]
    assert len(rows) == 2 and {r["label"] for r in rows} == {"1"}
    csv_out = run("predict", "m_1", str(folder), "--format", "csv")
    assert csv_out.stdout.splitlines()[0] == "file,label,score,top_k,error" and len(csv_out.stdout.splitlines()) == 3


def test_predict_passes_tta_to_predict_and_to_the_batch_job(api: FakeAPI, tmp_path: Path) -> None:
    folder = write_class_folders(tmp_path / "imgs", classes=(1, 2), per_class=2)
    assert run("predict", "m_1", str(folder), "--tta", "hflip", "--tta", "vflip").exit_code == 0
    assert [v for _, v in api.bodies[-1]["tta"]] == [b"hflip", b"vflip"]
    assert run("predict", "m_1", str(folder), "--tta", "hflip", "--batch-over", "3").exit_code == 0
    assert [v for _, v in api.bodies[-1]["tta"]] == [b"hflip"] and "archive" in api.bodies[-1]
    assert run("predict", "m_1", str(folder)).exit_code == 0
    assert "tta" not in api.bodies[-1]


def test_a_large_predict_set_goes_through_the_batch_job(api: FakeAPI, tmp_path: Path) -> None:
    folder = write_class_folders(tmp_path / "imgs", classes=(1, 2), per_class=2)
    result = run("predict", "m_1", str(folder), "--batch-over", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    assert ("POST", "/v1/models/m_1/predictions") in api.requests
    assert ("POST", "/v1/models/m_1/predict") not in api.requests
    assert json.loads(result.stdout) == {"predictions": [{"file": "x.png", "label": "0", "score": 0.6, "top_k": []}]}


def test_an_api_error_is_one_line_and_a_non_zero_exit(api: FakeAPI) -> None:
    result = run("models", "show", "m_404")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "no such thing" in line and "404" in line and "not_found" in line


def test_a_failed_job_is_one_line_and_a_non_zero_exit(api: FakeAPI) -> None:
    result = run("jobs", "watch", "job_bad")
    assert result.exit_code == 1
    assert "no readable image" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output


def test_a_wrong_key_is_one_line(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLSERVE_API_KEY", "tls_bad_key")
    result = run("jobs", "list")
    assert result.exit_code == 1 and "401" in one_error_line(result)


def test_without_a_url_the_error_says_how_to_set_one(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TLSERVE_URL")
    result = run("jobs", "list")
    assert result.exit_code == 2 and "TLSERVE_URL" in one_error_line(result)


def test_login_stores_url_and_key_readable_by_the_owner_alone(api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TLSERVE_URL")
    monkeypatch.delenv("TLSERVE_API_KEY")
    bad = run("login", "--url", "http://tlserve.test", "--api-key", "tls_bad_key")
    assert bad.exit_code == 1 and "401" in one_error_line(bad)
    path = Path(cli_module.config_path())
    assert not path.exists()  # a key the service refuses is not stored

    result = run("login", "--url", "http://tlserve.test", "--api-key", "tls_good_key")
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://tlserve.test", "api_key": "tls_good_key"}
    listed = run("jobs", "list", "--format", "json")  # no environment: the config file is used
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["id"] == "job_1"


def test_login_stores_a_predict_key_that_then_predicts(
    api: FakeAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TLSERVE_URL")
    monkeypatch.delenv("TLSERVE_API_KEY")
    result = run("login", "--url", "http://tlserve.test", "--api-key", "tls_predict_key")
    assert result.exit_code == 0, result.output  # valid, though it may not list jobs
    folder = write_class_folders(tmp_path / "imgs", classes=(1,), per_class=1)
    predicted = run("predict", "m_1", str(folder), "--format", "json")
    assert predicted.exit_code == 0, predicted.output
    listed = run("jobs", "list")
    assert listed.exit_code == 1 and "forbidden_scope" in one_error_line(listed)


def test_models_suggest_asks_for_k_and_the_strategy_and_prints_the_ranking(api: FakeAPI) -> None:
    result = run("models", "suggest", "m_1", "-k", "1", "--strategy", "entropy")
    assert result.exit_code == 0, result.output
    assert api.bodies[-1] == {"k": "1", "strategy": "entropy"}
    assert "img_1" in result.stdout and "_unlabelled/a.png" in result.stdout and "0.0200" in result.stdout
    result = run("models", "suggest", "m_1", "--format", "json")
    assert json.loads(result.stdout)["suggestions"][0]["image_id"] == "img_1"
    assert api.bodies[-1] == {"k": "20", "strategy": "margin"}


def test_models_suggest_refuses_an_unknown_strategy_before_asking(api: FakeAPI) -> None:
    result = run("models", "suggest", "m_1", "--strategy", "random")
    assert result.exit_code != 0 and not any(p.endswith("/suggestions") for _, p in api.requests)


def test_the_client_labels_images_into_a_new_version(api: FakeAPI) -> None:
    client = Client("http://tlserve.test", "tls_good_key", transport=httpx.MockTransport(api))
    accepted = client.datasets.label("ds_1", {"img_1": "cat"})
    assert accepted["version"] == 2 and api.bodies[-1] == {"labels": {"img_1": "cat"}, "split": "train"}
