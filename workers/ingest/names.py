"""Paths inside an upload, judged as hostile. Nothing is ever extracted to disk, but a path is also what a
label is read from and what is shown back to people, so one that tries to leave the archive is refused
rather than quietly repaired."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

_DRIVE = re.compile(r"^[A-Za-z]:")

# Files that archivers and desktops add without being asked: skipped without a word.
_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "ehthumbs.db"})
_JUNK_FOLDERS = frozenset({"__MACOSX"})


class UnsafePath(ValueError):
    """A path that points outside the archive or cannot be shown safely; the message is the reason."""


def safe_path(raw: str) -> PurePosixPath:
    """``raw`` as a relative POSIX path, or ``UnsafePath``.

    Backslashes are read as separators (old Windows zippers write them), so ``..\\evil.png`` is caught as
    the traversal it is. Refused: absolute paths, drive letters, ``..`` anywhere, control characters."""
    name = unicodedata.normalize("NFC", raw).replace("\\", "/")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise UnsafePath("the file name contains control characters")
    if name.startswith("/"):
        raise UnsafePath("the path is absolute; paths in an upload must be relative")
    if _DRIVE.match(name):
        raise UnsafePath("the path starts with a drive letter; paths in an upload must be relative")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafePath("the path contains '..' and would point outside the archive")
    if not path.parts:
        raise UnsafePath("the path is empty")
    return path


def is_junk(path: PurePosixPath) -> bool:
    """True for operating-system clutter and hidden files (``__MACOSX/``, ``.DS_Store``, ``.git/...``)."""
    return (
        path.name in _JUNK_NAMES
        or any(part in _JUNK_FOLDERS for part in path.parts)
        or any(part.startswith(".") for part in path.parts)
    )
