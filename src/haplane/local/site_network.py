"""`haplane up --netns`: each site of a topology on its own network namespace and address.

Layer: run (`haplane.local`). Decides the addresses (`10.77.<site number>.1`, written into the
recorded topology as each site's `host`) and keeps them in the state dir's `network.json`;
`SiteNetwork` (haplane.local.netns) builds and removes the namespaces. The supervisor starts
every process in its site's namespace; drills cut sites apart with real packet drops.
"""

from __future__ import annotations

import json
from typing import Any

from .netns import SiteAddress, SiteNetwork
from .state_dir import StateDir

GATEWAY = "10.77.0.254"  # the root namespace's address on the bridge (the CLI)
CLIENT = "10.77.254.1"  # the drill client's namespace: a user outside every site
PREFIX_LEN = 16


def site_address(index: int) -> str:
    return f"10.77.{index + 1}.1"


def place_sites(source_text: str) -> tuple[str, dict[str, str]]:
    """The topology text with every site's `host` set to its own address (a host the file
    gives is kept), and site -> address."""
    import yaml  # here, not at module level: `haplane down` imports this module for `cleanup`

    doc: Any = yaml.safe_load(source_text)
    sites = doc["spec"]["sites"]
    addresses = {}
    for i, site in enumerate(sites):
        site.setdefault("host", site_address(i))
        addresses[site["name"]] = site["host"]
    return yaml.safe_dump(doc, sort_keys=False), addresses


def record(state: StateDir, topology_name: str, addresses: dict[str, str]) -> None:
    state.network_file.write_text(
        json.dumps({"topology": topology_name, "sites": addresses}, indent=2) + "\n"
    )


def load(state: StateDir) -> SiteNetwork | None:
    """The site network a topology was started with, or None (everything on loopback)."""
    try:
        data = json.loads(state.network_file.read_text())
    except FileNotFoundError:
        return None
    return SiteNetwork(
        str(data["topology"]),
        [SiteAddress(site, address) for site, address in data["sites"].items()],
        client_address=CLIENT,
        gateway=GATEWAY,
        prefix_len=PREFIX_LEN,
        state_dir=state.root,
    )


def cleanup(state: StateDir) -> bool:
    """Remove a (possibly crashed) run's namespaces, veths, bridge and rules."""
    return SiteNetwork.cleanup_stale(state.root)
