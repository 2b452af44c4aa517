"""Batch prediction for large sets: a zip of images in (read under the same limits as dataset uploads),
a job that predicts them in batches, results out as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from core import models as mdl
from core.db import session_scope
from core.errors import NotFound
from core.jobs import JobContext
from core.keys import predictions_key, upload_prefix
from core.settings import get_settings
from core.storage import get_storage
from workers.ingest.archive import ArchiveLimits, read_archive
from workers.runtime.inference import decode_files, per_file
from workers.runtime.serving import PREDICTORS, augment, merge, top_k_rows

BATCH = 64


def _flush(
    predictor: Any, pending: list[tuple[str, bytes]], top_k: int, tta: list[str], rows: list[dict[str, Any]]
) -> None:
    batch = decode_files(pending, predictor.spec)
    preds = []
    if batch.pixels is not None:
        preds = top_k_rows(predictor.labels, merge(predictor.predict_proba(augment(batch.pixels, tta)), tta), top_k)
    rows.extend(per_file(batch, preds))
    pending.clear()


def batch_predict_job(ctx: JobContext) -> dict[str, Any]:
    p = ctx.params
    with session_scope() as s:
        prefix = mdl.get_model(s, ctx.tenant_id, p["model_id"]).storage_prefix
    predictor = PREDICTORS.get(ctx.tenant_id, p["model_id"])
    tta = p.get("tta") or []  # jobs queued before test-time augmentation have none
    storage = get_storage()
    rows: list[dict[str, Any]] = []
    pending: list[tuple[str, bytes]] = []
    if not storage.exists(p["upload_key"]):
        raise NotFound("the uploaded archive is gone")
    with storage.open(p["upload_key"]) as fh:
        contents = read_archive(fh, ArchiveLimits.from_settings(get_settings()), unlabelled=True)
        for i, member in enumerate(contents.members):
            pending.append((member.name, member.data))
            if len(pending) >= BATCH:
                ctx.check_cancelled()
                _flush(predictor, pending, p["top_k"], tta, rows)
                ctx.progress("predict", i + 1, contents.expected)
        if pending:
            _flush(predictor, pending, p["top_k"], tta, rows)
        rows.extend({"file": r.file, "error": r.reason} for r in contents.rejected)
    storage.put_bytes(predictions_key(prefix, ctx.job_id, "json"), json.dumps({"predictions": rows}).encode())
    storage.put_bytes(predictions_key(prefix, ctx.job_id, "csv"), _csv(rows).encode())
    storage.delete_prefix(upload_prefix(ctx.tenant_id, ctx.job_id))
    errors = sum(1 for r in rows if "error" in r)
    return {"predicted": len(rows) - errors, "errors": errors}


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "label", "score", "top_k", "error"])
    for r in rows:
        top = ";".join(f"{t['label']}:{t['score']:.6f}" for t in r.get("top_k", []))
        writer.writerow(
            [r["file"], r.get("label", ""), f"{r['score']:.6f}" if "score" in r else "", top, r.get("error", "")]
        )
    return buf.getvalue()
