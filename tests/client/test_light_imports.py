"""An application that only talks to a remote service must not pay for torch: importing the client and
running its command line load no torch, numpy or Pillow, and nothing of the server's packages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.client.conftest import ROOT, subprocess_env

HEAVY = ("torch", "numpy", "PIL", "onnxruntime", "sklearn")
OURS = ("core", "service", "workers", "classifiers")  # the client talks to the service over HTTP only

_PROBE = """
import atexit, json, sys
heavy = {heavy!r}
atexit.register(lambda: print("LOADED=" + json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set(heavy)))))
{body}
"""


def _loaded(body: str) -> tuple[list[str], subprocess.CompletedProcess]:
    code = _PROBE.format(heavy=HEAVY + OURS, body=body)
    out = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("LOADED="))
    return json.loads(line.removeprefix("LOADED=")), out


def test_import_loads_no_heavy_library() -> None:
    loaded, out = _loaded("import tlserve_client\nfrom tlserve_client import Client\nClient('http://x', 'k').close()")
    assert out.returncode == 0, out.stderr
    assert loaded == []


@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["datasets", "upload", "--help"]])
def test_cli_help_loads_no_heavy_library(args: list[str]) -> None:
    loaded, out = _loaded(f"from tlserve_client.cli import main\nmain({args!r})")
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert loaded == []
