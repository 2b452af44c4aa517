"""The ``tlserve`` command: ``up`` (API and worker together), ``api``, ``worker``, ``keys create``,
``migrate``. Settings come from the environment (``TLSERVE_*``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

from core.settings import get_settings

log = logging.getLogger("tlserve")


def _migrate(_: argparse.Namespace) -> int:
    from core.migrate import upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    print(f"database is up to date: {_redact(settings.resolved_database_url)}")
    return 0


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _keys_create(args: argparse.Namespace) -> int:
    from core.db import session_scope
    from core.migrate import upgrade
    from core.tenancy import create_api_key

    upgrade(get_settings().resolved_database_url)
    with session_scope() as s:
        key = create_api_key(s, args.tenant)
    print(f"created an API key for tenant {args.tenant!r}; it is shown only once:", file=sys.stderr)
    print(key)
    return 0


def _serve_api(host: str, port: int) -> None:
    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _api(args: argparse.Namespace) -> int:
    _serve_api(args.host, args.port)
    return 0


def _worker_argv(queues: str, concurrency: int | None) -> list[str]:
    argv = ["worker", "--queues", queues, "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def _worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.broker_is_memory:
        print(
            "tlserve worker needs a real broker (TLSERVE_BROKER_URL=redis://...); "
            "with memory:// use 'tlserve up', which runs jobs in-process.",
            file=sys.stderr,
        )
        return 2
    from workers.celery_app import app

    app.worker_main(_worker_argv(args.queues, args.concurrency))
    return 0


def _up(args: argparse.Namespace) -> int:
    settings = get_settings()
    _migrate(args)
    banner = "=" * 72
    if settings.broker_is_memory:
        print(
            f"{banner}\n tlserve up: broker memory:// -> jobs run INSIDE this process (no Redis needed)\n{banner}",
            flush=True,
        )
        _serve_api(args.host, args.port)
        return 0
    print(
        f"{banner}\n tlserve up: broker {_redact(settings.broker_url)} -> starting a Celery worker "
        f"(queues {args.queues}) beside the API\n{banner}",
        flush=True,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "worker",
            "--queues",
            args.queues,
            "--concurrency",
            str(args.concurrency or 1),
        ],
        env=os.environ.copy(),
    )
    try:
        _serve_api(args.host, args.port)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlserve", description="Self-hosted transfer-learning service")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the API and a worker together on this machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--queues", default="cpu,gpu")
    up.add_argument("--concurrency", type=int, default=None)
    up.set_defaults(func=_up)

    api = sub.add_parser("api", help="run the API server")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=_api)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default="cpu", help="comma-separated: cpu, gpu")
    worker.add_argument("--concurrency", type=int, default=None, help="worker processes (default: CPU count)")
    worker.set_defaults(func=_worker)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create an API key (printed alone on the last line)")
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=_keys_create)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
