"""``sessionkeeper stats``: the latest snapshot, one user's figures, the top users, or the history."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click
from rich.table import Table

from worker.cli.base import Cli, console, emit_json, json_option, pass_cli
from worker.durations import format_duration
from worker.errors import NotFound
from worker.sessiontable import utcnow

LABELS = {
    "total_rows": "rows in the table",
    "active": "active sessions",
    "expired_pending": "awaiting purge",
    "null_expiry": "without expiry (NULL)",
    "users_active": "users with an active session",
    "per_user_p50": "sessions per user p50",
    "per_user_p95": "sessions per user p95",
    "per_user_p99": "sessions per user p99",
    "per_user_max": "sessions per user max",
    "created_since_previous": "created since previous snapshot",
    "purge_lag_seconds": "purge lag (oldest purgeable row)",
    "idle_mean_seconds": "idle time, mean",
    "idle_p95_seconds": "idle time, p95",
    "table_bytes": "table size",
    "index_bytes": "index size",
}
#: history column -> short header
HISTORY_COLUMNS = {
    "total_rows": "rows",
    "active": "active",
    "expired_pending": "to purge",
    "users_active": "users",
    "per_user_max": "max/user",
    "purge_lag_seconds": "purge lag",
}


def _show(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("_seconds"):
        return format_duration(timedelta(seconds=round(float(value))))
    if key.endswith("_bytes"):
        return f"{value / 2**20:,.1f} MiB"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _print_snapshot(snap: dict[str, Any]) -> None:
    age = format_duration(timedelta(seconds=round((utcnow() - snap["taken_at"]).total_seconds())))
    taken = f"{snap['taken_at']:%Y-%m-%d %H:%M:%S} UTC"
    console.print(f"[bold]Snapshot #{snap['id']}[/] taken {taken} ({age} ago)")
    unavailable = snap.get("unavailable") or {}
    table = Table("figure", "value", box=None, pad_edge=False)
    for key, label in LABELS.items():
        reason = unavailable.get(key)
        value = snap.get(key)
        table.add_row(label, f"- ({reason})" if reason and value is None else _show(key, value))
    console.print(table)
    per_user = {k.removeprefix("user."): v for k, v in unavailable.items() if k.startswith("user.")}
    if per_user:
        console.print("per-user figures not kept: " + "; ".join(f"{k}: {v}" for k, v in per_user.items()))


def _print_users(rows: list[dict[str, Any]]) -> None:
    table = Table("user", "active", "new 24h", "IPs", "agents", "oldest", "newest", "last seen", box=None)
    for r in rows:
        times = (r["oldest_created_at"], r["newest_created_at"], r["last_activity_at"])
        table.add_row(
            r["user_id"],
            _show("n", r["active_sessions"]),
            _show("n", r["created_24h"]),
            _show("n", r["distinct_ips"]),
            _show("n", r["distinct_user_agents"]),
            *(f"{t:%m-%d %H:%M}" if t else "-" for t in times),
        )
    console.print(table)


def _print_history(rows: list[dict[str, Any]]) -> None:
    table = Table("#", "taken (UTC)", *HISTORY_COLUMNS.values(), box=None)
    for r in rows:
        table.add_row(
            str(r["id"]), f"{r['taken_at']:%m-%d %H:%M}", *(_show(c, r[c]) for c in HISTORY_COLUMNS)
        )
    console.print(table)


@click.command()
@click.option("--user", "user_id", metavar="ID", help="One user's figures.")
@click.option("--top", type=click.IntRange(1, 10_000), metavar="N", help="The N users with most sessions.")
@click.option("--history", is_flag=True, help="The snapshot history as a table, newest first.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="Rows of --history."
)
@click.option("--refresh", is_flag=True, help="Compute now (a full run) instead of reading the last run.")
@json_option
@pass_cli
def stats_command(
    cli: Cli, user_id: str | None, top: int | None, history: bool, limit: int, refresh: bool, as_json: bool
) -> None:
    """Active-session statistics: the latest global snapshot by default.

    Figures come from the last stats run (every 15 minutes on the schedule); --refresh runs
    one now and records it like any other run. Figures the mapping cannot provide are shown
    with the reason.
    """
    if sum((user_id is not None, top is not None, history)) > 1:
        raise click.UsageError("choose one of --user, --top and --history")
    # Imported here: defining the Celery task reads the settings, whose errors the group
    # reports cleanly only once a command runs (and other commands need not pay for Celery).
    from tasks import stats

    engine = cli.engine
    out: dict[str, Any] = {}
    if refresh:
        fresh = stats.refresh_stats(engine, cli.settings, trigger="cli")
        out["refreshed"] = fresh is not None
        if fresh is None and not as_json:
            console.print("another stats run holds the lock: showing the last stored figures")
    if user_id is not None:
        row = stats.user_stats(engine, user_id)
        if row is None:
            raise NotFound(
                f"no stats for user {user_id[:80]!r}",
                problems=["the user has no active session, or stats have not run yet (try --refresh)"],
            )
        out["user"] = row
        if not as_json:
            _print_users([row])
    elif top is not None:
        out["top_users"] = stats.top_users(engine, top)
        if not as_json:
            _print_users(out["top_users"]) if out["top_users"] else console.print("no user stats stored yet")
    elif history:
        out["history"] = stats.snapshot_history(engine, limit=limit)
        if not as_json:
            _print_history(out["history"]) if out["history"] else console.print("no snapshot stored yet")
    else:
        out["snapshot"] = stats.latest_snapshot(engine)
        if not as_json:
            if out["snapshot"] is None:
                console.print("no snapshot stored yet: run `sessionkeeper stats --refresh` (or the schedule)")
            else:
                _print_snapshot(out["snapshot"])
    if as_json:
        emit_json(out)
