"""The resources the API returns, as TypedDicts: plain dicts at run time (JSON as the service sent it),
typed for editors and checkers. Fields beyond these are kept; the service may add more."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class ErrorBody(TypedDict, total=False):
    code: str
    message: str


class Progress(TypedDict, total=False):
    stage: str
    done: int
    total: int


class Job(TypedDict, total=False):
    id: str
    kind: str
    status: JobStatus
    queue: str
    resource: dict[str, str] | None
    progress: Progress
    metrics: dict[str, Any]
    error: ErrorBody | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None


class Accepted(TypedDict, total=False):
    """What a request that starts a job answers: the new resource's ``id`` (when it makes one) and its job."""

    id: str
    job_id: str
    status: str
    version: int


class Rejected(TypedDict):
    file: str
    reason: str


class Dataset(TypedDict, total=False):
    id: str
    name: str
    version: int
    version_id: str
    status: str
    job_id: str
    num_images: int
    classes: dict[str, int]
    splits: dict[str, int]
    rejected: list[Rejected]
    duplicates: list[dict[str, Any]]
    params: dict[str, Any]
    error: ErrorBody | None
    versions: list[dict[str, Any]]
    created_at: str


class FeatureSet(TypedDict, total=False):
    id: str
    status: str
    dataset_id: str
    version_id: str
    backbone: str
    weights_digest: str
    engine: str
    num_images: int
    feature_dim: int
    job_id: str | None
    cache_key: str
    stats: dict[str, Any]
    cached: bool
    created_at: str


class ClassMetrics(TypedDict):
    precision: float
    recall: float
    f1: float
    support: int


class ModelMetrics(TypedDict, total=False):
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    labels: list[str]
    train_accuracy: float


class Model(TypedDict, total=False):
    id: str
    status: str
    strategy: Literal["linear_probe", "finetune"]
    dataset_id: str
    backbone: str
    job_id: str
    labels: list[str]
    params: dict[str, Any]
    lineage: dict[str, Any]
    metrics: ModelMetrics
    created_at: str


class Alias(TypedDict):
    """A stable name for a model: applications predict through it, and repointing it needs no code change."""

    name: str
    model_id: str
    created_at: str
    updated_at: str


class Backbone(TypedDict, total=False):
    name: str
    feature_dim: int
    input_size: int
    weights: str
    license: str
    pretrained: bool


class ScoredLabel(TypedDict):
    label: str
    score: float


class Prediction(TypedDict, total=False):
    """One file's result: ``label``/``score``/``top_k``, or ``error`` when the file could not be read."""

    file: str
    label: str
    score: float
    top_k: list[ScoredLabel]
    error: str
