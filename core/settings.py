"""All configuration, read from the environment (``TLSERVE_*``) through one cached ``get_settings()``."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_RATE = re.compile(r"\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day|month|year)s?")


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "tlserve"


def _default_graph_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tlserve" / "graphs"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TLSERVE_", extra="ignore")

    # Where things live
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None  # default: SQLite file under data_dir
    broker_url: str = "redis://127.0.0.1:6379/0"  # "memory://" runs jobs inside the API process
    weights_dir: Path | None = None  # torchvision-named checkpoint files for non-packaged backbones
    # Exported backbone graphs shared by every data folder and process of this installation (like torch
    # hub's cache), keyed by weights digest, preprocessing and library versions; "" turns it off.
    graph_cache_dir: Path | None = Field(default_factory=_default_graph_cache_dir)
    warm_backbones: tuple[str, ...] = ("efficientnet_lite0",)  # exported by `tlserve warm` and at worker start
    # Artifact storage: "file:///folder" (default: data_dir/artifacts) or "s3://bucket/prefix" (s3fs; the
    # standard AWS_* variables give the credentials, s3_endpoint_url points at MinIO or another S3 store).
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    # Local copies of remote objects for libraries that need a path (bounded, least recently used evicted).
    cache_dir: Path | None = None  # default: data_dir/cache
    cache_max_bytes: int = Field(2 * 1024**3, ge=0)

    # Upload and ingestion limits (hostile input)
    max_upload_bytes: int = 512 * 1024 * 1024
    max_archive_members: int = 100_000
    max_uncompressed_bytes: int = 4 * 1024 * 1024 * 1024
    max_member_bytes: int = 64 * 1024 * 1024
    max_compression_ratio: float = 200.0
    max_image_pixels: int = 40_000_000
    max_form_fields: int = 1000
    max_files_per_request: int = 1000
    max_sync_files: int = 64  # images per synchronous embed/classify/predict request
    canonical_short_side: int = 320  # shorter side of the stored resized copy (never upscaled)

    # Jobs
    max_attempts: int = 3
    # A running job holds a lease on its row, renewed by a heartbeat; the reaper (a thread in every worker,
    # and in the API when jobs run in-process) re-sends jobs whose lease expired and queued jobs that have
    # no message in the broker. A killed worker's job runs again within about lease_s + reaper_interval_s.
    lease_s: float = Field(30.0, ge=2)
    heartbeat_s: float = Field(10.0, gt=0)
    reaper_interval_s: float = Field(10.0, gt=0)
    queued_grace_s: float = Field(30.0, ge=0)  # a queued job is re-sent only after this long without a message
    # The sweeper (``tlserve sweep``, and a thread in every worker's main process every sweep_interval_s; 0
    # turns the thread off) deletes stored objects that no live row needs; never one younger than sweep_grace_s.
    sweep_interval_s: float = Field(3600.0, ge=0)
    sweep_grace_s: float = Field(3600.0, ge=0)
    # Time limits per job (soft: the job fails with "time_limit"; hard: the process is killed), both below
    # the broker's visibility timeout, which is no longer how jobs are recovered.
    job_soft_time_limit_s: int = Field(5 * 3600, ge=10)
    job_time_limit_s: int = Field(5 * 3600 + 300, ge=20)
    visibility_timeout_s: int = 6 * 3600
    # Soft time limit per job kind (seconds), each at most job_soft_time_limit_s (which kinds not named
    # here get): a linear probe or an ingestion that runs for hours is stuck, a fine-tune may not be.
    job_kind_soft_time_limit_s: dict[str, int] = Field(
        default_factory=lambda: {
            "ingest": 3600,
            "extract": 3 * 3600,
            "fit": 3600,
            "compare": 3 * 3600,
            "predict_batch": 3600,
        }
    )
    broker_restore_interval_s: int = 10  # how often a worker looks for messages of dead workers
    publish_timeout_s: float = Field(3.0, gt=0)  # an API request gives up sending to a down broker after this
    job_event_poll_s: float = 0.25

    # Compute
    torch_threads: int = 1
    ort_threads: int = 1
    decode_threads: int = 1
    ingest_threads: int = Field(2, ge=1, le=64)  # an ingestion job decodes and re-encodes on this many threads
    batch_size: int = 32
    # Fine-tuning reads and decodes its images a batch at a time on this many threads, a few batches ahead,
    # and keeps at most this much of them decoded in memory (re-decoding the rest every epoch).
    finetune_decode_threads: int = Field(2, ge=1, le=64)
    finetune_decoded_cache_mb: int = Field(1024, ge=0)
    device: str = "auto"  # auto | cpu | cuda | mps
    model_cache_size: int = 4
    # A served model is re-checked against its row (deleted? replaced?) when last confirmed longer ago than
    # this: how soon a model deleted through one API process stops serving in the others.
    serving_revalidate_s: float = Field(1.0, ge=0)
    # A valid API key is remembered this long per API process (no database query per request): how soon a
    # revoked key stops working. 0: every request asks the database.
    auth_cache_s: float = Field(1.0, ge=0)
    batch_max_size: int = 32  # predict micro-batching: most images in one merged forward pass
    batch_window_s: float = 0.0  # > 0: an idle model waits this long for more requests before running
    inference_threads: int = 1  # threads running forward passes in the API process
    # An extraction of more images than this is split into shards of about this many images, each a job of
    # its own that any free worker runs; the feature set is published when every shard has landed. 0: never.
    extract_shard_images: int = Field(4096, ge=0)

    # Load: every default is far above what one user does, so only abuse or overload meets them.
    # Predictions waiting in a model's micro-batch queue (images); beyond it, or after waiting longer than
    # the deadline, a request is answered 503 "overloaded" with Retry-After at once.
    batch_queue_size: int = Field(512, ge=1)
    batch_deadline_s: float = Field(10.0, gt=0)
    # Requests per tenant ("limits" syntax, several separated by ";"; empty: no limit), counted in Redis
    # (default: the broker's Redis; in memory with the in-process broker) so they hold across API processes.
    rate_limit: str = "200/second;6000/minute"
    rate_limit_storage_url: str | None = None
    # Event streams (GET /v1/jobs/{id}/events): open at once per tenant and API process, the longest a stream
    # lives (the client reconnects), and how often a comment keeps an idle connection alive.
    max_event_streams_per_tenant: int = Field(20, ge=1)
    event_stream_max_s: float = Field(3600.0, gt=0)
    event_stream_keepalive_s: float = Field(15.0, gt=0)
    # Quotas counted in the database: jobs running at once per tenant (more wait queued) and stored bytes.
    max_running_jobs_per_tenant: int = Field(8, ge=1)
    max_stored_bytes_per_tenant: int = Field(100 * 1024**3, ge=0)
    # /metrics asks for a valid API key of any scope (401 otherwise) when true; open by default, for a
    # Prometheus that scrapes inside the private network.
    metrics_require_key: bool = False
    # uvicorn's own connection cap, a last guard only (it answers a bare-text 503, outside the error contract).
    api_limit_concurrency: int = Field(2048, ge=1)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        for part in filter(str.strip, re.split(r"[;,|]", value)):  # the ``limits`` notation, checked at start
            if not _RATE.fullmatch(part.strip().lower()):
                raise ValueError(f"cannot read the rate limit {part.strip()!r}: write e.g. '200/second;6000/minute'")
        return value

    @model_validator(mode="after")
    def _limits_in_order(self) -> Settings:
        if not self.heartbeat_s < self.lease_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be below lease_s ({self.lease_s})")
        if not self.job_soft_time_limit_s < self.job_time_limit_s < self.visibility_timeout_s:
            raise ValueError(
                "job_soft_time_limit_s < job_time_limit_s < visibility_timeout_s must hold "
                f"(got {self.job_soft_time_limit_s}, {self.job_time_limit_s}, {self.visibility_timeout_s})"
            )
        bad = {k: v for k, v in self.job_kind_soft_time_limit_s.items() if v < 10}
        if bad:
            raise ValueError(f"job_kind_soft_time_limit_s must be at least 10 s for each kind (got {bad})")
        return self

    def soft_time_limit_s(self, kind: str) -> int:
        """A job kind's soft time limit: its own when set, never above the global one."""
        return min(self.job_kind_soft_time_limit_s.get(kind, self.job_soft_time_limit_s), self.job_soft_time_limit_s)

    def hard_time_limit_s(self, kind: str) -> int:
        """The kill after the soft limit, as far after it as the global limits are apart."""
        return self.soft_time_limit_s(kind) + (self.job_time_limit_s - self.job_soft_time_limit_s)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'tlserve.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @property
    def storage_is_remote(self) -> bool:
        return (
            bool(self.storage_url)
            and "://" in str(self.storage_url)
            and not str(self.storage_url).startswith("file://")
        )

    @property
    def broker_is_memory(self) -> bool:
        return self.broker_url.startswith("memory://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
