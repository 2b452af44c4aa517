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


@pytest.mark.parametrize(
    ("path", "body", "field", "allowed"),
    [
        ("/v1/models", {"head": {"C_grid": [1.0, 1e9]}}, "C_grid", "1000000"),
        ("/v1/models", {"head": {"C_grid": [0.0]}}, "C_grid", "greater than 0"),
        ("/v1/models", {"head": {"pca_components": 5.5}}, "pca_components", "fraction below 1"),
        ("/v1/models", {"head": {"pca_components": 10**6}}, "pca_components", "8192"),
        ("/v1/models", {"head": {"max_iter": 10**9}}, "max_iter", "100000"),
        (
            "/v1/models",
            {"strategy": "finetune", "finetune": {"unfreeze": "last:99999"}},
            "unfreeze",
            "last:N with N from 0 to 999",
        ),
        ("/v1/models", {"strategy": "finetune", "finetune": {"batch_size": 10**6}}, "batch_size", "4096"),
        ("/v1/models", {"strategy": "finetune", "finetune": {"epochs": 0}}, "epochs", "greater than or equal to 1"),
        ("/v1/models", {"strategy": "finetune", "finetune": {"augment": ["x" * 1000]}}, "augment", "16"),
        ("/v1/models", {"version": 2**40}, "version", "2147483647"),
        ("/v1/features", {"version": 2**40}, "version", "2147483647"),
        ("/v1/compare", {"backbones": ["resnet18"], "head": {"cv_folds": 10**6}}, "cv_folds", "20"),
        ("/v1/compare", {"backbones": ["resnet18"], "version": 2**40}, "version", "2147483647"),
        ("/v1/compare", {"backbones": ["r" * 1000]}, "backbones", "128"),
    ],
)
def test_every_numeric_knob_is_bounded_and_the_422_says_the_allowed_range(
    db: str, api_key: str, path: str, body: dict, field: str, allowed: str
) -> None:
    with TestClient(create_app()) as client:
        resp = client.post(path, headers=auth(api_key), json={"dataset_id": "ds_x", **body})
    assert resp.status_code == 422, resp.text
    message = resp.json()["error"]["message"]
    assert field in message and allowed in message, message


def test_model_lists_leave_out_the_tables_of_models_with_many_classes(db: str, api_key: str) -> None:
    from core.db import session_scope
    from core.tables import ApiKey, Model

    def metrics(n: int) -> dict:
        labels = [f"c{i}" for i in range(n)]
        return {
            "accuracy": 0.5,
            "labels": labels,
            "per_class": {c: {"f1": 0.5} for c in labels},
            "confusion_matrix": [[0] * n for _ in range(n)],
        }

    with session_scope() as s:
        tenant_id = s.query(ApiKey).one().tenant_id
        for name, n in (("big", 150), ("small", 3)):
            s.add(
                Model(
                    id=f"mdl_{name}", tenant_id=tenant_id, dataset_id="ds", version_id="dv", backbone="b",
                    strategy="linear_probe", status="ready", storage_prefix="p", metrics=metrics(n),
                    labels=metrics(n)["labels"],
                )
            )  # fmt: skip
    with TestClient(create_app()) as client:
        listed = {m["id"]: m for m in client.get("/v1/models", headers=auth(api_key)).json()}
        big = client.get("/v1/models/mdl_big", headers=auth(api_key)).json()
    assert "confusion_matrix" not in listed["mdl_big"]["metrics"] and "per_class" not in listed["mdl_big"]["metrics"]
    assert sorted(listed["mdl_big"]["omitted"]) == ["confusion_matrix", "per_class"]
    assert listed["mdl_big"]["metrics"]["accuracy"] == 0.5
    assert len(listed["mdl_small"]["metrics"]["confusion_matrix"]) == 3 and listed["mdl_small"]["omitted"] is None
    assert len(big["metrics"]["confusion_matrix"]) == 150 and len(big["metrics"]["per_class"]) == 150


@pytest.mark.parametrize(
    "path", ["/v1/datasets/ds_x?version=99999999999", "/v1/datasets/ds_x/images?version=99999999999"]
)
def test_version_numbers_past_the_column_get_422_not_a_database_error(db: str, api_key: str, path: str) -> None:
    with TestClient(create_app()) as client:
        resp = client.get(path, headers=auth(api_key))
    assert resp.status_code == 422 and "2147483647" in resp.json()["error"]["message"], resp.text
