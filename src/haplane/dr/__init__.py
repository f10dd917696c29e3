"""The dr layer: failover drills and their reports.

Layer: dr. A sibling of `haplane.api` and `haplane.gate`; may use only the standard library,
`haplane.store` and `haplane.topology`. The run layer (`haplane.local`) and the CLI drive drills.

- `report`: pure; turns what a drill recorded (`Operation`, `Event`, `ServerWrite`) into
  measurements (`summarize` -> `DrillResult`, `aggregate` over repeated runs) and renders them
  as a terminal table, JSON or a self-contained HTML page with an SVG timeline.
"""

from .report import (
    DrillResult,
    Event,
    Operation,
    ServerWrite,
    aggregate,
    epoch_order_violations,
    errors_by_kind,
    gaps,
    longest_gap,
    lost_writes,
    phases,
    render_aggregate_table,
    render_html,
    render_json,
    render_table,
    summarize,
)

__all__ = [
    "DrillResult",
    "Event",
    "Operation",
    "ServerWrite",
    "aggregate",
    "epoch_order_violations",
    "errors_by_kind",
    "gaps",
    "longest_gap",
    "lost_writes",
    "phases",
    "render_aggregate_table",
    "render_html",
    "render_json",
    "render_table",
    "summarize",
]
