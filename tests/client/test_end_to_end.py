"""From a folder of real images to a served model and a prediction, on the real service (API process, Celery
worker, Redis; SQLite and PostgreSQL): once with the Python client, once with the command line (the console
script in a subprocess, ids captured from the last stdout line), and the error paths a user meets."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tlserve_client import APIError, Client, ServiceUnreachable

from core.sample_data import default_source, iter_labelled_pngs
from tests.client.conftest import ROOT, subprocess_env
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration

PER_CLASS = 8


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sub-folder per class of real images (Fashion-MNIST, else digits), and one broken file."""
    root = tmp_path_factory.mktemp("images") / "products"
    for name, label, data in iter_labelled_pngs(default_source(), PER_CLASS, seed=3):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / name).write_bytes(data)
    first_class = sorted(p.name for p in root.iterdir())[0]
    (root / first_class / "broken.png").write_bytes(b"this is not an image")
    return root


@pytest.fixture(scope="module")
def new_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images to predict: one per class from another draw, as files in a folder."""
    root = tmp_path_factory.mktemp("new")
    for name, _, data in iter_labelled_pngs(default_source(), 1, seed=777):
        (root / name).write_bytes(data)
    return root


def console_script() -> list[str]:
    exe = Path(sys.executable).parent / "tlserve-client"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("tlserve-client")
    assert found, "the tlserve-client console script is not installed: make install (pip install -e ./client)"
    return [found]


def cli(deployment, *args: str, url: str | None = None, key: str | None = None, timeout: float = 600):
    env = subprocess_env(
        TLSERVE_URL=url or deployment.base_url,
        TLSERVE_API_KEY=key or deployment.api_key,
        TLSERVE_CONFIG=str(deployment.data_dir.parent / "no-config.json"),
    )
    return subprocess.run(
        [*console_script(), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def last_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def assert_one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    return lines[0]


def test_python_client_folder_to_prediction(deployment, image_folder: Path, new_images: Path) -> None:
    with Client(deployment.base_url, deployment.api_key) as tl:
        events: list[dict] = []
        ds = tl.datasets.upload(image_folder, name="products", test_fraction=0.25, wait=True, on_event=events.append)
        assert ds["status"] == "ready", deployment.dump_logs()
        assert ds["num_images"] == 10 * PER_CLASS and set(ds["classes"].values()) == {PER_CLASS}
        assert [r["file"].rsplit("/", 1)[-1] for r in ds["rejected"]] == ["broken.png"]
        assert events[-1]["status"] == "succeeded" and events[-1]["kind"] == "ingest"

        fs = tl.features.extract(ds["id"], "efficientnet_lite0", wait=True)
        assert fs["status"] == "ready" and fs["num_images"] == 10 * PER_CLASS and fs["cached"] is False
        again = tl.features.extract(ds["id"], "efficientnet_lite0")
        assert again["cached"] is True and again["id"] == fs["id"]
        (found,) = tl.features.search(fs["id"], sorted(new_images.iterdir())[:1], k=3)
        assert len(found["neighbours"]) == 3 and all(n["label"] in ds["classes"] for n in found["neighbours"])
        nearest = found["neighbours"][0]
        (again_found,) = tl.features.search(fs["id"], image_id=nearest["image_id"], k=2)
        assert nearest["image_id"] not in {n["image_id"] for n in again_found["neighbours"]}
        assert isinstance(tl.features.near_duplicates(fs["id"]), list)

        model = tl.models.train(ds["id"], "efficientnet_lite0", head={"type": "logistic", "C": 1.0}, wait=True)
        assert model["status"] == "ready" and len(model["labels"]) == 10
        metrics = model["metrics"]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and len(metrics["confusion_matrix"]) == 10

        files = sorted(new_images.iterdir())
        rows = tl.predict(model["id"], [files[0], files[1].read_bytes(), Image.open(files[2]), b"not an image"])
        assert [r["file"] for r in rows[:1]] == [files[0].as_posix()]
        assert all(r["label"] in model["labels"] and 0 < r["score"] <= 1 for r in rows[:3])
        assert "error" in rows[3] and "label" not in rows[3]

        alias = tl.aliases.set("products", model["id"])
        assert alias["model_id"] == model["id"] and "products" in {a["name"] for a in tl.aliases.list()}
        assert tl.aliases.predict("products", files[:2]) == tl.predict(model["id"], files[:2])
        scoped = server_cli(deployment, "keys", "create", "--tenant", "acme", "--scope", "predict")
        with Client(deployment.base_url, scoped.stdout.strip().splitlines()[-1]) as app:  # an app that only predicts
            assert app.predict(model["id"], files[:2]) == tl.predict(model["id"], files[:2])
            assert app.aliases.predict("products", files[:2]) == tl.predict(model["id"], files[:2])
            with pytest.raises(APIError) as refused:
                app.datasets.list()
            assert refused.value.status == 403 and refused.value.code == "forbidden_scope"

        graph = tl.models.export(model["id"], deployment.data_dir.parent)
        assert graph.name == f"{model['id']}.onnx" and graph.stat().st_size > 1_000_000  # the backbone is inside

        batch = tl.models.predict_batch(model["id"], [new_images])
        assert len(batch) == len(files) and all(r["label"] in model["labels"] for r in batch)

        # test-time augmentation: the same averaged answer from predict and from the worker's batch job
        mirrored = tl.predict(model["id"], files, tta=["hflip"])
        assert all(r["label"] in model["labels"] for r in mirrored) and mirrored != tl.predict(model["id"], files)
        batch = tl.models.predict_batch(model["id"], [new_images], tta=["hflip"])
        assert sorted((Path(r["file"]).name, r["label"], round(r["score"], 4)) for r in batch) == sorted(
            (Path(r["file"]).name, r["label"], round(r["score"], 4)) for r in mirrored
        )
        with pytest.raises(APIError) as caught:
            tl.predict(model["id"], files[:1], tta=["rotate"])
        assert caught.value.status == 422 and "hflip, vflip" in caught.value.message

        assert model["job_id"] in {j["id"] for j in tl.jobs.list()}
        states = [j["status"] for j in tl.jobs.events(model["job_id"])]
        assert states == ["succeeded"]  # a finished job's stream: its final state, once
        with pytest.raises(APIError) as caught:
            tl.models.get("m_does_not_exist")
        assert caught.value.status == 404 and caught.value.code == "not_found"


def test_command_line_folder_to_prediction(deployment, image_folder: Path, new_images: Path) -> None:
    upload = cli(deployment, "datasets", "upload", str(image_folder), "--name", "products-cli", "--wait")
    dataset_id = last_line(upload)
    assert dataset_id.startswith("ds")
    assert "broken.png" in upload.stderr  # rejected files are listed with their reasons

    shown = cli(deployment, "datasets", "show", dataset_id, "--format", "json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["num_images"] == 10 * PER_CLASS

    feature_set_id = last_line(cli(deployment, "features", "extract", "--dataset", dataset_id, "--wait"))
    cached = cli(deployment, "features", "extract", "--dataset", dataset_id)
    assert last_line(cached) == feature_set_id and "cache" in cached.stderr
    first = sorted(str(p) for p in new_images.iterdir())[0]
    searched = cli(deployment, "features", "search", feature_set_id, first, "-k", "2", "--format", "json")
    assert searched.returncode == 0, searched.stderr
    assert len(json.loads(searched.stdout)["results"][0]["neighbours"]) == 2
    leaks = cli(deployment, "features", "leaks", feature_set_id)
    assert leaks.returncode == 0 and "nearly duplicate" in leaks.stderr

    train = cli(deployment, "models", "train", "--dataset", dataset_id, "--head", "logistic", "--C", "1", "--wait")
    model_id = last_line(train)
    assert model_id.startswith("m")
    show = cli(deployment, "models", "show", model_id)
    assert show.returncode == 0 and "confusion matrix" in show.stdout and "macro-F1" in show.stdout

    tuned = cli(
        deployment, "models", "train", "--dataset", dataset_id, "--epochs", "1", "--unfreeze", "head",
        "--batch-size", "16", "--wait",
    )  # fmt: skip
    tuned_id = last_line(tuned)
    assert tuned_id.startswith("m") and tuned_id != model_id
    assert "train loss" in tuned.stderr  # the per-epoch table, a row as each epoch ends
    assert any(line.split()[:1] == ["1"] for line in tuned.stderr.splitlines())

    files = sorted(str(p) for p in new_images.iterdir())
    out = cli(deployment, "predict", model_id, files[0], files[1], "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["predictions"]
    labels = json.loads(cli(deployment, "models", "show", model_id, "--format", "json").stdout)["labels"]
    assert [r["file"] for r in rows] == files[:2] and all(r["label"] in labels for r in rows)
    mirrored = cli(deployment, "predict", model_id, files[0], files[1], "--tta", "hflip", "--format", "json")
    assert mirrored.returncode == 0, mirrored.stderr
    assert json.loads(mirrored.stdout)["predictions"] != rows  # the mirror images changed the scores

    target = deployment.data_dir.parent / "m.onnx"
    assert last_line(cli(deployment, "models", "export", model_id, "-o", str(target))) == str(target)
    assert target.stat().st_size > 1_000_000  # one graph with the backbone inside

    assert last_line(cli(deployment, "aliases", "set", "shop", model_id)) == "shop"
    assert last_line(cli(deployment, "aliases", "set", "shop", tuned_id)) == "shop"  # repointed
    listed = cli(deployment, "aliases", "list", "--format", "json")
    assert {a["name"]: a["model_id"] for a in json.loads(listed.stdout)}["shop"] == tuned_id
    via_alias = cli(deployment, "predict", "@shop", files[0], "--format", "json")
    assert via_alias.returncode == 0, via_alias.stderr
    tuned_labels = json.loads(cli(deployment, "models", "show", tuned_id, "--format", "json").stdout)["labels"]
    assert json.loads(via_alias.stdout)["predictions"][0]["label"] in tuned_labels
    assert cli(deployment, "aliases", "delete", "shop").returncode == 0
    assert_one_error_line(cli(deployment, "predict", "@shop", files[0]))  # a deleted alias: one error line

    big = cli(deployment, "predict", model_id, str(new_images), "--batch-over", "3", "--format", "csv")
    assert big.returncode == 0, big.stderr
    lines = big.stdout.strip().splitlines()
    assert lines[0] == "file,label,score,top_k,error" and len(lines) == 1 + len(files)  # predictions only
    assert sorted(line.split(",", 1)[0] for line in lines[1:]) == files  # named as given, also from the batch job
    assert "batch-prediction job" in big.stderr

    # the server's tlserve mounts the same commands
    server = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "list", "--format", "json"],
        env=subprocess_env(TLSERVE_URL=deployment.base_url, TLSERVE_API_KEY=deployment.api_key),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert server.returncode == 0, server.stderr
    assert model_id in {m["id"] for m in json.loads(server.stdout)}


def test_command_line_errors_are_one_line(deployment, tmp_path: Path) -> None:
    missing = assert_one_error_line(cli(deployment, "datasets", "upload", str(tmp_path / "nope"), "--name", "x"))
    assert "does not exist" in missing

    not_found = assert_one_error_line(cli(deployment, "models", "show", "m_does_not_exist"))
    assert "404" in not_found and "not_found" in not_found

    (tmp_path / "notes.txt").write_text("not a dataset")
    refused = assert_one_error_line(cli(deployment, "datasets", "upload", str(tmp_path / "notes.txt"), "--name", "x"))
    assert "zip" in refused

    bad_key = assert_one_error_line(cli(deployment, "datasets", "list", key="tls_nope_nope"))
    assert "401" in bad_key and "API key" in bad_key

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = assert_one_error_line(cli(deployment, "jobs", "list", url=closed))
    assert "cannot reach tlserve" in down and closed in down
    with pytest.raises(ServiceUnreachable), Client(closed, deployment.api_key) as tl:
        tl.jobs.list()


def server_cli(deployment, *args: str) -> subprocess.CompletedProcess:
    """The server's ``tlserve`` command (keys), on the deployment's database."""
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=deployment.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_a_revoked_key_stops_working(deployment) -> None:
    key = server_cli(deployment, "keys", "create", "--tenant", "revoke-me").stdout.strip().splitlines()[-1]
    before = cli(deployment, "jobs", "list", "--format", "json", key=key)
    assert before.returncode == 0 and json.loads(before.stdout) == []  # a new tenant: works, sees no jobs
    listed = json.loads(server_cli(deployment, "keys", "list", "--tenant", "revoke-me", "--format", "json").stdout)
    assert len(listed) == 1 and key.startswith(listed[0]["prefix"]) and listed[0]["revoked_at"] is None
    assert key not in json.dumps(listed)  # the secret is never shown again
    revoked = server_cli(deployment, "keys", "revoke", listed[0]["id"]).stdout.strip().splitlines()[-1]
    assert revoked == listed[0]["id"]
    # Every API process remembers a valid key for TLSERVE_AUTH_CACHE_S (1 s): it stops working within that.
    refused = wait_until(lambda: (r := cli(deployment, "jobs", "list", key=key)).returncode != 0 and r, 10, "a 401")
    assert "401" in assert_one_error_line(refused)
    keys = server_cli(deployment, "keys", "list", "--tenant", "revoke-me", "--format", "json").stdout
    assert json.loads(keys)[0]["revoked_at"]
