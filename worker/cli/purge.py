"""``sessionkeeper purge``: one purge run from the command line (cron-style, no broker needed)."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from worker.cli.base import Cli, console, emit_json, json_option, pass_cli


@click.command()
@click.option("--dry-run", is_flag=True, help="Count per reason what would be deleted; delete nothing.")
@click.option(
    "--fast",
    is_flag=True,
    help="No WAL-budget pacing: full speed, for catching up in a maintenance window.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0.1),
    metavar="S",
    help="End the run after S seconds (default: purge.max_run_seconds).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1_000_000),
    metavar="N",
    help="Rows per batch transaction (default: purge.batch_size).",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    metavar="N",
    help="End the run after N rows (default: purge.max_rows_per_run).",
)
@json_option
@pass_cli
def purge_command(
    cli: Cli,
    dry_run: bool,
    fast: bool,
    max_seconds: float | None,
    batch_size: int | None,
    max_rows: int | None,
    as_json: bool,
) -> None:
    """Delete expired, idle, over-age, soft-revoked and over-cap sessions in short batches.

    Rows are taken with FOR UPDATE SKIP LOCKED in one short transaction per batch, paced by the
    server's WAL budget (purge.wal_budget_share of max_wal_size per checkpoint_timeout) unless
    --fast. Prints what it deleted per reason and what is left (the purge lag). One purge at a
    time per table: a second run started meanwhile is recorded as skipped.
    Exit codes: 0 ok (also when skipped), 1 database unreachable or the run failed, 2 mapping or
    configuration problem (nothing deleted).
    """
    from tasks.purge import purge_sessions
    from tasks.purge_result import describe

    settings, engine = cli.settings, cli.engine
    kwargs: dict[str, Any] = {
        "engine": engine,
        "settings": settings,
        "dry_run": dry_run,
        "fast": fast,
        "max_seconds": max_seconds,
        "batch_size": batch_size,
        "max_rows": max_rows,
        "trigger": "cli",
    }
    if sys.stdout.isatty() and not as_json and not dry_run:
        columns = (
            TextColumn("purging"),
            BarColumn(),
            TextColumn("{task.completed:,.0f} rows, {task.fields[batches]} batches"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("purge", total=None, batches=0)

            def on_batch(tally: Any) -> None:
                bar.update(task, completed=tally.total, batches=tally.batches)

            result = purge_sessions(**kwargs, progress=on_batch)
    else:
        result = purge_sessions(**kwargs)
    if as_json:
        emit_json(result.as_dict())
    else:
        for line in describe(result):
            console.print(line, markup=False)
