"""The pieces a new user touches first: the console script, docker-compose.yml, the README's commands."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docker_compose_file_validates() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose (.ci/run does)")
    result = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for service in ("redis", "postgres", "api", "worker-cpu", "worker-gpu"):
        assert f"{service}:" in result.stdout
    assert "capabilities" in result.stdout and "gpu" in result.stdout


def test_docker_compose_shares_no_volume_between_api_and_workers() -> None:
    """Many machines: every artifact goes to MinIO through the S3 protocol, so the API and the workers could
    each run anywhere; a volume mounted by two of them would hide a dependence on a shared disk."""
    import yaml

    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed: apt-get install docker-compose (.ci/run does)")
    result = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"minio", "minio-init"} <= services.keys()
    tlserve = ("api", "worker-cpu", "worker-gpu")
    writable: dict[str, list[str]] = {}
    for name in tlserve:
        env = services[name]["environment"]
        assert env["TLSERVE_STORAGE_URL"].startswith("s3://") and env["TLSERVE_S3_ENDPOINT_URL"]
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        for volume in services[name].get("volumes", []):
            if isinstance(volume, str):  # docker-compose 1.x prints "source:target:mode"
                source, _, mode = volume.split(":")
                read_only = mode == "ro"
            else:
                source, read_only = volume["source"], bool(volume.get("read_only"))
            if not read_only:
                writable.setdefault(source, []).append(name)
    shared = {source: users for source, users in writable.items() if len(users) > 1}
    assert not shared, f"volumes written by more than one of API and workers: {shared}"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    assert "make demo" in head and "make test" in head


def test_keys_create_prints_the_key_alone_on_the_last_line(tmp_path) -> None:
    env = {"TLSERVE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "acme"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=True,
    )
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("tls_") and " " not in last
