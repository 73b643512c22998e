"""The creation-rate rules: read the rollups around ``now`` and run the detectors on them.

Each rule reads only what it needs (candidates first, history for candidates only), so the
per-scan cost stays flat however many users exist. Windows end at ``now``: the user and IP
windows include the current, still-filling minute (counts only grow, so a burst is caught
within a minute); the global window uses the five complete minutes before it, because a
partial minute would look like a drop.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from tasks.anomaly import detectors, queries
from tasks.anomaly.detectors import Finding
from worker.settings import AnomalySettings

MINUTE = timedelta(minutes=1)
#: the per-user windows and how their floors scale: (window, multiplier of min and always counts)
USER_WINDOWS: tuple[tuple[timedelta, int], ...] = ((timedelta(minutes=10), 1), (timedelta(minutes=60), 2))
IP_WINDOW = timedelta(minutes=10)
GLOBAL_WINDOW = timedelta(minutes=5)
#: how far back the user, IP and population baselines look
HISTORY = timedelta(days=7)
#: the "local level" of a user: their rate over this long before the window (a heavy day)
RECENT = timedelta(hours=3)
#: the population prior is refitted this often (it moves slowly; the fit reads a week of rollups)
PRIOR_REFRESH = timedelta(hours=1)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


@dataclass
class RuleContext:
    """What every rule needs: the connection, settings, now, and the detectors' memory."""

    conn: Connection
    settings: AnomalySettings
    now: datetime
    #: the oldest minute the rollups cover
    history_start: datetime
    state: dict[str, Any] = field(default_factory=dict)
    has_user: bool = True
    has_ip: bool = True
    #: site-wide count over its baseline in the last five minutes (set by global_rates, >= 1):
    #: a NAT's usual load grows with the site's, so the IP rule scales it by this
    global_ratio: float = 1.0

    @property
    def minute(self) -> datetime:
        return floor_minute(self.now)


def _prior(ctx: RuleContext) -> detectors.GammaPrior:
    cached = ctx.state.get("prior")
    if cached:
        fitted_at = datetime.fromisoformat(cached["at"])
        if ctx.now - fitted_at < PRIOR_REFRESH and ctx.now >= fitted_at:
            return detectors.GammaPrior(shape=cached["shape"], rate=cached["rate"])
    start = max(ctx.history_start, ctx.minute - HISTORY)
    counts = queries.population_counts(ctx.conn, start, ctx.minute)
    exposure = max(ctx.minute - start, timedelta(hours=1))
    prior = detectors.fit_gamma_prior(counts, exposure=exposure)
    ctx.state["prior"] = {"shape": prior.shape, "rate": prior.rate, "at": ctx.now.isoformat()}
    return prior


def user_bursts(ctx: RuleContext) -> list[Finding]:
    """Per-user bursts over the 10- and 60-minute windows; one finding per user (the worst)."""
    if not ctx.has_user:
        return []
    cfg = ctx.settings
    end = ctx.minute + MINUTE
    worst: dict[str, Finding] = {}
    prior: detectors.GammaPrior | None = None
    for window, scale in USER_WINDOWS:
        start = _window_start(ctx, window)
        min_count, always = cfg.user_burst_min_count * scale, cfg.user_burst_always * scale
        candidates = queries.entity_totals(ctx.conn, "user", start, end, at_least=min(min_count, always))
        if not candidates:
            continue
        prior = prior or _prior(ctx)
        history = queries.user_history(ctx.conn, candidates, max(ctx.history_start, start - HISTORY), start)
        recent_start = max(ctx.history_start, start - RECENT)
        recent = queries.user_history(ctx.conn, candidates, recent_start, start)
        for user, observed in candidates.items():
            count, first = history.get(user, (0, start))
            finding = detectors.detect_user_burst(
                user=user,
                observed=observed,
                window=window,
                history_count=count,
                history_exposure=start - first,
                prior=prior,
                min_count=min_count,
                min_ratio=cfg.user_burst_min_ratio,
                always_count=always,
                p_warning=cfg.user_burst_p_value,
                p_critical=min(cfg.user_burst_p_value, 1e-9),
                recent_count=recent.get(user, (0, start))[0],
                recent_exposure=start - recent_start,
            )
            if finding is not None and _worse(finding, worst.get(user)):
                worst[user] = finding
    return list(worst.values())


def _window_start(ctx: RuleContext, window: timedelta) -> datetime:
    """First minute of a window ending now: the minute ``window`` ago is included, so "the last
    10 minutes" spans 10 to 11 minute buckets (the current one still filling) and a burst
    spread evenly over exactly 10 minutes is seen whole whatever the scan's second."""
    return floor_minute(ctx.now - window)


def _worse(new: Finding, old: Finding | None) -> bool:
    if old is None:
        return True
    rank = detectors.SEVERITY_RANK
    return (rank[new.severity], -new.score) > (rank[old.severity], -old.score)


