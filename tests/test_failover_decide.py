"""The failover decision (haplane.gate.failover.decide), exhaustively on data.

Three vantage points, two regions; every vantage point's view of each region is one of: no
report, a stale report, healthy, down for less than `down_after`, down for longer. All
4,096 combinations are checked against the rules stated independently here, then hysteresis,
fencing and failback on their own."""

from __future__ import annotations

import collections
import hashlib
import itertools
import random
import types
from collections.abc import Iterator
from dataclasses import replace

import pytest

from haplane.gate.failover import RegionView, Report, Settings, Snapshot, decide
from haplane.store import ActiveRegion, ReplicationReport, SyncRecord

GATES = ("g1", "g2", "g3")
SETTINGS = Settings(vantage_points=GATES, priority=("a", "b"), down_after=0.6, stale_after=1.0)
VIEWS = ("absent", "stale", "healthy", "blip", "down")


def active(region: str = "a", *, epoch: int = 7, writable: bool = True) -> ActiveRegion:
    return ActiveRegion(region, epoch, "", "t", "t", writable=writable)


def snapshot(views_a, views_b, *, since_change=100.0, record=None) -> Snapshot:
    reports = {}
    for gate, va, vb in zip(GATES, views_a, views_b, strict=True):
        if "absent" in (va, vb):
            continue  # one report per gate: a gate reports on every region or not at all
        age = 5.0 if "stale" in (va, vb) else 0.1
        reports[gate] = Report(gate, age, {"a": _view(va), "b": _view(vb)})
    return Snapshot(record or active(), reports, since_change)


def _view(v: str) -> RegionView:
    return {
        "healthy": RegionView(True, 3.0),
        "blip": RegionView(False, 0.2),  # + age 0.1 = 0.3 s < down_after
        "down": RegionView(False, 2.0),
        "stale": RegionView(False, 9.0),
    }[v]


def counted(views_a, views_b, region_views, what) -> int:
    """Votes of `what` from gates whose report is there and fresh."""
    n = 0
    for va, vb, v in zip(views_a, views_b, region_views, strict=True):
        if "absent" in (va, vb) or "stale" in (va, vb):
            continue
        n += v == what
    return n


@pytest.mark.parametrize("views_a", list(itertools.product(VIEWS, repeat=3)))
def test_every_combination_of_views(views_a):
    for views_b in itertools.product(VIEWS, repeat=3):
        d = decide(snapshot(views_a, views_b), SETTINGS)
        a_down = counted(views_a, views_b, views_a, "down") >= 2
        b_healthy = counted(views_a, views_b, views_b, "healthy") >= 2
        if a_down and b_healthy:
            assert (d.action, d.to, d.epoch) == ("failover", "b", 7), (views_a, views_b, d)
        else:
            assert d.action == "none", (views_a, views_b, d)
        # blocked: a is down and b cannot take over; or a is seen down while too few report
        views = zip(views_a, views_b, strict=True)
        fresh = sum("absent" not in v and "stale" not in v for v in views)
        a_seen_down = counted(views_a, views_b, views_a, "down") >= 1
        if a_down and not b_healthy:
            assert d.blocked == "no-healthy-region", (views_a, views_b, d)
        elif not a_down and a_seen_down and fresh < 2:
            assert d.blocked == "no-vantage-quorum", (views_a, views_b, d)
            assert "but only 1 report (a failover needs 2 to agree)" in d.reason
        else:
            assert d.blocked is None, (views_a, views_b, d)
        # never on one vantage point alone, never on a blip, never on stale or absent reports
        if sum(v == "down" for v in views_a) < 2:
            assert d.action == "none"


def test_a_lone_gate_behind_a_one_sided_cut_never_fails_over():
    d = decide(snapshot(("down", "healthy", "healthy"), ("healthy",) * 3), SETTINGS)
    assert d.action == "none" and "a" not in d.down


def test_majority_is_over_all_configured_vantage_points_not_the_reports_that_arrived():
    # g3 is down: 1 of the 2 remaining reports says "down" - not a majority of 3
    d = decide(snapshot(("down", "healthy", "absent"), ("healthy",) * 3), SETTINGS)
    assert d.action == "none"
    five = Settings(vantage_points=(*GATES, "g4", "g5"), priority=("a", "b"))
    s = snapshot(("down", "down", "healthy"), ("healthy",) * 3)
    assert decide(s, five).action == "none"  # 2 of 5


