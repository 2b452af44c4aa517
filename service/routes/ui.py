"""The web console: static files (plain HTML, CSS and JavaScript modules, no build step) served at ``/ui/``.

The page keeps the API key in ``sessionStorage`` and sends it as a header; a strict Content-Security-Policy
(scripts and styles from this origin only, images from blob URLs) keeps injected markup from running."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).resolve().parents[1] / "static" / "ui"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


class ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-cache"  # revalidate (ETag) so an upgrade shows at once
        return response


router = APIRouter()
router.add_api_route("/ui", lambda: RedirectResponse("/ui/"), include_in_schema=False)
router.mount("/ui", ConsoleFiles(directory=UI_DIR, html=True), name="ui")
