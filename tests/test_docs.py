"""`haplane.topology.docs`: the Markdown/HTML document of a topology and its DR runbook."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from typing import Any

import pytest
import yaml

from haplane.topology import Topology, example_text, load_example, load_text
from haplane.topology.docs import html, markdown


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_example("two-regions")


@pytest.fixture(scope="module")
def md(topo: Topology) -> str:
    return markdown(topo)


def _names(topo: Topology) -> list[str]:
    names: list[str] = []
    for _, region in topo.regions():
        names += [m.name for m in region.etcd.members]
        names += [a.name for a in region.api_servers]
        names += [b.name for b in region.balancers]
    g = topo.spec.global_
    names += [m.name for m in g.control_etcd.members]
    names += [x.name for x in g.gates]
    names += [x.name for x in g.gitops]
    return names


def _section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:] if end < 0 else md[start:end]


def test_markdown_has_every_section(md: str) -> None:
    for title in (
        "Inventory",
        "Validation",
        "Failure tolerance",
        "Availability",
        "Diagram",
        "DR runbook",
    ):
        assert f"\n## {title}\n" in md
    assert md.startswith("# Topology `two-regions`")


def test_inventory_names_every_component(topo: Topology, md: str) -> None:
    inventory = _section(md, "Inventory")
    for name in _names(topo):
        assert f"| {name} |" in inventory, name
    for region in ("eu-west", "eu-central", "witness"):
        assert region in inventory


def test_validation_failures_and_availability(md: str) -> None:
    assert "No findings" in _section(md, "Validation")
    tolerance = _section(md, "Failure tolerance")
    assert "survives every single failure" in tolerance
    assert "| FAILURES | SETS | OUTCOME |" in tolerance
    assert "unaffected |" not in tolerance
    availability = _section(md, "Availability")
    assert re.search(r"availability of writes \| 99\.\d+%", availability)
    assert re.search(r"\d+\.\d\d min/year", availability)
    assert "Assumptions" in availability


def test_mermaid_block(md: str) -> None:
    diagram = _section(md, "Diagram")
    assert "```mermaid\nflowchart TB" in diagram
    assert diagram.count("```") == 2


def test_runbook_is_specific_to_the_file(md: str) -> None:
    runbook = _section(md, "DR runbook")
    assert 'haplane failover --to eu-central --reason "eu-west down"' in runbook
    assert "Witness site(s): `witness`" in runbook
    assert "haplane fault restart eu-west/etcd-1" in runbook
    assert "haplane fault restart global/control-1" in runbook
    assert "haplane fault restart global/gitops-1" in runbook
    assert "haplane status" in runbook
    assert "haplane analyse FILE -k 2" in runbook
    assert "etcdctl --endpoints https://127.0.0.1:<eu-west/etcd-1 client port>" in runbook
    assert "ETCDCTL_CACERT=$STATE/pki/etcd/ca.crt" in runbook  # etcd wants a certificate
    assert "fails regions over by itself" in runbook
    assert "down for 600 ms" in runbook and "1000 + 250 ms later" in runbook
    for heading in (
        "One etcd member down",
        "etcd quorum lost in a region",
        "An API replica down",
        "A balancer down",
        "A whole zone down",
        "The active region (`eu-west`) down or isolated",
        "The global control etcd losing quorum",
        "A gate instance down",
        "A GitOps controller instance down",
        "A network cut between sites",
    ):
        assert f"### {heading}\n" in runbook, heading


def test_findings_of_a_file_with_errors() -> None:
    data: dict[str, Any] = yaml.safe_load(example_text("two-regions"))
    west = data["spec"]["sites"][0]["region"]
    west["etcd"]["members"] = west["etcd"]["members"][:2]
    west["balancers"] = west["balancers"][:1]
    topo = load_text(yaml.safe_dump(data))
    validation = _section(markdown(topo, max_failures=1), "Validation")
    assert "No findings" not in validation
    assert "| error | etcd-member-count |" in validation
    assert "balancer-count" in validation


class _Checker(HTMLParser):
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def _check_html(text: str) -> None:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []


def test_html_is_well_formed_and_has_the_same_content(topo: Topology) -> None:
    page = html(topo)
    assert page.startswith("<!DOCTYPE html>")
    assert "<table>" in page
    assert "<h2>DR runbook</h2>" in page
    assert "<style>" in page
    _check_html(page)
    assert "survives every single failure" in page
    assert "haplane failover --to eu-central --reason &quot;eu-west down&quot;" in page
    assert 'class="language-mermaid"' in page
    for name in _names(topo):
        assert f"<td>{name}</td>" in page, name


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_html_embeds_the_svg(topo: Topology) -> None:
    page = html(topo, diagram_svg=True)
    assert '<div class="diagram">' in page
    assert "<svg" in page
    assert page.index("<svg") < page.index("<h2>DR runbook</h2>")
    assert "<svg" not in markdown(topo, diagram_svg=True)


def test_replication_section_names_pairs_both_ways_and_replicators() -> None:
    text = markdown(load_example("two-regions"))
    assert "`eu-west` <-> `eu-central` (async)" in text
    assert "| eu-west <-> eu-central | Async | 2000 ms |" in text
    assert "| eu-central | rep-2 | b |" in text
    assert "haplane divergence list" in text


def test_a_sync_pair_shows_its_timeout_and_strictness_and_the_runbook_says_what_it_loses() -> None:
    data = yaml.safe_load(example_text("two-regions"))
    data["spec"]["global"]["replication"][0].update({"mode": "Sync", "strict": True})
    text = markdown(load_text(yaml.safe_dump(data)))
    assert "`eu-west` <-> `eu-central` (sync)" in text
    assert "| eu-west <-> eu-central | Sync (500 ms, strict) | 2000 ms |" in text
    assert "loses no acknowledged write as long as the sync record" in text


def test_gitops_controllers_in_the_inventory_and_runbook_only_when_there_are_some() -> None:
    data = yaml.safe_load(example_text("two-regions"))
    text = markdown(load_text(yaml.safe_dump(data)))
    assert "### GitOps controllers\n" in text
    assert "| gitops-2 | witness | 127.0.0.1 | assigned |" in text
    assert "`global/gitops-1 (eu-west)` and `global/gitops-2 (witness)`." in text
    data["spec"]["global"]["gitops"].pop()
    text = markdown(load_text(yaml.safe_dump(data)), max_failures=1)
    assert "a single point of failure for syncing (`gitops-controllers`)" in text
    del data["spec"]["global"]["gitops"]
    text = markdown(load_text(yaml.safe_dump(data)), max_failures=1)
    assert "GitOps" not in text
