"""Backbone comparison: extract (cached) and fit a linear probe per backbone on the same dataset version
and splits, and rank them — so a user picks the backbone that transfers best to their own data."""

from __future__ import annotations

import time
from typing import Any

from core import datasets as ds
from core import features as fsets
from core.db import session_scope
from core.jobs import JobContext
from workers.jobs.extract import ensure_features
from workers.jobs.fit import fit_and_score
from workers.plan import head_config


def compare_job(ctx: JobContext) -> dict[str, Any]:
    p = ctx.params
    cfg = head_config(p["head"], p["seed"])
    board: list[dict[str, Any]] = []
    for i, name in enumerate(p["backbones"]):
        ctx.check_cancelled(force=True)
        ctx.progress("compare", i, len(p["backbones"]), force=True, backbone=name)
        start = time.perf_counter()
        fs, forwarded = ensure_features(
            ctx, p["dataset_id"], name, version=p["version"], allow_random_weights=p["allow_random_weights"]
        )
        extract_s = time.perf_counter() - start
        with session_scope() as s:
            version_id = p.get("version_id") or ds.ready_version(s, ctx.tenant_id, p["dataset_id"], p["version"]).id
            data = fsets.labelled_features(s, fs, version_id)  # this dataset's labels, whoever made the cache
        extract_stats = dict(fs.stats)
        result, scores = fit_and_score(data, cfg)
        board.append(
            {
                "backbone": name,
                "test_accuracy": scores.get("accuracy"),
                "macro_f1": scores.get("macro_f1"),
                "train_accuracy": scores["train_accuracy"],
                "feature_dim": int(data["features"].shape[1]),
                "extraction_seconds": round(extract_s if forwarded else extract_stats.get("seconds", 0.0), 3),
                "extraction_images_per_s": extract_stats.get("images_per_s"),
                "features_from_cache": forwarded == 0,
                "fit_seconds": round(result.fit_seconds, 3),
                "chosen": result.params,
                "feature_set_id": fs.id,
            }
        )
    board.sort(key=lambda r: (-(r["test_accuracy"] or 0.0), -(r["macro_f1"] or 0.0)))
    for rank, row in enumerate(board, 1):
        row["rank"] = rank
    ctx.progress("compare", len(board), len(board), force=True)
    return {"leaderboard": board, "best": board[0]["backbone"] if board else None}
