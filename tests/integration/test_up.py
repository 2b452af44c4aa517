"""``tlserve up`` on the real Redis: a SIGTERM (``docker stop``, systemd, Ctrl-C) stops the API and drains the
worker it started; nothing is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REDIS_URL, ROOT, _free_port, _redis_reachable, wait_until

pytestmark = pytest.mark.integration


def _processes_with(data_dir: Path) -> list[int]:
    """Pids of the processes whose TLSERVE_DATA_DIR is ``data_dir`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"TLSERVE_DATA_DIR={data_dir}".encode() in env:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_api_and_its_worker(tmp_path: Path) -> None:
    if not _redis_reachable():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}")
    data = tmp_path / "data"
    port = _free_port()
    env = {**os.environ, "TLSERVE_DATA_DIR": str(data), "TLSERVE_BROKER_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    env.pop("TLSERVE_DATABASE_URL", None)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 120, "the API")
        wait_until(lambda: len(_processes_with(data)) >= 2, 120, "the worker beside the API")
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0, (tmp_path / "up.log").read_text()[-3000:]
        wait_until(lambda: not _processes_with(data), 60, "every process of this `tlserve up` to exit")
    finally:
        for pid in _processes_with(data):
            os.kill(pid, signal.SIGKILL)
        log.close()
