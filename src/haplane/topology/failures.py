"""Failure analysis: what a set of simultaneous failures leaves standing, decided from the model.

Layer: model. Pure: a function of a `Topology` and a failure set, no I/O, no clock.
`haplane analyse` enumerates failure sets through it, and the runtime's failover controller
imports `evaluate` so that both agree on what a failure set leaves standing.

Failures (`Failure`, named by `str(failure)` and found by `failure_named`):

- component ``<region>/<name>`` (regional etcd member, API replica, balancer) or ``global/<name>``
  (control etcd member, gate instance): that process is down;
- zone ``zone <site>/<zone>``: every component placed in it is down; control etcd members without
  a zone, and gate instances (which have none), count as in their site's first zone;
- site ``site <site>``: every component on the site is down;
- network cuts between sites: ``cut A<->B`` (both ways), ``isolate A`` (A from every other site),
  ``cut A->B`` (one way: A cannot reach B, B still reaches A).

Modelling assumptions (each one is a decision the controller shares):

1. Components on one site always reach each other; cuts are between sites only.
2. Every interaction modelled is request/response (raft, client RPC through gate, balancer and
   replica, health probes, lease renewal), so a one-way cut breaks the pair exactly like a
   two-way cut. Raft in particular needs both directions. The kinds stay distinct in names and
   grouping because the runtime sees them differently (a one-sided cut looks like a failure from
   one side only), which is why vantage points vote.
3. An etcd member counts for its cluster when it is up and can talk both ways with a majority of
   the cluster's members including itself (members on the minority side of a partition do not
   count). A cluster has quorum when some member counts. Cuts do not split a region's own etcd
   (all its members share the region's site, see 1).
4. A region is healthy when its etcd has quorum, some API replica is up (replicas run in their
   region, so they reach their etcd: `/readyz` passes) and some balancer is up.
5. The control plane is the set of sites holding a counting control etcd member; a site reaches
   it when it can talk both ways with one of those sites (etcd forwards to the leader).
6. Before the failure, the highest-priority region is active (`spec.global.failover.priority`,
   default the order of sites; unknown names ignored, unlisted regions appended).
7. The active region keeps writes while it is healthy and renews its lease on being active (it
   reaches the control plane). When the control etcd has no quorum nobody can renew: the active
   region fences itself and writes stop everywhere (a global write outage).
8. The failover controller can decide when the control etcd has quorum and a majority of ALL
   gate instances (vantage points, counted over the file, not over the survivors) are up and
   reach the control plane. Those voters probe regions; a gate sees a region when it reaches the
   region's site and the region is healthy.
9. The controller replaces the active region when the active region lost its lease (7) or a
   majority of all gate instances vote it down; it then promotes the highest-priority other
   region that is healthy, reaches the control plane and is seen by a majority of all gate
   instances. A lone gate behind a one-sided cut therefore never moves writes by itself. If the
   active region kept its lease but a majority voted it down, the new epoch fences it; when no
   other region qualifies, the controller leaves the active region in place.
10. The gate keeps serving when some gate instance is up and reaches the site of the region that
   serves writes afterwards.
11. Data: the active region keeps its data. A region that takes over serves its own data: with an
   asynchronous replication pair from the old active region to it, it lacks up to the
   replication lag (`replication-lag`, printed "replication lag (async)"); with a synchronous
   pair, nothing acknowledged (`none-sync`, "none (sync)": the controller promotes only the
   synchronous standby; while the sync record says `none`, the async rules apply); without a
   pair, everything acknowledged in the old active region is unavailable until that region
   returns (`unreplicated`).
12. Components referring to sites or zones the file does not declare (a schema-valid file with
   validation errors) are placed on those names as if declared, so analysis still runs.

Sets are unordered combinations of distinct single failures; overlapping failures (a site and a
member on it) are counted as separate sets, so the count is sum(C(N, i) for i in 1..k) for N single
failures.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .model import GLOBAL_SCOPE, ApiServer, Balancer, EtcdMember, Replicator, Topology

FailureKind = Literal["component", "zone", "site", "link", "isolation", "one-way"]
ComponentKind = Literal[
    "etcd member", "API replica", "balancer", "replicator", "control etcd member", "gate"
]
DataLoss = Literal["none", "none-sync", "replication-lag", "unreplicated"]
DATA_LOSS_TEXT: dict[DataLoss, str] = {
    "none": "none",
    "none-sync": "none (sync)",
    "replication-lag": "replication lag (async)",
    "unreplicated": "unreplicated",
}
"""How `analyse` prints each `DataLoss` in its table and summary ("none (sync)", "replication
lag (async)"). `analyse --json` keeps the `DataLoss` values themselves (`outcome.dataLoss`), which
stay stable for scripts."""
Category = Literal["stops-writes", "unreachable", "fails-over", "degraded", "unaffected"]

CATEGORY_ORDER: tuple[Category, ...] = (
    "stops-writes",
    "unreachable",
    "fails-over",
    "degraded",
    "unaffected",
)
COUNTING_NOTE = (
    "failure sets are unordered combinations of k distinct single failures (components, zones, "
    "sites, network cuts); overlapping ones such as a site and a member on it count as separate "
    "sets, so there are sum(C(N, i) for i = 1..k) sets for N single failures"
)


@dataclass(frozen=True, slots=True)
class Failure:
    """One failure. `target` is a qualified component name, ``site/zone``, or a site; `other` is
    the second site of a cut (for one-way cuts `target` cannot reach `other`)."""

    kind: FailureKind
    target: str
    other: str | None = None
    component_kind: ComponentKind | None = None

    def __str__(self) -> str:
        if self.kind == "component":
            return self.target
        if self.kind == "zone":
            return f"zone {self.target}"
        if self.kind == "site":
            return f"site {self.target}"
        if self.kind == "link":
            return f"cut {self.target}<->{self.other}"
        if self.kind == "isolation":
            return f"isolate {self.target}"
        return f"cut {self.target}->{self.other}"

    @property
    def failure_class(self) -> str:
        """What makes failures interchangeable in a summary, e.g. "eu-west etcd member"."""
        if self.kind == "component":
            return f"{self.target.split('/', 1)[0]} {self.component_kind}"
        if self.kind == "zone":
            return f"{self.target.split('/', 1)[0]} zone"
        if self.kind == "site":
            return f"site {self.target}"
        if self.kind == "isolation":
            return f"isolation of {self.target}"
        return "two-way cut" if self.kind == "link" else "one-way cut"


@dataclass(frozen=True, slots=True)
class RegionHealth:
    name: str
    etcd_quorum: bool
    ready_api: bool
    balancer: bool

    @property
    def healthy(self) -> bool:
        return self.etcd_quorum and self.ready_api and self.balancer


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a failure set leaves standing. Hashable: equal outcomes group together."""

    lost_quorum: tuple[str, ...]  # etcd cluster names ("eu-west/etcd", "global/etcd")
    regions: tuple[RegionHealth, ...]
    control_quorum: bool
    controller_can_decide: bool
    gate_serving: bool
    active_before: str | None
    writes_region: str | None
    data_loss: DataLoss
    reason: str

    @property
    def writes_available(self) -> bool:
        return self.writes_region is not None

    @property
    def failed_over(self) -> bool:
        return self.writes_region is not None and self.writes_region != self.active_before

    @property
    def category(self) -> Category:
        if self.writes_region is None:
            return "stops-writes"
        if not self.gate_serving:
            return "unreachable"
        if self.failed_over:
            return "fails-over"
        if (
            self.lost_quorum
            or not self.controller_can_decide
            or not all(r.healthy for r in self.regions)
        ):
            return "degraded"
        return "unaffected"

    @property
    def survives(self) -> bool:
        return self.category not in ("stops-writes", "unreachable")


# ---- the per-topology index --------------------------------------------------------------


@dataclass
class _Region:
    name: str
    site: int
    etcd: int  # component bitmasks
    api: int
    balancers: int
    quorum: int
    mask: int


class FailureModel:
    """A topology indexed for fast evaluation: components and sites as bit positions.

    Build once per topology and call `evaluate` per failure set; `evaluate()` the function does
    this for one-off calls.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.sites: list[str] = []
        self._site_idx: dict[str, int] = {}
        self._zones: dict[str, list[str]] = {}
        self._comp_names: list[str] = []
        self._comp_kind: list[ComponentKind] = []
        self._comp_site: list[int] = []
        self._zone_mask: dict[tuple[str, str], int] = {}
        self._site_mask: list[int] = []
        for s in topology.spec.sites:
            self._site(s.name)
            for z in s.zones:
                self._zone(s.name, z)

        self.regions: list[_Region] = []
        for site, region in topology.regions():
            masks: list[int] = []
            groups: tuple[
                tuple[ComponentKind, Sequence[EtcdMember | ApiServer | Balancer | Replicator]], ...
            ]
            groups = (
                ("etcd member", region.etcd.members),
                ("API replica", region.api_servers),
                ("balancer", region.balancers),
                # a replicator serves no request: its loss only stops the copy into its region
                ("replicator", region.replicators),
            )
            for kind, items in groups:
                m = 0
                for item in items:
                    m |= self._component(f"{site.name}/{item.name}", kind, site.name, item.zone)
                masks.append(m)
            n = len(region.etcd.members)
            etcd, api, lbs, _replicators = masks
            site_idx = self._site_idx[site.name]
            self.regions.append(
                _Region(site.name, site_idx, etcd, api, lbs, n // 2 + 1, etcd | api | lbs)
            )
        g = topology.spec.global_
        self._ctrl: list[tuple[int, int]] = []  # (bit, site)
        for cm in g.control_etcd.members:
            zone = cm.zone or self._first_zone(cm.site)
            bit = self._component(f"{GLOBAL_SCOPE}/{cm.name}", "control etcd member", cm.site, zone)
            self._ctrl.append((bit, self._site_idx[cm.site]))
        self._ctrl_mask = sum(b for b, _ in self._ctrl)
        self._ctrl_quorum = len(self._ctrl) // 2 + 1
        self._gates: list[tuple[int, int]] = []
        for gate in g.gates:
            bit = self._component(
                f"{GLOBAL_SCOPE}/{gate.name}", "gate", gate.site, self._first_zone(gate.site)
            )
            self._gates.append((bit, self._site_idx[gate.site]))
        self._gate_majority = vantage_majority(len(self._gates))

        by_name = {r.name: i for i, r in enumerate(self.regions)}
        prio = [by_name[p] for p in dict.fromkeys(topology.region_priority()) if p in by_name]
        self.priority: list[int] = prio + [i for i in range(len(self.regions)) if i not in prio]
        # a pair replicates both ways, from whichever region is active: its mode is kept per
        # unordered pair (a pair listed twice, a validate error, is Sync if either entry is)
        self._pair_mode: dict[frozenset[str], Literal["Async", "Sync"]] = {}
        for r in g.replication:
            key = frozenset((r.from_, r.to))
            if self._pair_mode.get(key) != "Sync":
                self._pair_mode[key] = r.mode
        n_sites = len(self.sites)
        self._all_sites = (1 << n_sites) - 1
        self._conn_cache: dict[int, list[int]] = {0: [self._all_sites] * n_sites}
        self._region_cache: dict[tuple[int, int], RegionHealth] = {}
        self._baseline = [self._region_health(i, 0) for i in range(len(self.regions))]
        self._region_masks = [(i, r.mask) for i, r in enumerate(self.regions)]
        self._base_code = sum(
            (h.etcd_quorum | h.ready_api << 1 | h.balancer << 2) << 3 * i
            for i, h in enumerate(self._baseline)
        )
        self._global_mask = self._ctrl_mask | sum(b for b, _ in self._gates)
        self._memo: dict[tuple[int, int, int], Outcome] = {}
        self._interned: dict[Outcome, Outcome] = {}
        self._singles = self._single_failures()
        self._by_name = {str(f): f for f in self._singles}
        self._effects = {f: self._effect(f) for f in self._singles}

    # -- building ---------------------------------------------------------------------------

    def _site(self, name: str) -> int:
        if name not in self._site_idx:
            self._site_idx[name] = len(self.sites)
            self.sites.append(name)
            self._zones[name] = []
            self._site_mask.append(0)
        return self._site_idx[name]

    def _zone(self, site: str, zone: str) -> None:
        self._site(site)
        if zone not in self._zones[site]:
            self._zones[site].append(zone)
            self._zone_mask[(site, zone)] = 0

    def _first_zone(self, site: str) -> str:
        self._site(site)
        zones = self._zones[site]
        return zones[0] if zones else "default"

    def _component(self, name: str, kind: ComponentKind, site: str, zone: str) -> int:
        self._zone(site, zone)
        bit = 1 << len(self._comp_names)
        self._comp_names.append(name)
        self._comp_kind.append(kind)
        self._comp_site.append(self._site_idx[site])
        self._zone_mask[(site, zone)] |= bit
        self._site_mask[self._site_idx[site]] |= bit
        return bit

    def _single_failures(self) -> list[Failure]:
        out = [
            Failure("component", n, component_kind=k)
            for n, k in zip(self._comp_names, self._comp_kind, strict=True)
        ]
        out += [Failure("zone", f"{s}/{z}") for s in self.sites for z in self._zones[s]]
        out += [Failure("site", s) for s in self.sites]
        out += [Failure("link", a, b) for a, b in itertools.combinations(self.sites, 2)]
        out += [Failure("isolation", s) for s in self.sites]
        out += [Failure("one-way", a, b) for a, b in itertools.permutations(self.sites, 2)]
        return out

    def _pair(self, a: int, b: int) -> int:
        lo, hi = min(a, b), max(a, b)
        return 1 << (lo * len(self.sites) + hi)

    def _effect(self, f: Failure) -> tuple[int, int]:
        """(components down, site pairs that can no longer talk both ways), as bitmasks."""
        if f.kind == "component":
            return 1 << self._comp_names.index(f.target), 0
        if f.kind == "zone":
            site, zone = f.target.split("/", 1)
            return self._zone_mask[(site, zone)], 0
        a = self._site_idx[f.target]
        if f.kind == "site":
            return self._site_mask[a], 0
        if f.kind == "isolation":
            return 0, sum(self._pair(a, b) for b in range(len(self.sites)) if b != a)
        return 0, self._pair(a, self._site_idx[f.other or ""])

    # -- public -----------------------------------------------------------------------------

    @property
    def single_failures(self) -> list[Failure]:
        return list(self._singles)

    def failure_named(self, name: str) -> Failure:
        """The failure `str(failure) == name`; a bare site name means the site. KeyError if none."""
        found = self._by_name.get(name) or self._by_name.get(f"site {name}")
        if found is None:
            found = self._by_name.get(f"zone {name}")
        if found is None:
            raise KeyError(name)
        return found

    def evaluate(self, failures: Iterable[Failure]) -> Outcome:
        down = cuts = 0
        for f in failures:
            d, c = self._effects[f] if f in self._effects else self._effect(f)
            down |= d
            cuts |= c
        return self._decide(down, cuts)

    def _decide_memo(self, down: int, cuts: int) -> Outcome:
        """`_decide` memoised on what matters (region health codes, global components, cuts);
        equal outcomes are one object, so callers may group by identity. For bulk analysis."""
        code = self._base_code
        for i, mask in self._region_masks:
            m = down & mask
            if m:
                h = self._region_health(i, down)
                c = h.etcd_quorum | h.ready_api << 1 | h.balancer << 2
                code = code & ~(7 << 3 * i) | c << 3 * i
        key = (code, down & self._global_mask, cuts)
        hit = self._memo.get(key)
        if hit is None:
            outcome = self._decide(down, cuts)
            hit = self._memo[key] = self._interned.setdefault(outcome, outcome)
        return hit

    def vantage_views(self, failures: Iterable[Failure]) -> dict[str, dict[str, bool] | None]:
        """What each gate instance reports under a failure set, for the runtime controller's
        decision (`haplane.gate.failover.decide`): None when the gate is down or cannot reach
        the control plane (its report never arrives); otherwise, per region, whether it sees
        the region healthy: it reaches the region's site, and the region is healthy and
        reaches the control plane (can hold a write grant; the balancers' health says so)."""
        down = cuts = 0
        for f in failures:
            d, c = self._effects[f] if f in self._effects else self._effect(f)
            down |= d
            cuts |= c
        conn = self._connectivity(cuts)
        up_ctrl = [s for bit, s in self._ctrl if not bit & down]
        plane = 0
        for s in up_ctrl:
            if sum(1 for t in up_ctrl if conn[s] >> t & 1) >= self._ctrl_quorum:
                plane |= 1 << s
        views: dict[str, dict[str, bool] | None] = {}
        for (bit, site), gate in zip(self._gates, self.topology.spec.global_.gates, strict=True):
            if bit & down or not conn[site] & plane:
                views[gate.name] = None
                continue
            views[gate.name] = {
                r.name: bool(
                    conn[site] >> r.site & 1
                    and self._region_health(i, down).healthy
                    and conn[r.site] & plane
                )
                for i, r in enumerate(self.regions)
            }
        return views

    # -- deciding ---------------------------------------------------------------------------

    def _region_health(self, i: int, down: int) -> RegionHealth:
        r = self.regions[i]
        key = (i, down & r.mask)
        hit = self._region_cache.get(key)
        if hit is None:
            up = ~down
            quorum = (r.etcd & up).bit_count() >= r.quorum
            hit = RegionHealth(r.name, quorum, quorum and bool(r.api & up), bool(r.balancers & up))
            self._region_cache[key] = hit
        return hit

    def _connectivity(self, cuts: int) -> list[int]:
        """Per site, the mask of sites it can talk with both ways."""
        conn = self._conn_cache.get(cuts)
        if conn is None:
            n = len(self.sites)
            conn = [self._all_sites] * n
            for a in range(n):
                for b in range(a + 1, n):
                    if cuts & self._pair(a, b):
                        conn[a] &= ~(1 << b)
                        conn[b] &= ~(1 << a)
            self._conn_cache[cuts] = conn
        return conn

    def _decide(self, down: int, cuts: int) -> Outcome:
        regions = [
            self._region_health(i, down) if down & r.mask else self._baseline[i]
            for i, r in enumerate(self.regions)
        ]
        conn = self._connectivity(cuts)

        up_ctrl = [(bit, s) for bit, s in self._ctrl if not bit & down]
        plane = 0  # sites holding a counting control etcd member
        for _, s in up_ctrl:
            if plane >> s & 1:
                continue
            reach = conn[s]
            if sum(1 for _, t in up_ctrl if reach >> t & 1) >= self._ctrl_quorum:
                plane |= 1 << s
        control_quorum = plane != 0

        voters = [s for bit, s in self._gates if not bit & down and conn[s] & plane]
        can_decide = control_quorum and len(voters) >= self._gate_majority

        def reaches_plane(i: int) -> bool:
            return bool(conn[self.regions[i].site] & plane)

        def seen_by(i: int) -> int:
            site = self.regions[i].site
            return sum(1 for s in voters if conn[s] >> site & 1)

        def seen_by_majority(i: int) -> bool:
            return seen_by(i) >= self._gate_majority

        active = self.priority[0] if self.priority else None
        writes: int | None = None
        if active is None:
            reason = "no region"
        elif not control_quorum:
            reason = "global control etcd lost quorum: the active region fenced itself"
        else:
            holds_lease = regions[active].healthy and reaches_plane(active)
            voted_down = can_decide and (
                len(voters) - seen_by(active) >= self._gate_majority
                if regions[active].healthy
                else True
            )
            if holds_lease and not voted_down:
                writes, reason = active, "active region keeps writes"
            elif not can_decide:
                reason = (
                    "active region lost its lease and the failover controller cannot decide "
                    "(too few gate vantage points reach the control etcd)"
                )
            else:
                writes = next(
                    (
                        i
                        for i in self.priority
                        if i != active
                        and regions[i].healthy
                        and reaches_plane(i)
                        and seen_by_majority(i)
                    ),
                    None,
                )
                if writes is not None:
                    reason = "failed over"
                elif holds_lease:
                    writes, reason = active, "active region keeps writes (no better region)"
                else:
                    reason = "active region down and no other region is healthy and reachable"

        if writes is None:
            gate_serving = False
        else:
            site = self.regions[writes].site
            gate_serving = any(not bit & down and conn[s] >> site & 1 for bit, s in self._gates)

        data_loss: DataLoss = "none"
        if writes is not None and active is not None and writes != active:
            mode = self._pair_mode.get(
                frozenset((self.regions[active].name, self.regions[writes].name))
            )
            if mode == "Sync":
                data_loss = "none-sync"
            elif mode == "Async":
                data_loss = "replication-lag"
            else:
                data_loss = "unreplicated"

        lost = tuple(f"{h.name}/etcd" for h in regions if not h.etcd_quorum)
        if not control_quorum:
            lost += (f"{GLOBAL_SCOPE}/etcd",)
        return Outcome(
            lost_quorum=lost,
            regions=tuple(regions),
            control_quorum=control_quorum,
            controller_can_decide=can_decide,
            gate_serving=gate_serving,
            active_before=self.regions[active].name if active is not None else None,
            writes_region=self.regions[writes].name if writes is not None else None,
            data_loss=data_loss,
            reason=reason,
        )


def vantage_majority(vantage_points: int) -> int:
    """Votes needed to call a region down or healthy: a majority of ALL configured gate
    instances (assumption 8), counted over the file, never over the survivors. Shared with the
    runtime failover controller (`haplane.gate.failover.decide`)."""
    return vantage_points // 2 + 1


_last: tuple[Topology, FailureModel] | None = None


def failure_model(topology: Topology) -> FailureModel:
    """The index of `topology`, reused while the same object is passed again."""
    global _last
    if _last is None or _last[0] is not topology:
        _last = (topology, FailureModel(topology))
    return _last[1]


def evaluate(topology: Topology, failures: Iterable[Failure]) -> Outcome:
    """Decide what `failures` (all at once) leave standing. Pure; see the module docstring."""
    return failure_model(topology).evaluate(failures)


def failure_named(topology: Topology, name: str) -> Failure:
    """Parse a failure as `str(failure)` prints it; raises KeyError for an unknown name."""
    return failure_model(topology).failure_named(name)


# ---- enumeration ---------------------------------------------------------------------------


def count_failure_sets(topology: Topology, max_failures: int = 2) -> int:
    """How many sets `enumerate_failures` yields, without enumerating them."""
    n = len(failure_model(topology).single_failures)
    return sum(math.comb(n, i) for i in range(1, max_failures + 1))


def enumerate_failures(topology: Topology, max_failures: int = 2) -> Iterator[tuple[Failure, ...]]:
    """Every set of 1..max_failures distinct single failures, smallest sets first."""
    singles = failure_model(topology).single_failures
    for k in range(1, max_failures + 1):
        yield from itertools.combinations(singles, k)


def sample(topology: Topology, k: int, n: int, seed: int = 0) -> list[tuple[Failure, ...]]:
    """`n` sets drawn uniformly (with replacement) from what `enumerate_failures(k)` yields."""
    singles = failure_model(topology).single_failures
    rng = random.Random(seed)
    sizes = list(range(1, min(k, len(singles)) + 1))
    weights = [math.comb(len(singles), i) for i in sizes]
    out: list[tuple[Failure, ...]] = []
    for size in rng.choices(sizes, weights=weights, k=n) if sizes else []:
        picked = sorted(rng.sample(range(len(singles)), size))
        out.append(tuple(singles[i] for i in picked))
    return out


# ---- grouping and the summary --------------------------------------------------------------


@dataclass
class FailureGroup:
    """Failure sets of one size, with the same failure classes and the same outcome."""

    size: int
    classes: tuple[tuple[str, int, int], ...]  # (failure class, how many, class size), sorted
    outcome: Outcome
    count: int = 0
    examples: list[tuple[Failure, ...]] = field(default_factory=list)
    complete: bool = False  # every combination of these classes lands here ("any")

    @property
    def label(self) -> str:
        parts = []
        for cls, c, n in self.classes:
            if n == 1:
                parts.append(cls)
            else:
                parts.append(f"{c} of the {n} {cls}s")
        text = " + ".join(parts)
        return f"any {text}" if self.complete and any(n > 1 for _, _, n in self.classes) else text


@dataclass
class Analysis:
    topology: str
    single_failures: int
    max_failures: int
    sampled: bool
    evaluated: int
    by_size: dict[int, dict[Category, int]]
    groups: list[FailureGroup]
    counting: str = COUNTING_NOTE

    def summary(self) -> str:
        return summarise(self)


def analyse(
    topology: Topology,
    max_failures: int = 2,
    failure_sets: Iterable[Sequence[Failure]] | None = None,
) -> Analysis:
    """Evaluate every set up to `max_failures` (or the given sets, e.g. from `sample`) and group
    equivalent ones by failure classes and outcome."""
    model = failure_model(topology)
    sampled = failure_sets is not None
    sets: Iterable[Sequence[Failure]] = (
        failure_sets if failure_sets is not None else enumerate_failures(topology, max_failures)
    )
    singles = model.single_failures
    class_names = sorted({f.failure_class for f in singles})
    class_id = {c: i for i, c in enumerate(class_names)}
    class_sizes = [0] * len(class_names)
    for f in singles:
        class_sizes[class_id[f.failure_class]] += 1
    effects = {f: (*model._effects[f], class_id[f.failure_class]) for f in singles}
    raw: dict[tuple[tuple[int, ...], int], tuple[Outcome, list[int]]] = {}
    examples: dict[tuple[tuple[int, ...], int], list[tuple[Failure, ...]]] = {}
    evaluated = 0
    for fs in sets:
        down = cuts = 0
        ids = []
        for f in fs:
            d, c, cid = effects[f]
            down |= d
            cuts |= c
            ids.append(cid)
        ids.sort()
        outcome = model._decide_memo(down, cuts)
        evaluated += 1
        key = (tuple(ids), id(outcome))
        entry = raw.get(key)
        if entry is None:
            entry = raw[key] = (outcome, [0])
            examples[key] = []
        entry[1][0] += 1
        if len(examples[key]) < 3:
            examples[key].append(tuple(fs))
    groups: list[FailureGroup] = []
    by_size: dict[int, dict[Category, int]] = {}
    for key, (outcome, count) in raw.items():
        ids_key = key[0]
        classes = tuple(
            (class_names[c], ids_key.count(c), class_sizes[c]) for c in sorted(set(ids_key))
        )
        complete = not sampled and count[0] == math.prod(math.comb(n, c) for _, c, n in classes)
        size = len(ids_key)
        groups.append(FailureGroup(size, classes, outcome, count[0], examples[key], complete))
        per = by_size.setdefault(size, dict.fromkeys(CATEGORY_ORDER, 0))
        per[outcome.category] += count[0]
    ordered = sorted(
        groups,
        key=lambda g: (g.size, CATEGORY_ORDER.index(g.outcome.category), -g.count, g.label),
    )
    return Analysis(
        topology.name,
        len(model.single_failures),
        max_failures,
        sampled,
        evaluated,
        by_size,
        ordered,
    )


_SIZE_WORDS = {1: "single", 2: "double", 3: "triple"}


def _size_word(k: int) -> str:
    return _SIZE_WORDS.get(k, f"{k}-fold")


def _describe(groups: list[FailureGroup], limit: int = 3) -> str:
    shown = [f"{g.label} ({g.count})" for g in groups[:limit]]
    if len(groups) > limit:
        shown.append(f"{len(groups) - limit} more group(s)")
    return "; ".join(shown)


def summarise(analysis: Analysis) -> str:
    """One line per failure-set size, in the seed's terms."""
    lines = []
    for k in sorted(analysis.by_size):
        per = analysis.by_size[k]
        total = sum(per.values())
        word = _size_word(k)
        sampled = " sampled" if analysis.sampled else ""
        stop = [g for g in analysis.groups if g.size == k and g.outcome.category == "stops-writes"]
        unreach = [
            g for g in analysis.groups if g.size == k and g.outcome.category == "unreachable"
        ]
        parts: list[str] = []
        if not stop and not unreach:
            parts.append(f"survives every{sampled} {word} failure ({total} sets)")
        if stop:
            parts.append(
                f"{per['stops-writes']} of {total}{sampled} {word} failures stop writes: "
                + _describe(stop)
            )
        if unreach:
            parts.append(
                f"{per['unreachable']} of {total} leave the serving region unreachable through "
                "the gate: " + _describe(unreach)
            )
        if per["fails-over"]:
            over = [g for g in analysis.groups if g.size == k and g.outcome.failed_over]
            losses = sorted({DATA_LOSS_TEXT[g.outcome.data_loss] for g in over})
            parts.append(
                f"{per['fails-over']} fail over to another region (data: {', '.join(losses)})"
            )
        lines.append("; ".join(parts))
    return "\n".join(lines)
