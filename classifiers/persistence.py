"""Save and load fitted heads as plain arrays (``head.npz``) and JSON (``head.json``), never pickle.

A stored head may have crossed the network, so loading must not be able to run code: the arrays are
read with ``allow_pickle=False``, only known float arrays are accepted, and the JSON is data only.
Storage is the caller's: these functions take ``write_bytes``/``read_bytes`` callables. Loading
needs numpy only.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from classifiers.linear_head import ARRAY_KEYS, HeadFormatError, LinearHead, validate_meta

ARRAYS_NAME = "head.npz"
META_NAME = "head.json"
# Far above any real head (1,000 classes x 4,096 features in float64 is 33 MB): a bound on
# what a hostile, compressed npz may expand to.
MAX_ARRAY_BYTES = 1 << 30

Arrays = dict[str, np.ndarray]


def export_head(pipeline: Any) -> tuple[Arrays, dict[str, Any]]:
    """Arrays and metadata that ``LinearHead`` turns back into the pipeline's exact predictions.

    scikit-learn is imported here only, so a serving process loads heads without it.
    """
    from classifiers.export import export_pipeline

    return export_pipeline(pipeline)


def save_head(arrays: Arrays, meta: dict[str, Any], write_bytes: Callable[[str, bytes], None]) -> None:
    """Validate, then write ``head.npz`` (``np.savez``) and ``head.json`` through ``write_bytes``."""
    LinearHead(arrays, meta)
    buffer = io.BytesIO()
    np.savez(buffer, **{key: np.asarray(value) for key, value in arrays.items()})
    write_bytes(ARRAYS_NAME, buffer.getvalue())
    write_bytes(META_NAME, json.dumps(meta, indent=2, sort_keys=True).encode())


def load_head(read_bytes: Callable[[str], bytes]) -> LinearHead:
    """Read a head written by ``save_head``; raise ``HeadFormatError`` on anything else.

    The JSON is checked before the arrays are opened, and the arrays are read with
    ``allow_pickle=False`` from a zip that may only hold known float arrays.
    """
    try:
        meta = json.loads(read_bytes(META_NAME))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadFormatError(f"{META_NAME} is not valid JSON: {exc}") from exc
    meta = validate_meta(meta)
    return LinearHead(_read_arrays(read_bytes(ARRAYS_NAME)), meta)


def _read_arrays(raw: bytes) -> Arrays:
    if not raw.startswith(b"PK\x03\x04"):
        raise HeadFormatError(f"{ARRAYS_NAME} is not an npz (zip) archive")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            if sum(info.file_size for info in archive.infolist()) > MAX_ARRAY_BYTES:
                raise HeadFormatError(f"{ARRAYS_NAME} expands beyond {MAX_ARRAY_BYTES} bytes")
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            unknown = set(npz.files) - ARRAY_KEYS
            if unknown:  # refuse before reading: only the arrays this format defines are opened
                raise HeadFormatError(f"{ARRAYS_NAME} holds unexpected arrays {sorted(unknown)}")
            return {name: npz[name] for name in npz.files}
    except HeadFormatError:
        raise
    except ValueError as exc:  # numpy refuses object (pickled) arrays with allow_pickle=False
        raise HeadFormatError(f"{ARRAYS_NAME} holds arrays that cannot be loaded safely: {exc}") from exc
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise HeadFormatError(f"{ARRAYS_NAME} is corrupt: {exc}") from exc
