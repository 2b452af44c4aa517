"""GitHub-style list pagination for routes: ``?limit=N&cursor=C`` in, the body a JSON array, the next
page's URL in an RFC 8288 ``Link: <…>; rel="next"`` header (absent on the last page)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Response

from core.pagination import DEFAULT_LIMIT, MAX_LIMIT


@dataclass
class PageParams:
    limit: int
    cursor: str | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items per page")] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="from the previous page's Link header")] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor or None)


PageDep = Annotated[PageParams, Depends(page_params)]


def next_link(request: Request, next_cursor: str | None) -> str | None:
    """The ``Link`` header value for the page after this one: the same URL and filters, the new cursor."""
    if next_cursor is None:
        return None
    url = request.url.include_query_params(cursor=next_cursor)
    return f'<{url}>; rel="next"'


def set_link_header(request: Request, response: Response, next_cursor: str | None) -> None:
    link = next_link(request, next_cursor)
    if link is not None:
        response.headers["Link"] = link
