"""A regional balancer (`python -m haplane.gate`) in front of real API replicas: a replica cut off
from its etcd leaves rotation while the other keeps serving, and comes back with its etcd; the
balancer's region health names what is wrong.

Replica A runs on the shared etcd; replica B on an etcd of its own, which the test freezes
(SIGSTOP: connections stay open and nothing answers, as behind a silent network cut).
"""

from __future__ import annotations

from pathlib import Path

from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from tests.gate.helpers import Gate, eventually, free_port, gate_config, request


async def test_a_replica_cut_off_from_etcd_leaves_rotation_and_returns(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    own = EtcdCluster(tmp_path / "etcd-b", size=1)
    await own.start()
    a = ApiReplica(tmp_path, "a", etcd_cluster.endpoints, region="r")
    b = ApiReplica(tmp_path, "b", own.endpoints, region="r")
    balancer: Gate | None = None
    try:
        await a.start()
        await b.start()
        port = free_port()
        config = gate_config(
            {"r": [a, b]},  # type: ignore[list-item]  # anything with .name and .port
            [{"port": port, "mode": "l4"}],
            check={"path": "/readyz", "interval": 0.2, "timeout": 1.0},
            region={"name": "r", "etcd": own.endpoints},
        )
        balancer = await Gate(tmp_path, config, "lb").start()
        await balancer.wait_state("a", "up")
        await balancer.wait_state("b", "up")

        async def served_by() -> set[str]:
            seen = set()
            for _ in range(12):
                r = await request(port, "GET", "/api/v1/namespaces/default", timeout=5.0)
                assert r.status == 200, r
                seen.add(r.headers["x-haplane-replica"])
            return seen

        assert await served_by() == {"a", "b"}
        member = next(iter(own.processes.values()))
        await member.fault("pause")  # B's etcd stops answering; B's /readyz turns 503 within ~1 s
        await eventually(lambda: _not_up(balancer, "b"), 15.0, "b out of rotation")
        assert await served_by() == {"a"}  # every new connection goes to A
        health = (await request(balancer.admin_port, "GET", "/healthz/region")).json()
        assert health["replicas_ready"] == 1 and health["etcd_quorum"] is False
        await member.fault("resume")
        await balancer.wait_state("b", "up")
        assert await served_by() == {"a", "b"}
    finally:
        if balancer is not None:
            balancer.kill()
        await b.stop()
        await a.stop()
        await own.stop()


async def _not_up(balancer: Gate, name: str) -> bool:
    return await balancer.state(name) != "up"
