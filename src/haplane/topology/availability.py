"""Availability estimate: the steady-state probability that writes are available.

Layer: model. Pure: a function of a `Topology`, failure and repair rates and a seed; no I/O, no
clock. What a failure set leaves standing is decided by `failures.py` alone (`writes_region is
None` is a write outage), so the estimate and the failure analysis cannot disagree.

Method:

- The events are the model's own single failures (`FailureModel.single_failures`: components,
  zones, sites, network cuts). Each one is an independent two-state process, down with steady-state
  probability ``p_i = MTTR / (MTBF + MTTR)`` from the rates of its kind (`Rates`). Overlapping
  failures are independent events too: a site failure and a member on that site failing are two
  events, either of which takes the member down. Correlation is only what the overlap models.
- Availability of writes = sum over failure sets S of P(exactly S down) * [writes available after
  S], with P(exactly S down) = prod_{i in S} p_i * prod_{i not in S} (1 - p_i).
- The number K of simultaneous failures is Poisson-binomial in the p_i. Its distribution is
  computed exactly; k is the smallest size with P(K > k) < `tolerance`, and that neglected mass is
  reported as an error bound (the true availability lies in [availability, availability + bound]).
- Sizes 0..k are strata. A stratum is enumerated exactly while the sets enumerated so far stay
  within `max_sets`; larger strata are sampled (Monte Carlo, seeded) from the exact conditional
  distribution of S given |S| = size, and the 95% confidence interval is
  ``1.96 * sqrt(sum_k P(K=k)^2 * var_k / n_k)`` with an Agresti-Coull variance per stratum (so a
  stratum with no observed outage still widens the interval). Conditioning on the size keeps rare
  multi-failure outages visible, which plain sampling of the p_i would almost never see.
- Failures whose probability is 0 (MTBF infinite or MTTR 0) never occur and are left out; those
  with probability 1 (MTBF 0) are in every set.

Unavailable sets are grouped by their failure classes (`Failure.failure_class`) and labelled like
`FailureGroup.label` ("2 of the 3 global control etcd members"); each group's share of the
unavailability says which failure classes dominate it.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .failures import Failure, FailureGroup, Outcome, failure_model
from .model import Topology

HOURS_PER_YEAR = 365.25 * 24
MINUTES_PER_YEAR = HOURS_PER_YEAR * 60
Z95 = 1.959963984540054
Method = Literal["exact-enumeration", "monte-carlo"]
Mode = Literal["auto", "exact", "monte-carlo"]


@dataclass(frozen=True, slots=True)
class Rate:
    """Mean time between failures and mean time to repair, in hours (``math.inf`` allowed)."""

    mtbf_hours: float
    mttr_hours: float

    def __post_init__(self) -> None:
        if not (self.mtbf_hours >= 0 and self.mttr_hours >= 0):  # also refuses NaN
            raise ValueError(f"rates must be non-negative: {self}")
        if math.isinf(self.mtbf_hours) and math.isinf(self.mttr_hours):
            raise ValueError(f"MTBF and MTTR cannot both be infinite: {self}")
        if self.mtbf_hours == 0 and self.mttr_hours == 0:
            raise ValueError(f"MTBF and MTTR cannot both be zero: {self}")

    @property
    def unavailability(self) -> float:
        """Steady-state probability of being down: MTTR / (MTBF + MTTR)."""
        if math.isinf(self.mtbf_hours) or self.mttr_hours == 0:
            return 0.0
        if math.isinf(self.mttr_hours) or self.mtbf_hours == 0:
            return 1.0
        return self.mttr_hours / (self.mtbf_hours + self.mttr_hours)


NEVER = Rate(math.inf, 0.0)  # a failure that never happens (p = 0)


@dataclass(frozen=True, slots=True)
class Rates:
    """Failure and repair rates per kind of single failure.

    The defaults are ASSUMPTIONS for a typical public-cloud deployment, not measurements; override
    them (`dataclasses.replace`, `with_overrides`) with your own incident data.

    - Processes on VMs (etcd member, API replica, balancer, replicator, control etcd member,
      gate): a VM sees
      roughly one unplanned host event a year (provider single-instance SLAs are 99.5-99.9%), plus
      process crashes, OOM kills and bad restarts: about two failures a year per process, MTBF
      4380 h (API replicas, stateless and redeployed often, four a year: 2190 h). Repair is a
      supervisor restart or reschedule for stateless processes (6-15 min) and a member replacement
      with snapshot catch-up for etcd (1 h).
    - Zone (an availability zone / rack / room): AZ-level incidents hit a cloud region a few times
      a year across its 3+ zones and many services; for one zone and our services we assume one
      every 3 years (26280 h) lasting 4 h.
    - Site (a whole region or datacenter): one every 10 years (87600 h), lasting 12 h.
    - Network cuts between sites: a two-way cut of one site pair once a year (8760 h); a site
      isolated from all others (its WAN uplinks) once every 2 years (17520 h); a one-way cut
      (asymmetric routing, a firewall change) once every 5 years (43800 h); each repaired in 2 h
      (rerouting, rollback).
    """

    etcd_member: Rate = Rate(4380.0, 1.0)
    api_replica: Rate = Rate(2190.0, 0.1)
    balancer: Rate = Rate(4380.0, 0.25)
    replicator: Rate = Rate(4380.0, 0.1)
    control_etcd_member: Rate = Rate(4380.0, 1.0)
    gate: Rate = Rate(4380.0, 0.25)
    zone: Rate = Rate(26280.0, 4.0)
    site: Rate = Rate(87600.0, 12.0)
    link_cut: Rate = Rate(8760.0, 2.0)
    isolation: Rate = Rate(17520.0, 2.0)
    one_way_cut: Rate = Rate(43800.0, 2.0)

    def for_failure(self, failure: Failure) -> Rate:
        """The rate of `failure`'s kind."""
        if failure.kind == "component":
            return self._by_label(failure.component_kind or "")
        return self._by_label(failure.kind)

    def _by_label(self, label: str) -> Rate:
        name = KIND_FIELDS.get(label)
        if name is None:
            raise KeyError(f"no rate for failure kind {label!r}")
        rate: Rate = getattr(self, name)
        return rate

    def with_overrides(self, overrides: Mapping[str, Rate]) -> Rates:
        """A copy with some rates replaced; keys are field names ("etcd_member") or the kind labels
        of `failures.py` ("etcd member", "link", "one-way"). KeyError for an unknown key."""
        changes: dict[str, Rate] = {}
        names = {f.name for f in fields(self)}
        for key, rate in overrides.items():
            name = key if key in names else KIND_FIELDS.get(key)
            if name is None:
                raise KeyError(f"unknown failure kind {key!r}")
            changes[name] = rate
        return replace(self, **changes)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {
            f.name: {
                "mtbfHours": getattr(self, f.name).mtbf_hours,
                "mttrHours": getattr(self, f.name).mttr_hours,
                "unavailability": getattr(self, f.name).unavailability,
            }
            for f in fields(self)
        }


