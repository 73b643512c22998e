"""``sessionkeeper demo``: seed an SQLite database and run every job once, in-process."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import click

from worker import db, demo, migrate, reference
from worker.cli.base import console, emit_json, json_option
from worker.observability import configure_logging
from worker.sessiontable import utcnow
from worker.settings import Settings

#: each job adds itself here: (title, "module:function"), the function taking (engine, settings)
#: and returning {"lines": [...], ...figures}
DEMO_STEPS: tuple[tuple[str, str], ...] = (
    ("Purge", "tasks.purge:demo_report"),
    ("Statistics", "tasks.stats:demo_report"),
    ("Anomaly scan", "tasks.anomaly:demo_report"),
    ("Sign out other devices", "tasks.revoke:demo_report"),
)


def demo_settings(path: Path) -> Settings:
    """Settings for the demo database, whatever the environment says about the real one."""
    return Settings(
        database={"url": f"sqlite:///{path}"},
        sessions={"profile": "sessionkeeper"},
        policy={"grace": "0s", "idle_timeout": "14d", "max_sessions_per_user": 50},
        purge={"batch_size": 2000},
        # Each job's canonical line would interleave with the report; warnings still show.
        logging={"level": "WARNING"},
    )


def _step(path: str) -> Any:
    module_name, func = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    return getattr(module, func, None)


@click.command()
@click.option(
    "--database",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("sessionkeeper-demo.db"),
    show_default=True,
    help="SQLite file to create (replaced if it exists).",
)
@click.option(
    "--users",
    default=3000,
    show_default=True,
    type=click.IntRange(10, 200_000),
    help="How many synthetic users to seed.",
)
@json_option
def demo_command(path: Path, users: int, as_json: bool) -> None:
    """Seed a fresh SQLite database with synthetic sessions and run every job once.

    Needs no PostgreSQL, no Redis and no configuration: a self-contained tour of what
    sessionkeeper does to a session table, with a short report of each job.
    """
    for stale in (path, Path(db.sqlite_state_path(db.normalize_url(f"sqlite:///{path}")))):
        stale.unlink(missing_ok=True)
    settings = demo_settings(path)
    configure_logging(settings.logging)  # to stderr: stdout carries the report (or the JSON)
    engine = db.get_engine(settings)
    started = time.monotonic()
    migrate.upgrade(engine)
    now = utcnow()
    with engine.begin() as conn:
        reference.create_reference_table(conn)
        seeded = demo.seed(conn, now=now, users=users)
    report: dict[str, Any] = {"database": str(path), "seeded": seeded.__dict__, "steps": {}}
    if not as_json:
        console.print(f"[bold]sessionkeeper demo[/] on {path} (SQLite, no services needed)")
        console.print(
            f"Seeded {seeded.sessions:,} sessions for {seeded.users:,} users: "
            f"{seeded.expired:,} already expired, {seeded.revoked:,} soft-revoked, "
            f"a burst of {seeded.burst_sessions} logins on {seeded.burst_user}, "
            f"12 accounts from {seeded.burst_ip}."
        )
    for title, target in DEMO_STEPS:
        func = _step(target)
        if func is None:
            continue
        result = func(engine, settings)
        report["steps"][title] = result
        if not as_json:
            console.print(f"\n[bold]{title}[/]")
            for line in result.get("lines", []):
                console.print(f"  {line}", markup=False)
    report["seconds"] = round(time.monotonic() - started, 2)
    if as_json:
        emit_json(report)
    else:
        console.print(
            f"\nDone in {report['seconds']} s. Explore: "
            f"SESSIONKEEPER_DATABASE__URL=sqlite:///{path} sessionkeeper stats --top 10"
        )
