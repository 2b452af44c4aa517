"""Artifact storage behind one small interface. Keys are relative, slash-separated paths such as
``tenants/<id>/datasets/<id>/blobs/ab/abcdef...``; a key can never name a place outside the root.

``LocalStorage`` is the default (a folder under ``TLSERVE_DATA_DIR``). An fsspec/S3 backend plugs in at
``get_storage()`` without touching callers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Protocol

from core.errors import BadRequest

_KEY_PART = re.compile(r"^[A-Za-z0-9._=-]+$")


def check_key(key: str) -> str:
    """Refuse keys that could escape the root: absolute, ``..``, empty parts, odd characters."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise BadRequest(f"invalid storage key: {key!r}")
    return key


class Storage(Protocol):
    def put_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None: ...
    def sync(self) -> None: ...
    def put_file(self, key: str, src: IO[bytes]) -> int: ...
    def get_bytes(self, key: str) -> bytes: ...
    def open(self, key: str) -> IO[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def local_path(self, key: str) -> Path: ...
    def writer(self, key: str, *, durable: bool = True) -> AbstractContextManager[IO[bytes]]: ...


class LocalStorage:
    """Files under one root folder; every write is atomic (temporary file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise BadRequest(f"invalid storage key: {key!r}")
        return path

    @contextmanager
    def writer(self, key: str, *, durable: bool = True) -> Iterator[IO[bytes]]:
        """Write a whole object atomically: readers see the old object or the complete new one.

        ``durable=False`` skips the per-file fsync for bulk writes; call ``sync()`` once before the
        objects are published (ingestion writes thousands of small images)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        with self.writer(key, durable=durable) as fh:
            fh.write(data)

    def sync(self) -> None:
        """Flush every write made with ``durable=False`` to disk."""
        os.sync()

    def put_file(self, key: str, src: IO[bytes]) -> int:
        with self.writer(key) as fh:
            shutil.copyfileobj(src, fh, 1024 * 1024)
            return fh.tell()

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open(self, key: str) -> IO[bytes]:
        return self._path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
        )

    def local_path(self, key: str) -> Path:
        """A filesystem path for libraries that need one (ONNX Runtime, numpy memmap)."""
        return self._path(key)


@lru_cache(maxsize=4)
def _storage_for(root: str) -> LocalStorage:
    return LocalStorage(Path(root))


def get_storage() -> Storage:
    from core.settings import get_settings

    settings = get_settings()
    return _storage_for(str(settings.artifacts_dir))