# failure kinds and component kinds (as `failures.py` names them) -> `Rates` field
KIND_FIELDS: dict[str, str] = {
    "etcd member": "etcd_member",
    "API replica": "api_replica",
    "balancer": "balancer",
    "replicator": "replicator",
    "control etcd member": "control_etcd_member",
    "gate": "gate",
    "zone": "zone",
    "site": "site",
    "link": "link_cut",
    "isolation": "isolation",
    "one-way": "one_way_cut",
}


@dataclass(frozen=True, slots=True)
class Contributor:
    """Unavailable failure sets with the same failure classes, and their share of the outage."""

    label: str
    probability: float
    share: float
    example: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class KindContributor:
    """Unavailable failure sets with the same kinds of failure (regions and sites ignored), e.g.
    "2 control etcd members" or "control etcd member + zone"."""

    label: str
    probability: float
    share: float


def _kind(f: Failure) -> str:
    return f.component_kind or f.kind if f.kind == "component" else f.kind


_KIND_WORDS = {"link": "two-way cut", "one-way": "one-way cut", "isolation": "site isolation"}


def _kind_label(kinds: tuple[str, ...]) -> str:
    parts = []
    for kind in sorted(set(kinds)):
        n = kinds.count(kind)
        word = _KIND_WORDS.get(kind, kind)
        parts.append(word if n == 1 else f"{n} {word}s")
    return " + ".join(parts)


