"""The gate's decisions as pure functions of data: health transitions, the choice of an
upstream, the retry rule, watch detection, Status bodies, config validation.

Layer: tests (gate). No I/O."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haplane.gate.balancing import Pool, Upstream, pick_least_loaded
from haplane.gate.config import ConfigError, load_config, parse_config
from haplane.gate.health import (
    CheckOutcome,
    HealthCounters,
    UpstreamState,
    judge,
    passive_failure,
)
from haplane.gate.http_proxy import is_watch, retry_decision
from haplane.gate.k8s_status import status_response
from haplane.gate.settings import HealthCheck, UpstreamAddress

OK, NOT_READY, FAILED = CheckOutcome.OK, CheckOutcome.NOT_READY, CheckOutcome.FAILED
UP, DRAINING, DOWN = UpstreamState.UP, UpstreamState.DRAINING, UpstreamState.DOWN
CHECK = HealthCheck(fall=2, rise=3)


def run(outcomes: list[CheckOutcome], start: HealthCounters | None = None) -> list[UpstreamState]:
    counters = start or HealthCounters()
    states = []
    for outcome in outcomes:
        counters = judge(counters, outcome, CHECK)
        states.append(counters.state)
    return states


def test_first_check_decides_at_once() -> None:
    assert run([OK]) == [UP]
    assert run([NOT_READY]) == [DRAINING]
    assert run([FAILED]) == [DOWN]


def test_fall_consecutive_failures_take_up_down_and_a_success_resets_the_count() -> None:
    assert run([OK, FAILED, OK, FAILED, FAILED]) == [UP, UP, UP, UP, DOWN]


def test_rise_consecutive_successes_bring_down_back_and_503_restarts_the_count() -> None:
    assert run([FAILED, OK, OK, NOT_READY, OK, OK, OK]) == [
        DOWN,
        DOWN,
        DOWN,
        DOWN,
        DOWN,
        DOWN,
        UP,
    ]


def test_503_drains_at_once_and_ready_again_returns_at_once() -> None:
    assert run([OK, NOT_READY, NOT_READY, OK]) == [UP, DRAINING, DRAINING, UP]


def test_a_draining_upstream_that_stops_answering_goes_down() -> None:
    assert run([OK, NOT_READY, FAILED, FAILED]) == [UP, DRAINING, DRAINING, DOWN]


def test_passive_failure_is_down_at_once_and_needs_rise_to_return() -> None:
    up = judge(HealthCounters(), OK, CHECK)
    down = passive_failure(up)
    assert down.state is DOWN
    assert run([OK, OK, OK], down) == [DOWN, DOWN, UP]


def upstreams(*specs: tuple[UpstreamState, int]) -> list[Upstream]:
    out = []
    for i, (state, active) in enumerate(specs):
        u = Upstream("p", UpstreamAddress(f"u{i}", "127.0.0.1", 1000 + i))
        u.counters = HealthCounters(state, checked=True)
        u.active = active
        out.append(u)
    return out


def test_pick_least_loaded_up_only_ties_from_start() -> None:
    us = upstreams((UP, 3), (UP, 1), (DRAINING, 0), (DOWN, 0), (UP, 1))
    assert pick_least_loaded(us, 0) == 1
    assert pick_least_loaded(us, 2) == 4  # the tie goes to the first from `start`
    assert pick_least_loaded(us, 0, exclude=[us[1], us[4]]) == 0
    assert pick_least_loaded(upstreams((DOWN, 0), (DRAINING, 0)), 0) == -1


def test_pool_takes_equally_loaded_upstreams_in_turn() -> None:
    pool = Pool("p", CHECK)
    us = upstreams((UP, 0), (UP, 0), (UP, 0))
    pool.replace_upstreams(us)
    assert [pool.pick() for _ in range(6)] == us + us
    us[1].active = 1  # busy: the other two alternate
    assert [pool.pick() for _ in range(4)] == [us[0], us[2], us[0], us[2]]


@pytest.mark.parametrize(
    ("sent", "idempotent", "replayable", "attempts", "timed_out", "expected"),
    [
        (False, False, False, 0, False, 0),  # never sent: any method may go elsewhere
        (True, True, True, 0, False, 0),  # a GET that failed: retry
        (True, True, True, 2, False, 502),  # ... but not forever
        (True, True, False, 0, False, 502),  # a GET whose body we could not keep
        (True, False, False, 0, False, 502),  # a POST that may have arrived: never re-sent
        (True, False, False, 0, True, 504),
        (True, True, True, 2, True, 504),
    ],
)
def test_retry_decision(
    sent: bool, idempotent: bool, replayable: bool, attempts: int, timed_out: bool, expected: int
) -> None:
    assert (
        retry_decision(
            sent=sent,
            idempotent=idempotent,
            replayable=replayable,
            attempts=attempts,
            retries=2,
            timed_out=timed_out,
        )
        == expected
    )


def test_watch_detection() -> None:
    assert is_watch(b"/api/v1/pods?watch=true")
    assert is_watch(b"/api/v1/pods?labelSelector=a&watch=1&resourceVersion=5")
    assert is_watch(b"/api/v1/watch/namespaces/x/pods")
    assert not is_watch(b"/api/v1/pods?watch=false")
    assert not is_watch(b"/api/v1/pods?watch=0")
    assert not is_watch(b"/api/v1/pods?watchful=1")
    assert not is_watch(b"/api/v1/pods")


def test_status_response_is_a_kubernetes_status() -> None:
    raw = status_response(503, "no healthy upstream")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert b"\r\nConnection: close" in head
    assert json.loads(body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "no healthy upstream",
        "reason": "ServiceUnavailable",
        "code": 503,
    }


GOOD = {
    "listeners": [{"port": 6443}],
    "pools": {"a": {"upstreams": [{"name": "x", "host": "127.0.0.1", "port": 7000}]}},
    "active_pool": "a",
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"pools": {"a": {"upstreams": [{"name": "x", "host": "h", "port": 70000}]}}},
         "pools.a.upstreams.0.port"),
        ({"active_pool": "b"}, "active_pool"),
        ({"listeners": [{"port": 1, "mode": "l9"}]}, "listeners.0.mode"),
        ({"listeners": []}, "listeners"),
        ({"timeouts": {"connect": -1}}, "timeouts.connect"),
        ({"pools": {"a": {"upstreams": [], "check": {"fall": 0}}}}, "pools.a.check.fall"),
        ({"pools": {"a": {"upstreams": [{"name": "x", "host": "h", "port": 1}] * 2}}},
         "pools.a.upstreams"),
        ({"bogus": 1}, "bogus"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, **change})
    assert str(info.value).startswith(f"{field}: "), str(info.value)


def test_config_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gate.json"
    path.write_text(json.dumps(GOOD))
    config = load_config(path)
    check = config.pools["a"].check.to_health_check()
    assert (check.path, check.interval, check.effective_timeout, check.fall, check.rise) == (
        "/readyz",
        0.2,
        0.2,
        2,
        2,
    )
    assert config.listeners[0].to_spec().mode == "l4"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON: line 1"):
        load_config(path)
