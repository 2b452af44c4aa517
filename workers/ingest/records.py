"""The two things ingestion hands back: an accepted file with its label, and a refused one with the reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """A candidate image taken from an upload: its path in the archive, its class label, its bytes."""

    name: str
    label: str
    data: bytes

    def __repr__(self) -> str:  # never dump the bytes into a log
        return f"Member(name={self.name!r}, label={self.label!r}, data=<{len(self.data)} bytes>)"


@dataclass(frozen=True)
class Rejection:
    """A file that was not ingested. ``reason`` is shown to the person who uploaded it."""

    file: str
    reason: str
