"""Where the command line finds the service: ``--url``/``--api-key``, else ``TLSERVE_URL``/``TLSERVE_API_KEY``,
else the user config file that ``login`` writes (``$XDG_CONFIG_HOME/tlserve/config.json``, mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def config_path() -> Path:
    explicit = os.environ.get("TLSERVE_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tlserve" / "config.json"


def load_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise OSError(f"cannot read the config file {path}: {e}; run 'login' again or delete it") from None
    return data if isinstance(data, dict) else {}


def save_config(values: dict[str, Any], path: Path | None = None) -> Path:
    """Write the config readable by its owner alone (0600; the folder 0700), replacing any older file."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(values, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
