"""API key scopes over the API (SQLite and PostgreSQL): a ``predict`` key reaches the prediction routes
only, every other route answers it 403 ``forbidden_scope``; an ``all`` key reaches everything."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from core.sample_data import class_folder_zip, iter_labelled_pngs
from tests.helpers import auth, upload_dataset, wait_for_job

PREDICT_ROUTES = {("POST", "/v1/models/{model_id}/predict"), ("POST", "/v1/aliases/{name}/predict")}


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    from service.app import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.fixture
def predict_key(api_key: str) -> str:
    from core.db import session_scope
    from core.tenancy import create_api_key

    with session_scope() as s:
        return create_api_key(s, "acme", scope="predict")


def _png() -> list[tuple[str, tuple[str, bytes, str]]]:
    png = next(iter(iter_labelled_pngs("digits", per_class=1, seed=0)))[2]
    return [("files", ("a.png", png, "image/png"))]


def test_a_predict_key_gets_403_outside_the_prediction_routes(client: TestClient, predict_key: str) -> None:
    for method, path in (("GET", "/v1/datasets"), ("GET", "/v1/jobs"), ("GET", "/v1/models"), ("GET", "/v1/usage")):
        resp = client.request(method, path, headers=auth(predict_key))
        assert resp.status_code == 403, (path, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "forbidden_scope"
        assert "scope is 'predict'" in error["message"] and "needs a key of scope 'all'" in error["message"]
        assert f"{method} {path}" in error["message"]
    archive = class_folder_zip("digits", per_class=2)
    resp = upload_dataset(client, predict_key, archive, name="d")
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden_scope"
    assert client.get("/v1/datasets", headers=auth(predict_key)).status_code == 403  # nothing was created...


def test_a_predict_key_passes_the_prediction_routes_and_an_all_key_reaches_everything(
    client: TestClient, api_key: str, predict_key: str
) -> None:
    # Past authentication, a missing model or alias is the ordinary 404 (not a 403): predictions with a
    # real model are in tests/service/test_models_api.py.
    for path in ("/v1/models/mdl_nope/predict", "/v1/aliases/nope/predict"):
        resp = client.post(path, headers=auth(predict_key), files=_png())
        assert resp.status_code == 404, resp.text
        assert client.post(path, headers=auth("tls_x_y"), files=_png()).status_code == 401
    assert client.get("/v1/datasets", headers=auth(api_key)).json() == []
    created = upload_dataset(client, api_key, class_folder_zip("digits", per_class=2), name="d")
    assert created.status_code == 202, created.text
    assert [d["id"] for d in client.get("/v1/datasets", headers=auth(api_key)).json()] == [created.json()["id"]]


@pytest.mark.slow
def test_a_predict_key_predicts_with_a_real_model_by_id_and_alias(
    client: TestClient, api_key: str, predict_key: str, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the training path is the same on both databases; the scope checks above run on both")
    ds = upload_dataset(client, api_key, class_folder_zip("digits", per_class=4), name="d", test_fraction=0.25).json()
    assert wait_for_job(client, ds["job_id"], api_key)["status"] == "succeeded"
    body = {"dataset_id": ds["id"], "strategy": "linear_probe", "head": {"type": "logistic", "C": 1.0}}
    model = client.post("/v1/models", headers=auth(api_key), json=body).json()
    assert wait_for_job(client, model["job_id"], api_key)["status"] == "succeeded"
    assert client.put("/v1/aliases/prod", headers=auth(api_key), json={"model_id": model["id"]}).status_code == 201
    by_id = client.post(f"/v1/models/{model['id']}/predict", headers=auth(predict_key), files=_png())
    assert by_id.status_code == 200, by_id.text
    by_alias = client.post("/v1/aliases/prod/predict", headers=auth(predict_key), files=_png())
    assert by_alias.status_code == 200 and by_alias.json() == by_id.json()
    forbidden = [
        client.get(f"/v1/models/{model['id']}", headers=auth(predict_key)),
        client.get(f"/v1/models/{model['id']}/export", headers=auth(predict_key)),
        client.get("/v1/aliases/prod", headers=auth(predict_key)),
        client.delete(f"/v1/models/{model['id']}", headers=auth(predict_key)),
    ]
    assert [r.status_code for r in forbidden] == [403] * len(forbidden)
    assert client.get(f"/v1/models/{model['id']}", headers=auth(api_key)).json()["status"] == "ready"


def _depends_on(dependant, call) -> bool:  # noqa: ANN001
    return dependant.call is call or any(_depends_on(d, call) for d in dependant.dependencies)


def test_every_v1_route_but_the_prediction_routes_needs_a_key_of_scope_all() -> None:
    import importlib
    import pkgutil

    import service.routes
    from service.deps import get_predict_tenant_id, get_tenant_id

    modules = [
        importlib.import_module(f"service.routes.{m.name}") for m in pkgutil.iter_modules(service.routes.__path__)
    ]
    routers = [v for m in modules for v in vars(m).values() if isinstance(v, APIRouter)]
    routes = [r for router in routers for r in router.routes if isinstance(r, APIRoute) and r.path.startswith("/v1/")]
    for route in routes:
        for method in route.methods:
            full, any_scope = (
                _depends_on(route.dependant, get_tenant_id),
                _depends_on(route.dependant, get_predict_tenant_id),
            )
            if (method, route.path) in PREDICT_ROUTES:
                assert any_scope and not full, route.path
            else:
                assert full and not any_scope, (method, route.path)
    served = {(m, r.path) for r in routes for m in r.methods}
    assert served >= PREDICT_ROUTES and len(served) > 30
