"""SQLAlchemy 2 models. Every row that belongs to a tenant carries ``tenant_id`` (directly or through its
parent) and every query in the service is scoped by it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tn"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # This tenant's quotas; NULL: the settings' defaults (max_running_jobs_per_tenant, max_stored_bytes_per_tenant)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key is stored as its SHA-256; the ``prefix`` (public part) finds the row."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    # ``all``: every route; ``predict``: the prediction routes only (see core.tenancy.SCOPES)
    scope: Mapped[str] = mapped_column(String(16), default="all", server_default="all")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    tenant: Mapped[Tenant] = relationship()


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset",
        order_by="DatasetVersion.version",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class DatasetVersion(Base):
    """An immutable snapshot of a dataset's images, labels and splits. Every change makes a new one."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("dv"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="processing")  # processing | ready | failed
    job_id: Mapped[str | None] = mapped_column(String(40))
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    classes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    splits: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rejected: Mapped[list[Any]] = mapped_column(default=list)
    duplicates: Mapped[list[Any]] = mapped_column(default=list)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # val_fraction, test_fraction, seed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class Image(Base):
    """One image of one dataset version. The bytes live in storage, once per dataset, by content hash."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("version_id", "sha256"), Index("ix_images_version_split", "version_id", "split"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("img"))
    version_id: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(500))
    label: Mapped[str] = mapped_column(String(100))
    split: Mapped[str] = mapped_column(String(8))  # train | val | test
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(10))
    storage_key: Mapped[str] = mapped_column(String(300))  # original bytes as uploaded
    canonical_key: Mapped[str] = mapped_column(String(300))  # decoded, oriented, RGB, resized copy (PNG)


class Job(Base):
    """The source of truth for long work. Celery messages carry only ``Job.id``."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(12), default="queued", index=True)
    queue: Mapped[str] = mapped_column(String(20), default="cpu")
    resource_type: Mapped[str | None] = mapped_column(String(30))
    resource_id: Mapped[str | None] = mapped_column(String(40), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The lease of the worker running it (renewed by a heartbeat), and when a message was last sent.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    release_requested: Mapped[bool] = mapped_column(Boolean, default=False)  # drain: give it back to the queue
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class FeatureSet(Base):
    """Pooled backbone features of every image of one dataset version, stored in chunks. ``cache_key`` is a
    digest of (image hashes, backbone, weights digest, preprocessing, layer, engine): equal keys mean equal
    features, so rows with the same key share their stored chunks (``storage_prefix``) and a second
    request is served from storage with no forward pass. The row itself belongs to one version: its
    labels and splits, and its lifetime, are that version's."""

    __tablename__ = "feature_sets"
    __table_args__ = (
        UniqueConstraint("tenant_id", "version_id", "cache_key", name="uq_feature_sets_version_key"),
        Index("ix_feature_sets_tenant_key", "tenant_id", "cache_key"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("fs"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    cache_key: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    version_id: Mapped[str] = mapped_column(String(40))
    backbone: Mapped[str] = mapped_column(String(60))
    weights_digest: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(60))
    status: Mapped[str] = mapped_column(String(12), default="queued")  # queued | running | ready | failed
    job_id: Mapped[str | None] = mapped_column(String(40))
    num_images: Mapped[int] = mapped_column(Integer, default=0)
    feature_dim: Mapped[int] = mapped_column(Integer, default=0)
    storage_prefix: Mapped[str] = mapped_column(String(300))
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)  # seconds, images/s, chunks
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Model(Base):
    """A trained classifier: a linear probe on cached features or a fine-tuned network."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    version_id: Mapped[str] = mapped_column(String(40))
    backbone: Mapped[str] = mapped_column(String(60))
    strategy: Mapped[str] = mapped_column(String(20))  # linear_probe | finetune
    status: Mapped[str] = mapped_column(String(12), default="queued")
    job_id: Mapped[str | None] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    labels: Mapped[list[Any]] = mapped_column(default=list)
    storage_prefix: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Alias(Base):
    """A stable name for a model, per tenant: applications predict through it, and repointing it to a
    retrained model changes no application code."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("al"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
