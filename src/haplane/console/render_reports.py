"""The console's HTML for drills (history, one report with its timeline) and for the analysis
of the running topology (`validate --live`, `analyse --availability`).

Layer: console. Pure: records in, HTML out, every outside value through `render.esc`; no
inline script or style (the report's timeline and legend are SVG with presentation
attributes, which the Content-Security-Policy allows).

Hooks for tests and tools: `#drills-table tr[data-scenario][data-passed]`, each row's link
`a.report`, `#drill-report[data-scenario][data-passed]` with `svg` timelines,
`#findings-table tr[data-rule][data-severity]`, `#analysis-report[data-availability]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from .render import esc


def _table(
    header: Sequence[str], rows: Iterable[Sequence[object]], table_id: str | None = None
) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _seconds(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-"
    return f"{v:.3f} s"


def drill_link(relative: str) -> str:
    return "/drills/report?path=" + quote(relative, safe="")


def drills(
    runs: Sequence[Any],
    trends: Mapping[str, Mapping[str, Any]],
    schedule: Mapping[str, Any] | None,
    last_scheduled: Mapping[str, Any] | None,
) -> str:
    """Every drill run, newest first (`runs`: (`DrillRun`, its report's path under
    STATE/drills), oldest first), per-scenario trends, and the schedule."""
    if schedule and schedule.get("enabled"):
        plan = (
            f"every {esc(schedule.get('every'))}, in turn: "
            f"{esc(', '.join(schedule.get('scenarios') or []))}"
        )
    else:
        plan = "not scheduled (<code>spec.global.drills.enabled</code> is false)"
    last = ""
    if last_scheduled:
        verdict = "passed" if last_scheduled.get("passed") else "failed"
        last = (
            f"; the last scheduled run: {esc(last_scheduled.get('scenario'))}, {verdict}, "
            f"{esc(round(float(last_scheduled.get('ageSeconds') or 0) / 3600, 1))} h ago"
        )
    head = f'<p class="summary">Schedule: {plan}{last}.</p>'
    if not runs:
        return head + '<p id="drills-empty">no drill has run yet: <code>haplane drill</code></p>'
    trend_rows = [
        (
            scenario,
            t["runs"],
            t["passed"],
            "passed" if t["last"]["passed"] else "failed",
            _seconds(t.get("rto_median_recent")),
            _seconds(t.get("rto_median_before")),
        )
        for scenario, t in sorted(trends.items())
    ]
    rows = []
    for r, relative in reversed(runs):
        cls = "ok" if r.passed else "down"
        rows.append(
            f'<tr data-scenario="{esc(r.scenario)}" data-passed="{str(r.passed).lower()}">'
            f"<td>{esc(r.started)}</td><td>{esc(r.scenario)}</td>"
            f'<td class="{cls}">{"passed" if r.passed else "failed"}</td>'
            f"<td>{esc(_seconds(r.rto_seconds))}</td>"
            f"<td>{esc('-' if r.lost_writes is None else r.lost_writes)}</td>"
            f"<td>{esc(r.detail)}</td>"
            f'<td><a class="report" href="{esc(drill_link(relative))}">report</a></td></tr>'
        )
    return (
        head
        + "<h3>Per scenario</h3>"
        + _table(
            ("scenario", "runs", "passed", "last", "RTO median (last 5)", "(5 before)"),
            trend_rows,
            "drill-trends",
        )
        + "<h3>Runs, newest first</h3>"
        '<table id="drills-table"><thead><tr><th>ended</th><th>scenario</th><th>verdict</th>'
        "<th>RTO</th><th>lost writes</th><th>detail</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def fault_drill(result: Any, passed: bool, problems: Sequence[str]) -> str:
    """One fault drill's report (`haplane.dr.report.DrillResult`): figures, the timeline of
    every client operation with the drill's events, events, findings."""
    from haplane.dr import report

    verdict = "passed" if passed else "failed: " + "; ".join(problems)
    parts = [
        f'<article id="drill-report" data-scenario="{esc(result.scenario)}" '
        f'data-passed="{str(passed).lower()}">',
        f"<h2>Drill {esc(result.scenario)}: "
        f'<span class="{"ok" if passed else "down"}">{esc(verdict)}</span></h2>',
        f"<p>Regions: {esc(', '.join(result.regions) or '-')}. Epochs: "
        f"{esc(', '.join(map(str, result.epochs)) or '-')}.</p>",
        "<h3>Figures</h3>",
        _table(("figure", "value"), report.figure_rows(result), "drill-figures"),
        "<h3>Timeline</h3>",
        report.legend(result),
        '<div class="timeline">',
        report.timeline_svg(result),
        "</div>",
        "<h3>Events</h3>",
        _table(
            ("t (s)", "event", "detail"), ((f"{e.t:.3f}", e.name, e.detail) for e in result.events)
        ),
    ]
    for label, lines in report.findings(result):
        parts.append(f"<h3>{esc(label[:1].upper() + label[1:])}</h3><ul>")
        parts += [f"<li>{esc(line)}</li>" for line in lines]
        parts.append("</ul>")
    parts.append("</article>")
    return "".join(parts)


