"""A balancer's `/healthz/region` verdict (`RegionHealth.report`) on plain data: a region whose
ready replicas cannot confirm the write permission it holds is unhealthy for the gates."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from haplane.gate.health import UpstreamState
from haplane.gate.roles import RegionHealth


def region_with(details: list[Any]) -> RegionHealth:
    upstreams = {
        f"api-{i}": SimpleNamespace(name=f"api-{i}", state=UpstreamState.UP, detail=d)
        for i, d in enumerate(details)
    }
    forwarder = SimpleNamespace(pools={"r": SimpleNamespace(upstreams=upstreams)})
    health = RegionHealth(forwarder, "r", ["x:1"], interval=0.5, global_endpoints=["y:1"])  # type: ignore[arg-type]
    health.etcd_quorum = True
    health.control_reachable = True
    return health


def fence(lapsed: float) -> dict[str, Any]:
    return {"ready": True, "fence": {"permitted": lapsed == 0, "lapsedSeconds": lapsed}}


def test_replicas_that_cannot_confirm_their_permission_make_the_region_unhealthy() -> None:
    report = region_with([fence(2.0), fence(1.2)]).report()
    assert not report["healthy"]
    assert "unable to confirm its write permission for 1.2s" in report["reasons"][0]


def test_one_replica_that_can_write_keeps_the_region_healthy() -> None:
    assert region_with([fence(2.0), fence(0.0)]).report()["healthy"]


def test_a_lapse_shorter_than_a_check_interval_is_no_reason() -> None:
    assert region_with([fence(0.4), fence(0.3)]).report()["healthy"]


def test_replicas_that_do_not_say_are_not_judged() -> None:
    assert region_with([fence(2.0), None]).report()["healthy"]  # an older replica: no detail
