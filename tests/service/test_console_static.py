"""The web console's files as the API serves them: at /ui/, no build step, strict headers, nothing missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

UI = Path(__file__).resolve().parents[2] / "service" / "static" / "ui"


@pytest.fixture
def client(data_dir: Path) -> TestClient:
    from service.app import create_app

    with TestClient(create_app()) as c:
        yield c


def test_ui_redirects_to_the_index_with_a_strict_content_security_policy(client: TestClient) -> None:
    first = client.get("/ui", follow_redirects=False)
    assert first.status_code in (301, 302, 307, 308) and first.headers["location"].endswith("/ui/")
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "img-src 'self' blob:" in csp
    assert 'type="module"' in page.text
    assert not re.search(r"""(src|href)=["']https?://""", page.text), "no file may come from another site"


def test_every_module_the_console_imports_is_served_as_javascript(client: TestClient) -> None:
    """Follow the import graph from main.js: a missing or misnamed file would break the page at run time."""
    todo, seen = ["js/main.js"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        resp = client.get(f"/ui/{path}")
        assert resp.status_code == 200, path
        assert "javascript" in resp.headers["content-type"], (path, resp.headers["content-type"])
        code = resp.text.replace('"http://www.w3.org/2000/svg"', "")  # a namespace name, not a download
        assert "http://" not in code and "https://" not in code, f"{path} names another site"
        base = path.rsplit("/", 1)[0]
        for spec in re.findall(r"""^import .* from "(\.[^"]+)";$""", resp.text, re.M):
            parts = f"{base}/{spec}".split("/")
            out: list[str] = []
            for part in parts:
                if part == "..":
                    out.pop()
                elif part != ".":
                    out.append(part)
            todo.append("/".join(out))
    on_disk = {p.relative_to(UI).as_posix() for p in UI.rglob("*.js")}
    assert seen == on_disk, f"files nothing imports: {on_disk - seen}"
    assert client.get("/ui/app.css").headers["content-type"].startswith("text/css")


def test_the_api_key_never_goes_into_a_url_or_lasting_storage() -> None:
    source = "\n".join(p.read_text() for p in UI.rglob("*.js"))
    assert "localStorage" not in source and "document.cookie" not in source
    assert "sessionStorage" in source and "Authorization" in source
    assert "EventSource" not in source  # it cannot send headers; the event stream is read with fetch
    assert "innerHTML" not in source  # text from the API is never parsed as markup
