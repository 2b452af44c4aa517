"""The ``tlserve`` command: ``up`` (API and worker together), ``api``, ``worker``, ``keys create|list|revoke``,
``migrate``, and the client's commands (``datasets``, ``features``, ``models``, ``predict``, ``compare``,
``jobs``, ``backbones``, ``login``) from the ``tlserve-client`` distribution. Server settings come from the
environment (``TLSERVE_*``); the client commands read ``TLSERVE_URL`` and ``TLSERVE_API_KEY``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import click

from core.settings import get_settings, reset_settings
from core.tenancy import SCOPES

log = logging.getLogger("tlserve")

try:  # the client distribution (``pip install -e ./client``; ``make install`` does it)
    from tlserve_client import cli as client_cli
except ImportError:  # pragma: no cover - a server installed without the client keeps its own commands
    client_cli = None


def _migrate() -> None:
    from core.migrate import upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url)
    print(f"database is up to date: {_redact(settings.resolved_database_url)}")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _keys_create(tenant: str, scope: str = "all") -> None:
    from core.db import session_scope
    from core.migrate import upgrade
    from core.tenancy import create_api_key

    upgrade(get_settings().resolved_database_url)
    with session_scope() as s:
        key = create_api_key(s, tenant, scope)
    print(f"created an API key of scope {scope!r} for tenant {tenant!r}; it is shown only once:", file=sys.stderr)
    print(key)


def _serve_api(host: str, port: int) -> None:
    import uvicorn

    from service.app import create_app

    # limit_concurrency is a last guard only (a bare-text 503): the app sheds load itself, in the error contract.
    uvicorn.run(
        create_app(),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=5,
        limit_concurrency=get_settings().api_limit_concurrency,
    )


def _worker_argv(queues: str, concurrency: int | None) -> list[str]:
    argv = ["worker", "--queues", queues, "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    return argv


def thread_share(concurrency: int | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The compute threads of each of a worker's processes, unless set: the cores shared out evenly, so that
    ``tlserve up`` (one process) runs a lone job's forward passes on every core and ``tlserve worker`` (one
    process per core by default) gives each process one."""
    environ = os.environ if environ is None else environ
    cores = os.cpu_count() or 1
    share = str(max(1, cores // max(1, concurrency or cores)))
    return {var: share for var in ("TLSERVE_ORT_THREADS", "TLSERVE_TORCH_THREADS") if var not in environ}


def _worker(queues: str, concurrency: int | None) -> int:
    if get_settings().broker_is_memory:
        print(
            "tlserve worker needs a real broker (TLSERVE_BROKER_URL=redis://...); "
            "with memory:// use 'tlserve up', which runs jobs in-process.",
            file=sys.stderr,
        )
        return 2
    os.environ.update(thread_share(concurrency))  # inherited by the pool's processes
    reset_settings()
    from workers.celery_app import app

    app.worker_main(_worker_argv(queues, concurrency))
    return 0


def _start_worker_process(queues: str, concurrency: int | None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--queues", queues, "--concurrency", str(concurrency or 1)],
        env=os.environ.copy(),
    )


def _stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def _up(host: str, port: int, queues: str, concurrency: int | None) -> int:
    """Migrate, then the API in this process and (with a real broker) a Celery worker beside it."""
    settings = get_settings()
    _migrate()
    banner = "=" * 72
    if settings.broker_is_memory:
        print(
            f"{banner}\n tlserve up: broker memory:// -> jobs run INSIDE this process (no Redis needed)\n{banner}",
            flush=True,
        )
        _serve_api(host, port)
        return 0
    print(
        f"{banner}\n tlserve up: broker {_redact(settings.broker_url)} -> starting a Celery worker "
        f"(queues {queues}) beside the API\n{banner}",
        flush=True,
    )
    helpers = [_start_worker_process(queues, concurrency)]

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    # uvicorn shuts down on SIGTERM/SIGINT and then raises the signal again under the handlers it found:
    # these make that an exit through ``finally``, so the worker is stopped (drained) rather than orphaned.
    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _serve_api(host, port)
    except SystemExit:
        pass
    finally:
        for proc in helpers:
            _stop_process(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


SERVER_COMMANDS = frozenset({"up", "api", "worker", "keys", "migrate", "warm"})


def _server_group() -> type[click.Group]:
    return client_cli.OneLineGroup if client_cli is not None else click.Group


def _with_connection(f):  # the client commands' --url/--api-key, when the client is installed
    return client_cli.connection_options(f) if client_cli is not None else f


@click.group("tlserve", cls=_server_group(), context_settings={"help_option_names": ["-h", "--help"]})
@_with_connection
@click.pass_context
def cli(ctx: click.Context, **connection: str | None) -> None:
    """Self-hosted transfer-learning service: run it (up, api, worker, keys, migrate) and use it
    (datasets, features, models, predict, compare, jobs)."""
    if ctx.invoked_subcommand in SERVER_COMMANDS:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if client_cli is not None:
        client_cli.init_connection(ctx, connection.get("url"), connection.get("api_key"))


@cli.command("up")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--queues", default="cpu,gpu", show_default=True)
@click.option("--concurrency", type=int, default=None)
def up(host: str, port: int, queues: str, concurrency: int | None) -> None:
    """Run the API and a worker together on this machine."""
    sys.exit(_up(host, port, queues, concurrency))


@cli.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def api(host: str, port: int) -> None:
    """Run the API server."""
    _serve_api(host, port)


@cli.command("worker")
@click.option("--queues", default="cpu", show_default=True, help="comma-separated: cpu, gpu")
@click.option("--concurrency", type=int, default=None, help="worker processes (default: CPU count)")
def worker(queues: str, concurrency: int | None) -> None:
    """Run a Celery worker."""
    sys.exit(_worker(queues, concurrency))


@cli.group("keys")
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--tenant", required=True)
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    default="all",
    show_default=True,
    help="all: every route; predict: POST /v1/models/{id}/predict and /v1/aliases/{name}/predict only",
)
def keys_create(tenant: str, scope: str) -> None:
    """Create an API key (printed alone on the last line)."""
    _keys_create(tenant, scope)


@keys.command("list")
@click.option("--tenant", default=None, help="only this tenant's keys")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def keys_list(tenant: str | None, fmt: str) -> None:
    """List API keys: id, tenant, public prefix, scope, created, revoked (secrets are never stored)."""
    from core.db import session_scope
    from core.migrate import upgrade
    from core.tenancy import list_api_keys

    upgrade(get_settings().resolved_database_url)
    with session_scope() as s:
        rows = list_api_keys(s, tenant)
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return
    print(f"{'id':<40} {'tenant':<20} {'prefix':<20} {'scope':<8} {'created':<32} revoked")
    for r in rows:
        print(
            f"{r['id']:<40} {r['tenant']:<20} {r['prefix']:<20} {r['scope']:<8} {r['created_at'] or '':<32}"
            f" {r['revoked_at'] or '-'}"
        )


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke KEY (its id from 'keys list', or its tls_<prefix>_ prefix); it stops working at once."""
    from core.db import session_scope
    from core.errors import TLServeError
    from core.migrate import upgrade
    from core.tenancy import revoke_api_key

    upgrade(get_settings().resolved_database_url)
    try:
        with session_scope() as s:
            row = revoke_api_key(s, key)
            key_id, revoked_at = row.id, row.revoked_at
    except TLServeError as e:
        raise click.ClickException(e.message) from None
    print(f"revoked API key {key_id} at {revoked_at.isoformat() if revoked_at else '?'}", file=sys.stderr)
    print(key_id)


@cli.group("tenants")
def tenants() -> None:
    """Manage tenants' quotas."""


@tenants.command("quota")
@click.argument("tenant")
@click.option("--max-running-jobs", type=click.IntRange(min=1), default=None, help="jobs running at once")
@click.option("--max-stored-bytes", type=click.IntRange(min=0), default=None, help="stored image bytes")
@click.option("--default", "to_default", is_flag=True, help="back to the settings' defaults")
def tenants_quota(tenant: str, max_running_jobs: int | None, max_stored_bytes: int | None, to_default: bool) -> None:
    """Show TENANT's usage and limits as JSON; with options, set its own quotas first."""
    from core import usage
    from core.db import session_scope
    from core.errors import TLServeError
    from core.migrate import upgrade

    upgrade(get_settings().resolved_database_url)
    try:
        with session_scope() as s:
            tenant_id = usage.tenant_named(s, tenant)
            if to_default or max_running_jobs is not None or max_stored_bytes is not None:
                own = usage.own_quotas(s, tenant_id) if not to_default else (None, None)
                usage.set_quotas(
                    s,
                    tenant_id,
                    max_running_jobs=max_running_jobs if max_running_jobs is not None else own[0],
                    max_stored_bytes=max_stored_bytes if max_stored_bytes is not None else own[1],
                )
            print(json.dumps(usage.usage(s, tenant_id), indent=2))
    except TLServeError as e:
        raise click.ClickException(e.message) from None


@cli.command("migrate")
def migrate() -> None:
    """Apply database migrations."""
    _migrate()


@cli.command("sweep")
@click.option("--dry-run", is_flag=True, help="only report what would be deleted")
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0),
    default=None,
    help="leave alone objects younger than this (default: TLSERVE_SWEEP_GRACE_S, one hour)",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def sweep(dry_run: bool, grace_seconds: float | None, fmt: str) -> None:
    """Delete stored objects no live row needs: uploads of ended jobs, the files of deleted datasets,
    feature sets and models, and what failed ingestions, extractions and trainings left."""
    from core.migrate import upgrade
    from core.sweeper import sweep as sweep_storage

    upgrade(get_settings().resolved_database_url)
    summary = sweep_storage(grace_s=grace_seconds, dry_run=dry_run)
    if fmt == "json":
        print(json.dumps(summary.as_dict(), indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    young = f"{summary.too_young} younger than {summary.grace_s:g} s"
    print(f"scanned {summary.scanned} object(s), {_size(summary.scanned_bytes)}; {young}")
    for kind, entry in sorted(summary.by_kind.items()):
        print(f"  {kind:<10} {verb} {entry['objects']} object(s), {_size(entry['bytes'])}")
    print(f"{verb} {summary.deleted} object(s), {_size(summary.deleted_bytes)}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@cli.command("warm")
@click.argument("backbones", nargs=-1)
def warm(backbones: tuple[str, ...]) -> None:
    """Export BACKBONEs (default: TLSERVE_WARM_BACKBONES) to ONNX now, into the installation's graph cache,
    so that the first job of every data folder skips the export."""
    from core.settings import get_settings
    from workers.runtime.engines import warm as warm_graphs

    for name, state in warm_graphs(backbones or get_settings().warm_backbones).items():
        click.echo(f"{name}: {state}")


if client_cli is not None:
    client_cli.mount(cli)


def main(argv: list[str] | None = None) -> int:
    cli.main(args=argv, prog_name="tlserve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
