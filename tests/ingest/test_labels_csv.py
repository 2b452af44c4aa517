"""The ``labels.csv`` layout: paths relative to the CSV, every mismatch between list and archive reported."""

from __future__ import annotations

import io

import pytest

from core.errors import InvalidInput
from tests.ingest.factories import LIMITS, digit, encode, make_zip, symlink_entry
from workers.ingest import read_archive

IMAGES = [(f"img/{i}.png", encode(digit(i))) for i in range(6)]


def read(entries: list) -> tuple[dict[str, str], dict[str, str], str]:
    contents = read_archive(io.BytesIO(make_zip(entries)), LIMITS)
    members = {m.name: m.label for m in contents.members}
    return members, {r.file: r.reason for r in contents.rejected}, contents.layout


def test_labels_csv_with_bom_whitespace_and_dot_paths() -> None:
    csv = "\ufeff Path , LABEL \r\nimg/0.png, zero\r\n./img/1.png ,one\r\n\r\nimg/2.png,  two  \r\n"
    members, rejected, layout = read([("labels.csv", csv.encode()), *IMAGES[:3]])
    assert layout == "labels_csv"
    assert members == {"img/0.png": "zero", "img/1.png": "one", "img/2.png": "two"}
    assert rejected == {}


def test_missing_unlisted_and_empty_label_are_each_reported() -> None:
    csv = "path,label\nimg/0.png,zero\nimg/1.png,\nimg/gone.png,ghost\nimg/2.png,two\n"
    members, rejected, _ = read([("labels.csv", csv.encode()), *IMAGES[:4]])
    assert members == {"img/0.png": "zero", "img/2.png": "two"}
    assert rejected == {
        "img/1.png": "labels.csv line 3: the label is empty",
        "img/gone.png": "listed in labels.csv but not found in the archive",
        "img/3.png": "not listed in labels.csv",
    }


def test_unlisted_files_in_an_unlabelled_folder_beside_the_csv_have_no_label() -> None:
    csv = "path,label\nimg/0.png,zero\n"
    pool = [("data/_unlabelled/a.png", encode(digit(1))), ("data/_unlabelled/deep/b.png", encode(digit(2)))]
    members, rejected, _ = read([("data/labels.csv", csv.encode()), ("data/img/0.png", IMAGES[0][1]), *pool])
    assert members == {"data/img/0.png": "zero", "data/_unlabelled/a.png": ""}
    assert rejected == {"data/_unlabelled/deep/b.png": "not listed in labels.csv"}


def test_extra_columns_in_any_order() -> None:
    csv = "label,source,path\nzero,scan,img/0.png\none,scan,img/1.png\n"
    members, rejected, _ = read([("labels.csv", csv.encode()), *IMAGES[:2]])
    assert members == {"img/0.png": "zero", "img/1.png": "one"} and not rejected


def test_labels_csv_under_the_single_top_folder_is_relative_to_it() -> None:
    entries = [
        ("set/labels.csv", b"path,label\nimg/0.png,zero\nimg/1.png,one\n"),
        *[(f"set/{name}", data) for name, data in IMAGES[:2]],
    ]
    members, rejected, _ = read(entries)
    assert members == {"set/img/0.png": "zero", "set/img/1.png": "one"} and not rejected


def test_conflicting_duplicate_rows_reject_the_file() -> None:
    csv = "path,label\nimg/0.png,zero\nimg/0.png,nought\nimg/1.png,one\nimg/1.png,one\n"
    members, rejected, _ = read([("labels.csv", csv.encode()), *IMAGES[:2]])
    assert members == {"img/1.png": "one"}
    assert rejected == {"img/0.png": "listed in labels.csv more than once, with different labels: ['nought', 'zero']"}


def test_traversal_in_labels_csv_is_rejected() -> None:
    csv = "path,label\n../etc/passwd,x\nimg/0.png,zero\n"
    members, rejected, _ = read([("labels.csv", csv.encode()), *IMAGES[:1]])
    assert members == {"img/0.png": "zero"}
    assert rejected == {
        "../etc/passwd": "labels.csv line 2: the path contains '..' and would point outside the archive"
    }


def test_listed_file_refused_for_another_reason_is_not_also_missing() -> None:
    csv = "path,label\nimg/0.png,zero\nimg/link.png,zero\n"
    members, rejected, _ = read(
        [("labels.csv", csv.encode()), *IMAGES[:1], symlink_entry("img/link.png", "/etc/shadow")]
    )
    assert members == {"img/0.png": "zero"}
    assert rejected == {"img/link.png": "is a symbolic link; links are not accepted"}


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        (b"file;class\nimg/0.png;zero\n", "must start with a header row naming the columns path and label"),
        (b"", "found: an empty file"),
        ("path,label\nimg/0.png,caf\u00e9\n".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_unusable_labels_csv_refuses_the_upload(csv: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read_archive(io.BytesIO(make_zip([("labels.csv", csv), *IMAGES[:1]])), LIMITS)
