"""Every statement the purge job runs, built with SQLAlchemy Core from the mapping's Table.

Kept together so they can be read and ``EXPLAIN``ed side by side. The PostgreSQL statements pick
rows with ``FOR UPDATE SKIP LOCKED`` (a row the app holds is left for the next batch, never waited
on) and delete by ``ctid = ANY(ARRAY(...))``: the array form keeps a TID scan where ``IN (SELECT
... LIMIT n)`` turns into a hash join over the whole table once ``n`` is large. The SQLite
statements walk ``rowid`` the same way, because SQLite has neither row locks nor TID scans.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ReturningDelete
from sqlalchemy.sql.expression import ClauseElement, Executable
from sqlalchemy.types import UserDefinedType

Reasons = dict[str, sa.ColumnElement[bool]]


class Tid(UserDefinedType[str]):
    """PostgreSQL's ``tid`` (a heap tuple's physical address, "(block,offset)")."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "tid"


def _ctid() -> sa.ColumnClause[str]:
    # Unqualified on purpose: inside each SELECT it names that SELECT's own table's rows.
    return sa.column("ctid", Tid())


def _rowid() -> sa.ColumnClause[int]:
    return sa.column("rowid", sa.Integer())


def reason_case(reasons: Reasons) -> sa.ColumnElement[str]:
    """The first matching reason's name: each deleted row is counted under exactly one reason."""
    return sa.case(
        *((clause, sa.literal(name)) for name, clause in reasons.items()), else_=sa.literal("other")
    )


def any_reason(reasons: Reasons) -> sa.ColumnElement[bool]:
    return sa.or_(*reasons.values())


def retarget(clause: Any, source: sa.Table, target: sa.Table) -> Any:
    """The same clause on another table with the same columns (a partition of ``source``)."""

    def swap(element: Any, **_kw: Any) -> Any:
        if isinstance(element, sa.Column) and element.table is source:
            return target.c[element.name]
        return None

    return visitors.replacement_traverse(clause, {}, swap)


def leaf_table(source: sa.Table, schema: str, name: str) -> sa.Table:
    """A Table for one partition, with the parent's reflected columns."""
    return sa.Table(
        name, sa.MetaData(), *(sa.Column(c.name, c.type, key=c.key) for c in source.columns), schema=schema
    )


# --- PostgreSQL batches -------------------------------------------------------------------


def _counted_delete(
    table: sa.Table, where: sa.ColumnElement[bool], case: sa.ColumnElement[str]
) -> sa.Select[Any]:
    """Rows (reason, n, last tid deleted, WAL position after the delete): one round trip per batch."""
    deleted = (
        sa.delete(table).where(where).returning(case.label("reason"), _ctid().label("tid")).cte("deleted")
    )
    return sa.select(
        deleted.c.reason,
        sa.func.count().label("n"),
        sa.cast(sa.func.max(deleted.c.tid), sa.Text()).label("last_tid"),
        sa.cast(sa.func.pg_current_wal_insert_lsn(), sa.Text()).label("lsn"),
    ).group_by(deleted.c.reason)


def pg_range_batch(table: sa.Table, reasons: Reasons) -> sa.Select[Any]:
    """Delete what qualifies in heap blocks [lo, hi): a TID range scan, flat cost at any table size.

    Params: ``lo``, ``hi`` ("(block,0)" tids), ``limit``. Returns (reason, n) rows.
    """
    ctid = _ctid()
    picked = (
        sa.select(ctid)
        .select_from(table)
        .where(
            ctid >= sa.cast(sa.bindparam("lo", type_=sa.Text()), Tid()),
            ctid < sa.cast(sa.bindparam("hi", type_=sa.Text()), Tid()),
            any_reason(reasons),
        )
        .limit(sa.bindparam("limit", type_=sa.Integer()))
        .with_for_update(skip_locked=True)
        .correlate(None)
    )
    return _counted_delete(
        table, ctid == sa.any_(sa.func.array(picked.scalar_subquery())), reason_case(reasons)
    )


