"""The failover decision: a pure function of one snapshot of what the gates see.

Layer: gate. Pure: no I/O, no clock (ages and durations arrive in the snapshot). The runtime
around it (`haplane.gate.controller`) observes and acts; this module only decides, so it can be
tested exhaustively on data.

The rules are those of the failure model (`haplane.topology.failures`, assumptions 8 and 9),
applied to live votes instead of a failure set:

- every gate instance is a vantage point and reports, for every region, whether it sees the
  region healthy (some balancer reports `/healthz/region` healthy) and for how long that has
  held. A report older than `stale_after` is no vote at all (that gate is down or cut off);
- a region is **down** when a majority of ALL configured vantage points (`vantage_majority`
  over the file, not over the reports that arrived) have seen it down for `down_after`; a
  region is **healthy** when such a majority has seen it healthy for `stable_for` (so that a
  failover never goes to a region that just came back, e.g. when every region's health returns
  at once after the global control etcd did). A lone gate behind a
  one-sided cut is never a majority; a blip shorter than `down_after` never counts;
- the active region being down, the controller promotes, among the healthy regions, the one
  that replicated the most of the active region (the highest applied source revision in its
  replicator's report; ties by priority); regions without replication from the active region
  come after those with it. A region whose copy is `Resyncing` is never chosen, nor one whose
  lag, last measured while the active region still answered, exceeded its pair's `maxLagMs`
  (lag keeps growing once the source is dead: judging by it would block every failover); the
  decision says why. None eligible: it leaves the active region in place (nothing better);
- synchronous replication (a `Sync` pair): only the standby the sync record names
  synchronous for the active region's epoch may be promoted, whatever the others applied;
  with `sync: none` the rules above apply and the decision says data may be lost. The
  decision carries the record's mod revision, which the switch compares;
- hysteresis: no automatic failover within `min_interval` of the last change. "Since the last
  change" (`Snapshot.since_change`) is measured on the controller's own monotonic clock from
  when it first observed the current epoch, never from the record's `since` (another machine's
  wall clock): a controller that sees an epoch for the first time counts from then;
- failback (off by default): once the preferred region has been seen healthy by a majority for
  `failback_after`, and the last change (same clock) is at least that old, switch back
  (planned). Never while operators have suspended it (`Snapshot.failback_suspended`: an
  operator's switchover does so, `haplane failback on` ends it): the reason says who and why;
- a committed epoch that is not yet writable is unfenced once the controller has seen it for
  the record's fence wait (grant + margin): no replica of the old region can still write;
- a **blocked** failover (the active region is down, or seen down while too few vantage
  points report to agree, and nothing may move) says why in `Decision.blocked`, one of
  `BLOCKED_REASONS`: a code that stays the same from tick to tick while the cause does (the
  reason's figures change), so that the controller publishes a block once, not every tick.
  (The controller also writes the regional fence keys around these actions: see
  `haplane.gate.controller`; nothing here depends on them.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from haplane.store import ActiveRegion, ReplicationReport, SyncRecord
from haplane.topology.failures import vantage_majority

Action = Literal["none", "failover", "failback", "unfence"]

# why a failover the active region needs cannot happen now (`Decision.blocked`); several
# standbys excluded for different reasons: their codes joined by "+", in priority order
BLOCKED_REASONS = {
    "automatic-off": "the topology turns automatic failover off",
    "hysteresis": "the last change is more recent than `minInterval`",
    "no-vantage-quorum": "fewer than a majority of the vantage points report at all",
    "no-healthy-region": "no other region is seen healthy by a majority",
    "standby-partial": "the healthy standby holds a partial copy (a resync under way)",
    "standby-lag-unknown": "the healthy standby's lag is unknown and its pair has a maxLagMs",
    "standby-lag-over-limit": "the healthy standby's lag exceeded its pair's maxLagMs (RPO)",
    "sync-standby-not-healthy": "the synchronous standby, the only one with every "
    "acknowledged write, is not seen healthy",
}


@dataclass(frozen=True)
class Settings:
    vantage_points: tuple[str, ...]  # every configured gate instance
    priority: tuple[str, ...]  # regions, most preferred first
    down_after: float = 0.6
    stale_after: float = 1.0
    min_interval: float = 10.0
    failback: bool = False
    failback_after: float = 60.0
    automatic: bool = True
    stable_for: float = 1.0  # a target must have been seen healthy this long
    report_stale_after: float = 2.0  # a replication report older than this says nothing
    # replication pairs (either way): (region, region, max lag in seconds or None)
    pairs: tuple[tuple[str, str, float | None], ...] = ()
    # the pairs among them in `Sync` mode (either way)
    sync_pairs: tuple[tuple[str, str], ...] = ()

    def is_sync_pair(self, a: str, b: str) -> bool:
        return any({x, y} == {a, b} for x, y in self.sync_pairs)

    def synchronous(self, region: str) -> bool:
        """Does `region` replicate synchronously to some standby (acknowledgements wait)?"""
        return any(region in p for p in self.sync_pairs)

    def pair(self, a: str, b: str) -> tuple[bool, float | None]:
        """(whether `a` and `b` replicate, the pair's max lag in seconds)."""
        for x, y, max_lag in self.pairs:
            if {x, y} == {a, b}:
                return True, max_lag
        return False, None

    @property
    def majority(self) -> int:
        return vantage_majority(len(self.vantage_points))


@dataclass(frozen=True)
class RegionView:
    """One vantage point's view of one region: healthy or not, and for how long (seconds)."""

    healthy: bool
    held_for: float


@dataclass(frozen=True)
class Report:
    """One vantage point's latest report; `age`: seconds since the controller received it."""

    gate: str
    age: float
    regions: Mapping[str, RegionView] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    active: ActiveRegion | None
    reports: Mapping[str, Report]
    since_change: float  # seconds since the controller first saw the current epoch (its clock)
    fenced_for: float = 0.0  # seconds the controller has seen the current epoch not writable
    failback_suspended: bool = False  # operators suspended automatic failback
    failback_note: str = ""  # by whom and why (for the decision's reason)
    # each region's replication as its leading replicator last reported it (by target region)
    replication: Mapping[str, ReplicationReport] = field(default_factory=dict)
    now: float | None = None  # wall-clock time of the snapshot, to age the reports by
    # the sync record (haplane.store.sync_state) as read with the active record
    sync: SyncRecord | None = None
    # wall-clock time at which the reports' ages are counted (taken with them, before the
    # other reads): what a decision's `detected_ago` and `agreed_ago` count back from
    observed_at: float | None = None

    def report_age(self, report: ReplicationReport) -> float:
        """Seconds since `report` was written (reporter's and snapshot's wall clocks: on one
        machine the same; across hosts keep NTP). 0 without a snapshot time."""
        return 0.0 if self.now is None else max(0.0, self.now - report.time)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    to: str | None = None
    epoch: int | None = None  # the epoch the action is guarded by (the current one)
    down: tuple[str, ...] = ()  # regions a majority sees down (for long enough)
    healthy: tuple[str, ...] = ()  # regions a majority sees healthy
    # a failover decided on the sync record: its mod revision (0: absent), which the switch
    # compares (a replica degrading meanwhile makes the decision stale)
    sync_revision: int | None = None
    # a failover: seconds before this snapshot that the first vantage point saw the active
    # region down (detection), and that a majority had seen it down for `down_after`
    # (agreement); the record keeps both as times, for the failover history
    detected_ago: float | None = None
    agreed_ago: float | None = None
    observed_at: float | None = None  # the snapshot's (wall clock), which those count from
    # a failover the active region needs and that cannot happen now: why (BLOCKED_REASONS)
    blocked: str | None = None


def _votes(snapshot: Snapshot, settings: Settings, region: str) -> tuple[int, int, float]:
    """(votes down for long enough, votes healthy now, the shortest time those healthy votes
    have held) over the fresh reports of configured vantage points."""
    down = healthy = 0
    healthy_for = float("inf")
    for gate in settings.vantage_points:
        report = snapshot.reports.get(gate)
        if report is None or report.age > settings.stale_after:
            continue
        view = report.regions.get(region)
        if view is None:
            continue
        held = view.held_for + report.age
        if view.healthy:
            if held < settings.stable_for:
                continue  # just came up (or back): not a target yet
            healthy += 1
            healthy_for = min(healthy_for, held)
        elif held >= settings.down_after:
            down += 1
    return down, healthy, healthy_for


def _down_since(snapshot: Snapshot, settings: Settings, region: str) -> tuple[float, float]:
    """(seconds since the first fresh vantage point saw `region` down, seconds since a
    majority of them had seen it down for `down_after`) — the second only meaningful when a
    majority does."""
    held = sorted(
        (
            view.held_for + report.age
            for gate in settings.vantage_points
            if (report := snapshot.reports.get(gate)) is not None
            and report.age <= settings.stale_after
            and (view := report.regions.get(region)) is not None
            and not view.healthy
        ),
        reverse=True,
    )
    if not held:
        return 0.0, 0.0
    nth = held[settings.majority - 1] if len(held) >= settings.majority else held[-1]
    return held[0], max(0.0, nth - settings.down_after)


def decide(snapshot: Snapshot, settings: Settings) -> Decision:
    active = snapshot.active
    if active is None:
        return Decision("none", "no active region is recorded (the topology is not up)")
    if not active.writable:
        if snapshot.fenced_for >= active.fence_wait:
            return Decision(
                "unfence",
                f"epoch {active.epoch} committed at least {active.fence_wait:.2f}s ago: every "
                "grant of the previous region has run out",
                to=active.region,
                epoch=active.epoch,
            )
        return Decision(
            "none",
            f"waiting {active.fence_wait - snapshot.fenced_for:.2f}s more before unfencing "
            f"{active.region} (epoch {active.epoch})",
            epoch=active.epoch,
        )

    majority = settings.majority
    votes = {r: _votes(snapshot, settings, r) for r in settings.priority}
    down = tuple(r for r, (d, _, _) in votes.items() if d >= majority)
    healthy = tuple(r for r, (_, h, _) in votes.items() if h >= majority)

    def decision(action: Action, reason: str, to: str | None = None) -> Decision:
        sync_rev = None
        if action == "failover" and settings.synchronous(active.region):
            sync_rev = snapshot.sync.revision if snapshot.sync is not None else 0
        return Decision(action, reason, to, active.epoch, down, healthy, sync_rev)

    def blocked(code: str, reason: str) -> Decision:
        return replace(decision("none", reason), blocked=code)

    if active.region in down:
        if not settings.automatic:
            return blocked(
                "automatic-off", f"{active.region} is down but automatic failover is off"
            )
        if snapshot.since_change < settings.min_interval:
            return blocked(
                "hysteresis",
                f"{active.region} is down, but epoch {active.epoch} was first seen only "
                f"{snapshot.since_change:.1f}s ago (hysteresis: {settings.min_interval:.0f}s)",
            )
        candidates = [r for r in settings.priority if r != active.region and r in healthy]
        target, why, code = _choose(active.region, candidates, snapshot, settings)
        if target is None:
            if candidates:
                return blocked(
                    code, f"{active.region} is down and no healthy region may take over: {why}"
                )
            return blocked(
                "no-healthy-region",
                f"{active.region} is down and no other region is seen healthy by "
                f"{majority} of {len(settings.vantage_points)} vantage points",
            )
        d = votes[active.region][0]
        detected, agreed = _down_since(snapshot, settings, active.region)
        return replace(
            decision(
                "failover",
                f"{d} of {len(settings.vantage_points)} vantage points have seen "
                f"{active.region} down for {settings.down_after:.2f}s; {target} is healthy{why}",
                target,
            ),
            detected_ago=round(detected, 3),
            agreed_ago=round(agreed, 3),
            observed_at=snapshot.observed_at,
        )

    if settings.failback and settings.automatic and settings.priority:
        preferred = next((r for r in settings.priority if r in healthy), None)
        if (
            preferred is not None
            and preferred != active.region
            and settings.priority.index(preferred) < _rank(settings, active.region)
        ):
            stable_for = votes[preferred][2]
            paired, _ = settings.pair(active.region, preferred)
            rep = snapshot.replication.get(preferred)
            streaming = (
                rep is not None
                and rep.state == "Streaming"
                and rep.source == active.region
                and not rep.partial
                and snapshot.report_age(rep) <= settings.report_stale_after
            )
            if paired and not streaming and stable_for >= settings.failback_after:
                return decision(
                    "none",
                    f"{preferred} is preferred and healthy, but fails back only once it streams "
                    f"from {active.region} (now: {rep.state if rep else 'no report'})",
                )
            if stable_for >= settings.failback_after and (
                snapshot.since_change >= settings.failback_after
            ):
                if snapshot.failback_suspended:
                    return decision(
                        "none",
                        f"{preferred} is preferred and has been healthy for {stable_for:.0f}s, "
                        "but automatic failback is suspended"
                        + (f" ({snapshot.failback_note})" if snapshot.failback_note else "")
                        + ": `haplane failback on` resumes it",
                    )
                return decision(
                    "failback",
                    f"{preferred} is preferred and has been healthy for {stable_for:.0f}s",
                    preferred,
                )
    # an active region outside `priority` has no votes: it is never seen down
    seen_down, _, _ = votes.get(active.region, (0, 0, float("inf")))
    fresh = sum(
        1
        for gate in settings.vantage_points
        if (report := snapshot.reports.get(gate)) is not None and report.age <= settings.stale_after
    )
    if seen_down and fresh < majority:
        # what is seen cannot become a majority either way: no failover until gates report
        return blocked(
            "no-vantage-quorum",
            f"{active.region} is seen down by {seen_down} of {len(settings.vantage_points)} "
            f"vantage points, but only {fresh} report (a failover needs {majority} to agree)",
        )
    return decision("none", f"{active.region} is active and not seen down by a majority")


def _choose(
    active: str, candidates: list[str], snapshot: Snapshot, settings: Settings
) -> tuple[str | None, str, str]:
    """The region to promote among healthy `candidates` (in priority order) and what the
    decision should say about the data: (None, why none may, the block's code) when every
    one is excluded (the code is "" when one is chosen).

    Synchronous replication: while the sync record names a synchronous standby for the
    active region's epoch, only that standby may be promoted (it has every acknowledged
    write; another may not). `sync: none` (or no record of the epoch): the asynchronous
    rules below, and the decision says that writes acknowledged while degraded may be lost."""
    sync_note = ""
    if settings.synchronous(active) and snapshot.active is not None:
        rec = snapshot.sync
        epoch = snapshot.active.epoch
        standby = rec.standby if rec is not None and rec.names(epoch, active) else None
        if rec is not None and rec.unknown:
            # unreadable: it may have named the partner; a region has one Sync partner at most
            standby = next((x if y == active else y for x, y in settings.sync_pairs
                            if active in (x, y)), None)  # fmt: skip
        if standby is not None:
            s = standby
            rep = snapshot.replication.get(s)
            if s not in candidates:
                return (
                    None,
                    (
                        f"{s} is the synchronous standby of {active} (epoch {epoch}), the only "
                        "region that has every acknowledged write, and it is not seen healthy"
                    ),
                    "sync-standby-not-healthy",
                )
            if rep is not None and (rep.state == "Resyncing" or rep.partial):
                return (
                    None,
                    f"the synchronous standby {s} reports a partial copy",
                    "standby-partial",
                )
            return s, f" ({s} is the synchronous standby: no acknowledged write is lost)", ""
        since = f" since {rec.since}" if rec is not None and rec.names(epoch, active) else ""
        why = f": {rec.reason}" if rec is not None and rec.names(epoch, active) else ""
        sync_note = (
            f"; sync: none{since}{why}: writes acknowledged while no standby was synchronous "
            "may be lost"
        )
    target, note, code = _choose_async(active, candidates, snapshot, settings)
    if target is None:
        return target, note, code
    return target, note[:-1] + sync_note + ")" if note.endswith(")") else note + sync_note, ""


def _choose_async(
    active: str, candidates: list[str], snapshot: Snapshot, settings: Settings
) -> tuple[str | None, str, str]:
    ranked: list[tuple[int, int, int, str]] = []
    excluded: list[str] = []
    codes: list[str] = []  # why each excluded one is (BLOCKED_REASONS), once each
    for i, region in enumerate(candidates):
        paired, max_lag = settings.pair(active, region)
        if not paired:
            ranked.append((2, 0, i, region))  # serves only its own data: last
            continue
        rep = snapshot.replication.get(region)
        if rep is not None and (rep.state == "Resyncing" or rep.partial):
            excluded.append(
                f"{region} holds a partial copy (a resync under way; `--force` promotes it)"
            )
            codes.append("standby-partial")
            continue
        if rep is not None and snapshot.report_age(rep) > settings.report_stale_after:
            rep = None  # its replicators stopped reporting: how far it got is unknown
        lag = rep.lag_answered if rep is not None else None
        if max_lag is not None and rep is None:
            excluded.append(
                f"{region}'s lag is unknown (no fresh replication report) and its pair has a "
                f"maxLagMs ({max_lag * 1000:.0f})"
            )
            codes.append("standby-lag-unknown")
            continue
        if max_lag is not None and lag is not None and lag > max_lag:
            excluded.append(
                f"{region}'s lag was {lag:.3f}s when {active} last answered, over its "
                f"maxLagMs ({max_lag * 1000:.0f})"
            )
            codes.append("standby-lag-over-limit")
            continue
        applied = rep.applied_revision if rep is not None and rep.source == active else -1
        ranked.append((0 if applied >= 0 else 1, -applied, i, region))
    if not ranked:
        return None, "; ".join(excluded), "+".join(dict.fromkeys(codes))
    ranked.sort()
    group, neg_applied, _, target = ranked[0]
    notes = []
    if group == 0:
        chosen = snapshot.replication[target]
        lag_note = f", lag {chosen.lag_answered:.3f}s" if chosen.lag_answered is not None else ""
        notes.append(f"it applied {active}'s revision {-neg_applied}{lag_note}")
    elif group == 1:
        notes.append(f"its replication from {active} has no report")
    else:
        notes.append(f"no replication from {active}: it serves only its own data")
    notes += [f"not {e}" for e in excluded]
    return target, " (" + "; ".join(notes) + ")", ""


def _rank(settings: Settings, region: str) -> int:
    return (
        settings.priority.index(region) if region in settings.priority else len(settings.priority)
    )
