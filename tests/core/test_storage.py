from __future__ import annotations

import io

import pytest

from core.errors import BadRequest
from core.storage import LocalStorage


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "a//b", "", "a/./b", "a/b c", "a\\..\\b"])
def test_keys_cannot_escape_the_root(tmp_path, key: str) -> None:
    storage = LocalStorage(tmp_path / "root")
    with pytest.raises(BadRequest):
        storage.put_bytes(key, b"x")
    assert list(tmp_path.iterdir()) == [tmp_path / "root"]


def test_round_trip_and_atomic_writes(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("a/b/c.bin", b"hello")
    assert storage.get_bytes("a/b/c.bin") == b"hello" and storage.exists("a/b/c.bin")
    with pytest.raises(RuntimeError), storage.writer("a/b/c.bin") as fh:
        fh.write(b"partial")
        raise RuntimeError("crash in the middle of a write")
    assert storage.get_bytes("a/b/c.bin") == b"hello"  # the old object survives a failed write
    assert storage.list("a") == ["a/b/c.bin"]  # no temporary file left behind
    assert storage.put_file("a/d.bin", io.BytesIO(b"12345")) == 5
    storage.delete_prefix("a")
    assert storage.list("a") == []
