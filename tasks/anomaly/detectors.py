"""Pure anomaly detectors over session-creation counts: each returns an explainable Finding or None.

Nothing here touches a database or a clock: the scan (tasks/anomaly/scan.py) reads rollups and
passes counts in, and the benchmarks replay series through the same functions. Every threshold
is a keyword argument with a documented default, so what fired can always be explained by the
numbers in the Finding alone.

Rules:
    user_burst    one user's sessions in a window vs. that user's own rate, shrunk toward the
                  population rate (Gamma-Poisson / negative binomial tail), with absolute floors
    ip_spread     distinct users getting sessions from one IP in a window, with a CIDR allowlist
    global_spike  site-wide count in a 5-minute bucket far above its seasonal baseline
    global_drop   site-wide count near zero when many were expected (often a login outage)
"""

from __future__ import annotations

import ipaddress
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from tasks.anomaly.distributions import NegativeBinomial

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}

#: MAD of a normal sample times this estimates its standard deviation
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One rule firing on one entity, with everything needed to explain it to a human."""

    rule: str
    #: "global", a user id or an IP (the scan redacts them when settings forbid sharing)
    entity: str
    window: timedelta
    observed: float
    expected: float
    #: e.g. "gamma_poisson(user+population)", "seasonal_median_mad", "trailing_24h_median_mad"
    baseline_method: str
    baseline_window: timedelta
    #: the value ``observed`` had to reach (or, for a drop, fall to)
    threshold: float
    #: p-value for count models (smaller is stranger), robust z for the global rules
    score: float
    score_kind: Literal["p_value", "robust_z", "count", "ratio"]
    severity: Severity
    #: a sentence a person on call can read without the docs
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (durations in seconds) for alert payloads and --json output."""
        data = asdict(self)
        data["window_seconds"] = int(self.window.total_seconds())
        data["baseline_window_seconds"] = int(self.baseline_window.total_seconds())
        del data["window"], data["baseline_window"]
        data["details"] = dict(self.details)
        return data


# --------------------------------------------------------------------------- per-user burst


@dataclass(frozen=True, slots=True)
class GammaPrior:
    """Population prior on a user's creation rate: Gamma(shape, rate) in sessions per minute."""

    shape: float
    rate: float

    @property
    def mean_per_minute(self) -> float:
        return self.shape / self.rate


#: bounds on the fitted prior shape: below, one login would look like an epidemic; above, the
#: prior would behave like a Poisson with a known rate, which real users never are
PRIOR_SHAPE_MIN = 0.05
PRIOR_SHAPE_MAX = 5.0


def fit_gamma_prior(
    counts: Iterable[int], *, exposure: timedelta, fallback_per_day: float = 1.0
) -> GammaPrior:
    """Method-of-moments Gamma prior from per-user counts observed over the same exposure.

    Users absent from ``counts`` are not seen, so the fitted mean is the rate of active users:
    an overestimate, which only makes the detector more conservative.
    """
    minutes = max(exposure.total_seconds() / 60.0, 1.0)
    values = [c for c in counts if c >= 0]
    if len(values) < 2 or sum(values) == 0:
        mean = fallback_per_day / 1440.0 * minutes
        shape = 1.0
    else:
        mean = statistics.fmean(values)
        var = statistics.pvariance(values, mu=mean)
        # Var = mean + mean^2 / shape for a Gamma-Poisson mixture.
        shape = mean * mean / (var - mean) if var > mean else PRIOR_SHAPE_MAX
    shape = min(max(shape, PRIOR_SHAPE_MIN), PRIOR_SHAPE_MAX)
    return GammaPrior(shape=shape, rate=shape / (mean / minutes))


