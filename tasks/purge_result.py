"""What a purge run did and left: the result object, its recorded figures and readable lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PurgeResult:
    """What a run did and what it left; ``figures()`` is what job_runs records."""

    table: str
    dialect: str
    dry_run: bool = False
    fast: bool = False
    outcome: str = "succeeded"
    run_id: int | None = None
    skipped: str | None = None
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    #: time spent deleting (batches, partition drops and pacing), without the counts around it
    delete_seconds: float = 0.0
    wal_bytes: int | None = None
    wal_budget_bytes_per_second: float | None = None
    max_batch_ms: float = 0.0
    max_partition_ms: float = 0.0
    paced_seconds: float = 0.0
    stopped: str | None = None
    strategy: str | None = None
    timeouts: dict[str, int] = field(default_factory=dict)
    partitions_dropped: list[str] = field(default_factory=list)
    partitions_detached: list[str] = field(default_factory=list)
    #: rows that would still go now, per reason (after the run; before it for a dry run)
    pending: dict[str, int] = field(default_factory=dict)
    expired_pending: int = 0
    lag_seconds: float = 0.0

    @property
    def deleted_total(self) -> int:
        return sum(self.deleted.values())

    @property
    def rows_per_second(self) -> float:
        spent = self.delete_seconds or self.seconds
        return round(self.deleted_total / spent, 1) if spent > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        total = self.deleted_total
        return {
            "table": self.table,
            "deleted": dict(self.deleted),
            "deleted_total": total,
            "batches": self.batches,
            "rows_per_second": self.rows_per_second,
            "delete_seconds": round(self.delete_seconds, 3),
            "wal_bytes": self.wal_bytes,
            "wal_bytes_per_row": round(self.wal_bytes / total, 1) if self.wal_bytes and total else None,
            "wal_budget_bytes_per_second": self.wal_budget_bytes_per_second,
            "max_batch_ms": round(self.max_batch_ms, 1),
            "max_partition_ms": round(self.max_partition_ms, 1) or None,
            "paced_seconds": round(self.paced_seconds, 2),
            "fast": self.fast,
            "strategy": self.strategy,
            "stopped": self.stopped,
            "timeouts": self.timeouts or None,
            "partitions_dropped": self.partitions_dropped or None,
            "partitions_detached": self.partitions_detached or None,
            "pending_after": self.pending,
            "expired_pending_after": self.expired_pending,
            "lag_seconds_after": round(self.lag_seconds, 1),
        }

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(deleted_total=self.deleted_total, rows_per_second=self.rows_per_second)
        return data


def describe(result: PurgeResult) -> list[str]:
    """A few readable lines about a run (the CLI and the demo print them)."""
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(result.deleted.items())) or "nothing"
    if result.skipped:
        return [f"skipped: {result.skipped}"]
    if result.dry_run:
        would = ", ".join(f"{k} {v:,}" for k, v in sorted(result.pending.items())) or "nothing"
        lines = [f"dry run on {result.table}: would delete {sum(result.pending.values()):,} rows ({would})"]
        if result.partitions_dropped:
            lines.append(f"would take whole partitions: {', '.join(result.partitions_dropped)}")
        return lines
    lines = [
        f"deleted {result.deleted_total:,} rows from {result.table} ({reasons}) in {result.batches} batches, "
        f"{result.seconds:.2f} s, {result.rows_per_second:,.0f} rows/s"
        + (f", strategy {result.strategy}" if result.strategy else "")
    ]
    if result.wal_bytes is not None:
        lines.append(
            f"WAL {result.wal_bytes / 1e6:,.1f} MB, slowest batch {result.max_batch_ms:.0f} ms"
            + (" (fast: unpaced)" if result.fast else f", paced {result.paced_seconds:.1f} s")
        )
    for name in result.partitions_dropped + result.partitions_detached:
        lines.append(
            f"partition {name} {'dropped' if name in result.partitions_dropped else 'detached'} whole"
        )
    left = sum(result.pending.values())
    lines.append(
        f"left: {left:,} rows still to purge"
        + (f", oldest expired {result.lag_seconds:,.0f} s ago (purge lag)" if result.expired_pending else "")
        + (f"; stopped by {result.stopped}" if result.stopped else "")
    )
    return lines
