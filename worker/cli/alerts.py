"""`sessionkeeper alerts`: list alerts and their deliveries; `alerts test`: try every sink now."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from worker.alert import dispatch, store
from worker.cli.base import Cli, console, emit_json, json_option, pass_cli


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return store.parse_since(value, now=datetime.now(UTC))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@click.group(invoke_without_command=True)
@click.option("--open", "open_only", is_flag=True, help="Only alerts still open.")
@click.option(
    "--since",
    metavar="T",
    callback=_since,
    help="Only alerts seen since T: a duration back from now (2h, 7d) or an ISO time (UTC).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=store.DEFAULT_LIMIT,
    show_default=True,
    help="At most this many, most recently seen first.",
)
@json_option
@click.pass_context
def alerts_command(
    ctx: click.Context, open_only: bool, since: datetime | None, limit: int, as_json: bool
) -> None:
    """List alerts (newest first) with their delivery state; `alerts test` checks the sinks.

    Each alert shows what was seen and, in --json, the whole explanation (window, observed,
    expected, baseline, threshold, score) and how many notifications are sent, pending, failed.
    """
    if ctx.invoked_subcommand is not None:
        return
    cli = ctx.ensure_object(Cli)
    rows = store.list_alerts(cli.engine, open_only=open_only, since=since, limit=limit)
    if as_json:
        emit_json({"alerts": rows, "count": len(rows)})
        return
    if not rows:
        console.print("no alerts" + (" open" if open_only else "") + (" in that window" if since else ""))
        return
    table = Table(
        "id",
        "state",
        "severity",
        "rule",
        "entity",
        "last seen (UTC)",
        "count",
        "value",
        "sent/pending/failed",
        box=None,
        pad_edge=False,
    )
    for row in rows:
        d = row["deliveries"]
        colour = {"critical": "red", "warning": "yellow"}.get(row["severity"], "white")
        table.add_row(
            str(row["id"]),
            row["state"],
            f"[{colour}]{row['severity']}[/]",
            row["rule"],
            row["entity"],
            _when(row["last_seen"]),
            str(row["count"]),
            _value(row["last_value"]),
            f"{d['sent']}/{d['pending']}/{d['failed']}",
        )
    console.print(table)


@alerts_command.command("test")
@json_option
@pass_cli
def test_command(cli: Cli, as_json: bool) -> None:
    """Send a test alert through every configured sink now and report each (exit 1 if any failed).

    Goes straight to the sinks, not through the queue, so it also works while the database
    is down. The log sink always takes part; Sentry when sentry.dsn is set; then each webhook.
    """
    results: list[dict[str, Any]] = dispatch.send_test(cli.settings)
    ok = all(r["ok"] for r in results)
    if as_json:
        emit_json({"ok": ok, "sinks": results})
    else:
        for r in results:
            mark = "[green]ok[/]  " if r["ok"] else "[red]FAIL[/]"
            detail = f"HTTP {r['status_code']}" if r["ok"] and r["status_code"] else (r["error"] or "")
            console.print(f"{mark} {r['sink']:<16} {r['kind']:<8} {r['seconds']:.3f}s  {detail}")
    sys.exit(0 if ok else 1)
