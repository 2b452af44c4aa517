"""/metrics stays bounded whatever callers send: unknown HTTP methods share one label value; it is open by
default and asks for a valid API key of any scope when ``TLSERVE_METRICS_REQUIRE_KEY`` is set."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import auth


def _series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith("tlserve_http")}


def test_unknown_methods_are_one_label_value_and_metrics_do_not_grow(db: str) -> None:
    with TestClient(create_app()) as client:
        client.request("M00000X", "/v1/datasets")
        client.get("/metrics")
        before = _series(client.get("/metrics").text)
        for i in range(1, 50):
            assert client.request(f"M{i:05d}X", "/v1/datasets").status_code in (401, 404, 405)
        after = client.get("/metrics").text
    assert "M00042X" not in after and 'method="other"' in after
    assert _series(after) == before  # the counts grow in place; no new series


def test_metrics_are_open_by_default(db: str) -> None:
    with TestClient(create_app()) as client:
        resp = client.get("/metrics")
    assert resp.status_code == 200 and "tlserve_http_requests_total" in resp.text


def test_metrics_can_require_a_key_of_any_scope(api_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.db import session_scope
    from core.settings import reset_settings
    from core.tenancy import create_api_key

    with session_scope() as s:
        predict_key = create_api_key(s, "acme", scope="predict")
    monkeypatch.setenv("TLSERVE_METRICS_REQUIRE_KEY", "true")
    reset_settings()
    with TestClient(create_app()) as client:
        for headers in ({}, auth("tls_abc_wrong"), {"Authorization": api_key}):
            resp = client.get("/metrics", headers=headers)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", resp.text
        for key in (api_key, predict_key):
            resp = client.get("/metrics", headers=auth(key))
            assert resp.status_code == 200 and "tlserve_http_requests_total" in resp.text


def test_requests_are_counted_by_route_template_and_status(db: str) -> None:
    from prometheus_client import REGISTRY

    def count(route: str, status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        return REGISTRY.get_sample_value("tlserve_http_requests_total", labels) or 0.0

    before = count("/v1/datasets/{dataset_id}", "401"), count("/healthz", "200")
    with TestClient(create_app()) as client:
        assert client.get("/v1/datasets/ds_nothing").status_code == 401
        assert client.get("/healthz").status_code == 200
    assert (count("/v1/datasets/{dataset_id}", "401"), count("/healthz", "200")) == (before[0] + 1, before[1] + 1)
