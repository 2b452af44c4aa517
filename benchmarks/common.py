"""Shared by the benchmarks: the machine they ran on, an isolated tlserve environment, result files."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def isolated_env(broker: str = "memory://") -> Path:
    """Point tlserve at a fresh data folder and SQLite database, migrated."""
    data = Path(tempfile.mkdtemp(prefix="tlserve-bench-"))
    os.environ.update({"TLSERVE_DATA_DIR": str(data), "TLSERVE_BROKER_URL": broker})
    os.environ.pop("TLSERVE_DATABASE_URL", None)
    from core.migrate import upgrade
    from core.settings import reset_settings

    reset_settings()
    upgrade()
    return data


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {path.relative_to(ROOT)}")
    return path
