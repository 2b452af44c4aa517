"""The storage contract, the same for the local folder and an S3 bucket (moto's server mode on loopback,
reached through s3fs exactly as MinIO would be), plus what only the remote store has: the bounded cache."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import BadRequest
from core.storage import FsspecStorage, LocalCache, LocalStorage, Storage, storage_from_url
from tests.conftest import S3_CREDENTIALS, make_bucket, reset_caches


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_endpoint


def _s3(endpoint: str, tmp_path: Path, *, prefix: str = "deploy/artifacts", cache_max_bytes: int = 1 << 30) -> Storage:
    bucket = make_bucket(endpoint)
    return storage_from_url(
        f"s3://{bucket}/{prefix}",
        tmp_path / "unused",
        endpoint_url=endpoint,
        cache_dir=tmp_path / "cache",
        cache_max_bytes=cache_max_bytes,
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield LocalStorage(tmp_path / "root")
        return
    yield _s3(request.getfixturevalue("s3_env"), tmp_path)
    reset_caches()


def test_every_method_round_trips(storage: Storage) -> None:
    storage.put_bytes("a/b/c.bin", b"hello")
    assert storage.get_bytes("a/b/c.bin") == b"hello"
    assert storage.exists("a/b/c.bin") and storage.size("a/b/c.bin") == 5
    assert not storage.exists("a/b") and not storage.exists("a/b/none")  # a prefix is not an object
    with storage.open("a/b/c.bin") as fh:
        fh.seek(1)
        assert fh.read(3) == b"ell"  # seekable: the ingest job reads a zip's directory at its end
    assert storage.put_file("a/d.bin", io.BytesIO(b"12345" * 1000)) == 5000
    with storage.writer("ab/e.bin", durable=False) as fh:
        fh.write(b"bulk")
    storage.sync()
    assert storage.list("a") == ["a/b/c.bin", "a/d.bin"]  # "ab/" is not under "a"
    assert storage.list("a/") == ["a/b/c.bin", "a/d.bin"]
    assert storage.list("nothing") == []
    assert storage.local_path("a/d.bin").read_bytes() == b"12345" * 1000
    storage.delete("a/d.bin")
    storage.delete("a/d.bin")  # deleting what is gone is not an error
    assert not storage.exists("a/d.bin")
    storage.delete_prefix("a")
    assert storage.list("a") == [] and storage.get_bytes("ab/e.bin") == b"bulk"  # a sibling prefix survives
    storage.delete_prefix("ab/e.bin")  # a prefix that names one object deletes it
    assert not storage.exists("ab/e.bin")
    storage.delete_prefix("never/written")


def test_scan_gives_sizes_and_times_and_delete_many_removes_a_batch(storage: Storage) -> None:
    import time

    before = time.time()
    for key, data in (("s/a/1.bin", b"1"), ("s/a/2.bin", b"22"), ("s/b/3.bin", b"333"), ("sx/4.bin", b"4")):
        storage.put_bytes(key, data)
    found = storage.scan("s")
    assert [(i.key, i.size) for i in found] == [("s/a/1.bin", 1), ("s/a/2.bin", 2), ("s/b/3.bin", 3)]
    assert all(before - 5 <= i.modified <= time.time() + 5 for i in found)  # S3 keeps whole seconds
    assert storage.scan("nothing") == []
    storage.delete_many(["s/a/1.bin", "s/b/3.bin", "s/b/never-written"])
    assert storage.list("s") == ["s/a/2.bin"] and storage.exists("sx/4.bin")
    if isinstance(storage, LocalStorage):  # the folder the batch emptied goes; the root and the rest stay
        assert not (storage.root / "s" / "b").exists() and (storage.root / "s" / "a").is_dir()
    storage.delete_many([])


def test_missing_keys_raise_file_not_found(storage: Storage) -> None:
    for read in (storage.get_bytes, storage.size, storage.open):
        with pytest.raises(FileNotFoundError):
            read("no/such/key")
    if isinstance(storage, FsspecStorage):  # a local path may name a file yet to be written; a copy cannot
        with pytest.raises(FileNotFoundError):
            storage.local_path("no/such/key")


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "", "a/./b", "a/b c"])
def test_keys_cannot_escape_the_root(storage: Storage, key: str) -> None:
    with pytest.raises(BadRequest):
        storage.put_bytes(key, b"x")
    with pytest.raises(BadRequest):
        storage.get_bytes(key)


def test_a_failed_write_leaves_the_old_object_and_no_trace(storage: Storage) -> None:
    storage.put_bytes("m/checkpoint.pt", b"epoch 1")
    with pytest.raises(RuntimeError), storage.writer("m/checkpoint.pt") as fh:
        fh.write(b"epoch 2, half")
        assert storage.get_bytes("m/checkpoint.pt") == b"epoch 1"  # nothing visible while it is being written
        raise RuntimeError("killed in the middle of a write")
    assert storage.get_bytes("m/checkpoint.pt") == b"epoch 1"
    with pytest.raises(RuntimeError), storage.writer("m/new.bin") as fh:
        fh.write(b"partial")
        raise RuntimeError("killed in the middle of a write")
    assert storage.list("m") == ["m/checkpoint.pt"]  # no partial object, no temporary one


def test_s3_objects_live_under_the_prefix_in_the_bucket(s3_env: str, tmp_path: Path) -> None:
    import boto3

    storage = _s3(s3_env, tmp_path, prefix="team/tlserve")
    assert isinstance(storage, FsspecStorage)
    storage.put_bytes("tenants/t1/x.npz", b"x")
    bucket = storage.root.split("/")[0]
    client = boto3.client("s3", endpoint_url=s3_env)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team/tlserve/tenants/t1/x.npz"]
    assert not (tmp_path / "unused").exists()  # nothing written to a local data folder


def test_local_path_is_a_cached_copy_refetched_when_the_object_changes(s3_env: str, tmp_path: Path) -> None:
    storage = _s3(s3_env, tmp_path)
    storage.put_bytes("engines/g.onnx", b"graph v1")
    first = storage.local_path("engines/g.onnx")
    assert first.is_relative_to(tmp_path / "cache") and first.read_bytes() == b"graph v1"
    assert storage.local_path("engines/g.onnx") == first  # a hit: no second download
    storage.put_bytes("engines/g.onnx", b"graph v2")
    second = storage.local_path("engines/g.onnx")
    assert second != first and second.read_bytes() == b"graph v2"  # never a stale copy


def test_the_cache_stays_within_its_bound_evicting_least_recently_used(s3_env: str, tmp_path: Path) -> None:
    storage = _s3(s3_env, tmp_path, cache_max_bytes=2500)
    for name in "abcd":
        storage.put_bytes(f"k/{name}", name.encode() * 1000)
    a = storage.local_path("k/a")
    b = storage.local_path("k/b")
    os.utime(a, (1, 1))  # a is the least recently used, b more recent
    os.utime(b, (2, 2))
    c = storage.local_path("k/c")  # 3000 bytes > 2500: the oldest goes
    assert not a.exists() and b.exists() and c.exists()
    storage.local_path("k/b")  # touching b makes c the oldest
    os.utime(c, (3, 3))
    d = storage.local_path("k/d")
    assert not c.exists() and b.exists() and d.exists()
    assert storage.cache.size() <= 2500


def test_a_cache_entry_larger_than_the_bound_is_still_served(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path, max_bytes=10)
    path = cache.get("big", "v1", lambda dest: Path(dest).write_bytes(b"x" * 100))
    assert path.read_bytes() == b"x" * 100


def test_a_failed_fill_leaves_no_cache_entry(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path, max_bytes=1000)

    def fail(dest: str) -> None:
        Path(dest).write_bytes(b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError):
        cache.get("k", "v1", fail)
    assert cache.entries() == [] and not list(tmp_path.rglob(".tmp-*"))


def test_file_urls_and_the_default_are_local_folders(tmp_path: Path) -> None:
    default = storage_from_url(None, tmp_path / "a", endpoint_url=None, cache_dir=tmp_path, cache_max_bytes=1)
    assert isinstance(default, LocalStorage) and default.root == (tmp_path / "a").resolve()
    url = storage_from_url(
        f"file://{tmp_path / 'b'}", tmp_path / "a", endpoint_url=None, cache_dir=tmp_path, cache_max_bytes=1
    )
    assert isinstance(url, LocalStorage) and url.root == (tmp_path / "b").resolve()


def test_get_storage_follows_the_settings(s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.storage import get_storage

    bucket = make_bucket(s3_env)
    monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TLSERVE_STORAGE_URL", f"s3://{bucket}/p")
    monkeypatch.setenv("TLSERVE_S3_ENDPOINT_URL", s3_env)
    reset_caches()
    try:
        storage = get_storage()
        assert isinstance(storage, FsspecStorage) and storage.root == f"{bucket}/p"
        storage.put_bytes("x", b"1")
        assert storage.local_path("x").is_relative_to(tmp_path / "data" / "cache")
    finally:
        monkeypatch.delenv("TLSERVE_STORAGE_URL")
        reset_caches()


def _child_round_trip(queue) -> None:  # type: ignore[no-untyped-def]
    from core.storage import get_storage

    try:
        storage = get_storage()
        storage.put_bytes("from/child", storage.get_bytes("from/parent") + b" and child")
        queue.put("ok")
    except BaseException as exc:  # reported to the parent, which asserts
        queue.put(repr(exc))


def test_a_forked_process_gets_its_own_connection(s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery's prefork pool forks the worker's main process, which has used the storage already: an s3fs
    instance and its event loop must not be shared across the fork."""
    import multiprocessing

    from core.storage import get_storage

    monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TLSERVE_STORAGE_URL", f"s3://{make_bucket(s3_env)}/p")
    monkeypatch.setenv("TLSERVE_S3_ENDPOINT_URL", s3_env)
    reset_caches()
    try:
        get_storage().put_bytes("from/parent", b"parent")
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_round_trip, args=(queue,))
        child.start()
        outcome = queue.get(timeout=120)
        child.join(timeout=60)
        assert outcome == "ok" and child.exitcode == 0
        assert get_storage().get_bytes("from/child") == b"parent and child"  # the parent's still works
    finally:
        monkeypatch.delenv("TLSERVE_STORAGE_URL")
        reset_caches()
