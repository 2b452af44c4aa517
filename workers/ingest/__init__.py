"""Dataset ingestion, the pure part: read a hostile upload under limits, decode and normalise its images,
and split them. No database, no queue, no disk: the ingest task composes these functions and stores the
results.

Every function here assumes its input was crafted by an attacker. Whatever is refused is reported as a
``Rejection(file, reason)`` whose reason says, in words a person understands, what was wrong and what the
limit is; only an upload that cannot be used at all raises ``InvalidInput``.
"""

from workers.ingest.archive import ArchiveContents, ArchiveLimits, read_archive
from workers.ingest.images import (
    DecodedImage,
    ImageLimits,
    ImageRejected,
    canonical_bytes,
    canonical_copy,
    decode_image,
    decoding,
)
from workers.ingest.labels import clean_label, labels_for_files
from workers.ingest.records import Member, Rejection
from workers.ingest.stratify import stratified_split

__all__ = [
    "ArchiveContents",
    "ArchiveLimits",
    "DecodedImage",
    "ImageLimits",
    "ImageRejected",
    "Member",
    "Rejection",
    "canonical_bytes",
    "canonical_copy",
    "clean_label",
    "decode_image",
    "decoding",
    "labels_for_files",
    "read_archive",
    "stratified_split",
]