def pg_index_batch(
    table: sa.Table, reasons: Reasons, reason: str, order_by: sa.ColumnElement[Any] | None
) -> sa.Select[Any]:
    """Delete the next rows of one reason in its index's order (the steady trickle). Param: ``limit``."""
    ctid = _ctid()
    picked = sa.select(ctid).select_from(table).where(reasons[reason])
    if order_by is not None:
        picked = picked.order_by(order_by)
    picked = (
        picked.limit(sa.bindparam("limit", type_=sa.Integer()))
        .with_for_update(skip_locked=True)
        .correlate(None)
    )
    return _counted_delete(
        table, ctid == sa.any_(sa.func.array(picked.scalar_subquery())), reason_case(reasons)
    )


def pg_cap_batch(table: sa.Table, id_col: sa.ColumnElement[Any], victims: sa.Select[Any]) -> sa.Delete:
    """Delete up to ``limit`` over-cap sessions (least recently active first), skipping locked rows."""
    locked = (
        sa.select(id_col)
        .where(id_col.in_(victims.limit(sa.bindparam("limit", type_=sa.Integer())).scalar_subquery()))
        .with_for_update(skip_locked=True)
        .correlate(None)
    )
    return sa.delete(table).where(id_col == sa.any_(sa.func.array(locked.scalar_subquery())))


