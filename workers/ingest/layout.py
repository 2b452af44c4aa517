"""Which class each file of an archive belongs to: one folder per class, or a ``labels.csv`` of
``path,label`` rows. Works on paths only; the archive reader decides what is read."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from core.errors import InvalidInput
from workers.ingest.labels import LabelError, clean_label
from workers.ingest.names import UnsafePath, safe_path
from workers.ingest.records import Rejection

LABELS_CSV = "labels.csv"
UNLABELLED_FOLDER = "_unlabelled"  # at the class level: images without a label yet, to rank for labelling


@dataclass
class Layout:
    kind: Literal["folders", "labels_csv", "unlabelled"]
    labels: dict[PurePosixPath, str] = field(default_factory=dict)  # file in the archive -> its label
    rejected: list[Rejection] = field(default_factory=list)


def single_top_folder(paths: Sequence[PurePosixPath]) -> str | None:
    """The one top-level folder that every path sits inside (someone zipped their dataset folder), or None."""
    tops = {p.parts[0] for p in paths}
    if len(tops) == 1 and all(len(p.parts) >= 2 for p in paths):
        return tops.pop()
    return None


def find_labels_csv(paths: Sequence[PurePosixPath]) -> PurePosixPath | None:
    """``labels.csv`` at the root of the archive, or inside its single top-level folder."""
    top = single_top_folder(paths)
    wanted = {PurePosixPath(LABELS_CSV)} | ({PurePosixPath(top, LABELS_CSV)} if top else set())
    return next((p for p in paths if p in wanted), None)


def folder_layout(paths: Sequence[PurePosixPath]) -> Layout:
    """Label = the folder a file sits in; a file in a folder ``_unlabelled`` gets the empty label (the
    pool). A single top-level folder that itself holds the class folders is a wrapper, not a class, and
    is stripped first."""
    top = single_top_folder(paths)
    if top is not None and not any(len(p.parts) >= 3 for p in paths):
        top = None  # "cats/a.png, cats/b.png": the top folder *is* the (only) class
    layout = Layout("folders")
    for path in paths:
        rel = path.relative_to(top) if top else path
        if len(rel.parts) < 2:
            layout.rejected.append(
                Rejection(str(path), "not inside a class folder: put each image in a folder named after its class")
            )
            continue
        if rel.parts[-2] == UNLABELLED_FOLDER:
            layout.labels[path] = ""  # the version's pool: no label, no split
            continue
        try:
            layout.labels[path] = clean_label(rel.parts[-2])
        except LabelError as e:
            layout.rejected.append(Rejection(str(path), f"its folder name can't be used as a class: {e}"))
    return layout


def csv_layout(
    text: str, csv_path: PurePosixPath, images: Sequence[PurePosixPath], present: Set[PurePosixPath]
) -> Layout:
    """Labels from ``labels.csv``; its paths are relative to the CSV's folder, and unlisted files in a folder
    ``_unlabelled`` beside it get the empty label (the pool). ``images`` are the files
    that want a label, ``present`` every path in the archive (so a listed file that was refused for
    another reason is not also reported as missing)."""
    layout = Layout("labels_csv")
    seen: dict[PurePosixPath, set[str]] = {}
    refused: set[PurePosixPath] = set()  # a bad row refuses its file, even if another row is fine
    for line, raw_path, raw_label in _rows(text):
        if not raw_path:
            layout.rejected.append(Rejection(f"{LABELS_CSV} line {line}", "the row has no path"))
            continue
        try:
            path = csv_path.parent / safe_path(raw_path)
        except UnsafePath as e:
            layout.rejected.append(Rejection(raw_path, f"{LABELS_CSV} line {line}: {e}"))
            continue
        if path not in present:
            layout.rejected.append(Rejection(raw_path, "listed in labels.csv but not found in the archive"))
            continue
        labels = seen.setdefault(path, set())
        try:
            labels.add(clean_label(raw_label))
        except LabelError as e:
            refused.add(path)
            layout.rejected.append(Rejection(str(path), f"{LABELS_CSV} line {line}: {e}"))
    for path, labels in seen.items():
        if path in refused:
            continue
        if len(labels) == 1:
            layout.labels[path] = next(iter(labels))
        else:
            layout.rejected.append(
                Rejection(str(path), f"listed in labels.csv more than once, with different labels: {sorted(labels)}")
            )
    pool = csv_path.parent / UNLABELLED_FOLDER  # unlisted files in _unlabelled/ beside labels.csv: the pool
    layout.labels |= {p: "" for p in images if p not in seen and p.parent == pool}
    layout.rejected += [
        Rejection(str(p), "not listed in labels.csv") for p in images if p not in seen and p.parent != pool
    ]
    return layout


def _rows(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, path, label) for each data row; a missing or wrong header refuses the upload."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        columns = [cell.strip().lower() for cell in header or []]
        if "path" not in columns or "label" not in columns:
            raise InvalidInput(
                "labels.csv must start with a header row naming the columns path and label, separated by "
                f"a comma; found: {','.join(header or []) or 'an empty file'}"
            )
        path_at, label_at = columns.index("path"), columns.index("label")
        for row in reader:
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            cells += [""] * (max(path_at, label_at) + 1 - len(cells))
            yield reader.line_num, cells[path_at], cells[label_at]
    except csv.Error as e:
        raise InvalidInput(f"labels.csv could not be read: line {reader.line_num}: {e}") from None
