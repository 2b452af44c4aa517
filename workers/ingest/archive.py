"""Reading an uploaded zip under limits, in memory, as a stream: nothing is extracted to disk and no size
written in the archive is trusted.

The central directory is screened first (names, file types, encryption, declared sizes and ratios), the
layout is worked out from the names alone, and only then are the accepted members read, one at a time,
in chunks, each read stopping one byte past the smallest limit that applies to it.
"""

from __future__ import annotations

import lzma
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Literal

from core.errors import InvalidInput
from core.settings import Settings
from workers.ingest import sniff
from workers.ingest.labels import labels_for_files
from workers.ingest.layout import Layout, csv_layout, find_labels_csv, folder_layout
from workers.ingest.names import UnsafePath, is_junk, safe_path
from workers.ingest.records import Member, Rejection

__all__ = ["ArchiveContents", "ArchiveLimits", "Member", "Rejection", "labels_for_files", "read_archive"]

_CHUNK = 1 << 16
_SUPPORTED_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_ENCRYPTED = 0x1  # general-purpose flag bit 0
# A central-directory entry is 46 bytes plus its name and extra fields. Bounding the directory's size
# bounds how many entries the zip parser can be made to build, whatever count the archive declares.
_CD_BYTES_PER_MEMBER = 46 + 512
# What reading a damaged member can raise: bad CRC or header, truncated stream, bad bz2/lzma/deflate data,
# a method zipfile lacks, a password wanted.
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
)


@dataclass(frozen=True)
class ArchiveLimits:
    """How much one upload may make us read. ``ratio_grace_bytes``: members this small are never judged by
    their compression ratio (a plain white 100×100 BMP deflates 300:1 and is no bomb)."""

    max_members: int
    max_total_bytes: int
    max_member_bytes: int
    max_compression_ratio: float
    ratio_grace_bytes: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_members=settings.max_archive_members,
            max_total_bytes=settings.max_uncompressed_bytes,
            max_member_bytes=settings.max_member_bytes,
            max_compression_ratio=settings.max_compression_ratio,
        )


@dataclass
class ArchiveContents:
    """What an archive holds. ``members`` is a one-pass iterator that reads each file when it is reached
    (so a 4 GiB upload never sits in memory at once); files refused while reading are appended to
    ``rejected``, which is complete once ``members`` is exhausted."""

    layout: Literal["folders", "labels_csv", "unlabelled"]
    expected: int  # members planned; progress total for the caller
    members: Iterator[Member]
    rejected: list[Rejection] = field(default_factory=list)


def read_archive(fileobj: IO[bytes], limits: ArchiveLimits, *, unlabelled: bool = False) -> ArchiveContents:
    """Screen, lay out and (lazily) read a zip upload. ``fileobj`` must be seekable (zip's index is at its
    end). Raises ``InvalidInput`` when the upload as a whole is unusable: not a zip, corrupt, too many
    files, or an unreadable ``labels.csv``. ``unlabelled``: every file is wanted, whatever its folder, with
    an empty label (images to predict)."""
    zf = _open(fileobj, limits)
    screened = _screen(zf.infolist(), limits)
    budget = _Budget(limits.max_total_bytes)
    if unlabelled:
        layout = Layout("unlabelled", labels=dict.fromkeys(screened.entries, ""))
    else:
        layout = _layout(zf, screened, budget, limits)
    plan = [(path, info, layout.labels[path]) for path, info in screened.entries.items() if path in layout.labels]
    rejected = screened.rejected + layout.rejected
    return ArchiveContents(layout.kind, len(plan), _read_members(zf, plan, budget, limits, rejected), rejected)


