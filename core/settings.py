"""All configuration, read from the environment (``TLSERVE_*``) through one cached ``get_settings()``."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "tlserve"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TLSERVE_", extra="ignore")

    # Where things live
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None  # default: SQLite file under data_dir
    broker_url: str = "redis://127.0.0.1:6379/0"  # "memory://" runs jobs inside the API process
    weights_dir: Path | None = None  # torchvision-named checkpoint files for non-packaged backbones
    storage_url: str | None = None  # default: local folder data_dir/artifacts

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
    visibility_timeout_s: int = 6 * 3600  # above the longest job; redelivery after a worker dies
    broker_restore_interval_s: int = 10  # how often a worker looks for messages of dead workers
    job_event_poll_s: float = 0.25

    # Compute
    torch_threads: int = 1
    ort_threads: int = 1
    decode_threads: int = 1
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | mps
    model_cache_size: int = 4
    batch_max_size: int = 32  # predict micro-batching: most images in one merged forward pass
    batch_window_s: float = 0.0  # > 0: an idle model waits this long for more requests before running
    inference_threads: int = 1  # threads running forward passes in the API process

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'tlserve.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def broker_is_memory(self) -> bool:
        return self.broker_url.startswith("memory://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment)."""
    get_settings.cache_clear()