def user_predictive(
    *,
    history_count: int,
    history_exposure: timedelta,
    window: timedelta,
    prior: GammaPrior,
    max_shape: float = 2.0,
) -> NegativeBinomial:
    """Posterior predictive count for a user in ``window``, given their own history.

    Conjugate update: Gamma(shape + count, rate + exposure). A user seen for a long time would
    end up with a near-Poisson predictive, yet a person's login rate varies from day to day
    (travel, a new phone, a busy week) however long we watch, so the posterior shape is capped
    at ``max_shape`` (same mean, wider tail). 2 is a day-to-day Gamma shape of the order seen in
    login counts; the first replay used 20 and paged on heavy users' busy afternoons.
    """
    minutes = max(history_exposure.total_seconds() / 60.0, 0.0)
    shape = prior.shape + history_count
    rate = prior.rate + minutes
    mean = window.total_seconds() / 60.0 * shape / rate
    return NegativeBinomial(shape=min(shape, max_shape), mean=mean)


def detect_user_burst(
    *,
    user: str,
    observed: int,
    window: timedelta,
    history_count: int,
    history_exposure: timedelta,
    prior: GammaPrior,
    min_count: int = 10,
    min_ratio: float = 3.0,
    always_count: int = 50,
    p_warning: float = 1e-6,
    p_critical: float = 1e-9,
    max_shape: float = 2.0,
    distinct_ips: int | None = None,
    recent_count: int = 0,
    recent_exposure: timedelta = timedelta(0),
) -> Finding | None:
    """A user's burst: fires only when the count clears the floors AND the tail p-value is tiny.

    The expectation is the larger of the user's long-term rate (shrunk to the population) and
    their rate over ``recent_exposure`` just before the window (``recent_count`` sessions).

    Defaults: at least ``min_count`` sessions and ``min_ratio`` times the expected count with
    p < 1e-6 (warning) or p < 1e-9 (critical); ``always_count`` or more is critical regardless
    (no history can make 50 logins in 10 minutes normal).
    """
    if observed < min(min_count, always_count):
        return None
    model = user_predictive(
        history_count=history_count,
        history_exposure=history_exposure,
        window=window,
        prior=prior,
        max_shape=max_shape,
    )
    # The local level: a user already busy in the hours before the window (a heavy day) is
    # expected to stay busy; an account that was quiet is judged on its long-term rate.
    recent_minutes = recent_exposure.total_seconds() / 60.0
    if recent_minutes > 0:
        recent_mean = window.total_seconds() / 60.0 * recent_count / recent_minutes
        if recent_mean > model.mean:
            model = NegativeBinomial(shape=model.shape, mean=recent_mean)
    expected = model.mean
    p_value = model.sf(observed)
    floor = max(float(min_count), min_ratio * expected)
    severity: Severity | None = None
    if observed >= always_count:
        severity = "critical"
    elif observed >= floor and p_value < p_warning:
        severity = "critical" if p_value < p_critical else "warning"
    if severity is None:
        return None
    minutes = int(window.total_seconds() // 60)
    why = f"{observed} sessions in {minutes} min for one user, expected {expected:.2f} (p={p_value:.2g})"
    if observed >= always_count:
        why += f"; at or above the absolute limit of {always_count}"
    details: dict[str, Any] = {
        "history_count": history_count,
        "history_exposure_seconds": int(history_exposure.total_seconds()),
        "prior_shape": round(prior.shape, 4),
        "prior_per_day": round(prior.mean_per_minute * 1440, 4),
        "model_shape": round(model.shape, 4),
        "min_count": min_count,
        "min_ratio": min_ratio,
        "always_count": always_count,
        "recent_count": recent_count,
        "recent_exposure_seconds": int(recent_exposure.total_seconds()),
    }
    if distinct_ips is not None:
        details["distinct_ips"] = distinct_ips
    return Finding(
        rule="user_burst",
        entity=user,
        window=window,
        observed=float(observed),
        expected=expected,
        baseline_method="gamma_poisson(user history shrunk to population)",
        baseline_window=history_exposure,
        threshold=floor if observed < always_count else float(always_count),
        score=p_value,
        score_kind="p_value",
        severity=severity,
        reason=why,
        details=details,
    )


# --------------------------------------------------------------------------- per-IP spread


def parse_allowlist(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDR strings to networks (settings already validated them)."""
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def ip_allowed(ip: str, allowlist: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """True when ``ip`` falls in an allowlisted network; unparseable addresses are not allowed."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    return any(addr.version == net.version and addr in net for net in allowlist)


def detect_ip_spread(
    *,
    ip: str,
    distinct_users: int,
    window: timedelta,
    sessions: int | None = None,
    usual_distinct_users: float = 0.0,
    allowlist: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    warn_users: int = 5,
    critical_users: int = 20,
    min_ratio: float = 2.0,
    baseline_window: timedelta = timedelta(days=7),
) -> Finding | None:
    """Many distinct users from one address in ``window``: credential stuffing or a bot farm.

    Warns at ``warn_users`` and is critical at ``critical_users``. An address that usually
    serves many users (a NAT nobody put on the allowlist) must also be ``min_ratio`` times its
    usual count; allowlisted networks never fire.
    """
    if distinct_users < warn_users or ip_allowed(ip, allowlist):
        return None
    threshold = max(float(warn_users), min_ratio * usual_distinct_users)
    if distinct_users < threshold:
        return None
    crit_threshold = max(float(critical_users), min_ratio * usual_distinct_users)
    severity: Severity = "critical" if distinct_users >= crit_threshold else "warning"
    minutes = int(window.total_seconds() // 60)
    return Finding(
        rule="ip_spread",
        entity=ip,
        window=window,
        observed=float(distinct_users),
        expected=usual_distinct_users,
        baseline_method="ip_usual_distinct_users(max of past windows)",
        baseline_window=baseline_window,
        threshold=threshold,
        score=float(distinct_users),
        score_kind="count",
        severity=severity,
        reason=(
            f"{distinct_users} distinct users got sessions from one IP in {minutes} min "
            f"(usually {usual_distinct_users:g}; warn at {threshold:g})"
        ),
        details={"sessions": sessions, "warn_users": warn_users, "critical_users": critical_users},
    )


# --------------------------------------------------------------------------- global spike/drop


@dataclass(frozen=True, slots=True)
class Baseline:
    """A robust centre and scale of past counts for the same bucket, and how it was obtained."""

    method: str
    window: timedelta
    median: float
    scale: float
    samples: int
    mad: float


def robust_baseline(
    samples: Sequence[float],
    *,
    method: str,
    window: timedelta,
    rel_floor: float = 0.1,
    abs_floor: float = 1.0,
) -> Baseline:
    """Median and a floored MAD scale: never narrower than Poisson noise, ``rel_floor`` x median
    or ``abs_floor``, so a flat history cannot make every wiggle an incident."""
    med = statistics.median(samples)
    mad = statistics.median(abs(s - med) for s in samples)
    scale = max(_MAD_TO_SIGMA * mad, math.sqrt(max(med, 0.0)), rel_floor * med, abs_floor)
    return Baseline(method=method, window=window, median=med, scale=scale, samples=len(samples), mad=mad)


def choose_baseline(
    *,
    seasonal: Sequence[float],
    trailing: Sequence[float],
    seasonal_min_samples: int = 21,
    trailing_min_samples: int = 24,
    seasonal_window: timedelta = timedelta(days=7),
    trailing_window: timedelta = timedelta(hours=24),
    rel_floor: float = 0.1,
    abs_floor: float = 1.0,
) -> Baseline | None:
    """Seasonal (same time of day over the past week) when a week exists, else trailing 24 h.

    ``seasonal`` holds the counts of the same bucket (and its neighbours) on previous days, so
    the default of 21 samples is seven days of three buckets each; ``trailing`` holds the
    buckets just before this one. None while there is too little history.
    """
    if len(seasonal) >= seasonal_min_samples:
        return robust_baseline(
            seasonal,
            method="seasonal_median_mad",
            window=seasonal_window,
            rel_floor=rel_floor,
            abs_floor=abs_floor,
        )
    if len(trailing) >= trailing_min_samples:
        return robust_baseline(
            trailing,
            method="trailing_24h_median_mad",
            window=trailing_window,
            rel_floor=rel_floor,
            abs_floor=abs_floor,
        )
    return None


def detect_global(
    *,
    observed: float,
    baseline: Baseline | None,
    window: timedelta = timedelta(minutes=5),
    spike_z: float = 5.0,
    spike_min_ratio: float = 1.5,
    spike_min_excess: float = 10.0,
    critical_z: float = 10.0,
    drop_z: float = 4.0,
    drop_max_ratio: float = 0.25,
    drop_min_expected: float = 20.0,
    budget_z: float = 0.0,
    budget_exempt_ratio: float = 3.0,
) -> Finding | None:
    """Site-wide spike or drop in one bucket, scored as a robust z against the baseline.

    Spike: z >= ``spike_z`` and at least ``spike_min_ratio`` x and ``spike_min_excess`` above
    the median (critical from ``critical_z``), and z at least ``budget_z`` (the false-alarm
    budget, see ``SpikeBudget``) unless the count is ``budget_exempt_ratio`` times the median
    or more: tripled site-wide logins are always worth a notification. Drop: the median is at least
    ``drop_min_expected`` and the count fell to ``drop_max_ratio`` x the median or less with
    z <= -``drop_z`` (critical when nothing at all arrived).
    """
    if baseline is None:
        return None
    med, scale = baseline.median, baseline.scale
    z = (observed - med) / scale
    minutes = int(window.total_seconds() // 60)
    common: dict[str, Any] = {
        "entity": "global",
        "window": window,
        "observed": float(observed),
        "expected": med,
        "baseline_method": baseline.method,
        "baseline_window": baseline.window,
        "score": z,
        "score_kind": "robust_z",
    }
    details = {
        "scale": round(scale, 3),
        "mad": baseline.mad,
        "samples": baseline.samples,
        "budget_z": round(budget_z, 2),
    }
    exempt = observed >= budget_exempt_ratio * med
    spike_threshold = max(
        med + (spike_z if exempt else max(spike_z, budget_z)) * scale,
        med * spike_min_ratio,
        med + spike_min_excess,
    )
    if observed >= spike_threshold:
        severity: Severity = "critical" if z >= critical_z else "warning"
        return Finding(
            rule="global_spike",
            threshold=spike_threshold,
            severity=severity,
            reason=(
                f"{observed:g} sessions site-wide in {minutes} min, expected {med:g} "
                f"({baseline.method}); {observed / max(med, 1e-9):.1f}x, z={z:.1f}"
                + (
                    f", stranger than the week's budget z={budget_z:.1f}"
                    if budget_z > spike_z and not exempt
                    else ""
                )
            ),
            details=details,
            **common,
        )
    drop_threshold = min(med - drop_z * scale, med * drop_max_ratio)
    if med >= drop_min_expected and observed <= drop_threshold:
        severity = "critical" if observed == 0 else "warning"
        return Finding(
            rule="global_drop",
            threshold=drop_threshold,
            severity=severity,
            reason=(
                f"only {observed:g} sessions site-wide in {minutes} min, expected {med:g} "
                f"({baseline.method}): logins may be failing"
            ),
            details=details,
            **common,
        )
    return None


def seasonal_offsets(
    *, days: int = 7, bucket: timedelta = timedelta(minutes=5), neighbours: int = 1
) -> list[timedelta]:
    """Offsets back in time whose buckets form the seasonal sample: same time of day on each of
    the past ``days``, plus ``neighbours`` buckets either side (robust to a shifted peak)."""
    return [
        timedelta(days=d) + k * bucket for d in range(1, days + 1) for k in range(-neighbours, neighbours + 1)
    ]


def baseline_at(
    counts: Mapping[datetime, float],
    at: datetime,
    *,
    bucket: timedelta = timedelta(minutes=5),
    days: int = 7,
    neighbours: int = 1,
    trailing: timedelta = timedelta(hours=24),
    rel_floor: float = 0.1,
    abs_floor: float = 1.0,
) -> Baseline | None:
    """The baseline for the bucket keyed ``at`` from earlier buckets only (causal).

    ``counts`` maps a bucket key (its start, or for sliding windows its end minute) to the count;
    missing keys are missing history, not zeros. Seasonal needs every one of the past ``days``.
    """
    seasonal = [
        counts[at - off]
        for off in seasonal_offsets(days=days, bucket=bucket, neighbours=neighbours)
        if at - off in counts
    ]
    steps = int(trailing / bucket)
    previous = [counts[at - k * bucket] for k in range(1, steps + 1) if at - k * bucket in counts]
    return choose_baseline(
        seasonal=seasonal,
        trailing=previous,
        seasonal_min_samples=days * (2 * neighbours + 1),
        seasonal_window=timedelta(days=days),
        trailing_window=trailing,
        rel_floor=rel_floor,
        abs_floor=abs_floor,
    )


@dataclass(frozen=True)
class SpikeBudget:
    """A false-alarm budget for the global spike rule: recent spike episodes and their peak z.

    Real traffic has bursts no baseline predicts (a newsletter, a mobile release). A spike must
    be at least as strange as the ``rank``-th strangest episode of the past ``horizon`` to fire,
    so a bursty site gets about ``rank`` global-spike alerts a week instead of one per burst;
    a smooth site, whose quiet weeks have no episodes, keeps the plain ``spike_z`` threshold.
    An episode is a run of consecutive buckets with z >= ``floor``; it counts once, at its peak,
    so one long event cannot blind the rule for a week.
    """

    #: (start, peak z) of each episode within the horizon, oldest first
    episodes: tuple[tuple[datetime, float], ...] = ()
    #: whether the newest episode is still running (the last bucket was at or above the floor)
    running: bool = False

    def threshold(self, at: datetime, *, rank: int = 3, horizon: timedelta = timedelta(days=7)) -> float:
        """The z a spike at ``at`` must reach; 0 when fewer than ``rank`` episodes are recent."""
        if rank <= 0:
            return 0.0
        peaks = sorted((z for t, z in self.episodes if t >= at - horizon), reverse=True)
        return peaks[rank - 1] if len(peaks) >= rank else 0.0

    def record(
        self, at: datetime, z: float, *, floor: float = 5.0, horizon: timedelta = timedelta(days=7)
    ) -> SpikeBudget:
        """Fold this bucket's z in (after deciding on it), dropping episodes past the horizon."""
        kept = tuple(e for e in self.episodes if e[0] >= at - horizon)
        if z < floor:
            return SpikeBudget(episodes=kept, running=False)
        if self.running and kept and kept[-1] == self.episodes[-1]:
            start, peak = kept[-1]
            return SpikeBudget(episodes=(*kept[:-1], (start, max(peak, z))), running=True)
        return SpikeBudget(episodes=(*kept, (at, z)), running=True)

    def to_json(self) -> dict[str, Any]:
        """For scan_state: ISO times and z rounded to 0.01."""
        return {
            "episodes": [[t.isoformat(), round(z, 2)] for t, z in self.episodes],
            "running": self.running,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> SpikeBudget:
        """Inverse of ``to_json``; an absent or malformed value is an empty budget."""
        if not data:
            return cls()
        try:
            episodes = tuple((datetime.fromisoformat(t), float(z)) for t, z in data["episodes"])
            return cls(episodes=episodes, running=bool(data.get("running", False)))
        except (KeyError, TypeError, ValueError):
            return cls()
