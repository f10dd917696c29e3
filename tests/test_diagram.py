"""Topology diagrams: DOT/SVG/PNG through Graphviz, Mermaid, and failures marked DOWN."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from haplane.topology import load_example
from haplane.topology.diagram import DiagramError, components, render, to_dot, to_mermaid

TOPOLOGY = load_example("two-regions")
ALL = {c.qualified_name for c in components(TOPOLOGY)}
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot not installed")


def down_nodes(dot: str) -> set[str]:
    return set(re.findall(r'^\s*"([^"]+)" \[label="[^"]*\\nDOWN"', dot, re.MULTILINE))


def test_components_of_the_example() -> None:
    assert len(ALL) == 28  # 24, two GitOps controllers and two consoles
    assert {
        "eu-west/etcd-1",
        "eu-central/lb-2",
        "eu-central/rep-2",
        "global/control-3",
        "global/gate-witness",
        "global/gitops-2",
        "global/console-2",
    } <= ALL


def test_gitops_controllers_sit_on_their_sites_and_dial_their_sites_gate() -> None:
    from haplane.topology.diagram import edges

    placed = {c.qualified_name: (c.kind, c.site, c.zone) for c in components(TOPOLOGY)}
    assert placed["global/gitops-1"] == ("gitops controller", "eu-west", "a")
    assert placed["global/gitops-2"] == ("gitops controller", "witness", "a")
    dials = {(e.source, e.target) for e in edges(TOPOLOGY) if e.kind == "gitops"}
    assert dials == {
        ("global/gitops-1", "global/gate-eu-west"),
        ("global/gitops-2", "global/gate-witness"),
    }
    dot = to_dot(TOPOLOGY)
    assert '"global/gitops-1" [label="gitops-1", shape=component' in dot
    assert '"global/gitops-2" -> "global/gate-witness" [style=dotted' in dot
    assert 'n_global__gitops_2[["gitops-2"]]' in to_mermaid(TOPOLOGY)
    # the failure model leaves them out (they serve no request): not a failure to name
    with pytest.raises(ValueError, match="unknown failure"):
        to_dot(TOPOLOGY, failed=["global/gitops-1"])


def test_consoles_sit_on_their_sites_and_dial_their_sites_gate() -> None:
    from haplane.topology.diagram import edges

    sites = {c.name: c.site for c in TOPOLOGY.spec.global_.console.instances}
    gates = {g.site: g.name for g in TOPOLOGY.spec.global_.gates}
    placed = {c.qualified_name: (c.kind, c.site) for c in components(TOPOLOGY)}
    dials = {(e.source, e.target) for e in edges(TOPOLOGY) if e.kind == "console"}
    assert len(sites) == 2 and dials == {
        (f"global/{name}", f"global/{gates.get(site, TOPOLOGY.spec.global_.gates[0].name)}")
        for name, site in sites.items()
    }
    for name, site in sites.items():
        assert placed[f"global/{name}"] == ("console", site)
    dot = to_dot(TOPOLOGY)
    assert '"global/console-1" [label="console-1", shape=tab' in dot
    assert "n_global__console_1" in to_mermaid(TOPOLOGY)
    with pytest.raises(ValueError, match="unknown failure"):
        to_dot(TOPOLOGY, failed=["global/console-1"])


@needs_dot
def test_svg_is_xml_naming_every_component() -> None:
    root = ET.fromstring(render(TOPOLOGY, "svg"))
    texts = {t.strip() for t in root.itertext() if t.strip()}
    for name in ALL:
        assert name in texts, name  # the node's <title>
        assert name.split("/", 1)[1] in texts, name  # its label
    for label in ("region eu-west", "region eu-central", "witness site", "async replication"):
        assert label in texts


@needs_dot
def test_png_magic() -> None:
    assert render(TOPOLOGY, "png").startswith(b"\x89PNG\r\n\x1a\n")


def test_replication_is_drawn_from_the_active_region() -> None:
    from haplane.topology.diagram import cluster_node, edges

    repl = [e for e in edges(TOPOLOGY) if e.kind == "replication"]
    assert [(e.source, e.target) for e in repl] == [
        (cluster_node("eu-west"), cluster_node("eu-central"))
    ]
    # the pair written the other way round is the same pair, still drawn from the active region
    flipped = TOPOLOGY.model_copy(deep=True)
    pair = flipped.spec.global_.replication[0]
    object.__setattr__(pair, "from_", "eu-central")
    object.__setattr__(pair, "to", "eu-west")
    repl = [e for e in edges(flipped) if e.kind == "replication"]
    assert [(e.source, e.target) for e in repl] == [
        (cluster_node("eu-west"), cluster_node("eu-central"))
    ]
    stores = {(e.source, e.target) for e in edges(TOPOLOGY) if e.kind == "stores"}
    assert ("eu-west/rep-1", cluster_node("eu-west")) in stores


def test_the_replication_edge_is_labelled_with_the_pairs_mode() -> None:
    from haplane.topology.diagram import edges

    for text in (to_dot(TOPOLOGY), to_mermaid(TOPOLOGY)):
        assert "async replication" in text
    synchronous = TOPOLOGY.model_copy(deep=True)
    object.__setattr__(synchronous.spec.global_.replication[0], "mode", "Sync")
    assert [e.kind for e in edges(synchronous) if e.kind.startswith("replication")] == [
        "replication-sync"
    ]
    for text in (to_dot(synchronous), to_mermaid(synchronous)):
        assert "sync replication" in text and "async replication" not in text


def test_no_failure_marks_nothing_down() -> None:
    dot = to_dot(TOPOLOGY)
    assert down_nodes(dot) == set()
    assert "NO QUORUM" not in dot


def test_failed_components_marked_down() -> None:
    dot = to_dot(TOPOLOGY, failed=["eu-west/etcd-1", "zone eu-central/a"])
    # gates and zoneless control members count as in their site's first zone
    assert down_nodes(dot) == {
        "eu-west/etcd-1",
        "eu-central/etcd-1",
        "eu-central/api-1",
        "eu-central/lb-1",
        "eu-central/rep-1",
        "global/control-2",
        "global/gate-eu-central",
        "global/console-2",  # in that zone too (its site's first)
    }
    assert dot.count("DOWN") == 8


def test_site_failure_and_lost_quorum() -> None:
    dot = to_dot(TOPOLOGY, failed=["site eu-west", "global/control-3"])
    assert down_nodes(dot) == {n for n in ALL if n.startswith("eu-west/")} | {
        "global/control-1",
        "global/control-3",
        "global/gate-eu-west",
        "global/gitops-1",  # on the failed site
        "global/console-1",
    }
    assert "eu-west etcd\\nNO QUORUM" in dot
    assert "global control etcd\\nNO QUORUM" in dot


def test_cut_shades_nothing_but_draws_a_red_dashed_link() -> None:
    dot = to_dot(TOPOLOGY, failed=["cut eu-west<->witness"])
    assert down_nodes(dot) == set()
    cut_edges = [line for line in dot.splitlines() if 'label="cut"' in line]
    assert len(cut_edges) == 1
    assert "style=dashed" in cut_edges[0] and "#d00000" in cut_edges[0]
    isolated = to_dot(TOPOLOGY, failed=["isolate witness"])
    assert sum('label="cut"' in line for line in isolated.splitlines()) == 2


def test_active_region_solid_others_dashed() -> None:
    dot = to_dot(TOPOLOGY)
    assert '"global/gate-witness" -> "eu-west/lb-1" [style=solid];' in dot
    assert '"global/gate-witness" -> "eu-central/lb-1" [style=dashed];' in dot


def test_unknown_failure_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown failure 'eu-west/etcd-9'.*zone eu-west/a"):
        to_dot(TOPOLOGY, failed=["eu-west/etcd-9"])
    with pytest.raises(ValueError):
        to_mermaid(TOPOLOGY, failed=["nonsense"])


def test_mermaid_names_every_component() -> None:
    text = to_mermaid(TOPOLOGY)
    assert text.startswith("flowchart")
    for c in components(TOPOLOGY):
        assert re.search(rf'\b\S*"{re.escape(c.name)}"', text), c.qualified_name
        node_id = "n_" + c.qualified_name.replace("-", "_").replace("/", "__")
        assert node_id in text
    assert 'subgraph site_0["region eu-west"]' in text
    assert '["witness site"]' in text
    assert "async replication" in text
    assert "class " not in text


def test_mermaid_marks_failed_components() -> None:
    text = to_mermaid(TOPOLOGY, failed=["eu-west/etcd-1", "cut eu-west->witness"])
    assert "classDef down" in text
    assert re.search(r"^  class n_eu_west__etcd_1 down$", text, re.MULTILINE)
    assert '"etcd-1 DOWN"' in text
    assert "linkStyle" in text and "one-way cut" in text
    lost = to_mermaid(TOPOLOGY, failed=["site eu-west"])
    assert "class n_etcd___cluster___eu_west noquorum" in lost


def test_dot_missing_raises_diagram_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DiagramError, match="Graphviz's dot is not installed: apt-get install"):
        render(TOPOLOGY, "png")


def test_unsupported_format() -> None:
    with pytest.raises(ValueError, match="unsupported format"):
        render(TOPOLOGY, "pdf")  # type: ignore[arg-type]


def test_live_colours_by_health_and_follows_the_active_region() -> None:
    """The console's drawing: health per component, leaders starred, the active region (and
    its epoch) named, gate and replication edges towards the region active now."""
    from haplane.topology.diagram import Live, cluster_node, edges

    live = Live(
        health={"eu-west/etcd-1": "down", "eu-west/etcd-2": "ok", "eu-west/lb-1": "warn"},
        leaders=frozenset({"eu-west/etcd-2"}),
        active="eu-central",
        epoch=4,
    )
    dot = to_dot(TOPOLOGY, live=live)
    assert down_nodes(dot) == {"eu-west/etcd-1"}
    node = re.search(r'^\s*"eu-west/etcd-2" \[(.*)\];$', dot, re.MULTILINE)
    assert node and 'class="ok"' in node.group(1) and "\u2605" in node.group(1)
    assert 'color="#1d8a3a"' in node.group(1)
    lb = re.search(r'^\s*"eu-west/lb-1" \[(.*)\];$', dot, re.MULTILINE)
    assert lb and 'class="warn"' in lb.group(1) and 'color="#b7791f"' in lb.group(1)
    api = re.search(r'^\s*"eu-west/api-1" \[(.*)\];$', dot, re.MULTILINE)
    assert api and 'class="unknown"' in api.group(1) and "dashed" in api.group(1)
    assert "region eu-central (active, epoch 4)" in dot
    assert "region eu-west (active" not in dot
    repl = [e for e in edges(TOPOLOGY, active="eu-central") if e.kind == "replication"]
    assert [(e.source, e.target) for e in repl] == [
        (cluster_node("eu-central"), cluster_node("eu-west"))
    ]
    active_lbs = {e.target for e in edges(TOPOLOGY, active="eu-central") if e.kind == "gate-active"}
    assert active_lbs == {"eu-central/lb-1", "eu-central/lb-2"}
    # the file's drawing is unchanged without `live`
    assert 'class="' not in to_dot(TOPOLOGY) and "(active" not in to_dot(TOPOLOGY)


@needs_dot
def test_live_svg_carries_the_health_classes() -> None:
    from haplane.topology.diagram import Live

    svg = render(TOPOLOGY, "svg", live=Live({"eu-west/etcd-1": "down"}, active="eu-west")).decode()
    ET.fromstring(svg)
    found = dict(
        (t.replace("&#45;", "-"), cls)
        for cls, t in re.findall(
            r'<g id="node\d+" class="node (\w+)">\s*<title>([^<]*)</title>', svg
        )
    )
    assert found["eu-west/etcd-1"] == "down" and found["eu-west/etcd-2"] == "unknown"
    assert " style=" not in svg  # the console's CSP allows no style attribute