def test_hysteresis_and_the_automatic_switch():
    s = snapshot(("down",) * 3, ("healthy",) * 3, since_change=3.0)
    d = decide(s, SETTINGS)
    assert d.action == "none" and "hysteresis" in d.reason and d.blocked == "hysteresis"
    off = Settings(**{**SETTINGS.__dict__, "automatic": False})
    d = decide(snapshot(("down",) * 3, ("healthy",) * 3), off)
    assert d.action == "none" and d.blocked == "automatic-off"


def test_a_blocked_decision_says_why_in_a_code_that_outlives_its_figures():
    """The reason's figures change every tick (seconds since the epoch, lags); the code does
    not, so a block is published once. Every code is one of BLOCKED_REASONS."""
    from haplane.gate.failover import BLOCKED_REASONS

    early = decide(snapshot(("down",) * 3, ("healthy",) * 3, since_change=3.0), SETTINGS)
    later = decide(snapshot(("down",) * 3, ("healthy",) * 3, since_change=4.0), SETTINGS)
    assert early.reason != later.reason and early.blocked == later.blocked == "hysteresis"
    a_b = replace(THREE, priority=("a", "b"))  # c out of the way
    partial, lagging = _rep("c", 0, state="Resyncing"), _rep("b", 200, lag=3.0)
    unknown = replace(_rep("b", 500), time=0.0)  # b's pair has a maxLagMs
    cases = [
        (THREE, _three({"b": replace(partial, target="b"), "c": partial}), "standby-partial"),
        (a_b, _three({"b": lagging}), "standby-lag-over-limit"),
        (THREE, _three({"b": lagging, "c": partial}), "standby-lag-over-limit+standby-partial"),
        (a_b, replace(_three({"b": unknown}), now=100.5), "standby-lag-unknown"),
    ]
    for settings, snap, code in cases:
        d = decide(snap, settings)
        assert (d.action, d.blocked) == ("none", code), (code, d)
        assert set(code.split("+")) <= set(BLOCKED_REASONS)
    assert decide(_three({"b": _rep("b", 100)}), THREE).blocked is None  # a failover


def test_no_failover_to_a_region_that_is_not_seen_healthy():
    d = decide(snapshot(("down",) * 3, ("down",) * 3), SETTINGS)
    assert d.action == "none" and "no other region" in d.reason


def test_a_committed_epoch_is_unfenced_only_after_the_fence_wait():
    rec = active("b", epoch=8, writable=False)  # fence wait = (1000 + 250) ms
    early = Snapshot(rec, {}, since_change=0.5, fenced_for=1.2)
    assert decide(early, SETTINGS).action == "none"
    late = Snapshot(rec, {}, since_change=1.3, fenced_for=1.25)
    d = decide(late, SETTINGS)
    assert (d.action, d.to, d.epoch) == ("unfence", "b", 8)


def test_failback_only_when_enabled_and_stable():
    on = Settings(**{**SETTINGS.__dict__, "failback": True, "failback_after": 30.0})
    now_b = active("b")
    healthy_long = {"a": RegionView(True, 40.0), "b": RegionView(True, 40.0)}
    healthy_short = {"a": RegionView(True, 5.0), "b": RegionView(True, 40.0)}
    long = {g: Report(g, 0.1, healthy_long) for g in GATES}
    short = {g: Report(g, 0.1, healthy_short) for g in GATES}
    assert decide(Snapshot(now_b, long, 100.0), SETTINGS).action == "none"  # off by default
    d = decide(Snapshot(now_b, long, 100.0), on)
    assert (d.action, d.to) == ("failback", "a")
    assert decide(Snapshot(now_b, short, 100.0), on).action == "none"  # not stable yet
    assert decide(Snapshot(now_b, long, 10.0), on).action == "none"  # changed too recently
    assert decide(Snapshot(active("a"), long, 100.0), on).action == "none"  # already there


def test_no_record_no_action():
    assert decide(Snapshot(None, {}, 0.0), SETTINGS).action == "none"


# ---- the runtime decision agrees with the failure model ------------------------------------


def _model_settings(topology) -> Settings:
    return Settings(
        vantage_points=tuple(g.name for g in topology.spec.global_.gates),
        priority=tuple(topology.region_priority()),
    )


