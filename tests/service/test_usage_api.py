"""``GET /v1/usage`` (a tenant's counts and limits), the stored-bytes quota over the API (403
``quota_exceeded``, no Retry-After) and GitHub-style pagination on every list route (issue 10, item 4)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from core.sample_data import class_folder_zip
from tests.conftest import reset_caches
from tests.helpers import auth, upload_dataset, wait_for_job


@pytest.fixture
def client(db: str) -> TestClient:
    from service.app import create_app

    with TestClient(create_app()) as c:
        yield c


def test_usage_shows_counts_and_limits_and_the_quota_refuses_with_403(
    db: str, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.app import create_app

    archive = class_folder_zip("digits", per_class=3, seed=1)
    monkeypatch.setenv("TLSERVE_MAX_STORED_BYTES_PER_TENANT", str(len(archive) + 10))
    reset_caches()
    with TestClient(create_app()) as client:
        empty = client.get("/v1/usage", headers=auth(api_key))
        assert empty.status_code == 200, empty.text
        assert empty.json()["stored_bytes"] == 0 and empty.json()["datasets"] == 0
        assert empty.json()["limits"]["max_stored_bytes"] == len(archive) + 10

        first = upload_dataset(client, api_key, archive, name="one")
        assert first.status_code == 202, first.text
        assert wait_for_job(client, first.json()["job_id"], api_key)["status"] == "succeeded"
        used = client.get("/v1/usage", headers=auth(api_key)).json()
        assert used["datasets"] == 1 and 0 < used["stored_bytes"] <= len(archive) + 10
        assert used["jobs_running"] == 0 and used["jobs_queued"] == 0

        refused = upload_dataset(client, api_key, archive, name="two")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert "Retry-After" not in refused.headers
        assert client.get("/v1/usage", headers=auth(api_key)).json()["datasets"] == 1  # nothing was created


LISTS = ["/v1/datasets", "/v1/jobs", "/v1/models", "/v1/aliases", "/v1/features"]


@pytest.mark.parametrize("path", LISTS)
def test_every_list_paginates_with_a_link_header(client: TestClient, api_key: str, path: str) -> None:
    from core.db import session_scope
    from core.jobs import create_job
    from core.tables import Alias, Dataset, FeatureSet, Model
    from core.tenancy import authenticate

    with session_scope() as s:
        tenant_id = authenticate(s, api_key).tenant_id
        for i in range(5):
            model = Model(
                tenant_id=tenant_id, dataset_id="ds_x", version_id="dv_x", backbone="b", strategy="linear_probe",
                storage_prefix="p",
            )  # fmt: skip
            s.add_all([Dataset(tenant_id=tenant_id, name=f"d{i}"), model])
            s.flush()
            s.add(Alias(tenant_id=tenant_id, name=f"a{i}", model_id=model.id))
            s.add(
                FeatureSet(
                    tenant_id=tenant_id, cache_key="k", dataset_id="ds_x", version_id=f"dv_{i}", backbone="b",
                    weights_digest="w", engine="onnx", storage_prefix="p",
                )
            )  # fmt: skip
            create_job(s, tenant_id=tenant_id, kind="ingest")

    everything = client.get(path, headers=auth(api_key), params={"limit": 500})
    assert everything.status_code == 200 and "link" not in everything.headers
    ids = [item.get("id") or item.get("name") for item in everything.json()]
    assert len(ids) == 5

    seen, url, params = [], path, {"limit": 2}
    while url:
        resp = client.get(url, headers=auth(api_key), params=params)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()) <= 2
        seen += [item.get("id") or item.get("name") for item in resp.json()]
        url, params = resp.links.get("next", {}).get("url"), None
    assert seen == ids  # the same order, nothing skipped or repeated

    bad = client.get(path, headers=auth(api_key), params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def test_backbones_page_by_name_with_the_tenant_s_fine_tuned_models_among_them(
    client: TestClient, api_key: str
) -> None:
    from core.db import session_scope
    from core.tables import Model
    from core.tenancy import authenticate
    from workers.backbones import list_backbones

    with session_scope() as s:
        tuned = Model(
            tenant_id=authenticate(s, api_key).tenant_id, dataset_id="ds_x", version_id="dv_x", backbone="lenet5",
            strategy="finetune", status="ready", storage_prefix="p",
        )  # fmt: skip
        s.add(tuned)
        s.flush()
        tuned_id = tuned.id
    names = sorted([spec.name for spec in list_backbones()] + [f"model:{tuned_id}"])

    first = client.get("/v1/backbones", headers=auth(api_key), params={"limit": 1})
    assert first.status_code == 200 and [b["name"] for b in first.json()] == names[:1]
    second = client.get(first.links["next"]["url"], headers=auth(api_key))
    assert [b["name"] for b in second.json()] == names[1:2] and "limit=1" in second.links["next"]["url"]

    seen, url, params = [], "/v1/backbones", {"limit": 4}
    while url:
        resp = client.get(url, headers=auth(api_key), params=params)
        seen += [b["name"] for b in resp.json()]
        url, params = resp.links.get("next", {}).get("url"), None
    assert seen == names  # nothing skipped or repeated, the fine-tuned model in its place by name
    everything = client.get("/v1/backbones", headers=auth(api_key))
    assert [b["name"] for b in everything.json()] == names and "link" not in everything.headers

    for cursor in ("not-a-cursor", "WzFd"):  # not base64 JSON; a number where a name belongs ([1])
        bad = client.get("/v1/backbones", headers=auth(api_key), params={"cursor": cursor})
        assert bad.status_code == 400 and "Link header" in bad.json()["error"]["message"]
