"""Hostile and honest zips through ``read_archive``: the good members are kept, the bad ones are listed
with a reason a person can act on, and an unusable upload is refused as a whole."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import zipfile

import pytest

from core.errors import InvalidInput
from core.settings import Settings
from tests.ingest.factories import (
    LIMITS,
    digit,
    digits_tree,
    encode,
    lie_about_count,
    make_zip,
    set_encrypted_flag,
    set_method,
    symlink_entry,
)
from workers.ingest import ArchiveContents, ArchiveLimits, Member, read_archive


def read(archive: bytes, limits: ArchiveLimits = LIMITS) -> tuple[list[Member], dict[str, str]]:
    """Members and {file: reason}, after reading every member."""
    contents = read_archive(io.BytesIO(archive), limits)
    members = list(contents.members)
    return members, {r.file: r.reason for r in contents.rejected}


def labels_of(members: list[Member]) -> dict[str, str]:
    return {m.name: m.label for m in members}


GOOD = digits_tree(classes=(0, 1), per_class=2)
GOOD_NAMES = {name for name, _ in GOOD}


def test_limits_come_from_settings() -> None:
    settings = Settings(max_archive_members=7, max_uncompressed_bytes=8, max_member_bytes=9, max_compression_ratio=10.0)
    assert ArchiveLimits.from_settings(settings) == ArchiveLimits(7, 8, 9, 10.0)


def test_folder_per_class_keeps_bytes_and_labels() -> None:
    entries = digits_tree(classes=(0, 1, 2), per_class=3)
    contents = read_archive(io.BytesIO(make_zip(entries)), LIMITS)
    assert isinstance(contents, ArchiveContents)
    assert (contents.layout, contents.expected) == ("folders", 9)
    members = list(contents.members)
    assert {m.name: m.data for m in members} == dict(entries)
    assert {m.name: m.label for m in members} == {name: name.split("/")[0] for name, _ in entries}
    assert contents.rejected == []


def test_single_top_folder_is_stripped_and_loose_files_in_it_are_rejected() -> None:
    readme = ("digits/README.txt", b"handwritten digits")
    members, rejected = read(make_zip([*digits_tree(prefix="digits/"), readme, ("digits/", b"")]))
    assert {m.label for m in members} == {"0", "1", "2"}
    assert rejected == {
        "digits/README.txt": "not inside a class folder: put each image in a folder named after its class"
    }


def test_a_zipped_single_class_folder_is_that_class() -> None:
    members, rejected = read(make_zip([("cats/a.png", encode(digit(0))), ("cats/b.png", encode(digit(1)))]))
    assert {m.label for m in members} == {"cats"} and not rejected


def test_label_is_the_immediate_parent_folder() -> None:
    members, _ = read(
        make_zip([("animals/cats/indoor/a.png", encode(digit(0))), ("animals/dogs/b.png", encode(digit(1)))])
    )
    assert labels_of(members) == {"animals/cats/indoor/a.png": "indoor", "animals/dogs/b.png": "dogs"}


def test_an_unlabelled_folder_at_the_class_level_gives_images_without_a_label() -> None:
    entries = [*digits_tree(classes=(0, 1), per_class=1, prefix="data/"), ("data/_unlabelled/u.png", encode(digit(2)))]
    members, rejected = read(make_zip(entries))
    assert labels_of(members) == {name: name.split("/")[1].replace("_unlabelled", "") for name, _ in entries}
    assert labels_of(members)["data/_unlabelled/u.png"] == ""
    assert not rejected


def test_file_at_root_is_not_in_a_class_folder() -> None:
    members, rejected = read(make_zip([*GOOD, ("loose.png", encode(digit(5)))]))
    assert {m.name for m in members} == GOOD_NAMES
    assert rejected["loose.png"].startswith("not inside a class folder")


def test_clutter_is_skipped_silently() -> None:
    clutter = [
        ("__MACOSX/0/._d0.png", b"\x00\x05\x16\x07"),
        ("0/.DS_Store", b"Bud1"),
        ("1/Thumbs.db", b"x"),
        (".git/config", b"[core]"),
        ("0/.hidden.png", encode(digit(3))),
        ("1/sub/", b""),
    ]
    members, rejected = read(make_zip([*GOOD, *clutter]))
    assert {m.name for m in members} == GOOD_NAMES and rejected == {}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.png", "would point outside the archive"),
        ("0/../../x.png", "would point outside the archive"),
        ("a/../../x.png", "would point outside the archive"),
        ("..\\evil.png", "would point outside the archive"),
        ("0\\..\\..\\evil.png", "would point outside the archive"),
        ("/abs.png", "the path is absolute"),
        ("C:/windows/evil.png", "drive letter"),
        ("C:\\evil.png", "drive letter"),
        ("0/bell\x07.png", "control characters"),
    ],
)
def test_zip_slip_is_rejected_with_reason(name: str, reason: str) -> None:
    members, rejected = read(make_zip([*GOOD, (name, encode(digit(9)))]))
    assert {m.name for m in members} == GOOD_NAMES
    assert len(rejected) == 1
    assert reason in next(iter(rejected.values()))


def test_backslash_separators_are_read_as_folders() -> None:
    members, rejected = read(make_zip([("0\\a.png", encode(digit(0))), ("1\\b.png", encode(digit(1)))]))
    assert labels_of(members) == {"0/a.png": "0", "1/b.png": "1"} and not rejected


def test_symlink_member_is_rejected() -> None:
    members, rejected = read(make_zip([*GOOD, symlink_entry("0/passwd.png", "/etc/passwd")]))
    assert {m.name for m in members} == GOOD_NAMES
    assert rejected == {"0/passwd.png": "is a symbolic link; links are not accepted"}


def test_highly_compressed_member_is_rejected_as_zip_bomb() -> None:
    bomb = ("0/bomb.png", b"\x00" * (3 << 19))  # 1.5 MiB of zeros deflates ~1000:1
    members, rejected = read(make_zip([*GOOD, bomb]))
    assert {m.name for m in members} == GOOD_NAMES
    assert re.fullmatch(
        r"compression ratio \d+:1 exceeds the limit of 200:1 \(possible zip bomb\)", rejected["0/bomb.png"]
    )


def test_small_compressible_member_is_not_judged_by_ratio() -> None:
    white = digit(0).point(lambda _: 255).resize((200, 200))  # a plain white BMP: 300:1, harmless
    members, rejected = read(make_zip([*GOOD, ("1/white.bmp", encode(white, "BMP"))]))
    assert "1/white.bmp" in {m.name for m in members} and not rejected


def test_member_over_the_size_limit_is_rejected_before_reading() -> None:
    limits = dataclasses.replace(LIMITS, max_member_bytes=1000)
    big = ("0/big.bmp", encode(digit(0, side=64), "BMP"))
    members, rejected = read(make_zip([*GOOD, big], method=zipfile.ZIP_STORED), limits)
    assert {m.name for m in members} == GOOD_NAMES
    assert rejected == {"0/big.bmp": f"is {len(big[1]) / 1024:.1f} KiB uncompressed; the limit per file is 1000 bytes"}


def test_total_uncompressed_size_is_capped_and_the_rest_rejected() -> None:
    entries = digits_tree(classes=(0, 1, 2), per_class=4)
    sizes = [len(data) for _, data in entries]
    limits = dataclasses.replace(LIMITS, max_total_bytes=sum(sizes[:5]) + sizes[5] // 2)
    members, rejected = read(make_zip(entries), limits)
    assert [m.name for m in members] == [name for name, _ in entries[:5]]
    assert list(rejected) == [name for name, _ in entries[5:]]
    assert all(
        "more than the" in reason and "limit on total uncompressed size" in reason for reason in rejected.values()
    )


def test_bytes_are_counted_as_read_not_taken_from_headers() -> None:
    archive = bytearray(make_zip([*GOOD, ("0/liar.png", b"\x00" * (3 << 19))]))
    # Claim 100 bytes uncompressed in the central directory: the ratio check passes, and reading must
    # stop at what was claimed and notice the data does not match.
    central = archive.find(b"0/liar.png", archive.find(b"PK\x01\x02")) - 46
    struct.pack_into("<I", archive, central + 24, 100)
    members, rejected = read(bytes(archive))
    assert {m.name for m in members} == GOOD_NAMES
    assert rejected["0/liar.png"].startswith("could not be read from the archive: its data is corrupt")


def test_too_many_members_refuses_the_upload() -> None:
    limits = dataclasses.replace(LIMITS, max_members=3)
    with pytest.raises(InvalidInput, match=r"the archive holds 4 entries; the limit is 3"):
        read_archive(io.BytesIO(make_zip(GOOD)), limits)


def test_lying_member_count_is_still_caught() -> None:
    limits = dataclasses.replace(LIMITS, max_members=3)
    archive = lie_about_count(make_zip(GOOD), 1)
    with pytest.raises(InvalidInput, match=r"holds 4 entries; the limit is 3"):
        read_archive(io.BytesIO(archive), limits)


def test_oversized_central_directory_refuses_the_upload() -> None:
    limits = dataclasses.replace(LIMITS, max_members=1)
    archive = lie_about_count(make_zip([(f"0/{'x' * 600}{i}.png", b"") for i in range(2)]), 1)
    with pytest.raises(InvalidInput, match="index is .* too large"):
        read_archive(io.BytesIO(archive), limits)


def test_encrypted_member_is_rejected() -> None:
    archive = set_encrypted_flag(make_zip([*GOOD, ("1/secret.png", encode(digit(7)))]), "1/secret.png")
    members, rejected = read(archive)
    assert {m.name for m in members} == GOOD_NAMES
    assert rejected == {"1/secret.png": "is encrypted; password-protected files are not accepted"}


def test_nested_archives_are_rejected_by_name_and_by_content() -> None:
    inner = make_zip(GOOD)
    nested = [
        ("0/inner.zip", inner),
        ("0/photos.tar.gz", b"whatever"),
        ("1/sneaky.png", inner),
        ("1/gz.jpg", b"\x1f\x8b\x08\x00" + bytes(20)),
    ]
    members, rejected = read(make_zip([*GOOD, *nested]))
    assert {m.name for m in members} == GOOD_NAMES
    assert rejected["0/inner.zip"] == "nested archives are not accepted"
    assert rejected["0/photos.tar.gz"] == "nested archives are not accepted"
    assert rejected["1/sneaky.png"] == "nested archives are not accepted (this file is a zip archive)"
    assert rejected["1/gz.jpg"] == "nested archives are not accepted (this file is a gzip archive)"


def test_duplicate_names_keep_the_first_copy() -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = make_zip([*GOOD, ("0/dup.png", encode(digit(0))), ("0/dup.png", encode(digit(1)))])
    members, rejected = read(archive)
    assert next(m.data for m in members if m.name == "0/dup.png") == encode(digit(0))
    assert rejected == {"0/dup.png": "appears more than once in the archive; only the first copy is used"}


def test_corrupt_member_data_rejects_only_that_member() -> None:
    payload = encode(digit(4, side=64), "BMP")
    archive = bytearray(make_zip([*GOOD, ("1/broken.bmp", payload)], method=zipfile.ZIP_STORED))
    start = archive.find(payload)
    archive[start + 100 : start + 110] = b"\xff" * 10
    members, rejected = read(bytes(archive))
    assert {m.name for m in members} == GOOD_NAMES
    assert "Bad CRC-32" in rejected["1/broken.bmp"]


@pytest.mark.parametrize("upload", [b"", b"hello world", encode(digit(0)), b"PK\x03\x04 truncated"])
def test_non_zip_upload_is_refused(upload: bytes) -> None:
    with pytest.raises(InvalidInput, match="the upload is not a zip archive"):
        read_archive(io.BytesIO(upload), LIMITS)


def test_corrupt_zip_is_refused() -> None:
    archive = bytearray(make_zip(GOOD))
    central = archive.find(b"PK\x01\x02")
    archive[central : central + 4] = b"JUNK"
    with pytest.raises(InvalidInput, match="the zip archive is corrupt"):
        read_archive(io.BytesIO(bytes(archive)), LIMITS)


def test_folder_name_that_is_not_a_usable_label_is_rejected() -> None:
    members, rejected = read(make_zip([*GOOD, (f"{'x' * 101}/a.png", encode(digit(0)))]))
    assert {m.name for m in members} == GOOD_NAMES
    assert list(rejected.values()) == [
        "its folder name can't be used as a class: the label is 101 characters long; the limit is 100"
    ]


def test_members_are_read_lazily() -> None:
    entries = digits_tree(classes=(0, 1, 2), per_class=4)
    limits = dataclasses.replace(LIMITS, max_total_bytes=len(entries[0][1]))
    contents = read_archive(io.BytesIO(make_zip(entries)), limits)
    assert contents.rejected == []  # nothing has been read yet
    first = next(contents.members)
    assert first.name == entries[0][0] and contents.rejected == []
    assert list(contents.members) == []
    assert len(contents.rejected) == len(entries) - 1


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_every_standard_compression_method_is_read(method: int) -> None:
    members, rejected = read(make_zip(GOOD, method=method))
    assert {m.name: m.data for m in members} == dict(GOOD) and not rejected


def test_unsupported_compression_method_is_rejected() -> None:
    archive = set_method(make_zip([*GOOD, ("1/odd.png", encode(digit(8)))]), "1/odd.png", 9)
    members, rejected = read(archive)
    assert {m.name for m in members} == GOOD_NAMES
    assert rejected == {
        "1/odd.png": "uses a compression method this service cannot read (method 9); re-create the zip with "
        "the standard deflate method"
    }
