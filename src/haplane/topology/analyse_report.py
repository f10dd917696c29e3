"""Failure analysis as plain data: rows for a table and a document for `--json`.

Layer: model. Pure: turns an `Analysis` (from `failures.analyse`) into dicts and lists of
strings, numbers and booleans; printing is the CLI's job.
"""

from __future__ import annotations

from typing import Any

from .failures import DATA_LOSS_TEXT, Analysis, Failure, FailureGroup, Outcome

TABLE_COLUMNS = ("FAILURES", "SETS", "OUTCOME", "WRITES", "DATA", "LOST QUORUM", "EXAMPLE")


def outcome_dict(outcome: Outcome) -> dict[str, Any]:
    return {
        "category": outcome.category,
        "survives": outcome.survives,
        "writesRegion": outcome.writes_region,
        "activeBefore": outcome.active_before,
        "failedOver": outcome.failed_over,
        "dataLoss": outcome.data_loss,
        "reason": outcome.reason,
        "lostQuorum": list(outcome.lost_quorum),
        "controlQuorum": outcome.control_quorum,
        "controllerCanDecide": outcome.controller_can_decide,
        "gateServing": outcome.gate_serving,
        "regions": [
            {
                "name": r.name,
                "healthy": r.healthy,
                "etcdQuorum": r.etcd_quorum,
                "readyApi": r.ready_api,
                "balancer": r.balancer,
            }
            for r in outcome.regions
        ],
    }


def _set_names(failures: tuple[Failure, ...]) -> list[str]:
    return [str(f) for f in failures]


def group_dict(group: FailureGroup) -> dict[str, Any]:
    return {
        "size": group.size,
        "label": group.label,
        "sets": group.count,
        "classes": [{"class": c, "count": k, "of": n} for c, k, n in group.classes],
        "examples": [_set_names(e) for e in group.examples],
        "outcome": outcome_dict(group.outcome),
    }


def report_json(analysis: Analysis) -> dict[str, Any]:
    """The whole analysis for `--json`: summary lines, counting rule, per-size counts, groups."""
    return {
        "topology": analysis.topology,
        "maxFailures": analysis.max_failures,
        "singleFailures": analysis.single_failures,
        "sampled": analysis.sampled,
        "evaluatedSets": analysis.evaluated,
        "counting": analysis.counting,
        "summary": analysis.summary().splitlines(),
        "bySize": {str(k): dict(v) for k, v in sorted(analysis.by_size.items())},
        "groups": [group_dict(g) for g in analysis.groups],
    }


def table_rows(analysis: Analysis, include_unaffected: bool = False) -> list[dict[str, str]]:
    """One row per group, keyed by `TABLE_COLUMNS`; unaffected groups only when asked (wide)."""
    rows = []
    for g in analysis.groups:
        o = g.outcome
        if o.category == "unaffected" and not include_unaffected:
            continue
        rows.append(
            {
                "FAILURES": g.label,
                "SETS": str(g.count),
                "OUTCOME": o.category,
                "WRITES": o.writes_region or "-",
                "DATA": DATA_LOSS_TEXT[o.data_loss],
                "LOST QUORUM": ",".join(o.lost_quorum) or "-",
                "EXAMPLE": " + ".join(_set_names(g.examples[0])) if g.examples else "-",
            }
        )
    return rows
