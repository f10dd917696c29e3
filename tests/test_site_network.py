"""`haplane up --netns` placement (haplane.local.site_network): each site its own address,
recorded in the topology kept in the state dir; a site's explicit host wins."""

from __future__ import annotations

import yaml

from haplane.local.site_network import place_sites
from haplane.topology import load_text
from haplane.topology.loader import example_text


def test_every_site_gets_its_own_address_and_components_follow_it() -> None:
    text, addresses = place_sites(example_text("two-regions"))
    assert addresses == {"eu-west": "10.77.1.1", "eu-central": "10.77.2.1", "witness": "10.77.3.1"}
    topology = load_text(text)
    members = {m.qualified_name: m.host for c in topology.etcd_clusters() for m in c.members}
    assert members["eu-west/etcd-2"] == "10.77.1.1"
    assert members["global/control-3"] == "10.77.3.1"  # placed by its `site`
    gate = next(g for g in topology.spec.global_.gates if g.site == "eu-central")
    assert topology.host_of(gate) == "10.77.2.1"


def test_an_explicit_site_host_is_kept() -> None:
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["sites"][1]["host"] = "10.77.9.9"
    _, addresses = place_sites(yaml.safe_dump(doc))
    assert addresses["eu-central"] == "10.77.9.9" and addresses["eu-west"] == "10.77.1.1"
