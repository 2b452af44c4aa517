"""Round trips through head.npz/head.json, and stored pickle payloads that must never run."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.svm import LinearSVC

from classifiers.heads import HEAD_TYPES, HeadConfig, build_pipeline
from classifiers.linear_head import HeadFormatError, LinearHead
from classifiers.persistence import ARRAYS_NAME, META_NAME, export_head, load_head, save_head


def _round_trip(pipeline) -> LinearHead:
    store: dict[str, bytes] = {}
    save_head(*export_head(pipeline), store.__setitem__)
    assert set(store) == {ARRAYS_NAME, META_NAME}
    return load_head(store.__getitem__)


def _fit(head_type: str, X: np.ndarray, y: np.ndarray, **kwargs) -> object:
    cfg = HeadConfig(type=head_type, C=kwargs.pop("C", 0.1), **kwargs)
    return build_pipeline(cfg, n_samples=len(y)).fit(X, y)


def _assert_same(pipeline, head: LinearHead, X: np.ndarray) -> None:
    np.testing.assert_array_equal(head.predict(X), pipeline.predict(X))
    np.testing.assert_allclose(head.predict_proba(X), pipeline.predict_proba(X), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(head.classes_, pipeline.classes_)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["multiclass", "binary"])
def test_round_trip_gives_identical_predictions(head_type, binary, digits, digits_binary):
    X, y = digits_binary if binary else digits
    pipeline = _fit(head_type, X, y)
    head = _round_trip(pipeline)
    for dtype in (np.float32, np.float64):
        _assert_same(pipeline, head, X.astype(dtype))


@pytest.mark.parametrize("head_type", HEAD_TYPES)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # unscaled pixels
def test_round_trip_with_pca_whitening_and_without_scaling(head_type, digits):
    X, y = digits[0][:600], digits[1][:600]  # unscaled pixels converge slowly: keep it small
    for kwargs in (
        {"pca_whiten": True, "pca_components": 24},
        {"standardize": False, "pca_whiten": True},
        {"standardize": False},
    ):
        pipeline = _fit(head_type, X, y, C=0.01, **kwargs)
        _assert_same(pipeline, _round_trip(pipeline), X)


def test_balanced_class_weights_round_trip(digits):
    X, y = digits
    pipeline = _fit("logistic", X, y, class_weight="balanced")
    _assert_same(pipeline, _round_trip(pipeline), X.astype(np.float64))


def test_top_k_is_sorted_and_matches_predict_proba(digits):
    X, y = digits
    pipeline = _fit("logistic", X, y)
    head = _round_trip(pipeline)
    top = head.top_k(X[:5], k=3)
    proba = pipeline.predict_proba(X[:5])
    for row, p in zip(top, proba, strict=True):
        assert len(row) == 3
        labels, scores = zip(*row, strict=True)
        assert labels[0] == pipeline.classes_[np.argmax(p)]
        assert list(scores) == sorted(scores, reverse=True)
        assert all(isinstance(label, str) for label in labels)
        np.testing.assert_allclose(scores, np.sort(p)[::-1][:3], atol=1e-6)
    assert len(head.top_k(X[:1], k=50)[0]) == 10  # k beyond the classes: all of them


def test_features_of_the_wrong_width_are_refused(digits):
    X, y = digits
    head = _round_trip(_fit("logistic", X, y))
    with pytest.raises(ValueError, match="shape"):
        head.predict(X[:, :10])


def test_unsupported_pipelines_are_refused(digits):
    X, y = digits
    ensemble = make_pipeline(CalibratedClassifierCV(LinearSVC(), cv=2, ensemble=True)).fit(X, y)
    with pytest.raises(ValueError, match="ensemble=False"):
        export_head(ensemble)
    with pytest.raises(TypeError):
        export_head(LogisticRegression())


# --- stored payloads that must never be executed -------------------------------------------------


def plant_marker(path: str) -> None:
    """What the payload runs if it is ever unpickled."""
    Path(path).write_text("pickle payload executed")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return plant_marker, (self.marker,)


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # np.savez pickles object arrays
    return buffer.getvalue()


@pytest.fixture
def stored_head(digits) -> dict[str, bytes]:
    X, y = digits
    store: dict[str, bytes] = {}
    save_head(*export_head(_fit("logistic", X, y)), store.__setitem__)
    return store


def _evil_object_array(marker: Path) -> np.ndarray:
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    return evil


def test_the_payload_is_live(tmp_path):
    """Guard for the tests below: unpickling the planted array does run code."""
    marker = tmp_path / "proof"
    raw = _npz(coef=_evil_object_array(marker))
    np.load(io.BytesIO(raw), allow_pickle=True)["coef"]
    assert marker.exists()


@pytest.mark.parametrize("key", ["coef", "extra"])
def test_object_array_in_npz_is_never_unpickled(key, stored_head, tmp_path):
    marker = tmp_path / "pwned"
    with np.load(io.BytesIO(stored_head[ARRAYS_NAME])) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays[key] = _evil_object_array(marker)
    stored_head[ARRAYS_NAME] = _npz(**arrays)
    with pytest.raises(HeadFormatError):
        load_head(stored_head.__getitem__)
    assert not marker.exists()


def test_raw_pickle_in_place_of_the_npz_is_never_unpickled(stored_head, tmp_path):
    marker = tmp_path / "pwned"
    stored_head[ARRAYS_NAME] = pickle.dumps(_Payload(marker))
    with pytest.raises(HeadFormatError, match="not an npz"):
        load_head(stored_head.__getitem__)
    assert not marker.exists()


def test_metadata_pointing_to_a_pickle_is_refused(stored_head, tmp_path):
    marker = tmp_path / "pwned"
    stored_head["head.pkl"] = pickle.dumps(_Payload(marker))
    stored_head[META_NAME] = json.dumps({"format": "pickle", "path": "head.pkl"}).encode()
    asked: list[str] = []

    def read(name: str) -> bytes:
        asked.append(name)
        return stored_head[name]

    with pytest.raises(HeadFormatError, match="only plain arrays"):
        load_head(read)
    assert asked == [META_NAME]
    assert not marker.exists()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda meta: meta.update(classes=["only-one"]),
        lambda meta: meta.update(link="eval"),
        lambda meta: meta.update(n_features_in=3),
        lambda meta: meta.update(format_version=99),
    ],
    ids=["classes", "link", "width", "version"],
)
def test_tampered_metadata_is_refused(tamper, stored_head):
    meta = json.loads(stored_head[META_NAME])
    tamper(meta)
    stored_head[META_NAME] = json.dumps(meta).encode()
    with pytest.raises(HeadFormatError):
        load_head(stored_head.__getitem__)


def test_garbage_is_refused(stored_head):
    stored_head[META_NAME] = b"\xff not json"
    with pytest.raises(HeadFormatError, match="JSON"):
        load_head(stored_head.__getitem__)


def test_truncated_npz_is_refused(stored_head):
    stored_head[ARRAYS_NAME] = stored_head[ARRAYS_NAME][:200]
    with pytest.raises(HeadFormatError):
        load_head(stored_head.__getitem__)


def test_loading_and_predicting_need_numpy_only(digits, tmp_path):
    """A serving process loads heads without importing scikit-learn (1.2 s, ~95 MB here)."""
    import subprocess
    import sys

    X, y = digits
    save_head(*export_head(_fit("logistic", X, y)), lambda name, data: (tmp_path / name).write_bytes(data))
    np.save(tmp_path / "x.npy", X[:3])
    code = (
        "import sys, numpy as np\n"
        "from classifiers.persistence import load_head\n"
        f"head = load_head(lambda name: open({str(tmp_path)!r} + '/' + name, 'rb').read())\n"
        f"head.top_k(np.load({str(tmp_path / 'x.npy')!r}), 2)\n"
        "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules, 'heavy import'\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
