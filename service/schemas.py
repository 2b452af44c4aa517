"""The typed REST contract: every request body and every response, so ``/openapi.json`` documents each
field and FastAPI checks each response against it. Serialisation of rows lives here (``from_row``), once."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.tables import Alias, Dataset, DatasetVersion, FeatureSet, Image, Job, Model

Queue = Literal["cpu", "gpu"]
VersionNumber = Annotated[int, Field(ge=1, le=2**31 - 1, description="dataset version; default: the latest ready one")]
GridC = Annotated[float, Field(gt=0, le=1e6)]
# Above this many classes a model's confusion matrix and per-class table stay out of list responses.
LIST_DETAIL_MAX_CLASSES = 100
_UNFREEZE = re.compile(r"^\s*(?i:head|all|gradual|last:[0-9]{1,3})\s*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------------------------------


class HeadBody(Strict):
    """A linear head's hyperparameters (``linear_probe``); omitted fields keep their defaults."""

    type: Literal["logistic", "linear_svm", "ridge", "sgd"] | None = None
    C: float | None = Field(None, gt=0, le=1e6, description="inverse regularisation; omitted: cross-validated search")
    class_weight: Literal["balanced"] | None = None
    standardize: bool | None = None
    pca_whiten: bool | None = None
    pca_components: int | float | None = Field(
        None, gt=0, le=8192, description="a count (1 to 8192) or a fraction of the variance to keep (0 to 1)"
    )
    max_iter: int | None = Field(None, ge=1, le=100_000)
    tol: float | None = Field(None, gt=0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    cv_folds: int | None = Field(None, ge=2, le=20)
    C_grid: list[GridC] | None = Field(None, min_length=1, max_length=50, description="each value in (0, 1e6]")
    search: Literal["auto", "cv", "holdout"] | None = None
    n_jobs: int | None = Field(None, ge=1, le=64)

    @field_validator("pca_components")
    @classmethod
    def _count_or_fraction(cls, value: int | float | None) -> int | float | None:
        if isinstance(value, float) and not value.is_integer() and value >= 1:
            raise ValueError("pca_components must be a whole count (1 to 8192) or a fraction below 1")
        return int(value) if isinstance(value, float) and value >= 1 else value

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude_none=True)


class FinetuneBody(Strict):
    """Fine-tuning hyperparameters (``finetune``); omitted fields keep the defaults of DESIGN.md."""

    epochs: int | None = Field(None, ge=1, le=1000)
    unfreeze: str | None = Field(
        None,
        max_length=16,
        json_schema_extra={"pattern": _UNFREEZE.pattern},
        description="head, all, gradual or last:N (N from 0 to 999 stages)",
    )
    gradual_every: int | None = Field(None, ge=1, le=1000)
    optimizer: str | None = Field(None, max_length=16)
    lr: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] | None = Field(
        None,
        description='the head\'s learning rate (lower stages get discriminative fractions of it), or "auto": a '
        "learning-rate range test (~100 steps) picks it with fastai's valley rule; default 1e-4 when the head starts "
        "as the linear probe (head_init probe), 1e-3 from a random head",
    )
    momentum: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0, le=1)
    dropout: float | None = Field(None, ge=0, lt=1)
    batch_size: int | None = Field(None, ge=1, le=4096)
    early_stopping_patience: int | None = Field(None, ge=0, le=1000)
    augment: list[Annotated[str, Field(max_length=16)]] | None = Field(None, max_length=16)
    label_smoothing: float | None = Field(None, ge=0, lt=1)
    max_norm: float | None = Field(None, gt=0, le=1e6)
    schedule: str | None = Field(None, max_length=16)
    warmup: float | None = Field(None, ge=0, lt=1, description="fraction of the steps of linear warm-up [0.1]")
    head_init: Literal["probe", "random"] | None = Field(
        None, description='"probe" [default]: the head starts as the linear probe of the train split (LP-FT)'
    )
    refit_probe: bool | None = Field(
        None, description="when the probe (epoch 0) stays the best, refit it on train + val as a linear probe is [true]"
    )
    refit: bool | None = Field(
        None,
        description="when a trained epoch is the best, train again on train + val for that many epochs, from the "
        "probe of train + val [true; false halves the time of a fine-tune that keeps its last epochs]",
    )
    init: str | None = Field(None, max_length=16)
    discriminative_lr_decay: float | None = Field(
        None, gt=0, le=1, description="rate factor per stage below the head; default: the bottom stage gets lr/100"
    )
    bn_eval: bool | None = Field(None, description="BatchNorm in eval mode while training; default: unless 'all'")
    monitor: Literal["val_loss", "val_acc"] | None = Field(
        None, description="picks the best epoch (the probe's epoch 0 included) and drives early stopping"
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    data_path: str | None = Field(None, max_length=16)

    @field_validator("unfreeze")
    @classmethod
    def _unfreeze_choice(cls, value: str | None) -> str | None:
        if value is not None and not _UNFREEZE.match(value):
            raise ValueError("unfreeze must be head, all, gradual or last:N with N from 0 to 999")
        return value

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude_none=True)


