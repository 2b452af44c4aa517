"""The client distribution lives in ``client/``; make it importable from a checkout (``make install`` also
installs it into the venv, with its ``tlserve-client`` console script)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.integration.conftest import deployment  # noqa: F401 - the real service, for the end-to-end tests

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "client"
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that must import this checkout's client (and server) code."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(CLIENT_DIR), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