def restore_drill(raw: Mapping[str, Any]) -> str:
    """A restore drill's report: its verdict, problems and measured figures."""
    passed = bool(raw.get("passed")) and not raw.get("error")
    found = raw.get("problems")
    problems = [str(p) for p in found] if isinstance(found, list) else []
    if raw.get("error") and not problems:
        problems = [str(raw["error"])]
    restore = raw.get("restore")
    facts = [
        (k, json.dumps(v, default=str))
        for k, v in sorted(restore.items() if isinstance(restore, Mapping) else ())
    ]
    facts += [
        (k, json.dumps(v, default=str))
        for k, v in sorted(raw.items())
        if k not in ("restore", "problems", "passed")
    ]
    verdict = "passed" if passed else "failed"
    issues = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return (
        f'<article id="drill-report" data-scenario="restore" data-passed="{str(passed).lower()}">'
        f'<h2>Drill restore: <span class="{"ok" if passed else "down"}">{verdict}</span></h2>'
        + (f"<h3>Problems</h3><ul>{issues}</ul>" if issues else "")
        + "<h3>Figures</h3>"
        + _table(("figure", "value"), facts, "drill-figures")
        + "</article>"
    )


def analysis(
    findings: Sequence[Any],
    live_error: str | None,
    checked_at: str,
    model: tuple[str, Sequence[Mapping[str, str]], Sequence[str], Any] | None,
    model_error: str | None = None,
) -> str:
    """`validate --live` findings of the running topology, and `analyse --availability` of its
    file (`model`: summary, rows, columns, estimate): which failures it survives and the write
    availability it should reach."""
    errors = sum(f.severity == "error" for f in findings)
    if live_error:
        live = f'<p class="error" role="alert">live comparison not made: {esc(live_error)}</p>'
    else:
        live = ""
    if findings:
        body = "".join(
            f'<tr data-rule="{esc(f.rule)}" data-severity="{esc(f.severity)}">'
            f'<td class="{"down" if f.severity == "error" else "warn"}">{esc(f.severity)}</td>'
            f"<td>{esc(f.rule)}</td><td><code>{esc(f.path)}</code></td>"
            f"<td>{esc(f.message)}</td><td>{esc(f.fix)}</td></tr>"
            for f in findings
        )
        table = (
            '<table id="findings-table"><thead><tr><th>severity</th><th>rule</th><th>field</th>'
            f"<th>problem</th><th>fix</th></tr></thead><tbody>{body}</tbody></table>"
        )
    else:
        table = '<p id="findings-empty" class="ok">no findings: what runs is what the file says</p>'
    head = (
        "<h2>Validation of the running topology</h2>"
        f'<p class="summary">{errors} error(s), {len(findings) - errors} warning(s): the HA '
        f"rules on the file <code>haplane up</code> was given, and what runs compared with it "
        f"(members, placement, ports, versions, reachability), checked {esc(checked_at)}.</p>"
        f"{live}{table}<h2>Failures it survives</h2>"
    )
    if model is None:
        return (
            f'<div id="analysis-report" data-errors="{errors}">{head}'
            f'<p class="error">not analysed: {esc(model_error or "unknown")}</p></div>'
        )
    summary, rows, columns, estimate = model
    low, high = estimate.interval
    contributors = "".join(
        f"<li>{esc(c.label)} ({c.share:.0%})</li>" for c in estimate.contributors[:5]
    )
    summary_lines = "".join(f"<li>{esc(line)}</li>" for line in summary.splitlines() if line)
    return (
        f'<div id="analysis-report" data-errors="{errors}" '
        f'data-availability="{estimate.availability:.9f}">{head}'
        f"<ul>{summary_lines}</ul>"
        f"<p>Write availability <b>{estimate.availability:.7f}</b> ({esc(estimate.method)}, "
        f"{low:.9f}..{high:.9f}): <b>{estimate.downtime_minutes_per_year:.2f}</b> minutes of "
        "write downtime a year expected, mostly from:</p>"
        f"<ul>{contributors}</ul>"
        + _table(columns, ([r[c] for c in columns] for r in rows), "analysis-table")
        + "</div>"
    )
