"""The anomaly scan's part of ``sessionkeeper demo``: backfill, detect, and show what fired."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from tasks.anomaly import scan
from worker import observability
from worker.settings import Settings


def demo_report(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Run one scan on the demo database (the first one backfills) and describe its alerts."""
    # The demo builds its own settings and never configures logging; unconfigured structlog
    # would print the scan's canonical line on stdout, into the demo's --json document.
    observability.configure_logging(settings.logging)
    result = scan.run_scan(engine, settings, trigger="demo")
    f = result.figures
    lines = [
        f"First scan backfilled {f.get('sessions_read', 0):,} sessions into "
        f"{f.get('rollup_rows', 0):,} per-minute rollups in {f.get('seconds', 0)} s.",
    ]
    if result.unavailable:
        lines.append(result.unavailable)
    if not result.findings:
        lines.append("No anomaly found.")
    for finding in sorted(result.findings, key=lambda x: (x.severity != "critical", x.rule)):
        lines.append(f"{finding.severity.upper():8} {finding.rule} on {finding.entity}: {finding.reason}")
    lines.append(
        f"{f.get('notifications', 0)} notification(s) queued in alert_deliveries "
        "(sessionkeeper alerts lists them)."
    )
    return {"lines": lines, **result.summary()}
