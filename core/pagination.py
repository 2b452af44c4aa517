"""Keyset pagination for any list query: an opaque cursor holds the sort key of the last row served, and
the next page is the rows after it in the same order. Unlike OFFSET it stays fast deep into a list and
does not skip or repeat rows when rows are added meanwhile. ``sorted_page`` pages a list held in memory
(the backbone registry) the same way, with the same cursors."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import DateTime, Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from core.errors import BadRequest

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    raw = json.dumps(plain, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> list[Any]:
    """The key values in a cursor made by ``encode_cursor``; a cursor that was not is a 400."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("invalid cursor: follow the URL in the Link header for the next page") from exc
    if not isinstance(values, list) or len(values) != width or not all(isinstance(v, str | int) for v in values):
        raise BadRequest("invalid cursor: follow the URL in the Link header for the next page")
    return values


def _from_cursor(key: InstrumentedAttribute[Any], value: Any) -> Any:
    if isinstance(key.type, DateTime):
        try:
            return datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise BadRequest("invalid cursor: follow the URL in the Link header for the next page") from exc
    return value


def keyset_page(
    session: Session,
    stmt: Select[tuple[T]],
    keys: Sequence[InstrumentedAttribute[Any]],
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    *,
    descending: bool = False,
) -> Page[T]:
    """One page of ``stmt``'s rows ordered by ``keys`` (ascending, or all descending; the last key must be
    unique, e.g. the id). Keys may be strings, integers or datetimes.

    Fetches one row more than asked to learn whether another page exists without counting."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if cursor:
        after = [_from_cursor(k, v) for k, v in zip(keys, decode_cursor(cursor, len(keys)), strict=True)]
        left, right = (tuple_(*keys), tuple_(*after)) if len(keys) > 1 else (keys[0], after[0])
        stmt = stmt.where(left < right if descending else left > right)
    order = [k.desc() for k in keys] if descending else list(keys)
    rows = list(session.scalars(stmt.order_by(*order).limit(limit + 1)))
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, encode_cursor([getattr(rows[-1], k.key) for k in keys]))


def sorted_page(
    items: Iterable[T], key: Callable[[T], str], limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[T]:
    """One page of ``items`` sorted by ``key`` (unique strings, e.g. a name): the items after the cursor's key,
    like ``keyset_page`` on a list that is not a table."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    rows = sorted(items, key=key)
    if cursor:
        (after,) = decode_cursor(cursor, 1)
        if not isinstance(after, str):
            raise BadRequest("invalid cursor: follow the URL in the Link header for the next page")
        rows = [r for r in rows if key(r) > after]
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, encode_cursor([key(rows[-1])]))
