"""Range-partitioned session tables: whole expired partitions go by DETACH (+ DROP), not by DELETE.

Dropping a day costs tens of milliseconds whatever its size and writes almost no WAL; ``DETACH
... CONCURRENTLY`` takes no lock the app waits on. Only partitions of a range key on the expiry
column whose upper bound is at or below the cutoff are taken whole; the boundary partition (and
every other leaf, for the other reasons) is then purged in batches like a plain table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tasks import purge_sql as q
from tasks.purge_batch import Tally
from worker.observability import get_logger
from worker.sessiontable import SessionTable

log = get_logger("sessionkeeper.purge")


@dataclass(frozen=True)
class Leaf:
    schema: str
    name: str
    bound: str | None
    detach_pending: bool
    level: int
    is_leaf: bool


def _rel(conn: Connection, table: sa.Table) -> str:
    return conn.dialect.identifier_preparer.format_table(table)


def partitions(conn: Connection, st: SessionTable) -> list[Leaf] | None:
    """The table's partitions (every level), or None when it is not partitioned."""
    rel = _rel(conn, st.table)
    key = conn.execute(q.PARTITION_KEY, {"rel": rel}).first()
    if key is None:
        return None
    rows = conn.execute(q.PARTITIONS, {"rel": rel}).all()
    return [
        Leaf(
            schema=r[0],
            name=r[1],
            bound=r[2],
            detach_pending=bool(r[3]),
            level=int(r[4]),
            is_leaf=r[5] == "r",
        )
        for r in rows
    ]


def keyed_on_expiry(conn: Connection, st: SessionTable) -> bool:
    """True when the table is range-partitioned on exactly the mapped expiry column."""
    expires = st.c("expires_at")
    row = conn.execute(q.PARTITION_KEY, {"rel": _rel(conn, st.table)}).first()
    return bool(row and expires is not None and row[0] == "r" and row[1] == expires.name and row[2] == 1)


def expired_partitions(conn: Connection, st: SessionTable, cutoff_value: object) -> list[Leaf]:
    """Top-level partitions whose every row is past the cutoff (upper bound <= cutoff), oldest first."""
    found = partitions(conn, st)
    if not found or not keyed_on_expiry(conn, st):
        return []
    expires = st.need("expires_at")
    whole = []
    for leaf in found:
        upper = q.upper_bound(leaf.bound)
        if leaf.level != 1 or upper is None:
            continue
        if conn.execute(q.bound_below(expires, upper, cutoff_value)).scalar():
            whole.append((upper, leaf))
    whole.sort(key=lambda pair: pair[0])
    return [leaf for _, leaf in whole]


def take_partitions(
    engine: Engine,
    st: SessionTable,
    leaves: list[Leaf],
    *,
    drop: bool,
    lock_timeout_ms: int,
    tally: Tally,
    deadline_left: float,
) -> tuple[list[str], list[str]]:
    """Detach (concurrently when possible) and drop each partition; returns (dropped, detached)."""
    dropped: list[str] = []
    detached: list[str] = []
    ends = time.monotonic() + deadline_left
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.select(sa.func.set_config("lock_timeout", f"{lock_timeout_ms}ms", False)))
        try:
            rel = _rel(conn, st.table)
            pending = {(r[0], r[1]) for r in conn.execute(q.PENDING_DETACH, {"rel": rel})}
            for leaf in leaves:
                if time.monotonic() >= ends:
                    tally.stopped = "max_seconds"
                    break
                table = q.leaf_table(st.table, leaf.schema, leaf.name)
                name = f"{leaf.schema}.{leaf.name}"
                took = time.monotonic()
                try:
                    _detach(conn, st.table, table, finalize=(leaf.schema, leaf.name) in pending)
                except sa.exc.DBAPIError as exc:
                    if getattr(exc.orig, "sqlstate", None) != "55P03":
                        raise
                    tally.timeouts["lock_timeouts"] += 1
                    log.warning("purge_partition_detach_timed_out", partition=name)
                    continue
                rows = int(conn.execute(q.count_rows(table)).scalar_one())
                tally.deleted["expired"] += rows
                if drop:
                    conn.execute(sa.schema.DropTable(table))
                    dropped.append(name)
                else:
                    detached.append(name)
                ms = (time.monotonic() - took) * 1000
                tally.max_partition_ms = max(tally.max_partition_ms, ms)
                log.info("purge_partition_taken", partition=name, rows=rows, dropped=drop, ms=round(ms, 1))
        finally:
            conn.execute(sa.text("RESET lock_timeout"))
    return dropped, detached


def _detach(conn: Connection, parent: sa.Table, leaf: sa.Table, *, finalize: bool) -> None:
    if finalize:  # an earlier concurrent detach was interrupted: finish it
        conn.execute(q.DetachPartition(parent, leaf, "FINALIZE"))
        return
    try:
        conn.execute(q.DetachPartition(parent, leaf, "CONCURRENTLY"))
    except sa.exc.DBAPIError as exc:
        # CONCURRENTLY is refused when the table has a default partition (SQLSTATE 55000):
        # fall back to a plain detach, which briefly locks the parent (bounded by lock_timeout).
        if getattr(exc.orig, "sqlstate", None) != "55000":
            raise
        conn.execute(q.DetachPartition(parent, leaf))


def leaf_tables(conn: Connection, st: SessionTable) -> list[sa.Table]:
    """Every leaf partition still attached, as Tables with the parent's columns."""
    return [
        q.leaf_table(st.table, leaf.schema, leaf.name) for leaf in partitions(conn, st) or [] if leaf.is_leaf
    ]
