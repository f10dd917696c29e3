"""The console's HTML: the page layout, the login page, and each fragment (topology map,
failover history, Events, audit, "not allowed").

Layer: console. Pure: views and API answers in, HTML text out. Every value from outside
(component names, reasons, Event messages, user names) goes through `esc`; nothing here
writes a `<script>` or an inline style or handler, so the Content-Security-Policy the server
sends (`script-src 'self'`, `style-src 'self'`) holds and htmx needs no `eval`.

Stable hooks for tests and tools: `#active-region[data-region][data-epoch]`, every component
`li.component[data-name][data-health][data-leader]`, `#history tr[data-epoch]`, the lag
legend's `#lag li[data-region][data-source][data-state][data-last]`, and
`[data-not-allowed]` on a refusal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from .lag import Series, downsample
from .view import SITE_WIDE, EpochView, MapView, SiteView

PAGES = (
    ("/", "Topology"),
    ("/drills", "Drills"),
    ("/analysis", "Analysis"),
    ("/events", "Events"),
    ("/audit", "Audit"),
)
SERIES_COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b")


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: str, *, user: str | None, current: str = "/") -> str:
    """A whole page: head (our stylesheet, htmx and its SSE extension, all served by the
    console), the navigation with who is signed in, and `body`."""
    nav = ""
    if user is not None:
        links = "".join(
            f'<a href="{href}"{" aria-current=page" if href == current else ""}>{esc(name)}</a>'
            for href, name in PAGES
        )
        nav = (
            f'<nav>{links}<span class="who">signed in as <b id="user">{esc(user)}</b></span>'
            '<form method="post" action="/logout"><button type="submit">Sign out</button>'
            "</form></nav>"
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # htmx would inject an inline <style> for its indicators: the CSP forbids that
        '<meta name="htmx-config" content=\'{"includeIndicatorStyles": false, '
        '"allowEval": false}\'>'
        f"<title>{esc(title)} - haplane console</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/htmx.min.js"></script>'
        '<script src="/static/htmx-ext-sse.min.js"></script>'
        f"</head><body><header><h1>haplane</h1>{nav}</header><main>{body}</main></body></html>\n"
    )


def login(error: str | None = None) -> str:
    """The only page anonymous users get: a token form (POST /login)."""
    problem = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    body = (
        '<section class="login"><h2>Sign in</h2>'
        "<p>With a bearer token of the platform: <code>haplane console token</code> prints "
        "one that reads everything shown here and changes nothing; any ServiceAccount token "
        "(<code>kubectl create token NAME</code>) or static token works. The console checks it "
        "with the API (SelfSubjectReview) and keeps it in an HttpOnly cookie; what you may "
        "see is what RBAC gives you.</p>"
        f"{problem}"
        '<form method="post" action="/login">'
        '<label for="token">Token</label>'
        '<textarea id="token" name="token" rows="4" required autocomplete="off" '
        'spellcheck="false"></textarea>'
        '<button type="submit">Sign in</button></form></section>'
    )
    return page("Sign in", body, user=None)


def dashboard(fragments: Mapping[str, str], *, user: str) -> str:
    """The topology map, the failover history, the lag chart and the diagram as last
    gathered, all live: the SSE extension connects to /sse and swaps each event's HTML into
    the element whose `sse-swap` names it."""
    body = (
        '<div hx-ext="sse" sse-connect="/sse">'
        + "".join(
            f'<section id="{name}" sse-swap="{name}">{fragments.get(name, "")}</section>'
            for name in ("map", "history", "lag", "diagram")
        )
        + "</div>"
    )
    return page("Topology", body, user=user, current="/")


def topology_map(view: MapView | None) -> str:
    if view is None:
        return '<p class="pending">gathering the platform\'s status...</p>'
    counts = view.counts()
    if view.active_region is None:
        active = '<span id="active-region" class="down" data-region="" data-epoch="">none</span>'
    else:
        fenced = "" if view.writable else ' <span class="badge warn">fenced</span>'
        active = (
            f'<span id="active-region" data-region="{esc(view.active_region)}" '
            f'data-epoch="{esc(view.epoch)}">{esc(view.active_region)}</span> '
            f'epoch <b id="epoch">{esc(view.epoch)}</b>{fenced}'
        )
    error = f'<p class="error">{esc(view.error)}</p>' if view.error else ""
    summary = (
        f'<p class="summary">{esc(view.topology)} &middot; active region {active} &middot; '
        f'<span class="ok">{counts["ok"]} ok</span> '
        f'<span class="warn">{counts["warn"]} warning</span> '
        f'<span class="down">{counts["down"]} down</span> &middot; supervisor '
        f"{esc(view.supervisor)}</p>{error}"
    )
    return summary + '<div class="sites">' + "".join(_site(s) for s in view.sites) + "</div>"


def _site(site: SiteView) -> str:
    tags = []
    if site.region:
        tags.append('<span class="badge">region</span>')
    else:
        tags.append('<span class="badge">witness</span>')
    if site.active:
        tags.append('<span class="badge active">active</span>')
    fence = ""
    if site.region:
        fence = f'<p class="fence">fence: <code>{esc(site.fence or "unknown")}</code></p>'
    zones = "".join(
        f'<div class="zone"><h4>{"site-wide" if z.name == SITE_WIDE else "zone " + esc(z.name)}'
        f"</h4><ul>{''.join(_component(c) for c in z.components)}</ul></div>"
        for z in site.zones
    )
    cls = "site active" if site.active else "site"
    return (
        f'<article class="{cls}" data-site="{esc(site.name)}">'
        f"<h3>{esc(site.name)} {' '.join(tags)}</h3>{fence}{zones}</article>"
    )


def _component(c: Any) -> str:
    star = ' <span class="leader" title="leader">&#9733;</span>' if c.leader else ""
    return (
        f'<li class="component {esc(c.health)}" data-name="{esc(c.name)}" '
        f'data-kind="{esc(c.kind)}" data-health="{esc(c.health)}" '
        f'data-leader="{"true" if c.leader else "false"}" title="{esc(c.detail)}">'
        f'<span class="kind">{esc(c.kind)}</span> {esc(c.label)}{star}'
        f'<span class="detail">{esc(c.detail)}</span></li>'
    )


def history(view: MapView | None) -> str:
    """The epochs, newest first: who, why, from which region; for an automatic failover when
    its region was first seen down and agreed down; when committed and unfenced."""
    if view is None or not view.history:
        return "<h2>Failover history</h2><p>no epochs recorded yet</p>"
    rows = "".join(_epoch_row(e) for e in view.history)
    return (
        "<h2>Failover history</h2><table><thead><tr><th>epoch</th><th>region</th>"
        "<th>from</th><th>by</th><th>reason</th><th>detected, agreed</th><th>since</th>"
        "<th>unfenced</th><th>fence wait</th><th>data at the cut</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _epoch_row(e: EpochView) -> str:
    if e.unfenced:
        unfenced = esc(e.unfenced)
    elif e.current and not e.writable:
        unfenced = '<span class="warn">fenced</span>'
    else:
        unfenced = "not recorded"
    current = ' class="current"' if e.current else ""
    wait = f"{e.fence_wait:.2f} s" if e.fence_wait is not None else "-"
    data = esc(e.data) if e.data else "-"
    before = [  # none for an operator's switchover: decided by a person, not detected
        f"{what} {gap:.2f} s before the commit"
        for what, gap in (("seen down", e.detected_before), ("agreed", e.agreed_before))
        if gap is not None
    ]
    found = "; ".join(before) or "-"
    if e.saved:
        data += f"; {e.saved} write(s) of the returning region saved aside"
    return (
        f'<tr data-epoch="{e.epoch}"{current}><td>{e.epoch}</td><td>{esc(e.region)}</td>'
        f"<td>{esc(e.previous or '-')}</td><td>{esc(e.by)}</td><td>{esc(e.reason)}</td>"
        f'<td class="found">{esc(found)}</td>'
        f"<td>{esc(e.since)}</td><td>{unfenced}</td><td>{wait}</td><td>{data}</td></tr>"
    )


def not_allowed(what: str, message: str) -> str:
    """A refusal by the API's RBAC, in its own words."""
    return (
        f'<div class="not-allowed" data-not-allowed="true" role="alert"><h2>Not allowed</h2>'
        f"<p>You may not see {esc(what)}.</p><p><code>{esc(message)}</code></p></div>"
    )