@dataclass(frozen=True, slots=True)
class Stratum:
    """Failure sets of one size: P(exactly `size` failures), how they were evaluated, and the
    (estimated) probability of being in this stratum with writes unavailable."""

    size: int
    probability: float
    method: Method
    evaluated: int  # sets enumerated, or samples drawn
    unavailability: float
    variance: float = 0.0  # of the unavailability estimate (0 when enumerated)


@dataclass(frozen=True, slots=True)
class AvailabilityEstimate:
    topology: str
    availability: float  # lower bound for exact enumeration (neglected sets counted as outage)
    unavailability: float  # computed outage probability, without the neglected mass
    interval: tuple[float, float]  # availability: guaranteed bounds (exact) or 95% CI (MC)
    downtime_minutes_per_year: float  # expected write downtime, from `unavailability`
    downtime_interval: tuple[float, float]  # minutes per year, from `interval`
    method: Method
    max_failures: int
    neglected_probability: float  # P(more than max_failures simultaneous failures)
    tolerance: float
    single_failures: int
    possible_failures: int  # single failures with non-zero probability
    sets_evaluated: int
    samples: int
    seed: int | None
    strata: tuple[Stratum, ...]
    contributors: tuple[Contributor, ...]  # by failure class (`Failure.failure_class`)
    kind_contributors: tuple[KindContributor, ...] = ()  # coarser: by kind of failure only
    rates: Rates = field(default_factory=Rates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "availability": self.availability,
            "unavailability": self.unavailability,
            "interval": list(self.interval),
            "downtimeMinutesPerYear": self.downtime_minutes_per_year,
            "downtimeIntervalMinutesPerYear": list(self.downtime_interval),
            "method": self.method,
            "maxFailures": self.max_failures,
            "neglectedProbability": self.neglected_probability,
            "tolerance": self.tolerance,
            "singleFailures": self.single_failures,
            "possibleFailures": self.possible_failures,
            "setsEvaluated": self.sets_evaluated,
            "samples": self.samples,
            "seed": self.seed,
            "strata": [asdict(s) for s in self.strata],
            "contributors": [{**asdict(c), "example": list(c.example)} for c in self.contributors],
            "kindContributors": [asdict(c) for c in self.kind_contributors],
            "rates": self.rates.to_dict(),
            "assumptions": ASSUMPTIONS,
        }


ASSUMPTIONS = (
    "single failures (components, zones, sites, network cuts) fail independently, each down with "
    "steady-state probability MTTR/(MTBF+MTTR); overlapping ones (a site and a member on it) are "
    "independent events; writes are available when the failure analysis leaves a region serving "
    "writes"
)


# ---- the Poisson-binomial distribution ---------------------------------------------------


def count_distribution(probabilities: Sequence[float], k: int) -> tuple[list[float], float]:
    """P(K = j) for j = 0..k and P(K > k), K the number of independent events that occur.

    The tail is accumulated directly (no ``1 - sum``), so it is accurate when tiny."""
    dist = [1.0] + [0.0] * k
    over = 0.0
    for p in probabilities:
        q = 1.0 - p
        over += dist[k] * p
        for j in range(k, 0, -1):
            dist[j] = dist[j] * q + dist[j - 1] * p
        dist[0] *= q
    return dist, over