class FeaturesRequest(Strict):
    dataset_id: str = Field(max_length=64)
    backbone: str = Field("efficientnet_lite0", max_length=128)
    version: VersionNumber | None = None
    allow_random_weights: bool = False
    queue: Queue = "cpu"


class ModelRequest(Strict):
    dataset_id: str = Field(max_length=64)
    backbone: str = Field("efficientnet_lite0", max_length=128)
    strategy: Literal["linear_probe", "finetune"] = "linear_probe"
    head: HeadBody = Field(default_factory=HeadBody)
    finetune: FinetuneBody = Field(default_factory=FinetuneBody)
    version: VersionNumber | None = None
    allow_random_weights: bool = False
    queue: Queue = "cpu"
    seed: int = Field(0, ge=0, le=2**32 - 1)


class CompareRequest(Strict):
    dataset_id: str = Field(max_length=64)
    backbones: list[Annotated[str, Field(max_length=128)]] = Field(min_length=1, max_length=12)
    head: HeadBody = Field(default_factory=HeadBody)
    version: VersionNumber | None = None
    allow_random_weights: bool = False
    seed: int = Field(0, ge=0, le=2**32 - 1)


class AliasRequest(Strict):
    model_id: str = Field(max_length=64, description="a ready model of yours")


# --- responses ------------------------------------------------------------------------------------------------


class JobRef(BaseModel):
    """What a request that started a job answers (202): follow ``job_id`` at ``/v1/jobs/{job_id}``."""

    job_id: str
    status: str


class Created(JobRef):
    id: str


class DatasetCreated(Created):
    version: int


class VersionSummary(BaseModel):
    version: int
    status: str
    num_images: int


class DatasetOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    version: int
    status: str
    num_images: int
    classes: dict[str, int]
    splits: dict[str, int]
    rejected: list[dict[str, Any]]
    unlabelled: int = Field(0, description="images in no split and no class, waiting for a label (the pool)")
    version_id: str | None = None
    job_id: str | None = None
    duplicates: list[dict[str, Any]] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    versions: list[VersionSummary] = Field(default_factory=list)

    @classmethod
    def from_row(cls, dataset: Dataset, version: DatasetVersion | None) -> DatasetOut:
        base = {"id": dataset.id, "name": dataset.name, "created_at": dataset.created_at}
        if version is None:
            return cls(**base, version=0, status="empty", num_images=0, classes={}, splits={}, rejected=[])
        return cls(
            **base,
            version=version.version,
            version_id=version.id,
            status=version.status,
            job_id=version.job_id,
            num_images=version.num_images,
            classes=version.classes,
            splits=version.splits,
            unlabelled=version.num_images - sum(version.splits.get(k, 0) for k in ("train", "val", "test")),
            rejected=version.rejected,
            duplicates=version.duplicates,
            params={k: v for k, v in version.params.items() if k in ("val_fraction", "test_fraction", "seed")},
            error=version.params.get("error"),
            versions=[
                VersionSummary(version=v.version, status=v.status, num_images=v.num_images) for v in dataset.versions
            ],
        )


class LabelsIn(BaseModel):
    labels: dict[str, str] = Field(description="image id → label, for unlabelled images of the dataset")
    split: Literal["train", "stratified"] = Field(
        "train",
        description="where the labelled images go: train (they were picked, not sampled, so they stay out of "
        "val and test), or stratified (whichever split their class lacks)",
    )


class ImageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    file: str = Field(validation_alias="filename", description="path of the file in the upload")
    label: str
    split: str = Field(description="train, val or test; pool for an unlabelled image (its label is empty)")
    width: int
    height: int
    format: str

    @classmethod
    def of(cls, image: Image) -> ImageOut:
        return cls.model_validate(image, from_attributes=True)


class ResourceRef(BaseModel):
    type: str
    id: str


class JobOut(BaseModel):
    id: str
    kind: str
    status: str
    queue: str
    resource: ResourceRef | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    error: dict[str, Any] | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            queue=job.queue,
            resource=ResourceRef(type=job.resource_type, id=job.resource_id) if job.resource_id else None,
            progress=job.progress,
            metrics=job.metrics,
            error=job.error,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class FeatureSetOut(BaseModel):
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
    created_at: datetime
    cached: bool | None = Field(None, description="on a request: true when served from the cache")

    @classmethod
    def from_row(cls, fs: FeatureSet, cached: bool | None = None) -> FeatureSetOut:
        return cls(
            id=fs.id,
            status=fs.status,
            dataset_id=fs.dataset_id,
            version_id=fs.version_id,
            backbone=fs.backbone,
            weights_digest=fs.weights_digest,
            engine=fs.engine,
            num_images=fs.num_images,
            feature_dim=fs.feature_dim,
            job_id=fs.job_id,
            cache_key=fs.cache_key,
            stats=fs.stats or {},
            created_at=fs.created_at,
            cached=cached,
        )


