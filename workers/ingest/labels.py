"""Class labels as people send them: folder names, ``labels.csv`` cells, form fields. One rule for all."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from core.errors import InvalidInput

MAX_LABEL_CHARS = 100

# Characters that would let a label hide or disguise text when it is shown back (terminal escapes, line
# breaks, bidirectional overrides that make "gpj.exe" read as "exe.jpg").
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


class LabelError(ValueError):
    """A label that cannot be used; the message is the reason, for a person."""


def clean_label(raw: str) -> str:
    """The label ``raw`` stands for: NFC-normalised (macOS zips store decomposed names, CSVs composed
    ones, and "café" must be one class) and stripped; non-empty, at most 100 characters, no control
    characters. Raises ``LabelError`` with the reason otherwise."""
    label = unicodedata.normalize("NFC", raw).strip()
    if not label:
        raise LabelError("the label is empty")
    if len(label) > MAX_LABEL_CHARS:
        raise LabelError(f"the label is {len(label)} characters long; the limit is {MAX_LABEL_CHARS}")
    if any(_is_control(ch) for ch in label):
        raise LabelError("the label contains control characters")
    return label


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in {"Cc", "Cs", "Zl", "Zp"} or ch in _BIDI_CONTROLS


def labels_for_files(filenames: Sequence[str], labels: Sequence[str]) -> list[str]:
    """One clean label per file for a loose upload: either one label per file, in order, or a single
    label for all of them. Anything else is ambiguous, so the whole request is refused."""
    if not filenames:
        raise InvalidInput("no files were uploaded")
    if len(labels) == 1:
        labels = list(labels) * len(filenames)
    elif len(labels) != len(filenames):
        raise InvalidInput(
            f"got {len(filenames)} files and {len(labels)} labels: send one label per file, "
            "in the same order, or a single label for all of them"
        )
    cleaned = []
    for filename, label in zip(filenames, labels, strict=True):
        try:
            cleaned.append(clean_label(label))
        except LabelError as e:
            raise InvalidInput(f"label for {filename!r}: {e}") from None
    return cleaned
