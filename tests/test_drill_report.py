"""Drill reports: gaps, phases, lost writes, epoch order, JSON, HTML and aggregation, on
handcrafted records (pure, no processes)."""

from __future__ import annotations

import json

import pytest

from haplane.dr import (
    DrillResult,
    Event,
    Operation,
    ServerWrite,
    aggregate,
    epoch_order_violations,
    errors_by_kind,
    gaps,
    longest_gap,
    lost_writes,
    phases,
    render_aggregate_table,
    render_html,
    render_json,
    render_table,
    summarize,
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
    present = {("east", "a"), ("west", "c")}
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
    r = summarize("empty", [], [], [], set(), {})
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
        runs.append(summarize("s", ops, events, [], {("east", "k")}, {}))
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
    a = summarize("s", [op(0.0), op(0.1, False, error="reset")], [], [], set(), {})
    b = summarize("s", [op(0.0)], [], [], set(), {})
    c = summarize(
        "s", [op(0.0, False, error="reset"), op(0.1, False, error="reset")], [], [], set()
    )
    agg = aggregate([a, b, c])
    assert agg["errors_by_kind"]["reset"] == {"median": 1.0, "worst": 2.0, "runs": 3}
    assert "errors reset" in render_aggregate_table(agg)
