"""Policy packs shipped with haplane: ValidatingAdmissionPolicies and their bindings as YAML,
installed with `haplane policy install NAME` (`haplane.cli.policy`).

Layer: data (read by the CLI only). Each pack is `NAME.yaml` here: a multi-document YAML of
admissionregistration.k8s.io/v1 objects, and the ConfigMap of its parameters.
"""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".yaml")
    )


def text(name: str) -> str:
    target = resources.files(__name__).joinpath(f"{name}.yaml")
    if not target.is_file():
        raise KeyError(f"no policy pack {name!r}; known: {', '.join(names())}")
    return target.read_text(encoding="utf-8")
