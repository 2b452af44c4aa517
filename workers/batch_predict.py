"""Batch prediction for large sets: a zip of images in (read under the same limits as dataset uploads),
a job that predicts them in batches, results out as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from core.jobs import JobContext, create_job
from core.settings import get_settings
from core.storage import get_storage
from core.tables import Job
from workers.ingest.archive import ArchiveLimits, read_archive

BATCH = 64


def results_key(prefix: str, job_id: str, fmt: str) -> str:
    return f"{prefix}/predictions/{job_id}.{fmt}"


def plan_batch(session: Session, tenant_id: str, model_id: str, top_k: int) -> tuple[Job, str]:
    """A queued batch-prediction job and the storage key its upload goes to (the caller stores it)."""
    from workers.models import get_model

    model = get_model(session, tenant_id, model_id)
    if model.status != "ready":
        raise Conflict(f"model {model_id!r} is {model.status}; predict once its training job has succeeded")
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind="predict_batch",
        queue=model.params.get("queue", "cpu"),
        resource_type="model",
        resource_id=model_id,
    )
    upload = f"tenants/{tenant_id}/uploads/{job.id}/images.zip"
    job.params = {"model_id": model_id, "upload_key": upload, "top_k": top_k}
    return job, upload


def _flush(predictor: Any, pending: list[tuple[str, bytes]], top_k: int, rows: list[dict[str, Any]]) -> None:
    from workers.inference import decode_files, per_file
    from workers.predict import top_k_rows

    batch = decode_files(pending, predictor.spec)
    preds = (
        top_k_rows(predictor.labels, predictor.predict_proba(batch.pixels), top_k) if batch.pixels is not None else []
    )
    rows.extend(per_file(batch, preds))
    pending.clear()


def batch_predict_job(ctx: JobContext) -> dict[str, Any]:
    from core.db import session_scope
    from workers.models import get_model
    from workers.predict import PREDICTORS

    p = ctx.params
    with session_scope() as s:
        prefix = get_model(s, ctx.tenant_id, p["model_id"]).storage_prefix
    predictor = PREDICTORS.get(ctx.tenant_id, p["model_id"])
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
                _flush(predictor, pending, p["top_k"], rows)
                ctx.progress("predict", i + 1, contents.expected)
        if pending:
            _flush(predictor, pending, p["top_k"], rows)
        rows.extend({"file": r.file, "error": r.reason} for r in contents.rejected)
    storage.put_bytes(results_key(prefix, ctx.job_id, "json"), json.dumps({"predictions": rows}).encode())
    storage.put_bytes(results_key(prefix, ctx.job_id, "csv"), _csv(rows).encode())
    storage.delete_prefix(f"tenants/{ctx.tenant_id}/uploads/{ctx.job_id}")
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
