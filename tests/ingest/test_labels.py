"""Label hygiene and labels for loose (non-archive) uploads."""

from __future__ import annotations

import pytest

from core.errors import InvalidInput
from workers.ingest import clean_label, labels_for_files
from workers.ingest.labels import LabelError


def test_labels_are_stripped_and_composed() -> None:
    assert clean_label("  cat \t") == "cat"
    assert clean_label("cafe\u0301") == clean_label("caf\u00e9") == "caf\u00e9"  # macOS vs. everyone else


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("   ", "the label is empty"),
        ("x" * 101, "the label is 101 characters long; the limit is 100"),
        ("cat\x1b[31m", "the label contains control characters"),
        ("cat\ndog", "the label contains control characters"),
        ("gpj\u202eexe", "the label contains control characters"),
    ],
)
def test_unusable_labels(raw: str, reason: str) -> None:
    with pytest.raises(LabelError, match=reason.replace("(", r"\(")):
        clean_label(raw)


def test_one_label_per_file_or_one_for_all() -> None:
    assert labels_for_files(["a.png", "b.png"], [" cat", "dog "]) == ["cat", "dog"]
    assert labels_for_files(["a.png", "b.png", "c.png"], ["cat"]) == ["cat", "cat", "cat"]


def test_label_count_mismatch_is_refused() -> None:
    with pytest.raises(InvalidInput, match="got 3 files and 2 labels"):
        labels_for_files(["a.png", "b.png", "c.png"], ["cat", "dog"])
    with pytest.raises(InvalidInput, match="got 1 files and 0 labels"):
        labels_for_files(["a.png"], [])


def test_no_files_and_bad_labels_are_refused() -> None:
    with pytest.raises(InvalidInput, match="no files were uploaded"):
        labels_for_files([], ["cat"])
    with pytest.raises(InvalidInput, match="label for 'b.png': the label is empty"):
        labels_for_files(["a.png", "b.png"], ["cat", " "])
