"""The purge's batch loops: short transactions, run bounds, WAL-budget pacing, per-reason tallies.

PostgreSQL: a backlog is walked in physical order, one heap-block range per batch (every page is
dirtied once, so WAL stays near a single DELETE's and no batch rescans what earlier ones passed);
a steady trickle follows each reason's index. SQLite walks ``rowid`` for the same flat cost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tasks import purge_sql as q
from worker.observability import get_logger

log = get_logger("sessionkeeper.purge")

#: a batch slower than this shrinks the next block range (ms)
TARGET_BATCH_MS = 100.0
#: largest block range one batch scans (8 KiB blocks: 16 MiB)
MAX_RANGE_BLOCKS = 2048
#: give up the run after this many timeouts in a row (the table is busy with DDL or long locks)
MAX_CONSECUTIVE_TIMEOUTS = 5
#: sqlstates that end a batch, not the run: lock_not_available, query_canceled, deadlock_detected
RETRYABLE = {"55P03": "lock_timeouts", "57014": "statement_timeouts", "40P01": "deadlocks"}


@dataclass
class Tally:
    """What a run did so far; the figures recorded in job_runs come from here."""

    deleted: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    wal_bytes: int = 0
    max_batch_ms: float = 0.0
    #: slowest whole partition taken (detach + count + drop)
    max_partition_ms: float = 0.0
    batch_seconds: float = 0.0
    paced_seconds: float = 0.0
    timeouts: Counter[str] = field(default_factory=Counter)
    stopped: str | None = None
    strategies: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


@dataclass
class Bounds:
    """Run bounds: a monotonic deadline and an optional row budget."""

    deadline: float
    max_rows: int | None
    batch_size: int

    def limit(self, done: int) -> int:
        if self.max_rows is None:
            return self.batch_size
        return max(0, min(self.batch_size, self.max_rows - done))

    def exhausted(self, done: int) -> str | None:
        if self.max_rows is not None and done >= self.max_rows:
            return "max_rows"
        if time.monotonic() >= self.deadline:
            return "max_seconds"
        return None


class Pacer:
    """Keeps the purge's WAL rate at or under ``rate`` bytes/s (None: no pacing, ``--fast``)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.started = time.monotonic()
        self.spent = 0

    def wait(self, wal_bytes: int) -> float:
        """Seconds to sleep so the WAL written so far stays within budget."""
        self.spent += max(0, wal_bytes)
        if self.rate is None:
            return 0.0
        return max(0.0, self.started + self.spent / self.rate - time.monotonic())


Progress = Callable[[Tally], None]


