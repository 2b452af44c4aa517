"""Backbone comparison: extract (cached) and fit a linear probe per backbone on the same dataset version
and splits, and rank them — so a user picks the backbone that transfers best to their own data."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from core import datasets as ds
from core.db import session_scope
from core.errors import InvalidInput
from core.jobs import JobContext, create_job
from core.tables import Job
from workers import features as feats

MAX_BACKBONES = 12


def plan_compare(
    session: Session,
    tenant_id: str,
    *,
    dataset_id: str,
    backbones: list[str],
    head: dict[str, Any],
    version: int | None,
    allow_random_weights: bool,
    seed: int,
) -> Job:
    from workers.models import head_config

    names = list(dict.fromkeys(backbones))
    if not 1 <= len(names) <= MAX_BACKBONES:
        raise InvalidInput(f"give 1 to {MAX_BACKBONES} distinct backbones, got {len(names)}")
    for name in names:
        feats.resolve_backbone(name, allow_random_weights, tenant_id)
    head_config(head, seed)
    dv = ds.ready_version(session, tenant_id, dataset_id, version)
    params = {
        "dataset_id": dataset_id,
        "version": dv.version,
        "backbones": names,
        "head": head,
        "allow_random_weights": allow_random_weights,
        "seed": seed,
    }
    return create_job(
        session, tenant_id=tenant_id, kind="compare", resource_type="dataset", resource_id=dataset_id, params=params
    )


def compare_job(ctx: JobContext) -> dict[str, Any]:
    from workers.models import fit_and_score, head_config

    p = ctx.params
    cfg = head_config(p["head"], p["seed"])
    board: list[dict[str, Any]] = []
    for i, name in enumerate(p["backbones"]):
        ctx.check_cancelled(force=True)
        ctx.progress("compare", i, len(p["backbones"]), force=True, backbone=name)
        start = time.perf_counter()
        fs, forwarded = feats.ensure_features(
            ctx, p["dataset_id"], name, version=p["version"], allow_random_weights=p["allow_random_weights"]
        )
        extract_s = time.perf_counter() - start
        with session_scope() as s:
            data = feats.labelled_features(s, fs)
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
