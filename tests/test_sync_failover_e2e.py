"""Synchronous replication end to end: the two-regions example with its pair in `Sync` mode,
every site in its own network namespace (`haplane up --netns`), real processes killed and cut
apart by `haplane drill`, every acknowledged write read back through the gate.

- region loss: the controller promotes the synchronous standby, the cut says so, and nothing
  acknowledged is missing, above the cut or below it (the drill's verdict tolerates no loss
  above a synchronous cut);
- partition of the active region: the cut-off region can neither get a confirmation from its
  standby nor record `sync: none` in the control etcd (a majority of it is elsewhere), so it
  acknowledges nothing after the cut: 0 lost above the cut, where asynchronous replication
  loses what it acknowledged during the rest of its write permission;
- the sync record names the returning region synchronous again once it has caught up.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.topology_helpers import drill, netns_example, status, wait_for

pytestmark = pytest.mark.slow


def _synchronous(doc: dict[str, Any]) -> None:
    for pair in doc["spec"]["global"]["replication"]:
        pair["mode"] = "Sync"
        pair.pop("maxLagMs", None)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with netns_example(tmp_path_factory.mktemp("sync-e2e"), _synchronous) as root:
        yield root


def synchronous_standby(root: Path) -> str | None:
    sync = status(root).get("sync") or {}
    standby = sync.get("standby")
    return str(standby) if standby else None


def assert_nothing_lost(result: dict[str, Any]) -> None:
    meta = result["meta"]
    assert meta["failed_over"], result["_stderr"]
    assert result["lost_writes"] == [] and result["lost_updates"] == []
    assert result["lost_above_cut"] == [], result["lost_above_cut"]
    assert meta["read_back_problems"] == []
    assert result["server_writes"] > 0
    writes = [o for o in result["operations"] if o["kind"] == "write" and o["ok"]]
    assert writes, "no write succeeded at all"
    assert result["_exit"] == 0, result["_stderr"]
    # acknowledged in both epochs: the drill judged writes on each side of the cut
    epochs = {o["epoch"] for o in result["operations"] if o["ok"]}
    assert {meta["before"]["epoch"], meta["after"]["epoch"]} <= epochs


@pytest.mark.parametrize("scenario", ["region-kill", "partition"])
def test_an_unplanned_loss_promotes_the_synchronous_standby_and_loses_nothing(
    topo: Path, scenario: str
) -> None:
    wait_for(lambda: synchronous_standby(topo) is not None, timeout=60)
    active = status(topo)["global_state"]["active"]["region"]
    standby = synchronous_standby(topo)
    assert standby is not None and standby != active
    result = drill(topo, scenario)
    assert result["meta"]["after"]["region"] == standby
    assert result["cut"]["synchronous"] is True, result["cut"]
    assert_nothing_lost(result)
    # the old region rejoined, caught up and is synchronous again
    wait_for(lambda: synchronous_standby(topo) == active, timeout=90)
