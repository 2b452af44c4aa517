"""Similarity search over a feature set: the k nearest images of a query image (or of an image of the set),
and the near-duplicates that leak from the training split into the test split.

Vectors are L2-normalised, so inner product is cosine similarity and the distance reported is
``1 - cosine`` (0 for the same direction, 2 for opposite ones). The index is FAISS: exact
(``IndexFlatIP``) up to ``EXACT_UP_TO`` vectors, and HNSW above (``benchmarks/bench_search.py`` measures
its recall@10 against exact search and the other candidate library). Labels, splits and file names come
from the feature set's own dataset version. An index is built once per feature set, stored beside its
chunks, and kept in the process's bounded cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core import datasets as ds
from core import features as fsets
from core.db import session_scope
from core.errors import Conflict, InvalidInput, NotFound
from core.status import ResourceStatus
from core.storage import get_storage
from workers.runtime.cache import LRUCache

# Exact search up to this many vectors; HNSW above. benchmarks/results/search.json: one query at a time,
# exact search over 10k vectors is far slower than FAISS HNSW at efSearch 128, whose recall@10 is ~1, and
# FAISS answered single queries faster than usearch at the same recall.
EXACT_UP_TO = 2_000
HNSW_M = 32  # graph degree
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
INDEX_VERSION = 1  # bump when the stored index's layout or parameters change
MAX_K = 100
# A test image is reported as a near-duplicate of its nearest training image when (1) their cosine
# distance is at most LEAK_THRESHOLD and (2) that image is distinctly nearer than the next training image:
# d1 <= LEAK_RATIO x d2 (Lowe's ratio test). An absolute distance alone cannot tell: a 28 px Fashion-MNIST
# photo saved again as a JPEG lands 0.01-0.06 from its original with the next image at 0.12 or more, but
# distinct 8 x 8 digits also sit 0.03-0.05 apart, among many others as near (tests/service/
# test_similarity_api.py, tests/integration/test_console_browser.py).
LEAK_THRESHOLD = 0.1
LEAK_RATIO = 0.5


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def build_index(vectors: np.ndarray, exact: bool | None = None) -> Any:
    """A FAISS inner-product index over normalised ``vectors`` (exact for small sets unless told)."""
    import faiss

    dim = vectors.shape[1]
    if exact if exact is not None else len(vectors) <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    index.add(vectors)
    return index


@dataclass
class SearchIndex:
    """One feature set's index and what each row is (ids, files, labels, splits of its own version)."""

    feature_set_id: str
    backbone: str  # what computes a query image's features: the set's own backbone and weights
    weights_digest: str
    index: Any
    vectors: np.ndarray  # normalised, for queries by image id and the leakage report
    image_ids: np.ndarray
    files: np.ndarray
    labels: np.ndarray
    splits: np.ndarray

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine distances, row positions), each ``len(queries) × k``; rows padded with -1 when the set is
        smaller than ``k``."""
        k = min(k, len(self.image_ids))
        similarity, rows = self.index.search(normalise(queries), k)
        return 1.0 - similarity, rows

    def neighbours(self, distances: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "image_id": str(self.image_ids[r]),
                "file": str(self.files[r]),
                "label": str(self.labels[r]),
                "split": str(self.splits[r]),
                "distance": round(float(max(d, 0.0)), 6),
            }
            for d, r in zip(distances, rows, strict=True)
            if r >= 0
        ]

    def row_of(self, image_id: str) -> int:
        found = np.flatnonzero(self.image_ids == image_id)
        if not len(found):
            raise NotFound(f"no image {image_id!r} in feature set {self.feature_set_id!r}")
        return int(found[0])

    def leaks(self, threshold: float, ratio: float, limit: int) -> list[dict[str, Any]]:
        """Test images whose nearest training image is within ``threshold`` and nearer than ``ratio`` times
        the next training image (see ``LEAK_RATIO``), closest first; exact search."""
        import faiss

        train, test = np.flatnonzero(self.splits == "train"), np.flatnonzero(self.splits == "test")
        if not len(train) or not len(test):
            return []
        flat = faiss.IndexFlatIP(self.vectors.shape[1])
        flat.add(self.vectors[train])
        similarity, nearest = flat.search(self.vectors[test], min(2, len(train)))
        distances = np.maximum(1.0 - similarity, 0.0)
        distance = distances[:, 0]
        distinct = distance <= ratio * distances[:, 1] if distances.shape[1] > 1 else np.ones(len(test), bool)
        order = np.argsort(distance, kind="stable")
        out = []
        for i in order[(distance[order] <= threshold) & distinct[order]][:limit]:
            t, n = int(test[i]), int(train[nearest[i, 0]])
            out.append(
                {
                    "test": self.neighbours(np.array([0.0]), np.array([t]))[0],
                    "train": self.neighbours(np.array([distance[i]]), np.array([n]))[0],
                    "distance": round(float(distance[i]), 6),
                }
            )
        return out


def _index_key(prefix: str, exact: bool) -> str:
    return f"{prefix}/index-v{INDEX_VERSION}-{'flat' if exact else 'hnsw'}.faiss"


def _load(tenant_id: str, feature_set_id: str) -> SearchIndex:
    import faiss

    with session_scope() as s:
        fs = fsets.get_feature_set(s, tenant_id, feature_set_id)
        if fs.status != ResourceStatus.READY:
            raise Conflict(f"feature set {feature_set_id!r} is {fs.status}; search it when its job has succeeded")
        data = fsets.labelled_features(s, fs, fs.version_id)
        files = {img.id: img.filename for img in ds.version_images(s, fs.version_id)}
        prefix, backbone, digest = fs.storage_prefix, fs.backbone, fs.weights_digest
    vectors = normalise(data["features"])
    if not len(vectors):
        raise Conflict(f"feature set {feature_set_id!r} has no images to search")
    exact = len(vectors) <= EXACT_UP_TO
    storage, key = get_storage(), _index_key(prefix, exact)
    if storage.exists(key):
        index = faiss.deserialize_index(np.frombuffer(storage.get_bytes(key), dtype=np.uint8))
    else:
        index = build_index(vectors, exact)
        storage.put_bytes(key, faiss.serialize_index(index).tobytes())
    if index.ntotal != len(vectors):  # the version's images changed under a stored index: build anew
        index = build_index(vectors, exact)
        storage.put_bytes(key, faiss.serialize_index(index).tobytes())
    ids = data["image_ids"]
    return SearchIndex(
        feature_set_id,
        backbone,
        digest,
        index,
        vectors,
        ids,
        np.array([files.get(str(i), "") for i in ids]),
        data["labels"],
        data["splits"],
    )


_INDEXES = LRUCache()


def get_index(tenant_id: str, feature_set_id: str) -> SearchIndex:
    """The feature set's index, checked against its row on every call: a deleted set answers 404 at once in
    every process, and a set whose rows changed gets a new index (the row's state is part of the key)."""
    with session_scope() as s:
        fs = fsets.get_feature_set(s, tenant_id, feature_set_id)
        if fs.status != ResourceStatus.READY:
            raise Conflict(f"feature set {feature_set_id!r} is {fs.status}; search it when its job has succeeded")
        state = (fs.version_id, fs.storage_prefix, fs.num_images)
    return _INDEXES.get_or_create((tenant_id, feature_set_id, state), lambda: _load(tenant_id, feature_set_id))


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def search_images(
    tenant_id: str, feature_set_id: str, files: list[tuple[str, bytes]], image_id: str | None, k: int
) -> list[dict[str, Any]]:
    """One result per query: each uploaded file (its neighbours, or why it could not be read), or the image
    ``image_id`` of the set (its neighbours other than itself)."""
    from workers.runtime.inference import decode_files, per_file
    from workers.runtime.serving import feature_engine

    check_k(k)
    if bool(files) == bool(image_id):
        raise InvalidInput("send either images in 'files' or the 'image_id' of an image of the set, not both")
    idx = get_index(tenant_id, feature_set_id)
    if image_id:
        row = idx.row_of(image_id)
        distances, rows = idx.search(idx.vectors[row : row + 1], k + 1)
        keep = rows[0] != row
        return [{"image_id": image_id, "neighbours": idx.neighbours(distances[0][keep][:k], rows[0][keep][:k])}]
    engine = feature_engine(idx.backbone, tenant_id, idx.weights_digest)
    batch = decode_files(files, engine.spec)
    found: list[dict[str, Any]] = []
    if batch.pixels is not None:
        distances, rows = idx.search(engine.features(batch.pixels), k)
        found = [{"neighbours": idx.neighbours(d, r)} for d, r in zip(distances, rows, strict=True)]
    return per_file(batch, found)