class _Refused(Exception):
    """A member turned out, while being read, not to be acceptable, for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Budget:
    limit: int
    spent: int = 0

    @property
    def left(self) -> int:
        return self.limit - self.spent


@dataclass
class _Screened:
    entries: dict[PurePosixPath, zipfile.ZipInfo] = field(default_factory=dict)  # accepted files
    refused: dict[PurePosixPath, str] = field(default_factory=dict)  # safe path, refused for a reason
    rejected: list[Rejection] = field(default_factory=list)


def _open(fileobj: IO[bytes], limits: ArchiveLimits) -> zipfile.ZipFile:
    """Open the zip after checking, from its end record alone, that its index is of a size we accept."""
    # The stdlib's own end-record reader (private, unchanged since Python 2.6): it lets us refuse an
    # archive before ZipFile builds an object for each of its possibly millions of entries.
    end = zipfile._EndRecData(fileobj)  # type: ignore[attr-defined]
    if end is None:
        raise InvalidInput("the upload is not a zip archive")
    count, index_bytes = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    _check_count(count, limits)
    if index_bytes > limits.max_members * _CD_BYTES_PER_MEMBER:
        raise InvalidInput(
            f"the zip archive's index is {_size(index_bytes)}, too large for the limit of "
            f"{limits.max_members} files per upload"
        )
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise InvalidInput(f"the zip archive is corrupt and cannot be read ({e})") from None
    _check_count(len(zf.infolist()), limits)  # the end record may have lied
    return zf


def _check_count(count: int, limits: ArchiveLimits) -> None:
    if count > limits.max_members:
        raise InvalidInput(
            f"the archive holds {count} entries; the limit is {limits.max_members} per "
            "upload: split it into several uploads"
        )


def _screen(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> _Screened:
    """Judge every entry by its central-directory record, before any data is read. Folders and clutter
    are skipped without a word; everything else is accepted or rejected with its reason."""
    screened = _Screened()
    for info in infos:
        if info.is_dir():
            continue
        try:
            path = safe_path(info.filename)
        except UnsafePath as e:
            screened.rejected.append(Rejection(_printable(info.filename), str(e)))
            continue
        if is_junk(path):
            continue
        if path in screened.entries or path in screened.refused:
            reason: str | None = "appears more than once in the archive; only the first copy is used"
        elif reason := _refusal(info, path, limits):
            screened.refused[path] = reason
        else:
            screened.entries[path] = info
            continue
        screened.rejected.append(Rejection(_printable(info.filename), reason))
    return screened


def _refusal(info: zipfile.ZipInfo, path: PurePosixPath, limits: ArchiveLimits) -> str | None:
    """Why this entry must not be read, judged from its header alone; None if it may be."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "is a symbolic link; links are not accepted"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "is not a regular file"
    if info.flag_bits & _ENCRYPTED:
        return "is encrypted; password-protected files are not accepted"
    if info.compress_type not in _SUPPORTED_METHODS:
        return (
            f"uses a compression method this service cannot read (method {info.compress_type}); "
            "re-create the zip with the standard deflate method"
        )
    if path.suffix.lower() in sniff.ARCHIVE_EXTENSIONS:
        return "nested archives are not accepted"
    if info.file_size > limits.max_member_bytes:
        return f"is {_size(info.file_size)} uncompressed; the limit per file is {_size(limits.max_member_bytes)}"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_grace_bytes and ratio > limits.max_compression_ratio:
        return _ratio_reason(ratio, limits)
    return None


def _layout(zf: zipfile.ZipFile, screened: _Screened, budget: _Budget, limits: ArchiveLimits) -> Layout:
    """Folder-per-class, unless a ``labels.csv`` sits at the root (or under the single top folder)."""
    present = screened.entries.keys() | screened.refused.keys()
    csv_path = find_labels_csv(sorted(present))
    if csv_path is None:
        return folder_layout(list(screened.entries))
    if csv_path in screened.refused:
        raise InvalidInput(f"labels.csv could not be used: it {screened.refused[csv_path]}")
    try:
        text = _read(zf, screened.entries[csv_path], budget, limits).decode("utf-8-sig")
    except _Refused as e:
        raise InvalidInput(f"labels.csv could not be used: it {e.reason}") from None
    except UnicodeDecodeError:
        raise InvalidInput("labels.csv is not UTF-8 text; save it as 'CSV UTF-8'") from None
    images = [p for p in screened.entries if p != csv_path]
    return csv_layout(text, csv_path, images, present)


def _read_members(
    zf: zipfile.ZipFile,
    plan: list[tuple[PurePosixPath, zipfile.ZipInfo, str]],
    budget: _Budget,
    limits: ArchiveLimits,
    rejected: list[Rejection],
) -> Iterator[Member]:
    for path, info, label in plan:
        try:
            data = _read(zf, info, budget, limits)
        except _Refused as e:
            rejected.append(Rejection(str(path), e.reason))
            continue
        yield Member(str(path), label, data)


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, limits: ArchiveLimits) -> bytes:
    """The member's bytes, counted as they come out of the decompressor, never more than the smallest
    applicable limit plus one byte. Every byte read is charged to ``budget``, good member or not."""
    total_reason = (
        f"was not read: the archive's files add up to more than the "
        f"{_size(budget.limit)} limit on total uncompressed size"
    )
    left = budget.left
    if left <= 0:
        raise _Refused(total_reason)
    ratio_cap = max(limits.ratio_grace_bytes, int(info.compress_size * limits.max_compression_ratio))
    cap = min(limits.max_member_bytes, ratio_cap, left)
    try:
        with zf.open(info) as f:
            data = _read_capped(f, cap, budget)
    except _READ_ERRORS as e:
        raise _Refused(f"could not be read from the archive: its data is corrupt ({e})") from None
    if len(data) <= cap:
        if kind := sniff.archive_kind(data):
            raise _Refused(f"nested archives are not accepted (this file is a {kind})")
        return data
    if cap == left:  # the total was the binding limit: nothing after this is read
        raise _Refused(total_reason)
    if cap == limits.max_member_bytes:
        raise _Refused(f"is larger than the limit per file of {_size(limits.max_member_bytes)}")
    raise _Refused(_ratio_reason(len(data) / max(info.compress_size, 1), limits))


def _read_capped(f: IO[bytes], cap: int, budget: _Budget) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got <= cap:
        chunk = f.read(min(_CHUNK, cap + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        budget.spent += len(chunk)
    return b"".join(chunks)


def _ratio_reason(ratio: float, limits: ArchiveLimits) -> str:
    return (
        f"compression ratio {ratio:.0f}:1 exceeds the limit of {limits.max_compression_ratio:.0f}:1 (possible zip bomb)"
    )


def _size(n: float) -> str:
    """Bytes for people: "64 MiB", "1.5 GiB", "300 bytes"."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{int(n)} bytes" if i == 0 else f"{n:.1f}".removesuffix(".0") + f" {units[i]}"


def _printable(name: str) -> str:
    """A member name safe to show back: control characters replaced."""
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in name)
