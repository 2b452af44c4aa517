"""The README's "Use it" lines work as written: its shell block and its Python block run against the real
service (API process, Celery worker, Redis), in a folder made by its own set-up line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.integration


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Use it\n", 1)[1].split("\n## ", 1)[0]


def _block_after(marker: str, lang: str) -> str:
    rest = _section().split(marker, 1)[1]
    found = re.search(rf"```{lang}\n(.*?)```", rest, re.S)
    assert found, f"no {lang} block after {marker!r} in the README's Use it section"
    return found.group(1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like the README's: ``.venv`` (this interpreter's) and ``photos`` made by the set-up line."""
    root = tmp_path_factory.mktemp("readme")
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    setup = [line for line in _section().splitlines() if "core.sample_data" in line]
    assert len(setup) == 1
    command = setup[0].split("#", 1)[0].replace("--per-class 20", "--per-class 8")  # fewer images, same line
    out = subprocess.run(["bash", "-c", command], cwd=root, env=subprocess_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(list((root / "photos").rglob("*.png"))) >= 16
    return root


def _env(deployment) -> dict[str, str]:
    return subprocess_env(
        TLSERVE_URL=deployment.base_url,
        TLSERVE_API_KEY=deployment.api_key,
        TLSERVE_CONFIG=str(deployment.data_dir.parent / "no-config.json"),
    )


def test_the_shell_lines_run_as_written(deployment, workdir: Path) -> None:
    script = "set -euo pipefail\n" + _block_after("**Shell**", "bash")
    out = subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=_env(deployment), capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{deployment.dump_logs()}"
    lines = out.stdout.strip().splitlines()
    header = lines.index("file,label,score,top_k,error")
    rows = lines[header + 1 :]
    assert rows and all(row.startswith("photos/bag/") for row in rows)
    assert "confusion matrix" in out.stdout


def test_the_python_lines_run_as_written(deployment, workdir: Path) -> None:
    code = _block_after("**Python**", "python")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=_env(deployment), capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{deployment.dump_logs()}"
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("accuracy ") and "macro-F1" in lines[0]
    assert len(lines) == 4 and all(line.startswith("photos/bag/") for line in lines[1:])
