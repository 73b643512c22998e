"""What every CLI command shares: settings on demand, --json output, errors to exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from sqlalchemy.engine import Engine

from worker import db
from worker.durations import format_duration
from worker.errors import SessionkeeperError
from worker.observability import configure_logging
from worker.settings import CONFIG_ENV, Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Cli:
    """The click context object: settings are read when a command first needs them."""

    config: str | None = None

    @functools.cached_property
    def settings(self) -> Settings:
        settings = get_settings(self.config)
        configure_logging(settings.logging)
        return settings

    @property
    def engine(self) -> Engine:
        return db.get_engine(self.settings)


def set_config_path(path: str | None) -> None:
    # Exported so Celery's celeryconfig and any subprocess read the same file.
    if path:
        os.environ[CONFIG_ENV] = str(Path(path).resolve())


pass_cli = click.make_pass_decorator(Cli, ensure=True)

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout.")


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "get_secret_value"):
        return "**********"
    return str(value)


def dumps(data: Any) -> str:
    return json.dumps(data, default=_default, indent=2, sort_keys=False)


def emit_json(data: Any) -> None:
    click.echo(dumps(data))


def fail(error: SessionkeeperError, *, as_json: bool) -> None:
    """Report one of our errors and exit with its code: one line per problem, no traceback."""
    if as_json:
        emit_json({"error": {"code": error.code, "message": error.message, "problems": error.problems}})
    # Plain lines, never wrapped: one line per problem, for people and for grep alike.
    click.echo(f"sessionkeeper: {error.message}", err=True)
    for line in error.problems:
        click.echo(f"  {line}", err=True)
    sys.exit(error.exit_code)


class Group(click.Group):
    """A click group that turns our errors into exit codes and clear messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SessionkeeperError as exc:
            as_json = "--json" in sys.argv[1:]
            fail(exc, as_json=as_json)
        except KeyboardInterrupt:
            err_console.print("sessionkeeper: interrupted")
            sys.exit(130)
