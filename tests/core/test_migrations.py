"""Each migration upgrades a database that holds data from the revision before it, on SQLite and
PostgreSQL: users keep their rows across upgrades."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from core.db import dispose_engines


def test_0003_job_leases_keeps_jobs_and_marks_them_sent(db: str) -> None:
    from core.migrate import downgrade, upgrade

    downgrade(db, "0002")
    dispose_engines()
    created = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('tn_1', 'acme', :t)"), {"t": created})
        for job_id, status in (("job_q", "queued"), ("job_d", "succeeded")):
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, kind, status, queue, params, progress, metrics, attempts,"
                    " max_attempts, cancel_requested, created_at, updated_at) VALUES (:id, 'tn_1', 'ingest', :s,"
                    " 'cpu', '{}', '{}', '{\"images\": 3}', 1, 3, false, :t, :t)"
                ),
                {"id": job_id, "s": status, "t": created},
            )
    upgrade(db)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, status, metrics, lease_owner, lease_expires_at, release_requested, enqueued_at"
                " FROM jobs ORDER BY id"
            )
        ).all()
    engine.dispose()
    assert [(r.id, r.status, r.lease_owner, r.lease_expires_at, bool(r.release_requested)) for r in rows] == [
        ("job_d", "succeeded", None, None, False),
        ("job_q", "queued", None, None, False),
    ]
    assert all("images" in str(r.metrics) for r in rows)
    for r in rows:
        sent = r.enqueued_at if isinstance(r.enqueued_at, datetime) else datetime.fromisoformat(str(r.enqueued_at))
        assert sent.replace(tzinfo=UTC) == created.replace(tzinfo=UTC)


def test_0004_aliases_keeps_models(db: str) -> None:
    from core.migrate import downgrade, upgrade

    downgrade(db, "0003")
    dispose_engines()
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('tn_1', 'acme', :t)"), {"t": now})
        conn.execute(
            text(
                "INSERT INTO models (id, tenant_id, dataset_id, version_id, backbone, strategy, status, params,"
                " metrics, lineage, labels, storage_prefix, created_at) VALUES ('mdl_1', 'tn_1', 'ds_1', 'dv_1',"
                " 'efficientnet_lite0', 'linear_probe', 'ready', '{}', '{\"accuracy\": 0.9}', '{}', '[]', 'p', :t)"
            ),
            {"t": now},
        )
    upgrade(db)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO aliases (id, tenant_id, name, model_id, created_at, updated_at)"
                " VALUES ('al_1', 'tn_1', 'prod', 'mdl_1', :t, :t)"
            ),
            {"t": now},
        )
        row = conn.execute(
            text("SELECT m.id, m.metrics, a.name FROM models m JOIN aliases a ON a.model_id = m.id")
        ).one()
    engine.dispose()
    assert row.id == "mdl_1" and "0.9" in str(row.metrics) and row.name == "prod"


def test_0005_feature_sets_per_version_keeps_rows_and_allows_one_per_version(db: str) -> None:
    from core.migrate import downgrade, upgrade

    downgrade(db, "0004")
    dispose_engines()
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    insert = text(
        "INSERT INTO feature_sets (id, tenant_id, cache_key, dataset_id, version_id, backbone, weights_digest,"
        " engine, status, num_images, feature_dim, storage_prefix, stats, created_at) VALUES (:id, 'tn_1', 'k1',"
        " :ds, :dv, 'efficientnet_lite0', 'w', 'onnx', 'ready', 3, 1280, 'tenants/tn_1/features/k1', '{}', :t)"
    )
    engine = create_engine(db)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('tn_1', 'acme', :t)"), {"t": now})
        conn.execute(insert, {"id": "fs_a", "ds": "ds_a", "dv": "dv_a", "t": now})
    upgrade(db)
    with engine.begin() as conn:
        # Another dataset version with the same images gets its own row sharing the stored chunks...
        conn.execute(insert, {"id": "fs_b", "ds": "ds_b", "dv": "dv_b", "t": now})
        rows = conn.execute(text("SELECT id, version_id, storage_prefix FROM feature_sets ORDER BY id")).all()
    assert [(r.id, r.version_id, r.storage_prefix) for r in rows] == [
        ("fs_a", "dv_a", "tenants/tn_1/features/k1"),
        ("fs_b", "dv_b", "tenants/tn_1/features/k1"),
    ]
    # ...but one version still has one row per key.
    import pytest
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert, {"id": "fs_c", "ds": "ds_b", "dv": "dv_b", "t": now})
    downgrade(db, "0004")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM feature_sets")).scalar() == 1
    engine.dispose()


def _tenant_with_a_key(conn, now: datetime) -> None:  # type: ignore[no-untyped-def]
    """Tenant ``tn_1`` (acme) and its key ``key_1``, in the columns every revision since 0001 has."""
    conn.execute(text("INSERT INTO tenants (id, name, created_at) VALUES ('tn_1', 'acme', :t)"), {"t": now})
    conn.execute(
        text(
            "INSERT INTO api_keys (id, tenant_id, prefix, key_hash, created_at)"
            " VALUES ('key_1', 'tn_1', 'abc', 'h', :t)"
        ),
        {"t": now},
    )


def test_0006_tenant_quotas_keeps_tenants_and_what_they_own(db: str) -> None:
    from core.migrate import downgrade, upgrade

    downgrade(db, "0005")
    dispose_engines()
    now = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
    engine = create_engine(db)
    with engine.begin() as conn:
        _tenant_with_a_key(conn, now)
        conn.execute(
            text("INSERT INTO datasets (id, tenant_id, name, created_at) VALUES ('ds_1', 'tn_1', 'd', :t)"), {"t": now}
        )
    upgrade(db)
    with engine.begin() as conn:
        row = conn.execute(text("SELECT name, max_running_jobs, max_stored_bytes FROM tenants")).one()
        assert (row.name, row.max_running_jobs, row.max_stored_bytes) == ("acme", None, None)
        conn.execute(text("UPDATE tenants SET max_running_jobs = 2, max_stored_bytes = :b"), {"b": 5 * 1024**4})
        kept = conn.execute(text("SELECT (SELECT count(*) FROM api_keys), (SELECT count(*) FROM datasets)")).one()
        big = conn.execute(text("SELECT max_stored_bytes FROM tenants")).scalar_one()
    assert tuple(kept) == (1, 1) and big == 5 * 1024**4  # beyond 32 bits
    downgrade(db, "0005")  # and back, without taking anything of the tenant with it
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT (SELECT count(*) FROM api_keys), (SELECT count(*) FROM datasets)")).one()
    engine.dispose()
    assert tuple(kept) == (1, 1)


def test_0007_api_key_scopes_keeps_keys_and_gives_them_scope_all(db: str) -> None:
    from core.migrate import downgrade, upgrade

    downgrade(db, "0006")
    dispose_engines()
    now = datetime(2026, 12, 2, 12, 30, tzinfo=UTC)
    engine = create_engine(db)
    with engine.begin() as conn:
        _tenant_with_a_key(conn, now)
    upgrade(db)
    with engine.begin() as conn:
        row = conn.execute(text("SELECT id, tenant_id, prefix, key_hash, scope FROM api_keys")).one()
        assert tuple(row) == ("key_1", "tn_1", "abc", "h", "all")  # an existing key keeps today's powers
        conn.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, prefix, key_hash, scope, created_at)"
                " VALUES ('key_2', 'tn_1', 'def', 'h2', 'predict', :t)"
            ),
            {"t": now},
        )
        scopes = conn.execute(text("SELECT id, scope FROM api_keys ORDER BY id")).all()
    assert [tuple(r) for r in scopes] == [("key_1", "all"), ("key_2", "predict")]
    downgrade(db, "0006")  # and back, keeping the keys
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT count(*) FROM api_keys")).scalar_one()
    engine.dispose()
    assert kept == 2
