"""Every status a row can have, in one place. ``StrEnum`` members compare equal to their strings, so rows
written before these names existed read the same."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class VersionStatus(StrEnum):
    """A dataset version; ``EMPTY`` is only reported for a dataset that has no version at all."""

    EMPTY = "empty"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ResourceStatus(StrEnum):
    """A feature set or a model."""

    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ResourceType(StrEnum):
    """What a job's ``resource_type`` names."""

    DATASET = "dataset"
    FEATURES = "features"
    MODEL = "model"


class JobKind(StrEnum):
    INGEST = "ingest"
    EXTRACT = "extract"
    EXTRACT_SHARD = "extract_shard"  # one part of a large extraction (a few thousand images)
    FIT = "fit"
    FINETUNE = "finetune"
    COMPARE = "compare"
    PREDICT_BATCH = "predict_batch"


TERMINAL_JOB = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_JOB = (JobStatus.QUEUED, JobStatus.RUNNING)