def _choose_k(probabilities: Sequence[float], tolerance: float) -> tuple[int, list[float], float]:
    n = len(probabilities)
    k = 0
    while True:
        dist, over = count_distribution(probabilities, k)
        if over < tolerance or k >= n:
            return k, dist, over
        k += 1


def _suffix_table(probabilities: Sequence[float], k: int) -> list[list[float]]:
    """T[i][j] = P(exactly j of the events i..n-1 occur), j = 0..k."""
    n = len(probabilities)
    table = [[0.0] * (k + 1) for _ in range(n + 1)]
    table[n][0] = 1.0
    for i in range(n - 1, -1, -1):
        p, q = probabilities[i], 1.0 - probabilities[i]
        nxt, row = table[i + 1], table[i]
        row[0] = nxt[0] * q
        for j in range(1, k + 1):
            row[j] = nxt[j] * q + nxt[j - 1] * p
    return table


def _sample_of_size(
    probabilities: Sequence[float], table: list[list[float]], size: int, rng: random.Random
) -> list[int]:
    """Indices of a set drawn from the distribution of the occurring events given |S| = size."""
    out: list[int] = []
    need = size
    for i, p in enumerate(probabilities):
        if need == 0:
            break
        if rng.random() * table[i][need] < p * table[i + 1][need - 1]:
            out.append(i)
            need -= 1
    return out


# ---- the estimate --------------------------------------------------------------------------


@dataclass
class _Group:
    probability: float = 0.0
    example: tuple[Failure, ...] = ()


