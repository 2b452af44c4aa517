"""Suggestions refuse, with what to do instead, the models they cannot rank for (on SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from core.db import session_scope
from core.errors import Conflict, NotFound
from core.tables import Model
from core.tenancy import get_or_create_tenant
from workers.runtime.suggestions import suggest


def _model(strategy: str, status: str) -> tuple[str, str]:
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        row = Model(
            tenant_id=tenant.id,
            dataset_id="ds_x",
            version_id="dv_x",
            backbone="efficientnet_lite0",
            strategy=strategy,
            status=status,
            storage_prefix="nowhere",
        )
        s.add(row)
        s.flush()
        return tenant.id, row.id


def test_a_fine_tuned_model_is_refused_with_the_way_to_get_suggestions(db: str) -> None:
    tenant_id, model_id = _model("finetune", "ready")
    with pytest.raises(Conflict, match="fine-tuned.*linear probe") as e:
        suggest(tenant_id, model_id, "margin", 5)
    assert e.value.status_code == 409


def test_a_model_still_training_or_of_another_tenant_is_refused(db: str) -> None:
    tenant_id, model_id = _model("linear_probe", "running")
    with pytest.raises(Conflict, match="running"):
        suggest(tenant_id, model_id, "entropy", 5)
    with pytest.raises(NotFound):
        suggest("tn_other", model_id, "entropy", 5)
