"""``sessionkeeper scan``: run one anomaly scan now, in-process (no broker needed)."""

from __future__ import annotations

import click

from worker.cli.base import Cli, console, emit_json, json_option, pass_cli


@click.command()
@json_option
@pass_cli
def scan_command(cli: Cli, as_json: bool) -> None:
    """Run one anomaly scan: roll up new sessions, run the detectors, update alerts.

    The first scan on a table backfills the rollups from sessions created within
    anomaly.backfill_horizon (default 8 days). Notifications are queued in the alert outbox;
    `sessionkeeper alerts` lists the alerts. Without a mapped created_at column only the
    operational rules (purge lag, table growth) run, and the output says so.
    """
    from tasks.anomaly import scan  # imported here: the scan pulls in the Celery app

    result = scan.run_scan(cli.engine, cli.settings, trigger="cli")
    if as_json:
        emit_json(result.summary())
        return
    if result.skipped:
        console.print(f"scan skipped: {result.skipped}")
        return
    f = result.figures
    if result.unavailable:
        console.print(result.unavailable)
    else:
        what = "backfilled" if f.get("backfill") else "read"
        console.print(
            f"scan: {what} {f.get('sessions_read', 0):,} new sessions, "
            f"{f.get('rollup_rows', 0):,} rollup rows, in {f.get('seconds', 0)} s"
        )
    for finding in result.findings:
        console.print(f"  {finding.severity.upper():8} {finding.rule}: {finding.reason}", markup=False)
    if not result.findings:
        console.print("  no anomaly")
    console.print(f"notifications queued: {f.get('notifications', 0)}")
