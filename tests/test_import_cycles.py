"""No import cycles inside the packages whose modules grew around each other (the gate's
engine, the API's request path): shared types live in a module both sides import. Checked
on the real import graph (grimp, which import-linter uses), type-checking imports included."""

from __future__ import annotations

import grimp
import pytest


def cycles(package: str) -> list[list[str]]:
    graph = grimp.build_graph("haplane")
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    inside = set(modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & inside) for m in modules}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in edges[m]:
            if state.get(n) == 1:
                found.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m)
    return found


@pytest.mark.parametrize("package", ["haplane.gate", "haplane.api", "haplane.auth"])
def test_no_import_cycles(package: str):
    assert cycles(package) == []