def pg_probe(table: sa.Table, clause: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """How many rows match, counting no further than ``limit`` (bounded cost: strategy choice)."""
    probe = (
        sa.select(sa.literal(1).label("one"))
        .select_from(table)
        .where(clause)
        .limit(sa.bindparam("limit", type_=sa.Integer()))
        .subquery("probe")
    )
    return sa.select(sa.func.count()).select_from(probe)


def pg_set_timeouts() -> sa.Select[Any]:
    """SET LOCAL lock_timeout / statement_timeout, and the WAL position before the batch.

    ``set_config(..., true)`` is SET LOCAL that takes bind parameters. (``synchronous_commit =
    off`` per batch was tried and measured no faster, so batches keep the server's setting.)
    """
    return sa.select(
        sa.func.set_config("lock_timeout", sa.bindparam("lock_timeout", type_=sa.Text()), True),
        sa.func.set_config("statement_timeout", sa.bindparam("statement_timeout", type_=sa.Text()), True),
        sa.cast(sa.func.pg_current_wal_insert_lsn(), sa.Text()),
    )


WAL_LSN = sa.select(sa.func.pg_current_wal_insert_lsn())
WAL_SETTINGS = sa.select(
    sa.func.pg_size_bytes(sa.func.current_setting("max_wal_size")),
    sa.cast(
        sa.select(sa.column("setting"))
        .select_from(sa.table("pg_settings"))
        .where(sa.column("name") == "checkpoint_timeout")
        .scalar_subquery(),
        sa.Integer(),
    ),
)


def heap_facts(table: sa.Table) -> sa.Select[Any]:
    """Current heap size in blocks and the planner's rows-per-block estimate (param: ``rel``)."""
    rel = sa.func.to_regclass(sa.bindparam("rel", type_=sa.Text()))
    pg_class = sa.table("pg_class", sa.column("oid"), sa.column("reltuples"), sa.column("relpages"))
    return sa.select(
        sa.func.pg_relation_size(rel) / sa.cast(sa.func.current_setting("block_size"), sa.BigInteger()),
        sa.select(pg_class.c.reltuples / sa.func.greatest(pg_class.c.relpages, 1))
        .where(pg_class.c.oid == rel)
        .scalar_subquery(),
    )


def tid_block(text: str) -> int:
    """The block number of a tid's text form "(block,offset)"."""
    return int(text.strip("()").split(",")[0])


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


# --- SQLite batches -----------------------------------------------------------------------


def sqlite_batch(table: sa.Table, reasons: Reasons) -> ReturningDelete[Any, Any]:
    """Delete the next ``limit`` qualifying rows after rowid ``after``; returns (rowid, reason)."""
    rowid = _rowid()
    picked = (
        sa.select(rowid)
        .select_from(table)
        .where(rowid > sa.bindparam("after", type_=sa.Integer()), any_reason(reasons))
        .order_by(rowid)
        .limit(sa.bindparam("limit", type_=sa.Integer()))
        .correlate(None)
    )
    return sa.delete(table).where(rowid.in_(picked.scalar_subquery())).returning(rowid, reason_case(reasons))


def sqlite_cap_batch(table: sa.Table, id_col: sa.ColumnElement[Any], victims: sa.Select[Any]) -> sa.Delete:
    return sa.delete(table).where(id_col.in_(victims.limit(sa.bindparam("limit", type_=sa.Integer()))))


# --- counts (both dialects) -------------------------------------------------------------------


def pending_by_reason(table: sa.Table, reasons: Reasons) -> sa.Select[Any]:
    """Rows that would go now, per first matching reason: (reason, n)."""
    sub = sa.select(reason_case(reasons).label("reason")).select_from(table).where(any_reason(reasons))
    sub_q = sub.subquery("pending")
    return sa.select(sub_q.c.reason, sa.func.count()).group_by(sub_q.c.reason)


def cap_pending(victims: sa.Select[Any]) -> sa.Select[Any]:
    return sa.select(sa.func.count()).select_from(victims.subquery("victims"))


def oldest_expired(
    table: sa.Table, expired: sa.ColumnElement[bool], expires: sa.ColumnElement[Any]
) -> sa.Select[Any, Any]:
    """Rows past expiry + grace still present and the oldest expiry among them (the purge lag)."""
    stmt: sa.Select[Any, Any] = (
        sa.select(sa.func.count(), sa.func.min(expires)).select_from(table).where(expired)
    )
    return stmt


# --- partitions (PostgreSQL) -------------------------------------------------------------------

PARTITIONS = sa.text(
    """
    SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending,
           t.level, c.relkind
    FROM pg_partition_tree(to_regclass(:rel)) t
    JOIN pg_class c ON c.oid = t.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
    WHERE t.level > 0
    ORDER BY t.level, c.relname
    """
)

PARTITION_KEY = sa.text(
    """
    SELECT p.partstrat, a.attname, p.partnatts
    FROM pg_partitioned_table p
    JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = to_regclass(:rel)
    """
)

PENDING_DETACH = sa.text(
    "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE i.inhparent = to_regclass(:rel) AND i.inhdetachpending"
)

_UPPER = re.compile(r"\bTO \((.*)\)\s*$", re.DOTALL)


def upper_bound(bound_expr: str | None) -> str | None:
    """The exclusive upper bound's literal from "FOR VALUES FROM (...) TO (...)", or None."""
    if not bound_expr:
        return None
    match = _UPPER.search(bound_expr)
    if match is None:
        return None
    value = match.group(1).strip()
    if value.upper() == "MAXVALUE" or "," in value:
        return None
    return value[1:-1].replace("''", "'") if value.startswith("'") else value


def bound_below(col: sa.ColumnElement[Any], upper: str, cutoff: Any) -> sa.Select[Any]:
    """Is a partition's upper bound at or below the cutoff (so every row in it is expired)?"""
    return sa.select(sa.cast(sa.literal(upper), col.type) <= sa.bindparam("cutoff", cutoff, type_=col.type))


class DetachPartition(Executable, ClauseElement):
    """``ALTER TABLE parent DETACH PARTITION leaf [CONCURRENTLY | FINALIZE]`` (no Core construct)."""

    inherit_cache = False

    def __init__(self, parent: sa.Table, leaf: sa.Table, mode: str = "") -> None:
        self.parent, self.leaf = parent, leaf
        self.mode = mode  # "", "CONCURRENTLY" or "FINALIZE"


@compiles(DetachPartition)
def _compile_detach(element: DetachPartition, compiler: SQLCompiler, **_kw: Any) -> str:
    prep = compiler.preparer
    suffix = {"": "", "CONCURRENTLY": " CONCURRENTLY", "FINALIZE": " FINALIZE"}[element.mode]
    parent, leaf = prep.format_table(element.parent), prep.format_table(element.leaf)
    return f"ALTER TABLE {parent} DETACH PARTITION {leaf}{suffix}"


def count_rows(table: sa.Table) -> sa.Select[Any]:
    return sa.select(sa.func.count()).select_from(table)
