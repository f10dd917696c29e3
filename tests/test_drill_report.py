"""Drill reports: gaps, phases, lost writes, epoch order, the verdict's rules (failover into a
writable, written epoch; the hysteresis waited out; lost updates; stale reads; expected
conflicts; the journals against the client both ways), JSON, HTML and aggregation, on
handcrafted records (pure, no processes)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from haplane.dr.report import (
    DrillResult,
    Event,
    Expectation,
    Operation,
    ServerWrite,
    acked_not_journaled,
    aggregate,
    epoch_order_violations,
    errors_by_kind,
    expected_conflicts,
    gaps,
    is_expected_conflict,
    journaled_not_invoked,
    longest_gap,
    lost_updates,
    lost_writes,
    phases,
    render_aggregate_table,
    render_html,
    render_json,
    render_table,
    stale_reads,
    summarize,
    verdict,
)


def op(
    t: float,
    ok: bool = True,
    *,
    kind: str = "write",
    key: str | None = None,
    dur: float = 0.01,
    region: str | None = "east",
    epoch: int | None = 1,
    error: str | None = None,
) -> Operation:
    return Operation(
        kind=kind,
        key=key if key is not None else f"obj-{t:g}",
        invoked=t,
        returned=t + dur,
        ok=ok,
        error=None if ok else (error or "connect"),
        status=200 if ok else None,
        region=region if ok else None,
        epoch=epoch if ok else None,
        gate="127.0.0.1:6443",
    )


def sw(region: str, epoch: int, key: str, sent: float, acked: float, rev: int = 1) -> ServerWrite:
    return ServerWrite(region=region, epoch=epoch, key=key, revision=rev, sent=sent, acked=acked)


FULL_EVENTS = [
    Event(1.0, "fault", "kill east"),
    Event(1.5, "detected"),
    Event(1.75, "agreed"),
    Event(2.0, "committed", "epoch 2"),
    Event(2.5, "unfenced"),
]


# ------------------------------------------------------------------------------------------ gaps


def test_no_failure_no_gap() -> None:
    ops = [op(t) for t in (0.0, 0.1, 0.2)]
    assert gaps(ops) == []
    assert longest_gap(ops) == 0.0
    assert longest_gap([]) == 0.0


def test_one_burst() -> None:
    ops = [op(0.0), op(0.1), op(0.2, False), op(0.3, False), op(0.5, False), op(0.7), op(0.8)]
    assert gaps(ops) == [(0.2, pytest.approx(0.71))]
    assert longest_gap(ops) == pytest.approx(0.51)


def test_failure_at_start() -> None:
    ops = [op(0.0, False), op(0.1, False), op(0.2), op(0.3)]
    assert gaps(ops) == [(0.0, pytest.approx(0.21))]


def test_failure_at_end_ends_at_last_returned() -> None:
    ops = [op(0.0), op(0.1, False), op(0.2, False, dur=0.5), op(0.3, False, dur=0.05)]
    assert gaps(ops) == [(0.1, pytest.approx(0.7))]


def test_gaps_are_per_kind_and_order_independent() -> None:
    ops = [
        op(0.0),
        op(0.1, False),
        op(0.3),
        op(0.0, kind="read"),
        op(0.5, False, kind="read"),
        op(0.9, kind="read"),
        op(1.0, False, kind="read"),
        op(1.2, kind="read"),
    ]
    assert gaps(list(reversed(ops)), "write") == [(0.1, pytest.approx(0.31))]
    assert gaps(ops, "read") == [(0.5, pytest.approx(0.91)), (1.0, pytest.approx(1.21))]
    assert longest_gap(ops, "read") == pytest.approx(0.41)


def test_errors_by_kind() -> None:
    ops = [op(0.0), op(0.1, False, error="timeout"), op(0.2, False), op(0.3, False)]
    ops.append(Operation("read", "k", 0.4, 0.5, False, None, None, None, None, None))
    assert errors_by_kind(ops) == {"connect": 2, "timeout": 1, "unknown": 1}


# ---------------------------------------------------------------------------------------- phases


def test_phases_full() -> None:
    ops = [op(2.4), op(2.6, False), op(2.7, dur=0.1), op(3.0)]
    p = phases(FULL_EVENTS, ops)
    assert p["detection"] == pytest.approx(0.5)
    assert p["agreement"] == pytest.approx(0.25)
    assert p["switch"] == pytest.approx(0.25)
    assert p["fence_wait"] == pytest.approx(0.5)
    # The write invoked at 2.4 returned at 2.41, before unfencing: it does not count.
    assert p["reconnect"] == pytest.approx(0.3)


def test_phases_with_missing_events() -> None:
    events = [Event(1.0, "fault"), Event(1.5, "detected"), Event(2.0, "committed")]
    p = phases(events, [op(3.0)])
    assert p["detection"] == pytest.approx(0.5)
    assert p["agreement"] is None
    assert p["switch"] is None
    assert p["fence_wait"] is None
    assert p["reconnect"] is None
    assert set(phases([], [])) == {"detection", "agreement", "switch", "fence_wait", "reconnect"}
    assert all(v is None for v in phases([], []).values())


def test_reconnect_none_without_a_later_success() -> None:
    assert phases(FULL_EVENTS, [op(1.0), op(3.0, False)])["reconnect"] is None


# ----------------------------------------------------------------------------------- lost writes


def test_lost_writes() -> None:
    kept = op(0.0, key="a", region="east")
    lost = op(0.1, key="b", region="east")
    other_region = op(0.2, key="a", region="west", epoch=2)
    failed = op(0.3, False, key="c")
    read = op(0.4, kind="read", key="d")
    no_region = Operation("write", "e", 0.5, 0.6, True, None, 201, None, None, None)
    present = {("east", "a"), ("east", "d")}
    got = lost_writes([no_region, read, failed, other_region, lost, kept], present)
    assert got == [lost, other_region, no_region]
    assert lost_writes([kept], present) == []


# ----------------------------------------------------------------------------------- epoch order


def test_epoch_order_clean_history() -> None:
    writes = [
        sw("east", 1, "a", 100.0, 100.01),
        sw("east", 1, "b", 100.5, 100.52),
        sw("west", 2, "c", 101.0, 101.02),
        sw("west", 2, "d", 100.99, 101.3),
        sw("east", 3, "e", 102.0, 102.01),
    ]
    assert epoch_order_violations(writes) == []
    assert epoch_order_violations([]) == []


def test_epoch_order_older_write_acked_after_newer_first_send() -> None:
    writes = [
        sw("east", 1, "a", 100.0, 100.01),
        sw("east", 1, "late", 100.9, 101.05, rev=7),  # acked after epoch 2's first send
        sw("west", 2, "c", 101.0, 101.02),
    ]
    v = epoch_order_violations(writes)
    assert len(v) == 1
    assert "epoch 1" in v[0] and "'late'" in v[0] and "epoch 2" in v[0]
    assert "50.000 ms" in v[0]


def test_epoch_order_same_epoch_two_regions() -> None:
    writes = [sw("east", 2, "a", 100.0, 100.01), sw("west", 2, "b", 100.1, 100.11)]
    v = epoch_order_violations(writes)
    assert v == ["epoch 2 written by more than one region: east, west"]


# ------------------------------------------------------------------------------ summary, render


def sample_result(scenario: str = "kill-east", detail: str = "kill east") -> DrillResult:
    ops = [
        op(0.5, key="a"),
        op(0.6, kind="read", key="a"),
        op(1.2, False, key="b", error="timeout"),
        op(1.3, False, kind="read", key="a", error="http-503"),
        op(2.8, key="c", region="west", epoch=2),
        op(2.9, kind="read", key="a", region="west", epoch=2),
    ]
    events = [Event(1.0, "fault", detail), *FULL_EVENTS[1:]]
    writes = [sw("east", 1, "a", 10.0, 10.01), sw("west", 2, "c", 12.0, 12.01)]
    present = dict.fromkeys([("east", "a"), ("west", "c")])
    return summarize(scenario, ops, events, writes, present, {"machine": "test", "probe_ms": 100})


def test_summarize_counts() -> None:
    r = sample_result()
    assert r.ops_total == {"write": 3, "read": 3}
    assert r.ops_ok == {"write": 2, "read": 2}
    assert r.regions == ("east", "west")
    assert r.epochs == (1, 2)
    assert r.errors_by_kind == {"http-503": 1, "timeout": 1}
    assert r.lost_writes == ()
    assert r.epoch_order_violations == ()
    assert r.longest_write_gap == pytest.approx(1.61)
    assert r.longest_read_gap == pytest.approx(1.61)
    assert r.phases["reconnect"] == pytest.approx(0.31)
    assert r.meta == {"machine": "test", "probe_ms": 100}


def test_json_round_trip() -> None:
    r = sample_result()
    text = render_json(r)
    back = DrillResult.from_dict(json.loads(text))
    assert back == r
    for record in (*r.operations, *r.events, sw("east", 1, "a", 1.0, 2.0)):
        assert type(record).from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_render_table() -> None:
    text = render_table(sample_result())
    for label in (
        "detection",
        "agreement",
        "switch",
        "fence wait",
        "reconnect",
        "longest write gap",
        "longest read gap",
        "errors by kind",
        "acknowledged writes lost",
        "epoch-order violations",
    ):
        assert label in text
    assert "500.0 ms" in text and "1.610 s" in text and "http-503=1 timeout=1" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("FIGURE"))
    col = header.index("VALUE")
    detection = next(line for line in lines if line.startswith("detection"))
    assert detection[col:].startswith("500.0 ms")


def test_html_has_svg_and_escapes_text() -> None:
    evil = '<script>alert("x")</script>&'
    page = render_html(sample_result(scenario="<b>s</b>", detail=evil))
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and "</svg>" in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert "<b>s</b>" not in page and "&lt;b&gt;s&lt;/b&gt;" in page
    assert 'class="gap"' in page and 'class="event"' in page
    assert "east" in page and "west" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_html_without_operations() -> None:
    r = summarize("empty", [], [], [], {}, {})
    page = render_html(r)
    assert "<svg" in page
    assert "-" in render_table(r)


def test_aggregate_median_and_worst() -> None:
    runs = []
    for detect, lost_key in ((0.2, None), (0.6, "x"), (0.4, None)):
        ops = [op(0.0, key="k"), op(0.5, key="k")]
        if lost_key:
            ops.append(op(0.7, key=lost_key))
        events = [Event(1.0, "fault"), Event(1.0 + detect, "detected")]
        runs.append(summarize("s", ops, events, [], {("east", "k"): None}, {}))
    agg = aggregate(runs)
    assert agg["runs"] == 3 and agg["scenarios"] == ["s"]
    det = agg["figures"]["detection"]
    assert det["median"] == pytest.approx(0.4)
    assert det["worst"] == pytest.approx(0.6)
    assert det["runs"] == 3
    assert agg["figures"]["agreement"] == {"median": None, "worst": None, "runs": 0}
    assert agg["figures"]["lost_writes"]["median"] == 0
    assert agg["figures"]["lost_writes"]["worst"] == 1
    text = render_aggregate_table(agg)
    assert "MEDIAN" in text and "WORST" in text and "400.0 ms" in text and "600.0 ms" in text
    json.dumps(agg)


def test_aggregate_errors_by_kind_missing_counts_zero() -> None:
    a = summarize("s", [op(0.0), op(0.1, False, error="reset")], [], [], {}, {})
    b = summarize("s", [op(0.0)], [], [], {}, {})
    c = summarize("s", [op(0.0, False, error="reset"), op(0.1, False, error="reset")], [], [], {})
    agg = aggregate([a, b, c])
    assert agg["errors_by_kind"]["reset"] == {"median": 1.0, "worst": 2.0, "runs": 3}
    assert "errors reset" in render_aggregate_table(agg)


# ------------------------------------------------------------------- updates, gets, the journals


def upd(
    t: float,
    value: int,
    ok: bool = True,
    *,
    key: str = "drill-r-u0",
    region: str = "east",
    epoch: int = 1,
    status: int | None = None,
    basis: tuple[str | None, int | None] = ("east", 1),
    revision: int | None = None,
) -> Operation:
    """An update: acknowledged unless `ok` is False (then answered `status`, or not at all)."""
    error = f"http-{status}" if status else "timeout"
    answered = ok or status is not None
    return replace(
        op(t, ok, kind="update", key=key, error=error),
        status=200 if ok else status,
        region=region if answered else None,
        epoch=epoch if answered else None,
        value=value,
        revision=revision,
        basis_region=basis[0],
        basis_epoch=basis[1],
    )


def get(
    t: float, value: int | None, *, key: str = "drill-r-u0", region: str = "east", epoch: int = 1
) -> Operation:
    """A get that was answered: `value` None is a 404 (the key is absent there)."""
    got = op(t, kind="get", key=key, region=region, epoch=epoch)
    return replace(got, status=404 if value is None else 200, value=value)


def journal_of(ops: list[Operation]) -> list[ServerWrite]:
    """The journal entries that the acknowledged writes and updates among `ops` imply."""
    acked = [o for o in ops if o.ok and o.kind in ("write", "update")]
    return [sw(o.region or "", o.epoch or 0, o.key, o.invoked, o.returned) for o in acked]


def test_expected_conflicts_after_an_epoch_change_are_no_error() -> None:
    changed = upd(1.0, 7, False, status=409, epoch=2, basis=("east", 1))
    moved = upd(1.1, 8, False, status=404, region="west", epoch=2, basis=("east", 1))
    same = upd(1.2, 9, False, status=409, epoch=2, basis=("east", 2))  # nobody else writes
    missing = upd(1.3, 10, False, status=404, epoch=2, basis=("east", 2))  # it was there
    first = upd(0.0, 1, False, status=409, basis=(None, None))  # no basis: no epoch change
    timeout = upd(1.4, 11, False, basis=("east", 1))
    ops = [timeout, missing, same, moved, changed, first, op(2.0, False, error="http-409")]
    assert [is_expected_conflict(o) for o in (changed, moved, same, missing, first)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert expected_conflicts(ops) == [changed, moved]
    assert errors_by_kind(ops) == {"http-404": 1, "http-409": 3, "timeout": 1}
    r = summarize("s", ops, [], [], {})
    assert r.expected_conflicts == (changed, moved)
    assert r.figures()["expected_conflicts"] == 2 and r.errors == 5
    assert not any("409" in p or "conflict" in p for p in verdict(r))


def test_lost_update_when_the_read_back_shows_an_older_value() -> None:
    v1, v2 = upd(0.0, 1), upd(0.1, 2)
    unanswered = upd(0.2, 3, False)  # timed out: may have committed
    ops = [unanswered, v2, v1, upd(0.3, 4, False, status=409, basis=("east", 1))]
    key = ("east", "drill-r-u0")
    assert lost_updates(ops, {key: 1}) == [v2]  # v1 is explained by v2, v2 is gone
    assert lost_updates(ops, {}) == [v2]  # the key is gone
    assert lost_updates(ops, {key: None}) == [v2]  # there, without a counter
    assert lost_updates(ops, {key: 2}) == []
    assert lost_updates(ops, {key: 3}) == []  # the unanswered update committed after all
    r = summarize("s", ops, [], journal_of(ops), {key: 1})
    assert r.lost_updates == (v2,)
    assert r.final_values == {"east": {"drill-r-u0": 1}}
    problems = verdict(r)
    assert len(problems) == 1 and problems[0].startswith("1 acknowledged update(s) lost")
    assert "value 2" in problems[0] and "read back: 1" in problems[0]


def test_lost_updates_are_judged_in_the_region_that_acknowledged_them() -> None:
    east, west = upd(0.0, 5), upd(3.0, 9, region="west", epoch=2, basis=("west", 2))
    other = upd(0.1, 6, key="drill-r-u1")
    back = {("east", "drill-r-u0"): 5, ("west", "drill-r-u0"): 9, ("east", "drill-r-u1"): 6}
    assert lost_updates([east, west, other], back) == []
    assert lost_updates([east, west, other], {**back, ("west", "drill-r-u0"): 7}) == [west]
    assert lost_updates([east, west, other], {**back, ("east", "drill-r-u1"): 5}) == [other]


def test_stale_read_after_an_acknowledged_update() -> None:
    update = upd(1.0, 4)  # acknowledged at 1.01
    ops = [
        upd(0.5, 3),
        update,
        get(1.005, 3),  # invoked before the acknowledgement: either value is right
        get(1.02, 3),  # stale
        get(1.03, 4),
        get(1.04, 5),  # newer than any acknowledgement: an update still in flight
        get(1.05, None, region="west", epoch=2),  # another region: it never had the key
        get(1.06, None),  # the key vanished from the region that acknowledged it: stale
        get(1.07, 3, key="drill-r-u1"),  # another key, never updated
        Operation("get", "drill-r-u0", 1.08, 1.09, False, "timeout"),
    ]
    assert stale_reads(ops) == [ops[3], ops[7]]
    assert stale_reads(ops[:3]) == []
    r = summarize("s", ops, [], journal_of(ops), {("east", "drill-r-u0"): 4})
    assert r.stale_reads == (ops[3], ops[7]) and r.lost_updates == ()
    assert [p.split(",")[0] for p in verdict(r)] == ["2 stale read(s)"]


def test_acked_write_missing_from_every_journal() -> None:
    def w(t: float, key: str, revision: int, region: str = "east") -> Operation:
        return replace(op(t, key=key, region=region), revision=revision)

    kept, gone = w(0.1, "drill-r-1", 5), w(0.2, "drill-r-2", 6)
    other_revision, other_region = w(0.3, "drill-r-3", 7), w(0.4, "drill-r-4", 8, "west")
    no_revision = op(0.5, key="drill-r-5")  # the answer named no revision: the key will do
    updated = upd(0.6, 1, revision=9)
    journal = [
        sw("east", 1, "drill-r-1", 10.0, 10.01, rev=5),
        sw("east", 1, "drill-r-3", 10.0, 10.01, rev=70),
        sw("east", 1, "drill-r-4", 10.0, 10.01, rev=8),
        sw("east", 1, "drill-r-5", 10.0, 10.01, rev=11),
    ]
    ops = [kept, gone, other_revision, other_region, no_revision, updated]
    assert acked_not_journaled(ops, journal) == [gone, other_revision, other_region, updated]
    assert acked_not_journaled([kept, no_revision, op(0.7, False, key="x")], journal) == []
    r = summarize("s", [kept, gone], [], journal[:1], {("east", "drill-r-1"): None})
    assert r.acked_not_journaled == (gone,) and r.lost_writes == (gone,)
    problems = verdict(r)
    assert any(p.startswith("1 acknowledged write(s) in no server's journal") for p in problems)
    r = summarize("s", [kept], [], journal[:1], {("east", "drill-r-1"): None})
    assert verdict(r) == []


def test_journaled_write_that_no_client_operation_explains() -> None:
    acked = replace(op(0.1, key="drill-r-1"), revision=5)
    journal = [
        sw("east", 1, "drill-r-1", 10.0, 10.01, rev=5),
        sw("east", 1, "drill-r-9", 10.2, 10.21, rev=9),  # never invoked
        sw("east", 1, "default", 10.3, 10.31, rev=3),  # not a drill key
    ]
    assert journaled_not_invoked([acked], journal, "drill-r-") == [journal[1]]
    # without a prefix, only the keys the client wrote are the drill's
    assert journaled_not_invoked([acked], journal) == []
    r = summarize("s", [acked], [], journal, {("east", "drill-r-1"): None}, key_prefix="drill-r-")
    assert r.journaled_not_invoked == (journal[1],)
    problems = verdict(r)
    assert len(problems) == 1
    assert problems[0].startswith("1 journaled write(s) that no client operation explains")
    assert "drill-r-9 revision 9" in problems[0]


def test_journaled_writes_of_unanswered_operations_are_explained_one_each() -> None:
    timed_out = op(0.1, False, key="drill-r-2", error="timeout")  # it committed all the same
    update = upd(0.2, 1, revision=20)
    journal = [
        sw("east", 1, "drill-r-2", 10.0, 10.01, rev=7),
        sw("east", 1, "drill-r-u0", 10.1, 10.11, rev=20),
    ]
    assert journaled_not_invoked([timed_out, update], journal, "drill-r-") == []
    twice = sw("east", 1, "drill-r-2", 10.5, 10.51, rev=8)  # one operation, two writes
    late = sw("east", 1, "drill-r-u0", 10.6, 10.61, rev=21)  # acknowledged as 20 only
    got = journaled_not_invoked([timed_out, update], [*journal, twice, late], "drill-r-")
    assert got == [twice, late]


# ---------------------------------------------------------------------------- failover verdict


def expect(
    failover: bool = True,
    after: int | None = 2,
    writable: bool = True,
    since: float | None = 30.0,
) -> Expectation:
    return Expectation(failover, 1, after, writable, since, 10.0)


def judged(expectation: Expectation | None, ops: list[Operation]) -> DrillResult:
    """A run whose data checks all pass (every acknowledged write journaled and read back),
    so that only the failover rules can fail it."""
    back = {(o.region or "", o.key): None for o in ops if o.ok}
    return summarize("s", ops, FULL_EVENTS, journal_of(ops), back, expectation=expectation)


FAILOVER_OPS = [
    op(0.5),
    op(1.2, False),
    op(2.6, region="west", epoch=2),
    op(2.8, region="west", epoch=2),
]


def test_failover_passes_into_a_writable_epoch_with_a_write_in_it() -> None:
    r = judged(expect(), [*FAILOVER_OPS[:2], op(2.6, region="west", epoch=2)])
    assert verdict(r) == []
    assert r.new_epoch_writes == 1
    assert r.phases["reconnect"] == pytest.approx(0.11)


def test_failover_committed_but_never_unfenced_fails() -> None:
    # the epoch rose (what the verdict used to check), but it never became writable: the
    # client's writes after the fault all failed
    ops = [op(0.5), op(1.2, False), op(2.6, False, error="http-503"), op(3.0, False)]
    r = judged(expect(writable=False), ops)
    assert r.expectation is not None and r.expectation.failed_over
    assert verdict(r) == [
        "epoch 2 was committed but never became writable (not unfenced)",
        "no client write succeeded in epoch 2",
    ]
    assert r.phases["reconnect"] is None


def test_failover_fails_without_a_client_write_in_the_new_epoch() -> None:
    # writable, and writes succeeded after the unfence, but not in the new epoch
    r = judged(expect(), [op(0.5), op(2.6), op(2.8)])
    assert verdict(r) == ["no client write succeeded in epoch 2"]
    assert r.new_epoch_writes == 0
    assert r.phases["reconnect"] is None  # an old epoch's write is no reconnect


def test_reconnect_counts_writes_of_the_new_epoch_only() -> None:
    ops = [op(2.6), op(2.8, region="west", epoch=2)]
    assert phases(FULL_EVENTS, ops)["reconnect"] == pytest.approx(0.11)
    assert phases(FULL_EVENTS, ops, epoch=2)["reconnect"] == pytest.approx(0.31)
    assert phases(FULL_EVENTS, ops, epoch=3)["reconnect"] is None


def test_failover_expectations_on_the_epoch() -> None:
    assert verdict(judged(expect(after=1), FAILOVER_OPS[:2])) == [
        "did not fail over (epoch 1 still current)"
    ]
    assert verdict(judged(expect(failover=False), FAILOVER_OPS)) == [
        "failed over although it must not (epoch 1 -> 2)"
    ]
    assert verdict(judged(expect(failover=False, after=1), FAILOVER_OPS[:2])) == []
    assert verdict(judged(expect(after=None), FAILOVER_OPS)) == [
        "the global record could not be read after the drill"
    ]
    # without an expectation (a report from before it was recorded), no failover rule
    assert verdict(judged(None, FAILOVER_OPS[:2])) == []


def test_no_failover_scenario_must_wait_out_min_interval() -> None:
    early = verdict(judged(expect(failover=False, after=1, since=4.0), FAILOVER_OPS[:2]))
    assert len(early) == 1 and "within minIntervalMs (10.0s)" in early[0]
    assert "4.0s after the last change" in early[0]
    assert verdict(judged(expect(failover=False, after=1, since=10.5), FAILOVER_OPS[:2])) == []
    # a failover that must happen is held back, not hidden: the drill waits, the rule is moot
    assert verdict(judged(expect(since=4.0), FAILOVER_OPS)) == []


# ------------------------------------------------------------------ new figures: render, round trip


def findings_result() -> DrillResult:
    """A failover run with one of each finding."""
    ops = [
        *FAILOVER_OPS,
        upd(0.4, 1),
        upd(2.7, 2, False, status=404, region="west", epoch=2),  # expected: no key in west
        upd(2.9, 3, region="west", epoch=2, basis=("west", 2)),
        get(3.0, None, region="west", epoch=2),  # stale: west acknowledged 3 at 2.91
    ]
    journal = journal_of(ops)[1:]  # the first write is in no journal
    journal.append(sw("west", 2, "drill-r-77", 5.0, 5.01))
    back = {(o.region or "", o.key): o.value for o in ops if o.ok and o.kind != "get"}
    back[("east", "drill-r-u0")] = None  # the update acknowledged by east is lost
    return summarize(
        "region-kill",
        ops,
        FULL_EVENTS,
        journal,
        back,
        {"run": "r"},
        expectation=expect(),
        key_prefix="drill-r-",
    )


def test_findings_are_counted_rendered_and_round_trip() -> None:
    r = findings_result()
    f = r.figures()
    assert [f[n] for n in ("expected_conflicts", "lost_updates", "stale_reads")] == [1, 1, 1]
    assert [f[n] for n in ("acked_not_journaled", "journaled_not_invoked")] == [1, 1]
    assert len(verdict(r)) == 4  # the expected conflict fails nothing
    assert DrillResult.from_dict(json.loads(render_json(r))) == r
    d = json.loads(render_json(r))
    assert d["expectation"]["epoch_after"] == 2 and d["new_epoch_writes"] == 2
    assert [o["value"] for o in d["lost_updates"]] == [1]
    assert d["journaled_not_invoked"][0]["key"] == "drill-r-77"
    text = render_table(r)
    for label in (
        "failover",
        "expected; epoch 1 -> 2 (writable, 2 writes acknowledged in it)",
        "fault after last change",
        "expected 409/404 (epoch changed)",
        "acknowledged updates lost",
        "stale reads:",
        "acknowledged, not journaled:",
        "journaled, never invoked:",
        "drill-r-77 revision 1 journaled by west in epoch 2",
    ):
        assert label in text, label
    page = render_html(r)
    assert "Stale reads" in page and "drill-r-77" in page and 'class="op"' in page
    assert page.count("<text") > render_html(sample_result()).count("<text")  # update, get rows


def test_older_reports_still_read() -> None:
    d = json.loads(render_json(sample_result()))
    for name in ("expectation", "new_epoch_writes", "lost_updates", "stale_reads"):
        del d[name]
    for o in d["operations"]:
        del o["value"], o["basis_epoch"]
    back = DrillResult.from_dict(d)
    assert back.expectation is None and back.lost_updates == ()
    assert back.operations == sample_result().operations


def test_aggregate_shows_the_new_figures() -> None:
    runs = [findings_result(), judged(expect(), FAILOVER_OPS), judged(expect(), FAILOVER_OPS)]
    agg = aggregate(runs)
    for name in (
        "reconnect",
        "expected_conflicts",
        "lost_updates",
        "stale_reads",
        "acked_not_journaled",
        "journaled_not_invoked",
    ):
        assert name in agg["figures"], name
    assert agg["figures"]["stale_reads"] == {"median": 0.0, "worst": 1.0, "runs": 3}
    assert agg["figures"]["reconnect"]["runs"] == 3
    text = render_aggregate_table(agg)
    for label in ("reconnect", "acknowledged updates lost", "stale reads", "expected 409/404"):
        assert label in text


# ---- loss above an unplanned failover's cut: the RPO, tolerated and reported apart ----------


def test_only_writes_above_an_unplanned_cut_are_tolerated() -> None:
    from haplane.dr.rpo import split_by_cut

    a1 = Operation("write", "k1", 1.0, 1.1, True, None, 201, "a", 1)
    a2 = Operation("write", "k2", 1.2, 1.3, True, None, 201, "a", 1)
    b = Operation("write", "k3", 3.0, 3.1, True, None, 201, "b", 2)
    journal = [
        ServerWrite("a", 1, "k1", 100, 1.0, 1.05),  # at the cut: replicated, so its loss fails
        ServerWrite("a", 1, "k2", 101, 1.2, 1.25),  # above the cut: the RPO
        ServerWrite("b", 2, "k3", 7, 3.0, 3.05),
    ]
    cut = {"epoch": 2, "source": "a", "revision": 100, "planned": False}
    assert split_by_cut([a1, a2, b], journal, cut) == ((a1, b), (a2,))
    assert split_by_cut([a2], journal, {**cut, "planned": True}) == ((a2,), ())  # planned: none
    assert split_by_cut([a2], [], cut) == ((a2,), ())  # journaled nowhere: nothing explains it
    assert split_by_cut([a2], journal, None) == ((a2,), ())
    # a synchronous standby's cut: nothing acknowledged may be above it, so nothing is tolerated
    assert split_by_cut([a2], journal, {**cut, "synchronous": True}) == ((a2,), ())


def test_summarize_reports_the_cut_and_fails_only_on_loss_at_or_below_it() -> None:
    lost_above = Operation("write", "k2", 1.2, 1.3, True, None, 201, "a", 1)
    journal = [ServerWrite("a", 1, "k2", 101, 1.2, 1.25)]
    cut = {"epoch": 2, "source": "a", "revision": 100, "planned": False, "lagSeconds": 0.2}
    result = summarize("region-kill", [lost_above], [], journal, {}, cut=cut)
    assert result.lost_writes == () and result.lost_above_cut == (lost_above,)
    assert not any("lost" in p for p in verdict(result))
    assert "took over at revision 100 of a (unplanned, lag at the cut 0.200 s)" in render_table(
        result
    )
    again = DrillResult.from_dict(json.loads(render_json(result)))
    assert again.cut == cut and again.lost_above_cut == (lost_above,)


def test_a_region_kill_takes_everything_on_the_site() -> None:
    """The two-regions example's eu-west site: its region's etcd members, replicas, balancers
    and replicators, and the global components placed there (a control etcd member, the
    gate, a GitOps controller and a console); nothing of eu-central's or the witness'."""
    from haplane.local.drill import DrillContext
    from haplane.topology import example_text, load_text

    topology = load_text(example_text("two-regions"))
    ctx = DrillContext(None, topology, None, None, "eu-west")  # type: ignore[arg-type]
    victims = ctx.region_components("eu-west")
    assert {"global/gitops-1", "global/console-1", "global/gate-eu-west"} <= set(victims)
    assert "global/console-2" not in victims and "global/gitops-2" not in victims
    assert sum(v.startswith("eu-west/etcd") for v in victims) == 3
    assert not [v for v in victims if v.startswith("eu-central/")]
    central = ctx.region_components("eu-central")
    assert "global/console-2" in central and not [v for v in central if "gitops" in v]
