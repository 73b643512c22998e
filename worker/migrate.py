"""Our schema migrations, run through Alembic programmatically (``sessionkeeper migrate``)."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from alembic import command
from worker import db


def _find_migrations() -> Path:
    """The alembic/ folder: beside the package in a checkout, under share/ in a wheel install."""
    candidates = [
        Path(__file__).resolve().parent.parent / "alembic",
        Path(sys.prefix) / "share" / "sessionkeeper" / "alembic",
    ]
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    return candidates[0]


MIGRATIONS = _find_migrations()


def alembic_config(connection: object | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with db.translate_errors(engine), engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table_schema": db.SCHEMA})
        try:
            return ctx.get_current_revision()
        except Exception:
            return None


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade our schema; returns (revision before, revision after)."""
    before = current_revision(engine)
    with db.translate_errors(engine), engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    return before, current_revision(engine)


def downgrade(engine: Engine, revision: str = "base") -> None:
    with db.translate_errors(engine), engine.begin() as conn:
        command.downgrade(alembic_config(conn), revision)