class ModelOut(BaseModel):
    id: str
    status: str
    strategy: str
    dataset_id: str
    backbone: str
    job_id: str | None
    labels: list[str] | None
    params: dict[str, Any]
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    omitted: list[str] | None = Field(
        None,
        description=f"in a list, for a model of over {LIST_DETAIL_MAX_CLASSES} classes: the metrics left out "
        "(the confusion matrix, the per-class table); GET /v1/models/{id} has them",
    )

    @classmethod
    def summary(cls, model: Model) -> ModelOut:
        """A list entry: a model of many classes without its class-by-class tables (a 2,000-class confusion
        matrix alone is megabytes)."""
        out = cls.from_row(model)
        big = [k for k in ("confusion_matrix", "per_class") if k in out.metrics]
        if len(out.metrics.get("labels") or model.labels or []) > LIST_DETAIL_MAX_CLASSES and big:
            out.metrics = {k: v for k, v in out.metrics.items() if k not in big}
            out.omitted = big
        return out

    @classmethod
    def from_row(cls, model: Model) -> ModelOut:
        return cls(
            id=model.id,
            status=model.status,
            strategy=model.strategy,
            dataset_id=model.dataset_id,
            backbone=model.backbone,
            job_id=model.job_id,
            labels=model.labels,
            params={k: v for k, v in model.params.items() if k != "queue"},
            lineage=model.lineage,
            metrics=model.metrics,
            created_at=model.created_at,
        )


class Ranked(BaseModel):
    label: str
    score: float


class FilePrediction(BaseModel):
    """One uploaded file: its prediction, or why it could not be read."""

    file: str
    label: str | None = None
    score: float | None = None
    top_k: list[Ranked] | None = None
    error: str | None = None


class PredictOut(BaseModel):
    model_id: str
    predictions: list[FilePrediction]
    tta: list[str] | None = Field(
        None, description="the test-time augmentations averaged into each prediction (absent without)"
    )


class Suggestion(BaseModel):
    image_id: str = Field(description="an unlabelled image of the model's dataset version; label it by this id")
    file: str
    label: str = Field(description="the probe's predicted label")
    score: float = Field(description="the probe's probability of that label")
    value: float = Field(
        description="the ranking value: margin (top-1 minus top-2 probability, smallest first), entropy (nats, "
        "largest first) or coreset (distance of the unit-length features to the nearest labelled or picked image)"
    )


class SuggestionsOut(BaseModel):
    model_id: str
    dataset_id: str
    dataset_version: int
    strategy: str
    k: int
    pool_size: int = Field(description="unlabelled images ranked (those labelled in a later version left out)")
    suggestions: list[Suggestion]


class Neighbour(BaseModel):
    image_id: str
    file: str
    label: str = Field(description="from the feature set's own dataset version")
    split: str
    distance: float = Field(description="cosine distance of the features: 0 same direction, 2 opposite")


class SearchResult(BaseModel):
    file: str | None = Field(None, description="the uploaded query file")
    image_id: str | None = Field(None, description="the query image of the set (itself left out)")
    neighbours: list[Neighbour] | None = None
    error: str | None = None


class SearchOut(BaseModel):
    feature_set_id: str
    k: int
    results: list[SearchResult]


class NearDuplicate(BaseModel):
    test: Neighbour
    train: Neighbour
    distance: float


class NearDuplicatesOut(BaseModel):
    """Test images whose nearest training image is within ``threshold``: train/test leakage."""

    feature_set_id: str
    threshold: float
    ratio: float
    pairs: list[NearDuplicate]


class ClassifyOut(BaseModel):
    backbone: str
    predictions: list[FilePrediction]


class FileEmbedding(BaseModel):
    file: str
    embedding: list[float] | None = None
    error: str | None = None


class EmbedOut(BaseModel):
    backbone: str
    feature_dim: int
    weights_digest: str
    embeddings: list[FileEmbedding]


class BackboneCard(BaseModel):
    name: str
    feature_dim: int
    input_size: int
    weights: str | None
    license: str | None
    pretrained: bool
    feature_layer: str
    family: str
    base: str | None = Field(None, description="fine-tuned models: the registered backbone underneath")
    dataset_id: str | None = Field(None, description="fine-tuned models: the dataset they were trained on")


class AliasOut(BaseModel):
    name: str
    model_id: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, alias: Alias) -> AliasOut:
        return cls(name=alias.name, model_id=alias.model_id, created_at=alias.created_at, updated_at=alias.updated_at)


class UsageLimits(BaseModel):
    rate_limit: str = Field(description="requests per tenant, `limits` syntax (e.g. `200/second;6000/minute`)")
    max_running_jobs: int = Field(description="jobs running at once; more wait `queued`")
    max_stored_bytes: int = Field(description="stored image bytes; an upload past it is 403 `quota_exceeded`")
    max_event_streams: int = Field(description="open job event streams per API process")
    predict_queue_size: int = Field(description="images waiting per model before 503 `overloaded`")
    predict_deadline_s: float = Field(description="longest wait of a prediction before 503 `overloaded`")


class UsageOut(BaseModel):
    """A tenant's counts (from the database) beside its limits."""

    tenant_id: str
    stored_bytes: int
    datasets: int
    feature_sets: int
    models: int
    jobs_running: int
    jobs_queued: int
    event_streams: int = Field(description="open in the API process that answered")
    limits: UsageLimits
