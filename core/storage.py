"""Artifact storage behind one small interface. Keys are relative, slash-separated paths such as
``tenants/<id>/datasets/<id>/blobs/ab/abcdef...``; a key can never name a place outside the root.

``TLSERVE_STORAGE_URL`` picks the backend in ``get_storage()``:

- unset or ``file:///folder``: ``LocalStorage``, a folder (default ``TLSERVE_DATA_DIR/artifacts``);
- ``s3://bucket/prefix`` (or any other fsspec URL): ``FsspecStorage`` through s3fs, with
  ``TLSERVE_S3_ENDPOINT_URL`` for MinIO and other S3-compatible stores and the standard AWS credential
  variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles...).

Both behave the same to callers: a missing key raises ``FileNotFoundError``; a write is seen by readers
whole or not at all (a temporary file renamed into place; one S3 PUT or completed multipart upload).
What needs a filesystem path (``local_path``) gets, for a remote store, a copy in a bounded local cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol

from core.errors import BadRequest

_KEY_PART = re.compile(r"^[A-Za-z0-9._=-]+$")


def check_key(key: str) -> str:
    """Refuse keys that could escape the root: absolute, ``..``, empty parts, odd characters."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise BadRequest(f"invalid storage key: {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing sees it: its key, size in bytes and last write (Unix seconds)."""

    key: str
    size: int
    modified: float


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
    def delete_many(self, keys: Iterable[str]) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def scan(self, prefix: str) -> list[ObjectInfo]: ...
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
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except FileNotFoundError:  # the sweeper pruned the empty folder in between: make it again
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

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete these objects, then the folders they leave empty (up to the root, never the root)."""
        parents = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while folder != self.root and self.root in folder.parents:
                try:
                    folder.rmdir()  # fails on a folder that is not empty: a sibling, or a write just begun
                except OSError:
                    break
                folder = folder.parent

    def list(self, prefix: str) -> list[str]:
        return [info.key for info in self.scan(prefix)]

    def scan(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` with its size and modification time, sorted by key; writes under
        way (their temporary files) are not objects yet."""
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        found = []
        for p in base.rglob("*"):
            if p.name.startswith(".tmp-"):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # deleted while listing
                continue
            if p.is_file():
                found.append(ObjectInfo(str(p.relative_to(self.root)), st.st_size, st.st_mtime))
        return sorted(found, key=lambda info: info.key)

    def local_path(self, key: str) -> Path:
        """A filesystem path for libraries that need one (ONNX Runtime, numpy memmap)."""
        return self._path(key)


class LocalCache:
    """A bounded folder of local copies of remote objects, filled on demand, least recently used evicted.

    Entries are named by the digest of (key, version) where the version is the object's ETag and size, so
    an overwritten object (a checkpoint) is fetched again and never read stale. A copy appears by rename,
    whole; several processes may share the folder. Eviction happens after a fill, oldest access first,
    until the folder is within ``max_bytes`` (the entry just filled is kept even if it alone is larger)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path_for(self, key: str, version: str) -> Path:
        digest = hashlib.sha256(f"{key}\0{version}".encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}{PurePosixPath(key).suffix}"

    def get(self, key: str, version: str, fill: Any) -> Path:
        """The local copy of ``key`` at ``version``; ``fill(path)`` writes it when it is not cached."""
        path = self.path_for(key, version)
        if path.is_file():
            os.utime(path)  # the access time LRU eviction goes by (atime itself may be off: noatime)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        try:
            fill(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.evict(keep=path)
        return path

    def entries(self) -> list[Path]:
        return [p for p in self.root.glob("*/*") if p.is_file() and not p.name.startswith(".tmp-")]

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def evict(self, keep: Path | None = None) -> None:
        with self._lock:
            files = []
            for p in self.entries():
                try:
                    st = p.stat()
                except FileNotFoundError:  # another process evicted it
                    continue
                files.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in files)
            for _, size, p in sorted(files, key=lambda f: f[0]):
                if total <= self.max_bytes:
                    break
                if p == keep:
                    continue
                p.unlink(missing_ok=True)  # an open reader keeps its data (POSIX unlink semantics)
                total -= size


class FsspecStorage:
    """Objects in an fsspec filesystem (S3 through s3fs, MinIO, ...) under ``root`` (``bucket/prefix``).

    Writes go to a local temporary file and are uploaded in one piece when the writer closes without
    error: S3 makes an object visible only when its PUT (or multipart upload) completes, so a reader never
    sees a partial object and a failed write leaves the previous one. ``durable`` and ``sync`` have nothing
    to do here: an object is durable once its upload returned. Listings are never cached, because other
    processes write the same bucket."""

    def __init__(self, fs: Any, root: str, cache: LocalCache) -> None:
        self.fs = fs
        self.root = root.strip("/")
        self.cache = cache

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}" if self.root else check_key(key)

    def _key(self, path: str) -> str:
        path = path.strip("/")
        return path[len(self.root) + 1 :] if self.root else path

    @contextmanager
    def writer(self, key: str, *, durable: bool = True) -> Iterator[IO[bytes]]:
        path = self._path(key)
        with tempfile.NamedTemporaryFile(prefix="tlserve-upload-") as fh:
            yield fh  # type: ignore[misc]
            fh.flush()
            self.fs.put_file(fh.name, path)

    def put_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.fs.pipe_file(self._path(key), data)

    def sync(self) -> None:
        """Nothing to flush: every upload is complete when it returns."""

    def put_file(self, key: str, src: IO[bytes]) -> int:
        with self.writer(key) as fh:
            shutil.copyfileobj(src, fh, 1024 * 1024)
            return fh.tell()

    def get_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def open(self, key: str) -> IO[bytes]:
        """A seekable reader that fetches ranges on demand (an uploaded zip is read without a full copy)."""
        return self.fs.open(self._path(key), "rb")

    def _info(self, key: str) -> dict[str, Any]:
        info = self.fs.info(self._path(key))
        if info.get("type") != "file":
            raise FileNotFoundError(key)
        return info

    def exists(self, key: str) -> bool:
        try:
            self._info(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._info(key)["size"])

    def delete(self, key: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        path = self._path(prefix.rstrip("/"))
        if self.exists(prefix.rstrip("/")):
            keys.append(prefix.rstrip("/"))
        if keys:
            self.fs.rm([self._path(k) for k in keys])
        self.fs.invalidate_cache(path)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete these objects, a thousand per request (S3's batch delete)."""
        paths = [self._path(k) for k in keys]
        for i in range(0, len(paths), 1000):
            with suppress(FileNotFoundError):
                self.fs.rm(paths[i : i + 1000])

    def list(self, prefix: str) -> list[str]:
        return [info.key for info in self.scan(prefix)]

    def scan(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` with its size and last write, sorted by key."""
        base = self._path(prefix.rstrip("/"))
        try:
            found = self.fs.find(base + "/", detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            key = self._key(path)
            if key.startswith(prefix.rstrip("/") + "/") and info.get("type", "file") == "file":
                out.append(ObjectInfo(key, int(info.get("size") or 0), _modified(info)))
        return sorted(out, key=lambda info: info.key)

    def local_path(self, key: str) -> Path:
        """A local copy in the bounded cache (``TLSERVE_CACHE_DIR``), fetched when missing or changed."""
        info = self._info(key)
        version = f"{info.get('ETag') or info.get('etag') or ''}:{info['size']}"
        return self.cache.get(key, version, lambda dest: self.fs.get_file(self._path(key), dest))


def _modified(info: dict[str, Any]) -> float:
    """An fsspec listing entry's last write in Unix seconds (``LastModified`` on S3, ``mtime`` or
    ``updated`` elsewhere); with none, now, so that whatever reads it treats the object as new."""
    import time

    value = info.get("LastModified") or info.get("mtime") or info.get("updated") or info.get("last_modified")
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return time.time()


@lru_cache(maxsize=4)
def _storage_for(root: str) -> LocalStorage:
    return LocalStorage(Path(root))


@lru_cache(maxsize=4)
def _remote_storage(url: str, endpoint_url: str | None, cache_dir: str, cache_max_bytes: int, pid: int) -> Storage:
    """One filesystem object per process (``pid``: an instance and its event loop must not cross a fork)."""
    import fsspec

    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if protocol in ("s3", "s3a") and endpoint_url:
        options["endpoint_url"] = endpoint_url
    fs, root = fsspec.core.url_to_fs(url, **options)
    return FsspecStorage(fs, root, LocalCache(Path(cache_dir), cache_max_bytes))


def storage_from_url(
    url: str | None, default_root: Path, *, endpoint_url: str | None, cache_dir: Path, cache_max_bytes: int
) -> Storage:
    """``None``/``""`` → ``default_root``; ``file://`` or a bare path → that folder; else an fsspec store."""
    if not url:
        return _storage_for(str(default_root))
    if url.startswith("file://"):
        return _storage_for(url.removeprefix("file://") or "/")
    if "://" not in url:
        return _storage_for(url)
    return _remote_storage(url, endpoint_url, str(cache_dir), cache_max_bytes, os.getpid())


def get_storage() -> Storage:
    from core.settings import get_settings

    settings = get_settings()
    return storage_from_url(
        settings.storage_url,
        settings.artifacts_dir,
        endpoint_url=settings.s3_endpoint_url,
        cache_dir=settings.resolved_cache_dir,
        cache_max_bytes=settings.cache_max_bytes,
    )
