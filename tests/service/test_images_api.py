"""Browsing a dataset's images over the API: keyset pages with a Link header, thumbnails, tenant scoping."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.sample_data import encode_png, iter_labelled_pngs
from tests.helpers import auth, upload_dataset, wait_for_job, zip_bytes


@pytest.fixture
def client(db: str) -> TestClient:
    from service.app import create_app

    with TestClient(create_app()) as c:
        yield c


def _photos() -> dict[str, bytes]:
    """Real photographs larger than any thumbnail (scikit-image's sample data), as PNG files."""
    from skimage import data

    return {
        "cat/chelsea.png": encode_png(data.chelsea()),
        "person/astronaut.png": encode_png(data.astronaut()),
        "cup/coffee.png": encode_png(data.coffee()),
    }


def _dataset(client: TestClient, key: str, entries: dict[str, bytes], name: str = "imgs") -> dict[str, Any]:
    body = upload_dataset(client, key, zip_bytes(entries), name=name, val_fraction=0.2, test_fraction=0.2).json()
    job = wait_for_job(client, body["job_id"], key)
    assert job["status"] == "succeeded", job
    return client.get(f"/v1/datasets/{body['id']}", headers=auth(key)).json()


def _next_url(resp: Any) -> str | None:
    link = resp.headers.get("link")
    if link is None:
        return None
    match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert match, f"not an RFC 8288 next link: {link!r}"
    return match.group(1)


def test_pages_follow_the_link_header_and_cover_every_image_once(client: TestClient, api_key: str) -> None:
    entries = {f"{label}/{name}": data for name, label, data in iter_labelled_pngs("digits", 5)}
    ds = _dataset(client, api_key, entries)
    assert ds["num_images"] == 50

    seen: list[dict[str, Any]] = []
    url: str | None = f"/v1/datasets/{ds['id']}/images?limit=7"
    pages = 0
    while url is not None:
        resp = client.get(url, headers=auth(api_key))
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert isinstance(page, list) and 1 <= len(page) <= 7
        seen.extend(page)
        pages += 1
        url = _next_url(resp)
        if url is not None:
            assert "limit=7" in url and "cursor=" in url
    assert pages == 8  # 7 full pages and one of 1
    assert len({i["id"] for i in seen}) == 50
    assert sorted(i["file"] for i in seen) == sorted(entries)
    assert [i["file"] for i in seen] == sorted(i["file"] for i in seen)  # ordered by file name across pages
    for item in seen:
        assert item["label"] == item["file"].split("/")[0]
        assert item["split"] in ("train", "val", "test")
    assert {s: sum(i["split"] == s for i in seen) for s in ("train", "val", "test")} == ds["splits"]


def test_filters_keep_their_value_in_the_next_link(client: TestClient, api_key: str) -> None:
    entries = {f"{label}/{name}": data for name, label, data in iter_labelled_pngs("digits", 6)}
    ds = _dataset(client, api_key, entries)
    first = client.get(f"/v1/datasets/{ds['id']}/images", params={"label": "3", "limit": 4}, headers=auth(api_key))
    assert [i["label"] for i in first.json()] == ["3"] * 4
    nxt = _next_url(first)
    assert nxt is not None and "label=3" in nxt
    rest = client.get(nxt, headers=auth(api_key))
    assert [i["label"] for i in rest.json()] == ["3"] * 2
    assert _next_url(rest) is None
    train = client.get(f"/v1/datasets/{ds['id']}/images", params={"split": "train"}, headers=auth(api_key)).json()
    assert len(train) == ds["splits"]["train"] and {i["split"] for i in train} == {"train"}


def test_bad_page_parameters_are_4xx_that_say_what_to_fix(client: TestClient, api_key: str) -> None:
    ds = _dataset(client, api_key, _photos())
    url = f"/v1/datasets/{ds['id']}/images"
    bad_cursor = client.get(url, params={"cursor": "not-a-cursor"}, headers=auth(api_key))
    assert bad_cursor.status_code == 400
    assert "Link header" in bad_cursor.json()["error"]["message"]
    assert client.get(url, params={"limit": 0}, headers=auth(api_key)).status_code == 422
    assert client.get(url, params={"limit": 100000}, headers=auth(api_key)).status_code == 422
    assert client.get(url, params={"split": "holdout"}, headers=auth(api_key)).status_code == 422
    assert client.get(url).status_code == 401


def test_thumbnail_is_a_small_jpeg_of_the_image(client: TestClient, api_key: str) -> None:
    ds = _dataset(client, api_key, _photos())
    items = client.get(f"/v1/datasets/{ds['id']}/images", headers=auth(api_key)).json()
    by_file = {i["file"]: i for i in items}
    assert set(by_file) == set(_photos())
    for file, item in by_file.items():
        url = f"/v1/datasets/{ds['id']}/images/{item['id']}/thumbnail"
        resp = client.get(url, headers=auth(api_key))
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(resp.content))
        thumb.verify()
        thumb = Image.open(io.BytesIO(resp.content))
        assert thumb.format == "JPEG" and max(thumb.size) == 128
        original = Image.open(io.BytesIO(_photos()[file]))
        # the aspect ratio is kept, and the picture is the original's, scaled down
        assert abs(thumb.width / thumb.height - original.width / original.height) < 0.03
        small = np.asarray(original.convert("RGB").resize(thumb.size, Image.Resampling.LANCZOS), dtype=float)
        assert np.abs(np.asarray(thumb.convert("RGB"), dtype=float) - small).mean() < 12
        again = client.get(url, headers=auth(api_key))  # served from the storage cache
        assert again.content == resp.content
        big = client.get(url, params={"size": 256}, headers=auth(api_key))
        assert max(Image.open(io.BytesIO(big.content)).size) == 256
    bad_size = client.get(url, params={"size": 5000}, headers=auth(api_key))
    assert bad_size.status_code == 422 and "size must be one of" in bad_size.json()["error"]["message"]


