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
