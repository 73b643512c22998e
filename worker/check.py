"""``sessionkeeper check``: the mapping against the live table, capabilities, index advice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker import db, migrate
from worker.sessiontable import SessionTable, load_mapping
from worker.settings import Settings

#: mapped keys whose lookups need an index, and which job needs it
INDEXED_KEYS = {"expires_at": "purge", "user_id": "stats and revocation", "created_at": "anomaly scan"}


@dataclass
class CheckReport:
    table: str
    profile: str | None
    dialect: str
    columns: dict[str, dict[str, str]]
    capabilities: list[dict[str, Any]]
    indexes: list[dict[str, Any]] = field(default_factory=list)
    schema_revision: str | None = None
    schema_head: str | None = None
    partitioned: bool = False
    rows_estimate: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_check(engine: Engine, settings: Settings) -> CheckReport:
    """Reflect the table (MappingMismatch when it does not match) and gather the report."""
    mapping = load_mapping(settings)
    with db.translate_errors(engine), engine.connect() as conn:
        table = mapping.reflect(conn)
        columns = {
            key: {"column": col.name, "type": _type_name(col, conn), "kind": mapping.time_kinds.get(key, "")}
            for key, col in ((k, table.c(k)) for k in mapping.columns)
            if col is not None
        }
        if mapping.user_json:
            col_name, path = mapping.user_json
            columns["user_id"] = {
                "column": f"{col_name} -> {' -> '.join(path)}",
                "type": _type_name(table.table.c[col_name], conn),
                "kind": "json path",
            }
        report = CheckReport(
            table=mapping.qualified_name,
            profile=mapping.profile,
            dialect=conn.dialect.name,
            columns=columns,
            capabilities=[asdict(c) for c in mapping.capabilities(settings.policy)],
            indexes=_index_advice(conn, table),
        )
        if db.is_postgres(conn):
            report.partitioned, report.rows_estimate = _pg_table_facts(conn, table)
    report.schema_revision = migrate.current_revision(engine)
    report.schema_head = migrate.head_revision()
    return report


def _type_name(col: sa.ColumnElement[Any], conn: Connection) -> str:
    return str(col.type.compile(dialect=conn.dialect))


def _pg_table_facts(conn: Connection, table: SessionTable) -> tuple[bool, int | None]:
    row = conn.execute(
        sa.text("SELECT c.relkind, c.reltuples FROM pg_class c WHERE c.oid = to_regclass(:name)"),
        {"name": conn.dialect.identifier_preparer.format_table(table.table)},
    ).first()
    if row is None:
        return False, None
    return row[0] == "p", (int(row[1]) if row[1] is not None and row[1] >= 0 else None)


def _index_advice(conn: Connection, table: SessionTable) -> list[dict[str, Any]]:
    """For each lookup column: the index that serves it, or the statement that would create it."""
    mapping = table.mapping
    inspector = sa.inspect(conn)
    existing = inspector.get_indexes(mapping.name, schema=mapping.schema)
    pk = inspector.get_pk_constraint(mapping.name, schema=mapping.schema).get("constrained_columns") or []
    leading = {idx["column_names"][0]: idx["name"] for idx in existing if idx.get("column_names")}
    expressions = [str(e) for idx in existing for e in (idx.get("expressions") or [])]
    if pk:
        leading.setdefault(pk[0], "primary key")
    prep = conn.dialect.identifier_preparer
    qualified = prep.format_table(table.table)
    concurrently = " CONCURRENTLY" if db.is_postgres(conn) else ""
    advice = []
    for key, why in INDEXED_KEYS.items():
        if key == "user_id" and mapping.user_json:
            expr = table.user_expr
            assert expr is not None  # noqa: S101 - user_json implies an expression
            sql_expr = str(expr.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
            sql_expr = sql_expr.replace(f"{qualified}.", "")
            found = any(mapping.user_json[0] in e for e in expressions)
            name = f"ix_{mapping.name}_user_json"
            advice.append(
                {
                    "key": key,
                    "needed_for": why,
                    "indexed": found,
                    "index": None,
                    "create": None
                    if found
                    else f"CREATE INDEX{concurrently} {prep.quote(name)} ON {qualified} (({sql_expr}));",
                }
            )
            continue
        col_name = mapping.columns.get(key)
        if col_name is None:
            continue
        index = leading.get(col_name)
        name = f"ix_{mapping.name}_{col_name}"
        advice.append(
            {
                "key": key,
                "needed_for": why,
                "indexed": index is not None,
                "index": index,
                "create": None
                if index
                else _create_index(concurrently, prep.quote(name), qualified, prep.quote(col_name)),
            }
        )
    return advice


def _create_index(concurrently: str, name: str, table: str, expression: str) -> str:
    return f"CREATE INDEX{concurrently} {name} ON {table} ({expression});"
