"""Layer: model. The topology file -> a validated model, its JSON Schema and its HA rules.

Pure: nothing here starts processes or opens sockets; every higher layer derives what it runs
from a `Topology`.
"""

from .loader import (
    SchemaProblem,
    TopologyError,
    example_names,
    example_text,
    json_schema,
    load_example,
    load_file,
    load_text,
)
from .model import (
    GLOBAL_SCOPE,
    EtcdClusterView,
    EtcdMemberView,
    ResolvedEtcdSettings,
    Topology,
)
from .rules import RULES, Finding, has_errors, validate

__all__ = [
    "GLOBAL_SCOPE",
    "RULES",
    "EtcdClusterView",
    "EtcdMemberView",
    "Finding",
    "ResolvedEtcdSettings",
    "SchemaProblem",
    "Topology",
    "TopologyError",
    "example_names",
    "example_text",
    "has_errors",
    "json_schema",
    "load_example",
    "load_file",
    "load_text",
    "validate",
]
