"""Test helpers: waiting on a job through its server-sent events, building zips of real images."""

from __future__ import annotations

import io
import json
import time
import zipfile
from typing import Any

TERMINAL = {"succeeded", "failed", "cancelled"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_job(client: Any, job_id: str, key: str, timeout: float = 180.0) -> dict[str, Any]:
    """Follow ``/v1/jobs/{id}/events`` until the job reaches a final status (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(key), timeout=timeout) as resp:
            assert resp.status_code == 200, resp.read()
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    last = json.loads(line[6:])
                    if last["status"] in TERMINAL:
                        return last
    raise AssertionError(f"job {job_id} did not finish within {timeout}s; last state: {last}")


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def upload_dataset(client: Any, key: str, archive: bytes, name: str = "ds", **form: Any) -> Any:
    data = {"name": name, **{k: str(v) for k, v in form.items()}}
    return client.post(
        "/v1/datasets", headers=auth(key), data=data, files={"archive": ("data.zip", archive, "application/zip")}
    )


def assert_export_reproduces_the_service(client: Any, key: str, model_id: str, images: list[tuple[str, bytes]], folder):
    """Download the model as one ONNX graph and run it with ``scripts/predict_onnx.py`` in a process where torch
    and scikit-learn cannot be imported; its probabilities equal the service's predictions to 1e-4."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    resp = client.get(f"/v1/models/{model_id}/export", headers=auth(key), params={"format": "onnx"})
    assert resp.status_code == 200, resp.text
    model = Path(folder) / f"{model_id}.onnx"
    model.write_bytes(resp.content)
    paths = []
    for name, data in images:
        (Path(folder) / name).write_bytes(data)
        paths.append(str(Path(folder) / name))
    root = Path(__file__).resolve().parents[1]
    runner = (
        "import runpy, sys\n"
        "sys.modules['torch'] = sys.modules['sklearn'] = None  # importing either now fails\n"
        f"sys.argv = ['predict_onnx.py', {str(model)!r}, *{paths!r}]\n"
        f"runpy.run_path({str(root / 'scripts' / 'predict_onnx.py')!r}, run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME")}
    done = subprocess.run([sys.executable, "-c", runner], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = [json.loads(line) for line in done.stdout.splitlines()]

    n_classes = len(client.get(f"/v1/models/{model_id}", headers=auth(key)).json()["labels"])
    files = [("files", (name, data, "image/png")) for name, data in images]
    served = client.post(f"/v1/models/{model_id}/predict", headers=auth(key), files=files, data={"top_k": n_classes})
    assert served.status_code == 200, served.text
    for want, got in zip(served.json()["predictions"], exported, strict=True):
        assert got["label"] == want["label"]
        for row in want["top_k"]:
            assert abs(got["probabilities"][row["label"]] - row["score"]) <= 1e-4, (row, got)
    return exported
