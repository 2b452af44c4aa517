"""A reader of server-sent events (the ``text/event-stream`` format) over lines from httpx."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class Event:
    event: str
    data: str
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[Event | None]:
    """Events in order; ``None`` for each comment line (keep-alives), so a caller can check a deadline."""
    name, data, event_id = "", [], None
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield Event(name or "message", "\n".join(data), event_id)
            name, data = "", []
            continue
        if line.startswith(":"):
            yield None
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    if data:
        yield Event(name or "message", "\n".join(data), event_id)