def test_another_tenants_images_are_404_like_missing_ones(client: TestClient, api_key: str, other_api_key: str) -> None:
    ds = _dataset(client, api_key, _photos())
    theirs = _dataset(client, other_api_key, _photos(), name="theirs")
    mine = client.get(f"/v1/datasets/{ds['id']}/images", headers=auth(api_key)).json()
    their_image = client.get(f"/v1/datasets/{theirs['id']}/images", headers=auth(other_api_key)).json()[0]

    assert client.get(f"/v1/datasets/{ds['id']}/images", headers=auth(other_api_key)).status_code == 404
    thumb = f"/v1/datasets/{ds['id']}/images/{mine[0]['id']}/thumbnail"
    assert client.get(thumb, headers=auth(other_api_key)).status_code == 404
    # an image id of another tenant's dataset under one's own dataset id: also 404, same as a made-up id
    crossed = client.get(f"/v1/datasets/{ds['id']}/images/{their_image['id']}/thumbnail", headers=auth(api_key))
    made_up = client.get(f"/v1/datasets/{ds['id']}/images/img_doesnotexist/thumbnail", headers=auth(api_key))
    assert crossed.status_code == made_up.status_code == 404
    assert crossed.json()["error"]["code"] == "not_found"
    assert client.get(thumb, headers=auth(api_key)).status_code == 200


def test_a_cursor_of_the_wrong_shape_is_refused(client: TestClient, api_key: str) -> None:
    from core.pagination import encode_cursor

    ds = _dataset(client, api_key, _photos())
    for cursor in (encode_cursor(["only-one-key"]), encode_cursor([{"a": 1}, "x"]), "e30"):  # e30 = "{}"
        resp = client.get(f"/v1/datasets/{ds['id']}/images", params={"cursor": cursor}, headers=auth(api_key))
        assert resp.status_code == 400, (cursor, resp.text)