@pytest.mark.parametrize("example", ["two-regions"])
def test_decide_agrees_with_the_failure_model_on_every_double_failure(example):
    """For every set of up to two failures `haplane analyse` enumerates, the controller fed with
    the views the model says each gate would report fails over exactly when the model says
    writes move to another region, and to that region."""
    from haplane.topology.failures import enumerate_failures, failure_model
    from haplane.topology.loader import load_example

    topology = load_example(example)
    model = failure_model(topology)
    settings = _model_settings(topology)
    active_name = topology.region_priority()[0]
    checked = moved = 0
    for failures in enumerate_failures(topology, 2):
        outcome = model.evaluate(failures)
        views = model.vantage_views(failures)
        reports = {
            gate: Report(gate, 0.1, {r: RegionView(ok, 30.0) for r, ok in view.items()})
            for gate, view in views.items()
            if view is not None
        }
        d = decide(Snapshot(active(active_name), reports, since_change=100.0), settings)
        names = ", ".join(map(str, failures))
        if outcome.failed_over:
            moved += 1
            assert (d.action, d.to) == ("failover", outcome.writes_region), (names, d, outcome)
        else:
            assert d.action == "none", (names, d, outcome)
        checked += 1
    assert checked > 500 and moved > 10  # the enumeration really exercised both outcomes


def test_a_target_that_just_came_back_is_not_failed_over_to():
    fresh_b = {"a": RegionView(False, 5.0), "b": RegionView(True, 0.3)}
    reports = {g: Report(g, 0.1, fresh_b) for g in GATES}
    d = decide(Snapshot(active(), reports, 100.0), SETTINGS)
    assert d.action == "none" and "a" in d.down and "b" not in d.healthy


# ---- failback and operators; the clock hysteresis counts on -------------------------------

FAILBACK = Settings(**{**SETTINGS.__dict__, "failback": True, "failback_after": 30.0})
A_PREFERRED_AGAIN = {  # b active; a healthy (and preferred) for 40 s
    g: Report(g, 0.1, {"a": RegionView(True, 40.0), "b": RegionView(True, 40.0)}) for g in GATES
}


def test_no_failback_while_operators_suspend_it_and_the_reason_says_so():
    note = "by operator:alice since 2026-01-01T00:00:00Z: operator switchover to b"
    suspended = Snapshot(active("b"), A_PREFERRED_AGAIN, 100.0, 0.0, True, note)
    d = decide(suspended, FAILBACK)
    assert d.action == "none" and d.to is None
    assert "suspended" in d.reason and note in d.reason and "haplane failback on" in d.reason
    resumed = Snapshot(active("b"), A_PREFERRED_AGAIN, 100.0, 0.0, False)
    assert (decide(resumed, FAILBACK).action, decide(resumed, FAILBACK).to) == ("failback", "a")


def test_a_suspended_failback_never_holds_back_a_failover():
    reports = {g: Report(g, 0.1, {"a": RegionView(True, 40.0), "b": _view("down")}) for g in GATES}
    s = Snapshot(active("b"), reports, 100.0, 0.0, True, "by operator:alice")
    d = decide(s, FAILBACK)
    assert (d.action, d.to) == ("failover", "a")


def test_a_suspended_failback_says_nothing_before_failback_would_be_due():
    # not stable long enough: the reason is about that, not about the suspension
    short = {
        g: Report(g, 0.1, {"a": RegionView(True, 5.0), "b": RegionView(True, 40.0)}) for g in GATES
    }
    d = decide(Snapshot(active("b"), short, 100.0, 0.0, True, "by x"), FAILBACK)
    assert d.action == "none" and "suspended" not in d.reason


