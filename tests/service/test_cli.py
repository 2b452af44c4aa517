"""The server's ``tlserve`` command on Click: the server commands keep their flags, and the client's
commands are mounted beside them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from service.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="tlserve")


def test_help_lists_server_and_client_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0, result.output
    for name in ("up", "api", "worker", "keys", "migrate", "datasets", "features", "models", "predict", "jobs"):
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("up", ["--host", "--port", "--queues", "--concurrency"]),
        ("api", ["--host", "--port"]),
        ("worker", ["--queues", "--concurrency"]),
    ],
)
def test_server_commands_keep_their_flags(command: str, flags: list[str]) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert all(flag in result.stdout for flag in flags)


def test_worker_refuses_the_memory_broker(data_dir) -> None:
    result = run("worker")
    assert result.exit_code == 2
    assert "needs a real broker" in result.stderr


def test_keys_create_list_revoke(db: str) -> None:
    created = run("keys", "create", "--tenant", "acme")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    listed = run("keys", "list", "--format", "json")
    rows = json.loads(listed.stdout)
    assert len(rows) == 1 and key.startswith(rows[0]["prefix"]) and key not in listed.stdout
    revoked = run("keys", "revoke", rows[0]["id"])
    assert revoked.exit_code == 0 and revoked.stdout.strip().splitlines()[-1] == rows[0]["id"]
    assert json.loads(run("keys", "list", "--format", "json").stdout)[0]["revoked_at"]
    missing = run("keys", "revoke", "key_nope")
    assert missing.exit_code == 1
    assert missing.stderr.strip().splitlines() == [
        "error: no API key 'key_nope': give a key id (key_...) or prefix from 'tlserve keys list'"
    ]


def test_keys_create_with_a_scope_and_list_shows_it(db: str) -> None:
    assert run("keys", "create", "--tenant", "acme").exit_code == 0
    created = run("keys", "create", "--tenant", "acme", "--scope", "predict")
    assert created.exit_code == 0, created.output
    assert "scope 'predict'" in created.stderr
    rows = json.loads(run("keys", "list", "--format", "json").stdout)
    assert [r["scope"] for r in rows] == ["all", "predict"]
    text = run("keys", "list").stdout.splitlines()
    assert text[0].split()[:5] == ["id", "tenant", "prefix", "scope", "created"]
    assert [line.split()[3] for line in text[1:]] == ["all", "predict"]
    bad = run("keys", "create", "--tenant", "acme", "--scope", "admin")
    assert bad.exit_code == 2 and "'all', 'predict'" in bad.stderr


def test_tenants_quota_sets_shows_and_resets_a_tenant_s_own_limits(db: str) -> None:
    assert run("keys", "create", "--tenant", "acme").exit_code == 0
    shown = json.loads(run("tenants", "quota", "acme").stdout)
    assert shown["limits"]["max_running_jobs"] == 8 and shown["jobs_running"] == 0
    one = json.loads(run("tenants", "quota", "acme", "--max-running-jobs", "1").stdout)
    assert (
        one["limits"]["max_running_jobs"] == 1
        and one["limits"]["max_stored_bytes"] == shown["limits"]["max_stored_bytes"]
    )
    both = json.loads(run("tenants", "quota", "acme", "--max-stored-bytes", "1000").stdout)
    assert (both["limits"]["max_running_jobs"], both["limits"]["max_stored_bytes"]) == (1, 1000)
    back = json.loads(run("tenants", "quota", "acme", "--default").stdout)
    assert back["limits"] == shown["limits"]
    missing = run("tenants", "quota", "nobody")
    assert missing.exit_code == 1 and "no tenant 'nobody'" in missing.stderr


def test_sweep_reports_then_deletes_an_orphaned_upload(db: str) -> None:
    import os
    import time

    from core.storage import get_storage

    storage = get_storage()
    storage.put_bytes("tenants/tn_gone/uploads/job_gone/archive.zip", b"x" * 2048)
    storage.put_bytes("tenants/tn_gone/uploads/job_new/archive.zip", b"x" * 10)
    old = time.time() - 7200
    os.utime(storage.local_path("tenants/tn_gone/uploads/job_gone/archive.zip"), (old, old))

    dry = run("sweep", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "uploads    would delete 1 object(s), 2.0 KiB" in dry.stdout and "1 younger than 3600 s" in dry.stdout
    assert storage.exists("tenants/tn_gone/uploads/job_gone/archive.zip")

    done = run("sweep", "--grace-seconds", "0", "--format", "json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["deleted"] == summary["by_kind"]["uploads"]["objects"] == 2 and summary["deleted_bytes"] == 2058
    assert storage.list("tenants") == []
    assert "--grace-seconds" in run("sweep", "--help").stdout


def test_worker_processes_share_the_cores_unless_told(monkeypatch) -> None:
    from service.cli import thread_share

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert thread_share(1, {}) == {"TLSERVE_ORT_THREADS": "8", "TLSERVE_TORCH_THREADS": "8"}  # tlserve up
    assert thread_share(None, {}) == {"TLSERVE_ORT_THREADS": "1", "TLSERVE_TORCH_THREADS": "1"}  # one per core
    assert thread_share(3, {}) == {"TLSERVE_ORT_THREADS": "2", "TLSERVE_TORCH_THREADS": "2"}
    assert thread_share(16, {}) == {"TLSERVE_ORT_THREADS": "1", "TLSERVE_TORCH_THREADS": "1"}
    assert thread_share(1, {"TLSERVE_ORT_THREADS": "3"}) == {"TLSERVE_TORCH_THREADS": "8"}  # a setting wins
