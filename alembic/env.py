"""Alembic environment: our tables only, in schema sessionkeeper (an ATTACHed file on SQLite)."""

from __future__ import annotations

import sqlalchemy as sa

from alembic import context
from worker import db, models

config = context.config


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Only ever compare and migrate our own schema; the application's tables are not ours.
    if type_ == "table":
        return getattr(obj, "schema", None) == db.SCHEMA
    return True


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        from worker.settings import get_settings

        engine = db.get_engine(get_settings())
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    else:
        _run(connection)


def _run(connection: sa.Connection) -> None:
    if db.is_postgres(connection):
        connection.execute(sa.schema.CreateSchema(db.SCHEMA, if_not_exists=True))
    context.configure(
        connection=connection,
        target_metadata=models.metadata,
        version_table_schema=db.SCHEMA,
        include_schemas=True,
        include_object=include_object,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
