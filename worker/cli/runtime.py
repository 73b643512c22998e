"""Long-running processes (worker, beat) and the health probe scripts and Kubernetes use."""

from __future__ import annotations

import sys
import time
from typing import Any

import click
import sqlalchemy as sa

from worker.cli.base import Cli, console, emit_json, json_option, pass_cli
from worker.errors import ConfigurationError


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--concurrency", "-c", type=click.IntRange(1, 64), default=2, show_default=True, help="Worker processes."
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_cli
def worker_command(cli: Cli, concurrency: int, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker for every sessionkeeper job (extra arguments go to Celery)."""
    _ = cli.settings  # a configuration error exits 2 here, before Celery starts
    from worker.celery_app import app

    quiet = ["--quiet"] if not sys.stdout.isatty() else []  # the ASCII banner is for people
    app.start(
        [
            *quiet,
            "worker",
            "--loglevel",
            cli.settings.logging.level,
            "-Q",
            "sessionkeeper",
            "--concurrency",
            str(concurrency),
            # Mingle and gossip only slow start-up and add broker chatter; we use neither.
            "--without-mingle",
            "--without-gossip",
            *celery_args,
        ]
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--redbeat",
    "use_redbeat",
    is_flag=True,
    help="Use RedBeat (schedule in Redis, hot standby by lock); needs celery-redbeat.",
)
@click.option(
    "--schedule-file",
    default="celerybeat-schedule",
    show_default=True,
    help="Where the default scheduler keeps last-run times.",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_cli
def beat_command(cli: Cli, use_redbeat: bool, schedule_file: str, celery_args: tuple[str, ...]) -> None:
    """Run Celery beat: exactly one per schedule (or several with --redbeat as hot standbys)."""
    _ = cli.settings
    from worker.celery_app import app

    args = ["beat", "--loglevel", cli.settings.logging.level]
    if use_redbeat:
        try:
            import redbeat  # noqa: F401 - only checking it is installed
        except ImportError:
            raise click.UsageError(
                "--redbeat needs celery-redbeat: pip install 'sessionkeeper[redbeat]'"
            ) from None
        args += ["--scheduler", "redbeat.RedBeatScheduler"]
    else:
        args += ["--schedule", schedule_file]
    app.start([*args, *celery_args])


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _probe(name: str, func: Any) -> dict[str, Any]:
    started = time.monotonic()
    try:
        detail = func()
        ok = True
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return {"check": name, "ok": ok, "detail": detail, "ms": round((time.monotonic() - started) * 1000, 1)}


@click.command()
@click.option(
    "--worker",
    "worker_only",
    is_flag=True,
    help="Only the local worker's heartbeat and ready files (liveness/readiness probe).",
)
@click.option(
    "--max-age",
    default=60,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds after which the worker heartbeat counts as stale.",
)
@json_option
@pass_cli
def health_command(cli: Cli, worker_only: bool, max_age: int, as_json: bool) -> None:
    """Check the database, the broker and the local worker; exit 1 when any is not ok."""
    settings = cli.settings

    def database() -> str:
        with cli.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "reachable"

    def broker() -> str:
        import redis

        client = redis.Redis.from_url(
            settings.broker.url.get_secret_value(), socket_timeout=3, socket_connect_timeout=3
        )
        client.ping()
        return "reachable"

    def heartbeat() -> str:
        path = settings.worker.heartbeat_file
        age = time.time() - path.stat().st_mtime
        if age > max_age:
            raise RuntimeError(f"heartbeat {path} is {age:.0f}s old")
        if not settings.worker.ready_file.exists():
            raise RuntimeError(f"ready file {settings.worker.ready_file} missing")
        return f"fresh ({age:.0f}s)"

    checks = (
        [_probe("worker", heartbeat)]
        if worker_only
        else [_probe("database", database), _probe("broker", broker)]
    )
    healthy = all(c["ok"] for c in checks)
    if as_json:
        emit_json({"ok": healthy, "checks": checks})
    else:
        for c in checks:
            mark = "[green]ok[/]  " if c["ok"] else "[red]FAIL[/]"
            console.print(f"{mark} {c['check']:<9} {c['detail']}")
    sys.exit(0 if healthy else 1)


@click.command()
@click.option("--host", help="Address to bind (default: api.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: api.port).")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes (each with its own database pool).",
)
@pass_cli
def api_command(cli: Cli, host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API (revocations, sessions, stats, alerts, health) with uvicorn."""
    import uvicorn

    from worker.api import create_app

    settings = cli.settings
    bind = host or settings.api.host
    if settings.api.insecure_dev and not _is_loopback(bind):
        raise ConfigurationError(
            "refusing to serve without authentication on a public address",
            problems=[
                f"api.insecure_dev is set and the API would listen on {bind}: "
                "use 127.0.0.1 (or ::1) for development, or configure api.tokens"
            ],
        )
    app = create_app(settings)  # refuses to start without a token (exit 2) unless insecure_dev
    if settings.api.insecure_dev:
        click.echo(
            "sessionkeeper: WARNING: api.insecure_dev is set: the API serves WITHOUT authentication. "
            "Development only; never expose it.",
            err=True,
        )
    options: dict[str, Any] = {
        "host": host or settings.api.host,
        "port": port or settings.api.port,
        "log_config": None,  # our structlog handlers, set up by cli.settings
        "access_log": False,
        "server_header": False,
    }
    if workers == 1:
        uvicorn.run(app, **options)
    else:  # each process builds its app from the same environment (and --config, exported)
        uvicorn.run("worker.api:app_from_environment", factory=True, workers=workers, **options)
