"""``sessionkeeper revoke`` (sign a user out of other devices) and ``sessionkeeper job`` (its status)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click

from worker.cli.base import Cli, console, emit_json, json_option, pass_cli
from worker.errors import JobFailed


def _show(job: dict[str, Any], as_json: bool, **extra: Any) -> None:
    if as_json:
        emit_json({**job, **extra})
        return
    line = f"job {job['job_id']}: {job['status']}"
    if job.get("revoked_count") is not None:
        line += f", {job['revoked_count']} session(s) revoked"
    console.print(line, markup=False)
    if job.get("error"):
        console.print(f"  error: {job['error']}", markup=False)
    for note in extra.values():
        if isinstance(note, str):
            console.print(f"  {note}", markup=False)


@click.command()
@click.argument("user_id")
@click.option("--keep", "keep", metavar="SESSION_ID", help="Keep this session (the current device).")
@click.option("--reason", metavar="TEXT", help="Why, kept with the job for audit.")
@click.option("--wait", is_flag=True, help="Wait until a worker has finished the job.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds --wait waits.")
@click.option("--inline", is_flag=True, help="Run the job here, without a broker or worker (cron use).")
@json_option
@pass_cli
def revoke_command(
    cli: Cli,
    user_id: str,
    keep: str | None,
    reason: str | None,
    wait: bool,
    timeout: float,
    inline: bool,
    as_json: bool,
) -> None:
    """Sign USER_ID out of every session, or of all but --keep; exit 1 when the job fails."""
    from tasks import revoke  # imports Celery's configuration: only once settings are known good

    settings, engine = cli.settings, cli.engine
    submitted = revoke.submit_job(
        engine, settings, user_id=user_id, keep_session_id=keep, reason=reason, source="cli"
    )
    job_id = submitted.job["job_id"]
    extra: dict[str, Any] = {}
    if inline:
        with contextlib.suppress(JobFailed):  # recorded on the job; shown below with exit 1
            revoke.run_job(engine, settings, job_id=job_id, trigger="cli")
    elif revoke.publish_job(settings, job_id):
        revoke.mark_published(engine, [job_id])
        if wait:
            revoke.wait_for(engine, job_id, timeout=timeout)
    else:
        extra["note"] = "broker unreachable: the job is queued and the outbox sweep will publish it"
    job = revoke.get_job(engine, job_id)
    _show(job, as_json, **extra)
    if job["status"] == "failed" or (wait and job["status"] not in ("succeeded", "failed")):
        sys.exit(1)


@click.command()
@click.argument("job_id")
@json_option
@pass_cli
def job_command(cli: Cli, job_id: str, as_json: bool) -> None:
    """Show a revocation job: status, sessions revoked, times, error."""
    from tasks import revoke

    _show(revoke.get_job(cli.engine, job_id), as_json)
