"""Job bodies, one module per kind: each takes a ``JobContext`` and returns the job's metrics.

``body(kind)`` imports a kind's body when it is first needed, so a process that only sends jobs (the API)
never loads them."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

BODIES = {
    "ingest": "workers.jobs.ingest:ingest_job",
    "extract": "workers.jobs.extract:extract_job",
    "extract_shard": "workers.jobs.extract:extract_shard_job",
    "fit": "workers.jobs.fit:fit_job",
    "compare": "workers.jobs.compare:compare_job",
    "finetune": "workers.jobs.finetune:finetune_job",
    "predict_batch": "workers.jobs.batch_predict:batch_predict_job",
}


def body(kind: str) -> Callable[[Any], dict[str, Any] | None]:
    module, _, name = BODIES[kind].partition(":")
    return getattr(import_module(module), name)