@pytest.mark.parametrize("since", ["2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "garbage"])
def test_hysteresis_and_failback_count_on_the_observed_clock_not_the_record(since):
    """`since_change` is the controller's own observation of the epoch; the record's `since`
    (another machine's wall clock, maybe wrong) changes nothing."""
    rec = ActiveRegion("a", 7, since, "operator:laptop", "t")
    down = snapshot(("down",) * 3, ("healthy",) * 3, since_change=3.0, record=rec)
    assert decide(down, SETTINGS).action == "none"  # 3 s < min_interval 10 s
    late = snapshot(("down",) * 3, ("healthy",) * 3, since_change=10.0, record=rec)
    assert decide(late, SETTINGS).action == "failover"
    on_b = ActiveRegion("b", 7, since, "operator:laptop", "t")
    assert decide(Snapshot(on_b, A_PREFERRED_AGAIN, 29.0), FAILBACK).action == "none"
    assert decide(Snapshot(on_b, A_PREFERRED_AGAIN, 30.0), FAILBACK).action == "failback"


# ---- which standby: the most replicated, never a resyncing one, maxLagMs on the lag measured
# while the source answered --------------------------------------------------------------------

THREE = Settings(
    vantage_points=GATES,
    priority=("a", "b", "c"),
    pairs=(("a", "b", 2.0), ("a", "c", None)),
)


def _three(replication: dict[str, ReplicationReport], *, d_healthy: bool = False) -> Snapshot:
    down, up = RegionView(False, 2.0), RegionView(True, 3.0)
    views = {"a": down, "b": up, "c": up, **({"d": up} if d_healthy else {})}
    reports = {g: Report(g, 0.1, views) for g in GATES}
    return Snapshot(active("a"), reports, 100.0, replication=replication)


def _rep(target: str, applied: int, *, state="Streaming", lag=0.1, source="a") -> ReplicationReport:
    return ReplicationReport(
        target, source, state, 7, applied, applied + 5, lag + 3, 5, lag, 0.0, "x", 0.0
    )


def test_the_standby_with_the_highest_applied_revision_is_promoted() -> None:
    d = decide(_three({"b": _rep("b", 100), "c": _rep("c", 120)}), THREE)
    assert (d.action, d.to) == ("failover", "c")
    assert "applied a's revision 120" in d.reason


def test_ties_go_by_priority() -> None:
    d = decide(_three({"b": _rep("b", 120), "c": _rep("c", 120)}), THREE)
    assert (d.action, d.to) == ("failover", "b")


def test_a_resyncing_standby_is_never_chosen() -> None:
    d = decide(_three({"b": _rep("b", 0, state="Resyncing"), "c": _rep("c", 50)}), THREE)
    assert (d.action, d.to) == ("failover", "c")
    assert "b holds a partial copy" in d.reason
    d = decide(
        _three({"b": _rep("b", 0, state="Resyncing"), "c": _rep("c", 0, state="Resyncing")}),
        THREE,
    )
    assert d.action == "none" and "partial copy" in d.reason


def test_max_lag_judges_the_lag_measured_while_the_source_answered() -> None:
    # b's pair allows 2 s; its lag when a last answered was 3 s: not chosen, the reason says why
    d = decide(_three({"b": _rep("b", 200, lag=3.0), "c": _rep("c", 100)}), THREE)
    assert (d.action, d.to) == ("failover", "c")
    assert "over its maxLagMs (2000)" in d.reason
    # the lag since the source died keeps growing (lag_seconds = 60): only lag_answered counts
    d = decide(_three({"b": _rep("b", 200, lag=0.5), "c": _rep("c", 100)}), THREE)
    assert (d.action, d.to) == ("failover", "b")


def test_replicated_standbys_come_before_unreplicated_ones() -> None:
    s = Settings(vantage_points=GATES, priority=("a", "d", "b"), pairs=(("a", "b", None),))
    d = decide(_three({"b": _rep("b", 10)}, d_healthy=True), s)
    assert (d.action, d.to) == ("failover", "b")
    only_d = Settings(vantage_points=GATES, priority=("a", "d"), pairs=())
    d = decide(_three({}, d_healthy=True), only_d)
    assert (d.action, d.to) == ("failover", "d")
    assert "serves only its own data" in d.reason


def test_failback_waits_until_the_preferred_region_streams_from_the_active_one() -> None:
    s = Settings(
        vantage_points=GATES,
        priority=("a", "b"),
        failback=True,
        failback_after=5.0,
        pairs=(("a", "b", None),),
    )
    up = RegionView(True, 60.0)
    reports = {g: Report(g, 0.1, {"a": up, "b": up}) for g in GATES}
    resyncing = {"a": _rep("a", 0, state="Resyncing", source="b")}
    d = decide(Snapshot(active("b"), reports, 100.0, replication=resyncing), s)
    assert d.action == "none" and "streams from b" in d.reason
    streaming = {"a": _rep("a", 500, source="b")}
    d = decide(Snapshot(active("b"), reports, 100.0, replication=streaming), s)
    assert (d.action, d.to) == ("failback", "a")


def test_a_copy_cut_short_is_never_chosen_even_when_disconnected() -> None:
    """The source died mid-resync: the standby shows Disconnected, its copy is still partial."""
    cut_short = replace(_rep("b", 900, state="Disconnected"), partial=True)
    d = decide(_three({"b": cut_short, "c": _rep("c", 100)}), THREE)
    assert (d.action, d.to) == ("failover", "c")


def test_a_stale_report_is_no_lag_measurement() -> None:
    """b's replicators stopped reporting: under b's maxLagMs its lag is unknown, so not b."""
    stale = replace(_rep("b", 500), time=0.0)
    fresh = replace(_rep("c", 100), time=100.0)
    snap = replace(_three({"b": replace(stale, time=90.0), "c": fresh}), now=100.5)
    d = decide(snap, THREE)
    assert (d.action, d.to) == ("failover", "c") and "lag is unknown" in d.reason


# ---- synchronous replication: only the synchronous standby, and the switch compares the
# record the decision read ---------------------------------------------------------------------

SYNC = Settings(
    vantage_points=GATES,
    priority=("a", "b", "c"),
    pairs=(("a", "b", None), ("a", "c", None)),
    sync_pairs=(("a", "b"), ("a", "c")),
)


def _sync(record: SyncRecord | None, replication: dict[str, ReplicationReport]) -> Snapshot:
    return replace(_three(replication), sync=record)


def test_only_the_synchronous_standby_is_promoted_whatever_the_others_applied() -> None:
    epoch = active("a").epoch
    rec = replace(SyncRecord.synchronous(epoch, "a", "b", by="t", reason="t"), revision=42)
    d = decide(_sync(rec, {"b": _rep("b", 100), "c": _rep("c", 120)}), SYNC)
    assert (d.action, d.to, d.sync_revision) == ("failover", "b", 42)
    assert "synchronous standby: no acknowledged write is lost" in d.reason


def test_a_synchronous_standby_that_is_not_healthy_blocks_the_failover() -> None:
    epoch = active("a").epoch
    rec = SyncRecord.synchronous(epoch, "a", "c", by="t", reason="t")
    down, up = RegionView(False, 2.0), RegionView(True, 3.0)
    reports = {g: Report(g, 0.1, {"a": down, "b": up, "c": down}) for g in GATES}
    snap = Snapshot(active("a"), reports, 100.0, replication={"b": _rep("b", 300)}, sync=rec)
    d = decide(snap, SYNC)  # b is healthy and applied more, but only c has every write
    assert d.action == "none" and "c is the synchronous standby" in d.reason
    assert d.blocked == "sync-standby-not-healthy"
    # healthy again: c, whatever b applied
    reports = {g: Report(g, 0.1, {"a": down, "b": up, "c": up}) for g in GATES}
    d = decide(replace(snap, reports=reports), SYNC)
    assert (d.action, d.to) == ("failover", "c")


def test_a_partial_synchronous_standby_and_a_pending_one() -> None:
    epoch = active("a").epoch
    rec = SyncRecord.synchronous(epoch, "a", "b", by="t", reason="t")
    d = decide(_sync(rec, {"b": _rep("b", 0, state="Resyncing"), "c": _rep("c", 9)}), SYNC)
    assert d.action == "none" and "partial copy" in d.reason and d.blocked == "standby-partial"
    # being made synchronous is not synchronous yet: the async rules, data may be lost
    pending = SyncRecord.catching_up(epoch, "a", "b", by="t", reason="t")
    d = decide(_sync(pending, {"b": _rep("b", 100), "c": _rep("c", 120)}), SYNC)
    assert (d.action, d.to) == ("failover", "c") and "may be lost" in d.reason


def test_sync_none_falls_back_to_the_async_rules_and_says_data_may_be_lost() -> None:
    epoch = active("a").epoch
    rec = replace(
        SyncRecord.none(epoch, "a", by="t", reason="b did not confirm revision 9"), revision=7
    )
    d = decide(_sync(rec, {"b": _rep("b", 100), "c": _rep("c", 120)}), SYNC)
    assert (d.action, d.to, d.sync_revision) == ("failover", "c", 7)
    assert "sync: none" in d.reason and "may be lost" in d.reason
    assert "b did not confirm revision 9" in d.reason
    # a record of an older epoch says nothing about this one: none, too
    old = SyncRecord.synchronous(epoch - 1, "a", "b", by="t", reason="t")
    d = decide(_sync(old, {"b": _rep("b", 100), "c": _rep("c", 120)}), SYNC)
    assert (d.action, d.to) == ("failover", "c") and "may be lost" in d.reason
    # no record at all: compared as absent (0)
    d = decide(_sync(None, {"b": _rep("b", 100)}), SYNC)
    assert (d.action, d.to, d.sync_revision) == ("failover", "b", 0)


def test_async_pairs_carry_no_sync_revision() -> None:
    d = decide(_three({"b": _rep("b", 100), "c": _rep("c", 120)}), THREE)
    assert d.action == "failover" and d.sync_revision is None


def test_an_unreadable_sync_record_lets_only_the_synchronous_partner_be_promoted() -> None:
    from haplane.store import KeyValue

    bad = SyncRecord.from_kv(KeyValue(b"/sync", b"{garbage", 5, 5, 1, 0))
    assert bad.unknown and bad.revision == 5
    s = replace(SYNC, sync_pairs=(("a", "b"),))
    d = decide(_sync(bad, {"b": _rep("b", 100), "c": _rep("c", 120)}), s)
    assert (d.action, d.to, d.sync_revision) == ("failover", "b", 5)


def test_a_failover_says_when_the_region_was_first_seen_down_and_when_a_majority_agreed():
    """Detection: the longest any fresh vantage point has seen it down (view held + report
    age); agreement: when the majority-th of them had seen it down for `down_after`. A stale
    report's older view counts for neither."""
    healthy_b = {"b": RegionView(True, 3.0)}
    reports = {
        "g1": Report("g1", 0.1, {"a": RegionView(False, 4.9), **healthy_b}),  # down 5.0 s
        "g2": Report("g2", 0.2, {"a": RegionView(False, 1.8), **healthy_b}),  # down 2.0 s
        "g3": Report("g3", 5.0, {"a": RegionView(False, 30.0), **healthy_b}),  # stale
    }
    d = decide(Snapshot(active(), reports, 100.0, observed_at=1_000_000.0), SETTINGS)
    assert (d.action, d.to) == ("failover", "b")
    assert d.observed_at == 1_000_000.0  # what the controller counts back from
    assert d.detected_ago == 5.0
    assert d.agreed_ago == pytest.approx(2.0 - SETTINGS.down_after)
    # a decision that is not a failover carries neither
    calm = decide(snapshot(("healthy",) * 3, ("healthy",) * 3), SETTINGS)
    assert calm.action == "none" and calm.detected_ago is None and calm.agreed_ago is None
    # the record keeps them, and reads them back
    from haplane.store import KeyValue

    rec = replace(active(), detected="2026-12-06T10:00:00.000000Z", agreed="2026-12-06T10:00:01Z")
    back = ActiveRegion.from_kv(KeyValue(b"k", rec.to_json(), 1, 1, 1, 0))
    assert (back.detected, back.agreed) == (rec.detected, rec.agreed)
    assert "detected" not in active().as_dict()  # absent unless an automatic failover


# ---- the blocked codes changed no decision ----------------------------------------------------


def _random_cases(
    failover: types.ModuleType, n: int, seed: int
) -> Iterator[tuple[Snapshot, Settings]]:
    """`n` snapshots and settings drawn at random (seeded; on any platform the same), of the
    classes of `failover` (this module, or an older copy of it): one to five vantage points
    (some absent, some stale), views of regions a, b, c held for short and long, an active
    region in or out of the priority (written or not yet writable), replication reports of
    every state and lag, async and sync pairs, sync records of every kind, hysteresis and
    failback settings."""
    rng = random.Random(seed)
    regions = ("a", "b", "c")
    for _ in range(n):
        gates = tuple(f"g{i}" for i in range(rng.choice((1, 3, 3, 3, 5))))
        priority = tuple(rng.sample(regions, rng.choice((2, 3, 3))))
        pairs: list[tuple[str, str, float | None]] = []
        for x, y in itertools.combinations(regions, 2):
            if rng.random() < 0.6:
                pairs.append((x, y, rng.choice((None, None, 2.0))))
        sync_pairs = tuple((x, y) for x, y, _ in pairs if rng.random() < 0.3)
        settings = failover.Settings(
            vantage_points=gates,
            priority=priority,
            min_interval=rng.choice((0.0, 10.0)),
            failback=rng.random() < 0.3,
            failback_after=rng.choice((5.0, 60.0)),
            automatic=rng.random() < 0.9,
            pairs=tuple(pairs),
            sync_pairs=sync_pairs,
        )
        region = rng.choice((*priority, *priority, "z"))  # z: not in the priority
        epoch = rng.randint(1, 4)
        record = ActiveRegion(region, epoch, "", "t", "t", writable=rng.random() < 0.9)
        # how many see each region healthy: the active one often few
        up = {r: rng.choice((0.05, 0.05, 0.5, 0.95) if r == region else (0.05, 0.5, 0.95, 0.95))
              for r in regions}  # fmt: skip
        reports = {}
        for gate in gates:
            if rng.random() < 0.15:
                continue
            views = {}
            for r in regions:
                if rng.random() < 0.1:
                    continue
                healthy = rng.random() < up[r]
                held = rng.choice((0.1, 0.5, 3.0, 40.0, 100.0) if healthy else (0.2, 0.7, 2.0))
                views[r] = failover.RegionView(healthy, held)
            age = rng.choice((0.0, 0.1, 0.5, 0.9, 5.0))
            reports[gate] = failover.Report(gate, age, views)
        replication = {}
        for r in regions:
            if rng.random() < 0.3:
                continue
            applied = rng.choice((0, 50, 100, 100, 200))
            replication[r] = ReplicationReport(
                r,
                rng.choice((*regions, None)),
                rng.choice(("Streaming", "Streaming", "Resyncing", "Disconnected", "Idle")),
                epoch,
                applied,
                applied + 5,
                1.0,
                5,
                rng.choice((None, 0.1, 1.5, 3.0)),
                0.0,
                "x",
                rng.choice((90.0, 99.0, 100.0)),
                partial=rng.random() < 0.1,
            )
        other = rng.choice(regions)
        sync = rng.choice(
            (
                None,
                SyncRecord(epoch, region, other, revision=rng.randint(1, 9)),  # synchronous
                SyncRecord(epoch, region, revision=3),  # sync: none
                SyncRecord(epoch, region, pending=other),  # catching up
                SyncRecord(epoch - 1, region, other),  # an older epoch's
                SyncRecord(0, ""),  # unreadable
            )
        )
        yield (
            failover.Snapshot(
                record,
                reports,
                since_change=rng.choice((0.0, 3.0, 10.0, 30.0, 61.0, 100.0)),
                fenced_for=rng.choice((0.0, 1.0, 5.0)),
                failback_suspended=rng.random() < 0.2,
                replication=replication,
                now=rng.choice((None, 100.0, 101.0)),
                sync=sync,
                observed_at=rng.choice((None, 1_000.0)),
            ),
            settings,
        )


def _decisions_digest(failover: types.ModuleType, n: int) -> str:
    """A digest of what `failover.decide` decides on `_random_cases` (everything but the
    reason and the blocked code), and the count of each action."""
    digest, counts = hashlib.sha256(), collections.Counter[str]()
    for snap, settings in _random_cases(failover, n, seed=20260101):
        d = failover.decide(snap, settings)
        fields = (d.action, d.to, d.epoch, d.down, d.healthy, d.sync_revision)
        times = (d.detected_ago, d.agreed_ago, d.observed_at)
        digest.update(repr((fields, times)).encode())
        counts[d.action] += 1
    return f"{digest.hexdigest()[:16]} {sorted(counts.items())}"


# `_decisions_digest(failover, 10_000)` of the decision before `Decision.blocked` existed
BEFORE_BLOCKED = (
    "4eed17864bebca14 [('failback', 22), ('failover', 605), ('none', 9033), ('unfence', 340)]"
)


def test_blocked_codes_changed_no_decision():
    """On 10,000 random snapshots `decide` takes every decision (action, target, epoch, what
    is down and healthy, the sync revision, detection and agreement) exactly as it did before
    `Decision.blocked` existed (`BEFORE_BLOCKED`: `git show 1b841ad:src/haplane/gate/failover.py`
    loaded as a module and given to `_decisions_digest`; checked on 125,000 the same way)."""
    from haplane.gate import failover

    assert _decisions_digest(failover, 10_000) == BEFORE_BLOCKED


def test_an_active_region_outside_the_priority_is_never_seen_down():
    """It has no votes (only the priority's regions are counted): nothing is decided on it,
    as before the blocked codes (which raised KeyError here)."""
    d = decide(snapshot(("down",) * 3, ("healthy",) * 3, record=active("z")), SETTINGS)
    assert (d.action, d.blocked, d.down) == ("none", None, ("a",))
    assert d.reason == "z is active and not seen down by a majority"
