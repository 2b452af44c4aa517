"""The typed contract: every route documents its success response in ``/openapi.json``, request bodies
document each field with its bounds, and a bad value is refused with a 422 that names the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.helpers import auth


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app().openapi()


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else node


def test_every_route_documents_its_success_response(schema) -> None:
    missing = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            ok = [code for code in op["responses"] if code.startswith("2")]
            assert ok, f"{method.upper()} {path} documents no success response"
            code = ok[0]
            if code == "204":
                continue
            content = op["responses"][code].get("content", {})
            json_schema = content.get("application/json", {}).get("schema")
            if json_schema == {} or (not json_schema and "application/json" in content and len(content) == 1):
                missing.append(f"{method.upper()} {path}")
            if not content:
                missing.append(f"{method.upper()} {path}")
    # /healthz and /metrics answer plain documents of their own format
    assert sorted(set(missing) - {"GET /healthz", "GET /metrics"}) == []


def test_head_and_finetune_bodies_document_every_field_with_bounds(schema) -> None:
    head = schema["components"]["schemas"]["HeadBody"]["properties"]
    assert {"type", "C", "max_iter", "cv_folds", "C_grid", "pca_components"} <= set(head)
    assert head["max_iter"]["anyOf"][0]["maximum"] == 100_000
    assert head["C_grid"]["anyOf"][0]["maxItems"] == 50
    finetune = schema["components"]["schemas"]["FinetuneBody"]["properties"]
    assert {"epochs", "unfreeze", "optimizer", "lr", "batch_size", "augment"} <= set(finetune)
    assert finetune["epochs"]["anyOf"][0]["maximum"] == 1000
    request = schema["components"]["schemas"]["ModelRequest"]["properties"]
    assert request["head"]["$ref"].endswith("/HeadBody") and request["finetune"]["$ref"].endswith("/FinetuneBody")


def test_out_of_bounds_knobs_are_refused_with_the_field_named(db: str, api_key: str) -> None:
    with TestClient(create_app()) as client:
        for body, field in [
            ({"head": {"max_iter": 10**9}}, "max_iter"),
            ({"head": {"C_grid": [1.0] * 100_000}}, "C_grid"),
            ({"head": {"cv_folds": 10**6}}, "cv_folds"),
            ({"strategy": "finetune", "finetune": {"epochs": 10_000}}, "epochs"),
        ]:
            resp = client.post("/v1/models", headers=auth(api_key), json={"dataset_id": "ds_x", **body})
            assert resp.status_code == 422, resp.text
            assert field in resp.json()["error"]["message"]
