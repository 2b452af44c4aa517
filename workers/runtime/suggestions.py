"""Which unlabelled images to label next, for a linear probe: its dataset version's pool, ranked on the
features already cached for the probe (the extraction covers every image of a version, the pool too), so
no forward pass runs. The math is ``classifiers.active``; this module only gathers its inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from classifiers.active import Strategy, rank
from classifiers.persistence import load_head
from core import datasets as ds
from core import features as fsets
from core import models as mdl
from core.db import session_scope
from core.errors import Conflict
from core.status import ResourceStatus
from core.storage import get_storage
from core.tables import FeatureSet

MAX_K = 1000


def suggest(tenant_id: str, model_id: str, strategy: Strategy, k: int) -> dict[str, Any]:
    """The ``k`` images of the model's dataset-version pool to label first (those labelled in a later
    version left out), best first, with the probe's predicted label and score and the ranking value."""
    with session_scope() as s:
        model = mdl.get_model(s, tenant_id, model_id)
        if model.status != ResourceStatus.READY:
            raise Conflict(
                f"model {model_id!r} is {model.status}; ask for suggestions once its training job has succeeded"
            )
        if model.strategy != "linear_probe":
            raise Conflict(
                f"model {model_id!r} is fine-tuned; suggestions rank on a linear probe's cached features: train "
                f'a linear probe on dataset {model.dataset_id!r} ("strategy": "linear_probe") and ask it'
            )
        fs = s.get(FeatureSet, model.lineage.get("feature_set_id", ""))
        if fs is None or fs.status != ResourceStatus.READY:
            raise Conflict(f"the features model {model_id!r} was fitted on are gone (its dataset was deleted)")
        s.expunge(fs)
        rows = ds.version_images(s, model.version_id)
        pool = {r.sha256: (r.id, r.filename) for r in rows if r.split == ds.POOL}
        train = {r.sha256 for r in rows if r.split == "train"}
        latest = ds.latest_ready_version(s, model.dataset_id)
        if latest is not None and latest.id != model.version_id and pool:
            still = {r.sha256 for r in ds.version_images(s, latest.id, ds.POOL)}
            pool = {sha: v for sha, v in pool.items() if sha in still}  # labelled since: not suggested again
        prefix, version = model.storage_prefix, int(model.lineage.get("dataset_version", 0))
    features, hashes = fsets.load_features(fs)
    at = {str(h): i for i, h in enumerate(hashes)}
    if missing := [sha for sha in pool if sha not in at]:
        raise Conflict(
            f"{len(missing)} unlabelled images have no cached features; extract the version's features again"
        )
    order = sorted(pool, key=lambda sha: pool[sha][1])  # by file name: ties rank in a stable, visible order
    X_pool = features[[at[sha] for sha in order]] if order else np.zeros((0, features.shape[1]), np.float32)
    storage = get_storage()
    head = load_head(lambda name: storage.get_bytes(f"{prefix}/{name}"))
    probs = head.predict_proba(X_pool) if len(X_pool) else np.zeros((0, len(head.classes_)))
    X_train = features[[at[sha] for sha in train if sha in at]] if strategy == "coreset" else None
    picked, values = rank(strategy, k, probs=probs, pool_features=X_pool, labelled_features=X_train)
    labels = [str(c) for c in head.classes_]
    out = []
    for i, value in zip(picked.tolist(), values.tolist(), strict=True):
        best = int(np.argmax(probs[i]))
        image_id, filename = pool[order[i]]
        item = {"image_id": image_id, "file": filename, "label": labels[best], "score": float(probs[i, best])}
        out.append(item | {"value": round(float(value), 6)})
    return {
        "model_id": model_id,
        "dataset_id": fs.dataset_id,
        "dataset_version": version,
        "strategy": strategy,
        "k": k,
        "pool_size": len(order),
        "suggestions": out,
    }