class PgBatcher:
    """Runs PostgreSQL batches on one connection, one short transaction each."""

    def __init__(
        self,
        conn: Connection,
        *,
        tally: Tally,
        bounds: Bounds,
        pacer: Pacer,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        progress: Progress | None = None,
    ) -> None:
        self.conn, self.tally, self.bounds, self.pacer = conn, tally, bounds, pacer
        self.timeouts = {
            "lock_timeout": f"{lock_timeout_ms}ms",
            "statement_timeout": f"{statement_timeout_ms}ms",
        }
        self.progress = progress
        self._failures = 0
        #: the last batch's own duration (pacing sleeps excluded): what sizes the next range
        self.last_ms = 0.0

    def execute(
        self, stmt: sa.Executable, params: dict[str, Any], *, counted: bool
    ) -> tuple[int, str | None] | None:
        """One batch in its own transaction: (rows deleted, last tid), or None if it timed out.

        The WAL position is read inside the batch (before and after its DELETE), so the WAL
        measured is this batch's own (plus whatever others wrote in those milliseconds).
        """
        if self.conn.in_transaction():  # a read before this batch (facts, probes) autobegan one
            self.conn.commit()
        started = time.monotonic()
        last: str | None = None
        try:
            with self.conn.begin():
                before = str(self.conn.execute(q.pg_set_timeouts(), self.timeouts).one()[2])
                after = before
                result = self.conn.execute(stmt, params)
                if counted:
                    counts: dict[str, int] = {}
                    for reason, n, last_tid, lsn in result:
                        counts[str(reason)] = int(n)
                        after = str(lsn)
                        if last_tid and (last is None or q.tid_block(last_tid) > q.tid_block(last)):
                            last = str(last_tid)
                else:
                    counts = {"cap": int(result.rowcount)}
                    after = str(self.conn.execute(q.WAL_LSN).scalar_one())
        except sa.exc.DBAPIError as exc:
            kind = RETRYABLE.get(getattr(exc.orig, "sqlstate", None) or "")
            if kind is None:
                raise
            self.tally.timeouts[kind] += 1
            self._failures += 1
            log.warning("purge_batch_timed_out", kind=kind, consecutive=self._failures)
            if self._failures >= MAX_CONSECUTIVE_TIMEOUTS:
                self.tally.stopped = kind
            else:
                time.sleep(min(2.0, 0.1 * 2**self._failures))
            return None
        elapsed = time.monotonic() - started
        self.last_ms = elapsed * 1000
        self._failures = 0
        wal = q.parse_lsn(after) - q.parse_lsn(before)
        n = sum(counts.values())
        if n:
            self.tally.deleted.update(counts)
            self.tally.batches += 1
        self.tally.wal_bytes += wal
        self.tally.batch_seconds += elapsed
        self.tally.max_batch_ms = max(self.tally.max_batch_ms, elapsed * 1000)
        if self.progress is not None:
            self.progress(self.tally)
        self._pace(wal)
        return n, last

    def _pace(self, wal: int) -> None:
        wait = self.pacer.wait(wal)
        if wait <= 0:
            return
        left = self.bounds.deadline - time.monotonic()
        time.sleep(max(0.0, min(wait, left)))
        self.tally.paced_seconds += max(0.0, min(wait, left))

    def stop(self) -> bool:
        if self.tally.stopped is None:
            self.tally.stopped = self.bounds.exhausted(self.tally.total)
        return self.tally.stopped is not None

    def walk(self, table: sa.Table, reasons: q.Reasons) -> None:
        """Walk the heap from block 0 to its size at the start, one block range per batch."""
        rel = self.conn.dialect.identifier_preparer.format_table(table)
        blocks, per_block = self.conn.execute(q.heap_facts(table), {"rel": rel}).one()
        self.conn.commit()
        end = int(blocks or 0)
        per_block = float(per_block) if per_block and per_block > 0 else 40.0
        # Assume half the rows qualify; the loop adapts to the density it meets.
        span = max(1, min(MAX_RANGE_BLOCKS, int(2 * self.bounds.batch_size / per_block)))
        stmt = q.pg_range_batch(table, reasons)
        lo = 0
        while lo < end and not self.stop():
            limit = self.bounds.limit(self.tally.total)
            hi = min(end, lo + span)
            done = self.execute(stmt, {"lo": f"({lo},0)", "hi": f"({hi},0)", "limit": limit}, counted=True)
            ms = self.last_ms
            if done is None:  # timed out: retry a smaller range
                span = max(1, span // 2)
                continue
            n, last = done
            if n >= limit and last is not None:
                # the range held more than a batch: go on from the last block taken (no rescan)
                lo = q.tid_block(last)
                span = max(1, span // 2) if ms > TARGET_BATCH_MS else span
                continue
            lo = hi
            if ms > TARGET_BATCH_MS:
                span = max(1, span // 2)
            elif n < limit // 2:
                span = min(MAX_RANGE_BLOCKS, span * 2)

    def by_index(
        self,
        table: sa.Table,
        reasons: q.Reasons,
        order: dict[str, sa.ColumnElement[Any] | None],
    ) -> None:
        """Each reason in turn, following its index, until a batch comes back short."""
        for reason in reasons:
            stmt = q.pg_index_batch(table, reasons, reason, order.get(reason))
            while not self.stop():
                limit = self.bounds.limit(self.tally.total)
                done = self.execute(stmt, {"limit": limit}, counted=True)
                if done is not None and done[0] < limit:
                    break

    def cap(self, table: sa.Table, id_col: sa.ColumnElement[Any], victims: sa.Select[Any]) -> None:
        stmt = q.pg_cap_batch(table, id_col, victims)
        while not self.stop():
            limit = self.bounds.limit(self.tally.total)
            done = self.execute(stmt, {"limit": limit}, counted=False)
            if done is not None and done[0] < limit:
                break


def sqlite_purge(
    conn: Connection,
    table: sa.Table,
    reasons: q.Reasons,
    *,
    cap: tuple[sa.ColumnElement[Any], sa.Select[Any]] | None,
    tally: Tally,
    bounds: Bounds,
    progress: Progress | None = None,
) -> None:
    """The portable path: rowid order (flat cost), one short write transaction per batch."""

    def record(counts: Counter[str], started: float) -> None:
        elapsed = time.monotonic() - started
        if counts:
            tally.deleted.update(counts)
            tally.batches += 1
        tally.batch_seconds += elapsed
        tally.max_batch_ms = max(tally.max_batch_ms, elapsed * 1000)
        if progress is not None:
            progress(tally)

    def stop() -> bool:
        tally.stopped = tally.stopped or bounds.exhausted(tally.total)
        return tally.stopped is not None

    if reasons:
        stmt = q.sqlite_batch(table, reasons)
        after = 0
        while not stop():
            limit = bounds.limit(tally.total)
            started = time.monotonic()
            with conn.begin():
                rows = conn.execute(stmt, {"after": after, "limit": limit}).all()
            record(Counter(str(r[1]) for r in rows), started)
            if len(rows) < limit:
                break
            after = max(int(r[0]) for r in rows)
    if cap is not None:
        cap_stmt = q.sqlite_cap_batch(table, *cap)
        while not stop():
            limit = bounds.limit(tally.total)
            started = time.monotonic()
            with conn.begin():
                n = int(conn.execute(cap_stmt, {"limit": limit}).rowcount)
            record(Counter({"cap": n}) if n else Counter(), started)
            if n < limit:
                break