def unavailable(what: str, message: str) -> str:
    return f'<p class="error" role="alert">{esc(what)}: {esc(message)}</p>'


def events(items: Iterable[Mapping[str, Any]]) -> str:
    """Events of kube-system, newest first (by lastTimestamp, else eventTime, else created)."""

    def when(e: Mapping[str, Any]) -> str:
        meta = e.get("metadata") or {}
        return str(
            e.get("lastTimestamp") or e.get("eventTime") or meta.get("creationTimestamp") or ""
        )

    rows = []
    for e in sorted(items, key=when, reverse=True):
        obj = e.get("involvedObject") or {}
        kind = "warn" if e.get("type") == "Warning" else "normal"
        rows.append(
            f'<tr class="{kind}"><td>{esc(when(e))}</td><td>{esc(e.get("type") or "")}</td>'
            f"<td>{esc(e.get('reason') or '')}</td>"
            f"<td>{esc(obj.get('kind') or '')}/{esc(obj.get('name') or '')}</td>"
            f"<td>{esc(e.get('count') or 1)}</td><td>{esc(e.get('message') or '')}</td></tr>"
        )
    if not rows:
        return '<p id="events-empty">no Events in kube-system</p>'
    return (
        '<table id="events-table"><thead><tr><th>last seen</th><th>type</th><th>reason</th>'
        "<th>object</th><th>count</th><th>message</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def audit(items: Iterable[Mapping[str, Any]]) -> str:
    """audit.k8s.io/v1 Events, newest first: time, user, verb, what, code, decision."""
    rows = []
    for e in items:
        ref = e.get("objectRef") or {}
        what = ref.get("resource") or e.get("requestURI") or ""
        if ref.get("namespace"):
            what = f"{ref['namespace']}/{what}"
        if ref.get("name"):
            what = f"{what}/{ref['name']}"
        user = (e.get("user") or {}).get("username", "")
        code = (e.get("responseStatus") or {}).get("code", "")
        decision = (e.get("annotations") or {}).get("authorization.k8s.io/decision", "")
        rows.append(
            f"<tr><td>{esc(e.get('stageTimestamp') or e.get('requestReceivedTimestamp') or '')}"
            f"</td><td>{esc(user)}</td><td>{esc(e.get('verb') or '')}</td><td>{esc(what)}</td>"
            f"<td>{esc(code)}</td><td>{esc(decision)}</td></tr>"
        )
    if not rows:
        return '<p id="audit-empty">no audit events in the last minutes</p>'
    return (
        '<table id="audit-table"><thead><tr><th>time</th><th>user</th><th>verb</th>'
        "<th>what</th><th>code</th><th>decision</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def live_section(section_id: str, title: str, source: str, content: str, every: str) -> str:
    """A section refreshed by htmx every `every` (as the user: the fragment is asked for with
    the same cookie)."""
    return (
        f"<h2>{esc(title)}</h2>"
        f'<section id="{esc(section_id)}" hx-get="{esc(source)}" '
        f'hx-trigger="every {esc(every)}" hx-swap="innerHTML">{content}</section>'
    )


def _nice(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above v."""
    if v <= 0:
        return 1.0
    step = 10.0 ** math.floor(math.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0):
        if m * step >= v * 0.999999:
            return m * step
    return 10.0 * step


def _seconds(v: float) -> str:
    if v >= 1:
        return f"{v:.1f} s" if v < 10 else f"{v:.0f} s"
    return f"{v * 1000:.0f} ms"


def lag_chart(series: list[Series], now: float, window: float = 3600.0) -> str:
    """Replication lag per pair over the last `window` seconds, as an SVG line chart (no
    script, no style attribute: presentation attributes only, which the CSP allows). A gap in
    a line is a time without a measured lag; a dashed line is the pair's maxLagMs.

    Hooks: `svg#lag-chart`, each line `polyline.series[data-region][data-source][data-points]`
    and the legend's `li[data-region][data-source]` with `[data-last]` (seconds, empty when
    unknown) and `[data-state]` (the stream's state: Streaming, Disconnected, ...)."""
    title = "<h2>Replication lag, last hour</h2>"
    if not series:
        return title + '<p id="lag-empty">no replication measured yet</p>'
    width, height, left, right, top, bottom = 1100.0, 230.0, 60.0, 20.0, 12.0, 30.0
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for _, v in s.points if v is not None]
    values += [s.limit for s in series if s.limit is not None]  # the limit stays in sight
    y_max = _nice(max([0.05, *values]) * 1.1)

    def x(t: float) -> float:
        return left + max(0.0, min(1.0, (t - (now - window)) / window)) * plot_w

    def y(v: float) -> float:
        return top + plot_h - min(v, y_max) / y_max * plot_h

    parts = [
        f'<svg id="lag-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} '
        f'{height:.0f}" width="100%" font-family="sans-serif" font-size="11" role="img" '
        'aria-label="replication lag per pair over the last hour">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#d8dde3"/>',
    ]
    for i in range(5):  # y grid
        tick = y_max * i / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="#eef2f6"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" '
            f'fill="#52606d">{esc(_seconds(tick))}</text>'
        )
    for m in range(0, 61, 10):  # x ticks, minutes ago
        t = now - window + m * window / 60
        label = "now" if m == 60 else f"-{60 - m} min"
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - 10}" text-anchor="middle" fill="#52606d">'
            f"{label}</text>"
        )
    legend = []
    for i, s in enumerate(series):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        if s.limit is not None:
            parts.append(
                f'<line class="limit" data-region="{esc(s.region)}" x1="{left}" '
                f'x2="{left + plot_w}" y1="{y(s.limit):.1f}" y2="{y(s.limit):.1f}" '
                f'stroke="{colour}" stroke-dasharray="6 4" stroke-opacity="0.7"/>'
            )
        runs: list[list[str]] = [[]]
        shown = [(t, v) for t, v in downsample(s.points, int(plot_w)) if t >= now - window]
        for t, v in shown:
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append(f"{x(t):.1f},{y(v):.1f}")
        for run in runs:
            if not run:
                continue
            if len(run) == 1:  # one sample alone: a dot, not an invisible line
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            parts.append(
                f'<polyline class="series" data-region="{esc(s.region)}" '
                f'data-source="{esc(s.source)}" data-points="{len(run)}" fill="none" '
                f'stroke="{colour}" stroke-width="1.5" points="{" ".join(run)}"/>'
            )
        last = s.last
        over = s.limit is not None and last is not None and last > s.limit
        legend.append(
            f'<li data-region="{esc(s.region)}" data-last="{"" if last is None else last}" '
            f'data-source="{esc(s.source)}" data-state="{esc(s.state)}">'
            f'<span class="lag-swatch s{i % len(SERIES_COLOURS)}"></span>'
            f"{esc(s.source)} &rarr; {esc(s.region)}: "
            f'<b class="{"down" if over else ""}">'
            f"{'no measure' if last is None else esc(_seconds(last))}</b> "
            f"({esc(s.state)}; peak {esc(_seconds(s.peak)) if s.peak is not None else '-'}"
            f"{'; limit ' + esc(_seconds(s.limit)) if s.limit is not None else ''})</li>"
        )
    parts.append("</svg>")
    return title + f'<ul class="legend">{"".join(legend)}</ul>' + "".join(parts)


def diagram(svg: str | None, error: str | None = None) -> str:
    """`haplane diagram` of the running topology, coloured by health (Graphviz's SVG, made by
    `haplane.topology.diagram` from names the topology file validated; its XML prolog and
    DOCTYPE dropped so that it can sit inside the page)."""
    title = "<h2>Diagram</h2>"
    if error:
        return title + f'<p class="error">no diagram: {esc(error)}</p>'
    if svg is None:
        return title + '<p class="pending">drawing...</p>'
    start = svg.find("<svg")
    return title + f'<div class="diagram">{svg[start:] if start >= 0 else ""}</div>'
