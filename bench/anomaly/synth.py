"""Seeded synthetic login traffic with labelled injected attacks (the issue's Evaluation 1).

Run:  .venv/bin/python bench/anomaly/synth.py --summary        # generate only, print counts
      .venv/bin/python bench/anomaly/synth_eval.py             # replay against PostgreSQL

Traffic: ~10k users with Gamma-distributed rates (shape 0.7, mean 1.2 logins a day), 1% power
users (~30 a day), a daily cycle (night at a quarter of the afternoon peak) and weekends at 60%,
overdispersion (each user-day gets a Gamma(2) multiplier and a login brings up to 3 extra
sessions for other devices within minutes), home IPs, 20 office NATs (150 users each, office
hours on weekdays) and a 50-address carrier NAT for mobile sessions.
Timeline: four weeks of history, a clean test week with benign confounders (a release that
logs 40% of the week's active users in again within 20 minutes; 150 new users a day with 2-6
sessions on their first day), then an attack period with labelled injections an hour apart,
in seeded random order: per-user bursts (5/10/20/50 sessions over 1/5/10/30 minutes, 3 each),
one IP for 5/10/50 users (3 each), global +50%/+200%/+1000% for 5/10/30/60 minutes (and two
more +200% for 10 minutes), a 30-minute global drop to 5%, and cleanup (purge) stopping.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

MIN = timedelta(minutes=1)
DAY = timedelta(days=1)
#: the first minute of history (a Monday)
START = datetime(2026, 9, 7, tzinfo=UTC)
HISTORY_DAYS = 28
CLEAN_DAYS = 7
ATTACK_DAYS = 4
INJECTION_SPACING = timedelta(minutes=60)


@dataclass(frozen=True)
class Session:
    created_at: datetime
    user: str
    ip: str
    ttl: timedelta


@dataclass(frozen=True)
class Injection:
    """One labelled attack: what a detector should report, on what, from when."""

    kind: str  # user_burst | ip_spread | global_spike | global_drop | cleanup_stopped
    entity: str
    start: datetime
    end: datetime
    size: float  # sessions, users, or the rate multiplier
    label: str


@dataclass
class Scenario:
    sessions: list[Session] = field(default_factory=list)
    injections: list[Injection] = field(default_factory=list)
    #: (name, start, end) of benign events that may legitimately raise an alert
    confounders: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    clean_start: datetime = START + HISTORY_DAYS * DAY
    attack_start: datetime = START + (HISTORY_DAYS + CLEAN_DAYS) * DAY
    end: datetime = START + (HISTORY_DAYS + CLEAN_DAYS + ATTACK_DAYS) * DAY
    #: the simulated purge stops here (cleanup_stopped)
    purge_stops: datetime | None = None


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _hour_weight(hour: float) -> float:
    """Daily cycle: a quarter of the peak at night, the peak mid-afternoon (UTC)."""
    return 0.25 + math.exp(-(((hour - 14.5) / 4.5) ** 2))


_PEAK = max(_hour_weight(h / 10) for h in range(240))
_MEAN_WEIGHT = sum(_hour_weight(h / 10) for h in range(240)) / 240


def _time_in_day(rng: random.Random, day: datetime) -> datetime:
    while True:
        hour = rng.uniform(0, 24)
        if rng.random() * _PEAK <= _hour_weight(hour):
            return day + timedelta(hours=hour)


def _ttl(rng: random.Random) -> timedelta:
    roll = rng.random()
    if roll < 0.3:
        return timedelta(hours=1)
    return timedelta(days=1) if roll < 0.7 else timedelta(days=30)


class Population:
    """Users, their rates and addresses."""

    def __init__(self, rng: random.Random, users: int) -> None:
        self.rng = rng
        self.rates: dict[str, float] = {}
        self.home: dict[str, str] = {}
        self.office: dict[str, str] = {}
        for n in range(users):
            self.add(f"u{n:05d}")
        for n, user in enumerate(sorted(self.rates)[: users * 3 // 10]):
            self.office[user] = f"198.18.{n // 150}.1"

    def add(self, user: str, rate: float | None = None) -> None:
        rng = self.rng
        if rate is None:
            rate = rng.uniform(20, 40) if rng.random() < 0.01 else rng.gammavariate(0.7, 1.2 / 0.7)
        self.rates[user] = rate
        self.home[user] = (
            f"100.{64 + len(self.home) // 65536 % 64}.{len(self.home) // 256 % 256}.{len(self.home) % 256}"
        )

    def ip_for(self, user: str, at: datetime) -> str:
        roll = self.rng.random()
        if user in self.office and at.weekday() < 5 and 8 <= at.hour < 18 and roll < 0.7:
            return self.office[user]
        if roll > 0.8:
            return f"172.20.0.{self.rng.randrange(50)}"  # carrier NAT
        return self.home[user]


def _login(pop: Population, out: list[Session], user: str, at: datetime) -> None:
    """One login episode: 1 + Geometric(0.7) sessions, at most 4, within a few minutes (other
    devices). The cap was added after the first replay: an uncapped geometric tail made
    10-session clusters in 3 minutes, which no real person produces."""
    rng = pop.rng
    n = 1
    while n < 4 and rng.random() < 0.3:
        n += 1
    for i in range(n):
        t = at + timedelta(seconds=rng.uniform(0, 180) if i else 0)
        out.append(Session(t, user, pop.ip_for(user, t), _ttl(rng)))


def _normal_day(pop: Population, out: list[Session], day: datetime, *, factor: float = 1.0) -> None:
    rng = pop.rng
    week = 0.6 if day.weekday() >= 5 else 1.0
    for user, rate in pop.rates.items():
        lam = rate * week * factor * rng.gammavariate(2.0, 0.5) / 1.3  # 1.3 sessions per login
        for _ in range(_poisson(rng, lam)):
            _login(pop, out, user, _time_in_day(rng, day))


def generate(*, seed: int = 20261204, users: int = 10_000) -> Scenario:
    """The whole scenario, deterministic per seed; sessions sorted by creation time."""
    rng = random.Random(seed)
    pop = Population(rng, users)
    sc = Scenario()
    out = sc.sessions
    new_user = 0
    for d in range(HISTORY_DAYS + CLEAN_DAYS + ATTACK_DAYS):
        day = START + d * DAY
        _normal_day(pop, out, day)
        # New users: a signup, email verification, a phone: 2-6 sessions on their first day.
        for _ in range(150):
            user = f"n{new_user:05d}"
            new_user += 1
            first = _time_in_day(rng, day)
            pop.add(user)
            for k in range(rng.randint(2, 6)):
                t = first + timedelta(minutes=rng.expovariate(1 / 40) * (k > 0))
                out.append(Session(t, user, pop.ip_for(user, t), _ttl(rng)))
    # Benign: a release on the clean week's third day logs 40% of the active users in again.
    release = sc.clean_start + 2 * DAY + timedelta(hours=15)
    active = sorted({s.user for s in out if release - 7 * DAY <= s.created_at < release})
    for user in rng.sample(active, int(0.4 * len(active))):
        t = release + timedelta(minutes=min(rng.expovariate(1 / 5), 20))
        out.append(Session(t, user, pop.ip_for(user, t), _ttl(rng)))
    sc.confounders.append(("release_relogin", release, release + timedelta(minutes=20)))
    sc.confounders.append(("new_users_first_day", sc.clean_start, sc.attack_start))
    _inject(sc, pop, rng)
    out.sort(key=lambda s: s.created_at)
    return sc


def _inject(sc: Scenario, pop: Population, rng: random.Random) -> None:
    plan: list[tuple[str, float, int]] = []
    plan += [("user_burst", size, minutes) for size in (5, 10, 20, 50) for minutes in (1, 5, 10, 30)] * 3
    plan += [("ip_spread", users, 5) for users in (5, 10, 50)] * 3
    plan += [("global_spike", mult, minutes) for mult in (1.5, 3.0, 11.0) for minutes in (5, 10, 30, 60)]
    plan += [("global_spike", 3.0, 10)] * 2
    plan += [("global_drop", 0.05, 30)]
    rng.shuffle(plan)
    everyone = sorted(pop.rates)
    victims = rng.sample(sorted(u for u in pop.rates if u.startswith("u")), 48)
    t = sc.attack_start + timedelta(hours=1)
    ip_n = 0
    dropped: list[tuple[datetime, datetime]] = []
    for kind, size, minutes in plan:
        start, end = t, t + minutes * MIN
        if kind == "user_burst":
            user = victims.pop()
            for i in range(int(size)):
                at = start + (end - start) * (i / size)
                sc.sessions.append(
                    Session(at, user, f"203.0.113.{rng.randrange(1, 255)}", timedelta(days=30))
                )
            sc.injections.append(Injection(kind, user, start, end, size, f"user {int(size)} in {minutes}m"))
        elif kind == "ip_spread":
            ip_n += 1
            ip = f"192.0.2.{ip_n}"
            for user in rng.sample(everyone, int(size)):
                at = start + timedelta(seconds=rng.uniform(0, minutes * 60))
                sc.sessions.append(Session(at, user, ip, timedelta(days=1)))
            sc.injections.append(Injection(kind, ip, start, end, size, f"ip {int(size)} users in {minutes}m"))
        elif kind == "global_spike":
            # Extra logins spread over many accounts, each from its own residential-proxy
            # address (stuffing through a proxy network): no single IP stands out.
            base = sum(1 for s in sc.sessions if start - DAY <= s.created_at < end - DAY) or 1
            for k in range(int(base * (size - 1))):
                at = start + timedelta(seconds=rng.uniform(0, minutes * 60))
                proxy = f"100.{100 + k // 65536 % 20}.{k // 256 % 256}.{k % 256}"
                sc.sessions.append(Session(at, rng.choice(everyone), proxy, timedelta(days=1)))
            sc.injections.append(
                Injection(kind, "global", start, end, size, f"global +{(size - 1):.0%} for {minutes}m")
            )
        else:
            dropped.append((start, end))
            sc.injections.append(
                Injection(kind, "global", start, end, size, f"global drop to 5% for {minutes}m")
            )
        t = end + INJECTION_SPACING
    for start, end in dropped:
        sc.sessions[:] = [s for s in sc.sessions if not (start <= s.created_at < end) or rng.random() < 0.05]
    sc.purge_stops = min(t, sc.end - timedelta(hours=6))
    sc.injections.append(Injection("cleanup_stopped", "purge", sc.purge_stops, sc.end, 0, "purge stopped"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--summary", action="store_true", help="print counts per period and injection")
    args = parser.parse_args()
    sc = generate(seed=args.seed, users=args.users)
    history = sum(1 for s in sc.sessions if s.created_at < sc.clean_start)
    clean = sum(1 for s in sc.sessions if sc.clean_start <= s.created_at < sc.attack_start)
    attack = sum(1 for s in sc.sessions if s.created_at >= sc.attack_start)
    print(f"sessions: history {history:,}, clean week {clean:,}, attack period {attack:,}")
    print(f"injections: {len(sc.injections)}; purge stops at {sc.purge_stops}")
    if args.summary:
        for inj in sc.injections:
            print(f"  {inj.start:%a %H:%M} {inj.label}")


if __name__ == "__main__":
    main()
