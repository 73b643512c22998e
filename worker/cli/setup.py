"""Set-up commands: migrate, check, profiles, config."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from worker import check, db, migrate, reference
from worker.cli.base import Cli, console, emit_json, json_option, pass_cli
from worker.profiles import PROFILES
from worker.settings import Settings


@click.command()
@click.option(
    "--reference-table",
    is_flag=True,
    help="Also create sessionkeeper's reference session table (for apps adopting ours).",
)
@json_option
@pass_cli
def migrate_command(cli: Cli, reference_table: bool, as_json: bool) -> None:
    """Upgrade sessionkeeper's own tables to the latest schema (idempotent).

    Our tables live in PostgreSQL schema "sessionkeeper" (on SQLite: a sibling file
    NAME.sessionkeeper.db); the application's tables are never altered.
    """
    engine = cli.engine
    before, after = migrate.upgrade(engine)
    created = None
    if reference_table:
        table = cli.settings.sessions.table or "sessions"
        with db.translate_errors(engine), engine.begin() as conn:
            created = reference.create_reference_table(conn, table)
    result: dict[str, Any] = {
        "database": db.safe_url(engine),
        "from": before,
        "to": after,
        "reference_table_created": created,
    }
    if as_json:
        emit_json(result)
        return
    change = "already at" if before == after else f"upgraded {before or 'empty'} ->"
    console.print(f"schema sessionkeeper: {change} {after} on {result['database']}")
    if reference_table:
        console.print("reference table: " + ("created" if created else "already present"))


@click.command()
@json_option
@pass_cli
def check_command(cli: Cli, as_json: bool) -> None:
    """Verify the session-table mapping against the live table.

    Checks the table and every mapped column exist with a compatible type, prints what
    this mapping makes possible (and why not, when not), and the exact CREATE INDEX statement
    for each missing index. Exits 2 naming the table or column when the mapping does not match.
    """
    report = check.run_check(cli.engine, cli.settings)
    if as_json:
        emit_json(report.as_dict())
        return
    console.print(
        f"[bold green]OK[/] table {report.table} ({report.dialect}"
        + (f", profile {report.profile}" if report.profile else "")
        + (", partitioned" if report.partitioned else "")
        + (f", ~{report.rows_estimate:,} rows" if report.rows_estimate else "")
        + ")"
    )
    cols = Table("key", "column", "type", "kind", box=None, pad_edge=False)
    for key, info in report.columns.items():
        cols.add_row(key, info["column"], info["type"], info["kind"])
    console.print(cols)
    console.print("\n[bold]Capabilities[/]")
    for cap in report.capabilities:
        mark = "[green]yes[/]" if cap["available"] else "[yellow]no [/]"
        console.print(f"  {mark} {cap['name']:<16} {cap['reason']}")
    console.print("\n[bold]Indexes[/]")
    for idx in report.indexes:
        if idx["indexed"]:
            console.print(f"  [green]ok[/] {idx['key']} ({idx['index'] or 'expression index'})")
        else:
            console.print(f"  [yellow]missing[/] {idx['key']} (for {idx['needed_for']}):")
            console.print(f"    {idx['create']}", markup=False)
    state = (
        "up to date"
        if report.schema_revision == report.schema_head
        else (
            "not migrated: run `sessionkeeper migrate`"
            if report.schema_revision is None
            else f"at {report.schema_revision}, head is {report.schema_head}: run `sessionkeeper migrate`"
        )
    )
    console.print(f"\nsessionkeeper schema: {state}")


@click.command()
@json_option
def profiles_command(as_json: bool) -> None:
    """List the built-in session-table profiles and the columns each maps."""
    if as_json:
        emit_json(
            [
                {"name": p.name, "framework": p.framework, "columns": p.columns, "note": p.note}
                for p in PROFILES.values()
            ]
        )
        return
    table = Table("profile", "table", "user id", "expires", "created", box=None, pad_edge=False)
    for p in PROFILES.values():
        c = p.columns
        json_user = c.get("user_id_json")
        user = c.get("user_id") or (
            " -> ".join([json_user["column"], *json_user["path"]]) if json_user else "-"
        )
        table.add_row(p.name, c["table"], user, c.get("expires_at", "-"), c.get("created_at", "-"))
    console.print(table)
    console.print()
    for p in PROFILES.values():
        console.print(f"{p.name}: {p.framework}" + (f"; {p.note}" if p.note else ""), markup=False)


@click.command()
@json_option
@pass_cli
def config_command(cli: Cli, as_json: bool) -> None:
    """Show the effective configuration (secrets hidden) and the resolved mapping."""
    from worker.sessiontable import load_mapping

    settings: Settings = cli.settings
    data = settings.model_dump(mode="json")
    mapping = load_mapping(settings)
    data["resolved_mapping"] = {
        "table": mapping.qualified_name,
        "profile": mapping.profile,
        "columns": mapping.columns,
        "time_kinds": mapping.time_kinds,
        "user_id_json": mapping.user_json,
        "revoked_when": mapping.revoked_when,
    }
    if as_json:
        emit_json(data)
        return
    for section, values in data.items():
        console.print(f"[bold]\\[{section}][/]")
        if isinstance(values, dict):
            for key, value in values.items():
                console.print(f"  {key} = {value!r}", markup=False)