def ip_spreads(ctx: RuleContext) -> list[Finding]:
    """Many distinct users from one IP in 10 minutes, against that IP's own busiest week window."""
    if not (ctx.has_ip and ctx.has_user):
        return []
    cfg = ctx.settings
    end = ctx.minute + MINUTE
    start = _window_start(ctx, IP_WINDOW)
    allow = detectors.parse_allowlist(cfg.ip_allowlist)
    candidates = [
        ip
        for ip in queries.entity_totals(ctx.conn, "ip", start, end, at_least=cfg.ip_warn_users)
        if not detectors.ip_allowed(ip, allow)
    ]
    now_users: dict[str, set[str]] = defaultdict(set)
    sessions: dict[str, int] = defaultdict(int)
    for ip, _minute, count, users in queries.entity_minutes(ctx.conn, "ip", candidates, start, end):
        now_users[ip].update(users or [])
        sessions[ip] += count
    suspects = [ip for ip, users in now_users.items() if len(users) >= cfg.ip_warn_users]
    usual = _usual_distinct_users(ctx, suspects, start)
    findings = []
    for ip in suspects:
        finding = detectors.detect_ip_spread(
            ip=ip,
            distinct_users=len(now_users[ip]),
            window=IP_WINDOW,
            sessions=sessions[ip],
            usual_distinct_users=usual.get(ip, 0.0) * ctx.global_ratio,
            allowlist=allow,
            warn_users=cfg.ip_warn_users,
            critical_users=cfg.ip_critical_users,
            baseline_window=HISTORY,
        )
        if finding is not None:
            findings.append(finding)
    return findings


def _usual_distinct_users(ctx: RuleContext, ips: list[str], before: datetime) -> dict[str, float]:
    """Each IP's busiest aligned 10-minute window (distinct users) over the past week."""
    if not ips:
        return {}
    start = max(ctx.history_start, before - HISTORY)
    buckets: dict[tuple[str, int], set[str]] = defaultdict(set)
    step = int(IP_WINDOW.total_seconds())
    for ip, minute, _count, users in queries.entity_minutes(ctx.conn, "ip", ips, start, before):
        buckets[(ip, int(minute.timestamp()) // step)].update(users or [])
    usual: dict[str, float] = defaultdict(float)
    for (ip, _), seen in buckets.items():
        usual[ip] = max(usual[ip], float(len(seen)))
    return usual


def global_rates(ctx: RuleContext) -> list[Finding]:
    """Site-wide spike or drop of the last five complete minutes against the seasonal baseline."""
    cfg = ctx.settings
    key = ctx.minute  # the window is the five minutes before this one
    wanted = _window_keys(key)
    ranges = _merge_ranges(sorted((end - GLOBAL_WINDOW, end) for end in wanted))
    minutes = queries.global_minutes(ctx.conn, ranges)
    sums = _window_sums(minutes, wanted, ctx.history_start)
    observed = sums.get(key)
    if observed is None:
        return []
    baseline = detectors.baseline_at(sums, key, bucket=GLOBAL_WINDOW)
    budget = detectors.SpikeBudget.from_json(ctx.state.get("spike_budget"))
    finding = detectors.detect_global(
        observed=observed,
        baseline=baseline,
        window=GLOBAL_WINDOW,
        spike_z=cfg.global_spike_z,
        drop_min_expected=cfg.global_drop_min_expected,
        budget_z=budget.threshold(ctx.now, rank=cfg.global_spike_budget),
        budget_exempt_ratio=cfg.global_spike_budget_exempt_ratio or math.inf,
    )
    if baseline is not None:
        ctx.global_ratio = max(1.0, observed / max(baseline.median, 1.0))
        z = (observed - baseline.median) / baseline.scale
        ctx.state["spike_budget"] = budget.record(ctx.now, z, floor=cfg.global_spike_z).to_json()
    return [finding] if finding is not None else []


def _window_keys(key: datetime) -> set[datetime]:
    """End minutes of every five-minute window the baseline of ``key`` may ask about."""
    wanted = {key - off for off in detectors.seasonal_offsets(bucket=GLOBAL_WINDOW)}
    wanted.update(key - k * GLOBAL_WINDOW for k in range(0, 24 * 12 + 1))
    return wanted


def _merge_ranges(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _window_sums(
    minutes: dict[datetime, int], wanted: set[datetime], history_start: datetime
) -> dict[datetime, float]:
    """Five-minute sums keyed by their end minute.

    A window that starts before the history does not exist (unknown), rather than counting 0.
    """
    width = int(GLOBAL_WINDOW / MINUTE)
    sums: dict[datetime, float] = {}
    for end in wanted:
        if end - GLOBAL_WINDOW < history_start:
            continue
        sums[end] = float(sum(minutes.get(end - (i + 1) * MINUTE, 0) for i in range(width)))
    return sums