def estimate(
    topology: Topology,
    rates: Rates | None = None,
    *,
    tolerance: float = 1e-9,
    max_sets: int = 200_000,
    mode: Mode = "auto",
    samples: int = 20_000,
    seed: int = 0,
    top: int = 5,
) -> AvailabilityEstimate:
    """Estimate the availability of writes of `topology` (see the module docstring).

    `max_sets` bounds exact enumeration ("auto"); `mode="exact"` enumerates regardless and
    `mode="monte-carlo"` samples every stratum above size 0. `samples` are split evenly over the
    sampled strata. `top` is how many contributors to report."""
    rates = rates or Rates()
    model = failure_model(topology)
    singles = model.single_failures
    probs = {f: rates.for_failure(f).unavailability for f in singles}
    certain = tuple(f for f in singles if probs[f] >= 1.0)
    uncertain = [f for f in singles if 0.0 < probs[f] < 1.0]
    p = [probs[f] for f in uncertain]
    k, dist, neglected = _choose_k(p, tolerance)

    class_sizes: dict[str, int] = {}
    for f in singles:
        class_sizes[f.failure_class] = class_sizes.get(f.failure_class, 0) + 1
    groups: dict[tuple[str, ...], _Group] = {}
    first_outcome: dict[tuple[str, ...], Outcome] = {}
    by_kind: dict[tuple[str, ...], float] = {}

    def record(fs: tuple[Failure, ...], weight: float) -> bool:
        """Evaluate `fs` (plus the certain failures); on an outage add `weight` to its group."""
        full = certain + fs
        outcome = model.evaluate(full)
        if outcome.writes_region is not None:
            return False
        key = tuple(sorted(f.failure_class for f in full))
        g = groups.get(key)
        if g is None:
            g = groups[key] = _Group(example=full)
            first_outcome[key] = outcome
        g.probability += weight
        kinds = tuple(sorted(_kind(f) for f in full))
        by_kind[kinds] = by_kind.get(kinds, 0.0) + weight
        return True

    base = math.prod(1.0 - x for x in p)
    odds = [x / (1.0 - x) for x in p]
    strata: list[Stratum] = []
    enumerated = 0
    drawn = 0
    table: list[list[float]] | None = None
    rng = random.Random(seed)
    sampled_sizes = [
        size
        for size in range(k + 1)
        if _sampled(mode, size, enumerated_upto(len(p), size), max_sets)
    ]
    per_stratum = max(1, samples // len(sampled_sizes)) if sampled_sizes else 0
    for size in range(k + 1):
        if size not in sampled_sizes:
            unavailable = 0.0
            count = 0
            for idx in itertools.combinations(range(len(p)), size):
                weight = base * math.prod(odds[i] for i in idx)
                count += 1
                if record(tuple(uncertain[i] for i in idx), weight):
                    unavailable += weight
            enumerated += count
            strata.append(Stratum(size, dist[size], "exact-enumeration", count, unavailable))
            continue
        if table is None:
            table = _suffix_table(p, k)
        hits = 0
        weight = dist[size] / per_stratum
        for _ in range(per_stratum):
            drawn_idx = _sample_of_size(p, table, size, rng)
            if record(tuple(uncertain[i] for i in drawn_idx), weight):
                hits += 1
        drawn += per_stratum
        share = (hits + 2) / (per_stratum + 4)  # Agresti-Coull
        variance = dist[size] ** 2 * share * (1 - share) / (per_stratum + 4)
        strata.append(
            Stratum(
                size,
                dist[size],
                "monte-carlo",
                per_stratum,
                dist[size] * hits / per_stratum,
                variance,
            )
        )

    unavailability = sum(s.unavailability for s in strata)
    availability = max(0.0, 1.0 - unavailability - neglected)
    method: Method = "monte-carlo" if sampled_sizes else "exact-enumeration"
    if sampled_sizes:
        half = Z95 * math.sqrt(sum(s.variance for s in strata))
        low = max(0.0, availability - half)
        high = min(1.0, availability + neglected + half)
    else:
        low, high = availability, min(1.0, availability + neglected)

    contributors = []
    for key, g in sorted(groups.items(), key=lambda kv: (-kv[1].probability, kv[0])):
        classes = tuple((c, key.count(c), class_sizes[c]) for c in sorted(set(key)))
        label = FailureGroup(len(key), classes, first_outcome[key]).label
        share = g.probability / unavailability if unavailability > 0 else 0.0
        contributors.append(Contributor(label, g.probability, share, tuple(map(str, g.example))))

    kind_contributors = tuple(
        KindContributor(
            _kind_label(key), prob, prob / unavailability if unavailability > 0 else 0.0
        )
        for key, prob in sorted(by_kind.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    )
    return AvailabilityEstimate(
        topology=topology.name,
        availability=availability,
        unavailability=unavailability,
        interval=(low, high),
        downtime_minutes_per_year=unavailability * MINUTES_PER_YEAR,
        downtime_interval=((1.0 - high) * MINUTES_PER_YEAR, (1.0 - low) * MINUTES_PER_YEAR),
        method=method,
        max_failures=k + len(certain),
        neglected_probability=neglected,
        tolerance=tolerance,
        single_failures=len(singles),
        possible_failures=len(uncertain) + len(certain),
        sets_evaluated=enumerated,
        samples=drawn,
        seed=seed if sampled_sizes else None,
        strata=tuple(strata),
        contributors=tuple(contributors[:top]),
        kind_contributors=kind_contributors,
        rates=rates,
    )


def enumerated_upto(n: int, size: int) -> int:
    """How many sets of sizes 0..size there are among n possible failures."""
    return sum(math.comb(n, i) for i in range(size + 1))


def _sampled(mode: Mode, size: int, sets_so_far: int, max_sets: int) -> bool:
    if size == 0 or mode == "exact":
        return False
    return mode == "monte-carlo" or sets_so_far > max_sets


__all__ = [
    "ASSUMPTIONS",
    "HOURS_PER_YEAR",
    "KIND_FIELDS",
    "MINUTES_PER_YEAR",
    "NEVER",
    "AvailabilityEstimate",
    "Contributor",
    "KindContributor",
    "Rate",
    "Rates",
    "Stratum",
    "count_distribution",
    "enumerated_upto",
    "estimate",
]
