"""The console's replication lag chart (`haplane.console.lag`, `render.lag_chart`), its Drills
pages and its Analysis page (`haplane.console.reports`), without a topology: lag from status
rows, drill reports from a state dir, the analysis of the example's file. The running
platform is in tests/test_console_e2e.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from haplane.console import render
from haplane.console.auth import Platform
from haplane.console.lag import STALE_AFTER, LagHistory, downsample, lag_of
from haplane.console.reports import ReportNotFound, Reports
from haplane.console.server import Console, LiveStatus
from haplane.console.view import MapView
from haplane.dr.report import DrillResult, Event, Operation, render_json
from haplane.local.state_dir import StateDir
from haplane.local.status import ReplicationRow
from haplane.topology import Topology, load_example


@pytest.fixture(scope="module")
def example() -> Topology:
    return load_example("two-regions")


def _row(region: str, source: str | None, lag: float | None, age: float = 1.0, state="Streaming"):
    return ReplicationRow(region, state, source=source, lag_seconds=lag, report_age=age)


def _no_inline_code(html: str) -> None:
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), html
    assert " style=" not in html and "<style" not in html
    tags = [re.sub(r'"[^"]*"', '""', t) for t in re.findall(r"<[^>]*>", html)]
    assert not [t for t in tags if re.search(r"\son[a-z]+=", t)]


# ---- lag ------------------------------------------------------------------------------------


def test_lag_is_unknown_without_a_source_or_a_fresh_report():
    assert lag_of(_row("eu-central", "eu-west", 0.25)) == 0.25
    assert lag_of(_row("eu-west", None, None)) is None  # the active region copies from no one
    assert lag_of(_row("eu-central", "eu-west", None)) is None  # no report
    assert lag_of(_row("eu-central", "eu-west", 0.25, age=STALE_AFTER + 1)) is None
    assert lag_of(_row("eu-central", "eu-west", -0.01)) == 0.0  # clocks: never below zero


def test_history_keeps_the_window_and_follows_a_reversed_stream(example):
    h = LagHistory(example, window=100.0)
    h.add(0.0, [_row("eu-west", None, None), _row("eu-central", "eu-west", 0.1)])
    h.add(50.0, [_row("eu-west", None, None), _row("eu-central", "eu-west", 3.0)])
    h.add(120.0, [_row("eu-west", None, None), _row("eu-central", "eu-west", None)])
    assert len(h) == 2  # the sample at 0 s is older than the window
    (s,) = h.series()  # the active region has no series
    assert (s.region, s.source, s.limit) == ("eu-central", "eu-west", 2.0)  # maxLagMs 2000
    assert s.points == [(50.0, 3.0), (120.0, None)] and s.peak == 3.0 and s.last is None
    # a failover reverses the stream: eu-west now copies from eu-central
    h.add(130.0, [_row("eu-west", "eu-central", 0.5), _row("eu-central", None, None)])
    by = {x.region: x for x in h.series()}
    assert by["eu-west"].source == "eu-central" and by["eu-west"].points[-1] == (130.0, 0.5)
    assert by["eu-west"].points[0] == (50.0, None)  # no lag of its own before
    assert by["eu-west"].limit == 2.0  # the pair copies either way
    assert by["eu-central"].last is None


def test_history_is_kept_in_its_file_and_read_back_after_a_restart(example, tmp_path):
    """A console that restarts (a region-kill takes the one on the killed site) charts the
    samples of the window before it stopped, from its file: what the file holds is exactly
    what is read back, minus what fell out of the window and lines that are not samples."""
    file = tmp_path / "data" / "global" / "console-1" / "lag.jsonl"
    h = LagHistory(example, window=100.0, file=file, now=0.0)
    h.add(0.0, [_row("eu-west", None, None), _row("eu-central", "eu-west", 0.1)])
    h.add(
        50.0, [_row("eu-west", None, None), _row("eu-central", "eu-west", 3.0, state="Resyncing")]
    )
    h.add(90.0, [_row("eu-central", "eu-west", None)])
    with open(file, "a") as f:
        f.write('[95.0, {"eu-central": ["eu-west", "Streaming", NaN]}]\n')  # json reads NaN
        f.write('[96.0, {"eu-central": ["eu-west", "Streaming", "x"]}]\n{"torn": ')  # not ours
    again = LagHistory(example, window=100.0, file=file, now=120.0)
    assert len(again) == 3  # the sample at 0 s is older than the window now; a gap at 120 s
    (s,) = again.series()
    assert s.points == [(50.0, 3.0), (90.0, None), (120.0, None)]
    assert s.state == "Streaming" and s.peak == 3.0
    assert [json.loads(x)[0] for x in file.read_text().splitlines()] == [50.0, 90.0, 120.0]
    again.add(130.0, [_row("eu-central", "eu-west", 0.2)])
    third = LagHistory(example, window=100.0, file=file, now=131.0)
    # the time it was down is a gap in the line, not a straight line across it
    assert third.series()[0].points == [
        (50.0, 3.0), (90.0, None), (120.0, None), (130.0, 0.2), (131.0, None)
    ]  # fmt: skip


def test_a_clock_stepped_back_starts_the_chart_again(example):
    h = LagHistory(example)
    h.add(100.0, [_row("eu-central", "eu-west", 0.1)])
    h.add(50.0, [_row("eu-central", "eu-west", 0.2)])
    assert h.series()[0].points == [(50.0, 0.2)]


def test_a_history_file_that_cannot_be_written_costs_only_the_restart(example, tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    h = LagHistory(example, file=blocker / "lag.jsonl", now=0.0)
    h.add(1.0, [_row("eu-central", "eu-west", 0.1)])
    h.add(2.0, [_row("eu-central", "eu-west", 0.2)])
    assert [p for p in h.series()[0].points] == [(1.0, 0.1), (2.0, 0.2)]  # the chart goes on
    # said once, and left alone for a while (not a warning a second)
    assert [r.message for r in caplog.records].count(
        next(r.message for r in caplog.records if "lag history not kept" in r.message)
    ) == 1


def test_the_history_file_is_compacted_to_what_is_kept(example, tmp_path, monkeypatch):
    from haplane.console import lag

    monkeypatch.setattr(lag, "MAX_SAMPLES", 5)
    file = tmp_path / "lag.jsonl"
    h = LagHistory(example, window=1000.0, file=file, now=0.0)
    for t in range(25):
        h.add(float(t), [_row("eu-central", "eu-west", 0.01 * t)])
    assert len(file.read_text().splitlines()) <= 2 * 5 + 1
    back = LagHistory(example, window=1000.0, file=file, now=30.0)
    # the last MAX_SAMPLES: the four newest, and the gap for the time it was down
    assert back.series()[0].points == [(21.0, 0.21), (22.0, 0.22), (23.0, 0.23), (24.0, 0.24),
                                       (30.0, None)]  # fmt: skip


def test_downsampling_keeps_the_spike():
    points = [(float(t), 0.01) for t in range(1000)]
    points[777] = (777.0, 9.0)
    points[400:450] = [(float(t), None) for t in range(400, 450)]
    out = downsample(points, 100)
    assert len(out) == 100 and max(v for _, v in out if v is not None) == 9.0
    assert any(v is None for _, v in out)  # a whole bucket without a lag stays a gap
    assert downsample(points[:10], 100) == points[:10]


def test_the_chart_draws_gaps_limits_and_the_last_value(example):
    h = LagHistory(example)
    now = 10_000.0
    for i in range(10):
        lag = None if i in (4, 5) else 0.1 * i
        h.add(now - 100 + i * 10, [_row("eu-central", "eu-west", lag)])
    html = render.lag_chart(h.series(), now)
    _no_inline_code(html)
    lines = re.findall(r'<polyline class="series"[^>]*data-points="(\d+)"', html)
    assert lines == ["4", "4"]  # the gap splits the line in two
    assert 'class="limit" data-region="eu-central"' in html  # maxLagMs drawn
    assert 'data-region="eu-central" data-last="0.9' in html
    assert "eu-west &rarr; eu-central" in html and "limit 2.0 s" in html
    assert "no replication measured yet" in render.lag_chart([], now)
    over = LagHistory(example)
    over.add(now, [_row("eu-central", "eu-west", 5.0)])
    assert '<b class="down">5.0 s</b>' in render.lag_chart(over.series(), now)
    gone = LagHistory(example)
    gone.add(now, [_row("eu-central", "eu-west", None, state="Disconnected")])
    text = render.lag_chart(gone.series(), now)
    assert "no measure" in text and "Disconnected" in text and 'data-last=""' in text


def _legend(html: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(region, source) -> (data-last, data-state) of each legend entry."""
    return {
        (m["region"], m["source"]): (m["last"], m["state"])
        for m in re.finditer(
            r'<li data-region="(?P<region>[^"]*)" data-last="(?P<last>[^"]*)" '
            r'data-source="(?P<source>[^"]*)" data-state="(?P<state>[^"]*)">',
            html,
        )
    }


def test_a_stream_a_failover_ended_is_stopped_not_its_last_state(example):
    """The legend names each pair and its state as attributes too (`data-source`,
    `data-state`), so a page or a tool can follow a failover (tests/test_console_e2e.py):
    the standby's stream breaks when the active region dies (Disconnected, its lag growing),
    the failover promotes the standby (it copies from no one) and the dead region, back,
    copies from it. The broken stream is then Stopped: not Disconnected for the rest of
    the hour, which would read as a problem of the region now active."""
    h = LagHistory(example)
    h.add(1.0, [_row("eu-west", "eu-central", 0.1), _row("eu-central", None, None, state="Idle")])
    h.add(2.0, [_row("eu-west", "eu-central", 1.5, state="Disconnected")])
    assert _legend(render.lag_chart(h.series(), 2.0)) == {
        ("eu-west", "eu-central"): ("1.5", "Disconnected"),
    }
    h.add(3.0, [_row("eu-west", None, None, state="Idle")])  # promoted
    h.add(4.0, [])  # a failed gather: nobody knows, nothing changes
    assert _legend(render.lag_chart(h.series(), 4.0)) == {
        ("eu-west", "eu-central"): ("", "Stopped")
    }
    h.add(5.0, [_row("eu-west", None, None, state="Idle"), _row("eu-central", "eu-west", 0.2)])
    html = render.lag_chart(h.series(), 5.0)
    assert _legend(html) == {
        ("eu-central", "eu-west"): ("0.2", "Streaming"),
        ("eu-west", "eu-central"): ("", "Stopped"),
    }
    assert 'eu-central &rarr; eu-west: <b class="">no measure</b> (Stopped; peak 1.5 s' in html
    # a stream that breaks without a failover keeps its state: it is still the stream
    g = LagHistory(example)
    g.add(1.0, [_row("eu-central", "eu-west", 0.1)])
    g.add(2.0, [_row("eu-central", "eu-west", None, state="Disconnected")])
    g.add(3.0, [])
    assert _legend(render.lag_chart(g.series(), 3.0)) == {
        ("eu-central", "eu-west"): ("", "Disconnected")
    }


def test_the_legend_escapes_sources_and_states(example):
    odd = LagHistory(example)
    odd.add(1.0, [_row("eu-west", 'a"b<c', 0.1, state='<x y="z">')])
    text = render.lag_chart(odd.series(), 1.0)
    assert 'data-source="a&quot;b&lt;c" data-state="&lt;x y=&quot;z&quot;&gt;"' in text
    _no_inline_code(text)


async def test_live_status_samples_lag_at_each_gather(example):
    rows = [_row("eu-central", "eu-west", 0.2)]
    clock = [1000.0]

    async def gather() -> MapView:
        return MapView("two-regions", "healthy", "eu-west", 1, True, [], replication=rows)

    live = LiveStatus(gather, lag=LagHistory(example), clock=lambda: clock[0])
    await live.once()
    clock[0] += 1.0
    rows[0] = _row("eu-central", "eu-west", 1.5)
    await live.once()
    assert live.lag is not None and len(live.lag) == 2
    assert 'data-points="2"' in live.fragments["lag"]
    assert 'data-last="1.5"' in live.fragments["lag"]


# ---- drills ---------------------------------------------------------------------------------


def _fault(scenario: str, gap: float, violations: int = 0) -> DrillResult:
    ops = tuple(
        Operation("write", f"k{i}", i * 0.1, i * 0.1 + 0.01, True, region="eu-west", epoch=1)
        for i in range(20)
    )
    return DrillResult(
        scenario=scenario,
        phases={"fault": 0.5},
        write_gaps=((0.5, 0.5 + gap),),
        read_gaps=(),
        longest_write_gap=gap,
        longest_read_gap=0.0,
        errors_by_kind={},
        lost_writes=(),
        epoch_order_violations=tuple(f"violation {i}" for i in range(violations)),
        ops_total={"write": 20},
        ops_ok={"write": 20},
        regions=("eu-west",),
        epochs=(1,),
        server_writes=20,
        operations=ops,
        events=(Event(0.5, "fault", 'killed <b>"eu-west/api-1"</b>'),),
    )


@pytest.fixture
def drill_state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    d = state.root / "drills"
    (d / "2026").mkdir(parents=True)
    (d / "replica-kill-1.json").write_text(render_json(_fault("replica-kill", 0.4)))
    (d / "2026" / "blip-1.json").write_text(render_json(_fault("blip", 0.2, violations=1)))
    restore = {"scenario": "restore", "started": "2026-12-01T08:00:00+00:00", "passed": False,
               "problems": ["key <x> missing"], "restore": {"rto_seconds": 3.4}}  # fmt: skip
    (d / "restore-1.json").write_text(json.dumps(restore))
    (tmp_path / "secret.json").write_text(render_json(_fault("outside", 1.0)))
    (d / "link.json").symlink_to(tmp_path / "secret.json")
    return state


async def test_drills_list_every_run_with_its_verdict_and_link(drill_state, example):
    html = await Reports(drill_state, example).drills_html()
    _no_inline_code(html)
    assert (
        re.findall(r'<tr data-scenario="([^"]+)" data-passed="(true|false)"', html).count(
            ("blip", "false")
        )
        == 1
    )
    assert 'data-scenario="replica-kill" data-passed="true"' in html
    assert 'data-scenario="restore" data-passed="false"' in html
    assert "/drills/report?path=2026%2Fblip-1.json" in html
    assert "outside" not in html  # a report linked from outside STATE/drills is not offered
    assert "not scheduled" in html  # the example's schedule is off


def test_a_report_renders_its_timeline_and_nothing_else_is_read(drill_state, example):
    reports = Reports(drill_state, example)
    html = reports.drill_report_html("replica-kill-1.json")
    _no_inline_code(html)
    assert 'id="drill-report" data-scenario="replica-kill" data-passed="true"' in html
    assert html.count("<svg") >= 2 and 'class="op"' in html  # legend swatches, the timeline
    assert "&lt;b&gt;&quot;eu-west/api-1&quot;&lt;/b&gt;" in html  # the event, escaped
    blip = reports.drill_report_html("2026/blip-1.json")
    assert 'data-passed="false"' in blip and "violation 0" in blip
    restore = reports.drill_report_html("restore-1.json")
    assert 'data-scenario="restore" data-passed="false"' in restore
    assert "key &lt;x&gt; missing" in restore and "3.4" in restore
    for bad in ("../secret.json", "/etc/passwd", "link.json", "nothing.json", ""):
        with pytest.raises(ReportNotFound):
            reports.drill_report_html(bad)


def test_analysis_of_a_topology_that_is_not_running(tmp_path, example):
    import asyncio

    html = asyncio.run(Reports(StateDir(tmp_path), example).analysis_html())
    _no_inline_code(html)
    assert "live comparison not made" in html and "haplane up" in html
    avail = float(re.search(r'data-availability="([0-9.]+)"', html).group(1))
    assert 0.99 < avail < 1.0
    assert 'id="analysis-table"' in html and "site eu-west" in html
    assert 'data-errors="0"' in html  # the example passes the HA rules


# ---- the routes -----------------------------------------------------------------------------


class _Platform(Platform):
    """The API behind the console's seam: token `t` is `auditor` (may list drills and the
    platform's parts), `v` is `viewer` (may not); a SelfSubjectAccessReview answers as RBAC
    would."""

    def __init__(self) -> None:
        super().__init__("https://gate.invalid", None)
        self.reviews: list[tuple[str, dict]] = []

    async def request(self, token, method, path, body=None, params=None):  # type: ignore[no-untyped-def]
        users = {"t": "auditor", "v": "viewer"}
        if token not in users:
            return 401, {"code": 401, "message": "Unauthorized"}
        if path.endswith("/selfsubjectaccessreviews"):
            attrs = body["spec"]["resourceAttributes"]
            self.reviews.append((users[token], attrs))
            if token == "t":
                return 201, {"status": {"allowed": True}}
            return 201, {"status": {"allowed": False, "reason": f"viewer may not list "
                                    f"{attrs['resource']}.{attrs['group']}"}}  # fmt: skip
        return 201, {"status": {"userInfo": {"username": users[token], "groups": []}}}


async def test_drill_and_analysis_routes(drill_state, example):
    async def gather() -> MapView:
        return MapView("two-regions", "healthy", "eu-west", 1, True, [])

    live = LiveStatus(gather)
    platform = _Platform()
    console = Console(live, platform, lambda: [], reports=Reports(drill_state, example))
    client = TestClient(TestServer(console.app()))
    await client.start_server()
    try:
        for path in ("/drills", "/drills/report?path=replica-kill-1.json", "/analysis",
                     "/fragments/drills", "/fragments/analysis"):  # fmt: skip
            r = await client.get(path, allow_redirects=False)
            assert r.status == 401 and "replica-kill" not in await r.text(), path
        auth = {"Authorization": "Bearer t", "Accept": "text/html"}
        r = await client.get("/drills", headers=auth)
        page = await r.text()
        assert r.status == 200 and 'id="drills-table"' in page and "aria-current=page" in page
        assert 'hx-get="/fragments/drills"' in page
        assert ("auditor", {"verb": "list", "resource": "drills", "group": "ops.haplane.dev"}) in (
            platform.reviews
        )
        r = await client.get("/drills/report?path=replica-kill-1.json", headers=auth)
        assert r.status == 200 and 'id="drill-report"' in await r.text()
        r = await client.get("/drills/report?path=..%2Fsecret.json", headers=auth)
        assert r.status == 404 and "outside" not in await r.text()
        r = await client.get("/fragments/analysis", headers=auth)
        assert r.status == 200 and 'id="analysis-report"' in await r.text()
        # RBAC decides: a user who may not list drills (or the platform's parts) sees neither
        viewer = {"Authorization": "Bearer v", "Accept": "text/html"}
        for path in ("/drills", "/fragments/drills", "/drills/report?path=replica-kill-1.json",
                     "/analysis", "/fragments/analysis"):  # fmt: skip
            r = await client.get(path, headers=viewer)
            text = await r.text()
            assert r.status == 403 and "data-not-allowed" in text, path
            assert "replica-kill" not in text.replace("path=replica-kill", "") and (
                "analysis-report" not in text
            ), path
        assert "viewer may not list etcdmembers.platform.haplane.io" in text
        assert "gates.platform.haplane.io" in text  # both ways in were asked
    finally:
        await live.stop()
        await client.close()


def test_console_token_durations():
    import typer

    from haplane.cli.console import _hours

    assert _hours("8h") == 8 * 3600 and _hours("30m") == 1800 and _hours("2d") == 2 * 86400
    assert _hours("3600") == 3600
    for bad in ("5m", "8d", "soon", "", "h", "infh"):
        with pytest.raises(typer.BadParameter):
            _hours(bad)


# ---- the diagram ------------------------------------------------------------------------------


async def test_the_diagram_is_drawn_again_only_when_what_it_shows_changed(example):
    from haplane.console.view import ComponentView, SiteView, ZoneView, diagram_state

    def view(health: str, active: str = "eu-west") -> MapView:
        comps = [ComponentView("eu-west/etcd-1", "etcd", health, "x", leader=True)]  # type: ignore[arg-type]
        site = SiteView("eu-west", True, active == "eu-west", None, [ZoneView("a", comps)])
        return MapView("two-regions", "healthy", active, 2, True, [site])

    state = diagram_state(view("down", "eu-central"))
    assert state.health == {"eu-west/etcd-1": "down"} and state.leaders == {"eu-west/etcd-1"}
    assert (state.active, state.epoch) == ("eu-central", 2)

    current = [view("ok")]
    drawn = []

    async def gather() -> MapView:
        return current[0]

    async def draw(live) -> str:  # type: ignore[no-untyped-def]
        drawn.append(live)
        return f'<?xml version="1.0"?>\n<!DOCTYPE svg>\n<svg id="d{len(drawn)}"></svg>'

    live = LiveStatus(gather, draw=draw)
    await live.once()
    await live.once()
    assert len(drawn) == 1  # nothing changed: not drawn again
    assert '<div class="diagram"><svg id="d1"></svg></div>' in live.fragments["diagram"]
    assert "DOCTYPE" not in live.fragments["diagram"]
    current[0] = view("down")
    await live.once()
    assert len(drawn) == 2 and 'id="d2"' in live.fragments["diagram"]

    async def broken(live) -> str:  # type: ignore[no-untyped-def]
        raise RuntimeError("dot: not found")

    failing = LiveStatus(gather, draw=broken)
    await failing.once()
    assert "no diagram: RuntimeError: dot: not found" in failing.fragments["diagram"]
    assert failing.ready()[0]  # the map is still live


# ---- client certificates: the console asks as their owner by impersonation --------------------


def test_cert_user_reads_cn_and_o_and_refuses_masters():
    from haplane.console.auth import CertUser, cert_user

    subject = ((("commonName", "carol"),), (("organizationName", "devs"),),
               (("organizationName", "ops"),))  # fmt: skip
    assert cert_user({"subject": subject}) == CertUser("carol", ("devs", "ops"))
    assert cert_user(None) is None and cert_user({}) is None
    assert cert_user({"subject": ((("organizationName", "devs"),),)}) is None  # nobody
    masters = ((("commonName", "haplane-admin"),), (("organizationName", "system:masters"),))
    assert cert_user({"subject": masters}) is None  # the admin's belongs in the CLI


async def test_a_certificates_owner_is_asked_for_by_impersonation(tmp_path):
    """The console presents its own certificate and names the owner in Impersonate-User and
    Impersonate-Group (one header per group); a token goes alone, with no certificate."""
    import ssl

    from aiohttp import web

    from haplane.console.auth import CertUser, IdentityCache, NotAuthenticated, Platform

    from .pki_helpers import TestCA

    ca = TestCA(tmp_path / "pki")
    server_cert, server_key = ca.issue("server", "api", server=True)
    console_cert, console_key = ca.issue("console", "system:haplane:console")
    seen: list[tuple[str | None, list[tuple[str, str]]]] = []

    async def review(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = next((v for rdn in (peer or {}).get("subject", ()) for k, v in rdn
                   if k == "commonName"), None)  # fmt: skip
        wanted = ("impersonate-user", "impersonate-group", "authorization")
        mine = [(k, v) for k, v in request.headers.items() if k.lower() in wanted]
        seen.append((cn, mine))
        user = request.headers.get("Impersonate-User", "token-user")
        groups = request.headers.getall("Impersonate-Group", [])
        if user == "mallory":
            return web.json_response({"code": 403, "message": 'cannot impersonate "mallory"'},
                                     status=403)  # fmt: skip
        return web.json_response(
            {
                "status": {
                    "userInfo": {"username": user, "groups": [*groups, "system:authenticated"]}
                }
            },
            status=201,
        )

    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server_cert, server_key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=str(ca.path))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    platform = Platform(f"https://127.0.0.1:{port}", str(ca.path),
                        client_pair=(str(console_cert), str(console_key)))  # fmt: skip
    try:
        carol = CertUser("carol", ("devs", "ops"))
        who = await IdentityCache().identify(platform, carol)
        assert (who.username, who.groups) == ("carol", ("devs", "ops", "system:authenticated"))
        assert seen[-1] == ("system:haplane:console", [
            ("Impersonate-User", "carol"), ("Impersonate-Group", "devs"),
            ("Impersonate-Group", "ops")])  # fmt: skip
        who = await platform.whoami("tok-1")
        assert who.username == "token-user"
        assert seen[-1] == (None, [("Authorization", "Bearer tok-1")])  # no certificate
        with pytest.raises(NotAuthenticated, match="does not let the console act as mallory"):
            await platform.whoami(CertUser("mallory"))
        without = Platform(f"https://127.0.0.1:{port}", str(ca.path))
        assert not without.takes_certificates
        with pytest.raises(NotAuthenticated, match="takes no client certificates"):
            await without.whoami(carol)
        await without.close()
    finally:
        await platform.close()
        await runner.cleanup()


# ---- after review: failed restores, parse costs, odd values, errors -------------------------


async def test_a_restore_that_failed_early_is_listed_failed(drill_state, example):
    d = drill_state.root / "drills"
    gone = "snapshot <gone>"
    broken = {"scenario": "restore", "region": "eu-west", "started": "2026-12-02T08:00:00Z",
              "error": gone, "problems": [gone], "passed": False}  # fmt: skip
    (d / "restore-2.json").write_text(json.dumps(broken))
    odd = {"scenario": "restore", "started": "x", "restore": "not a dict", "passed": True}
    (d / "restore-3.json").write_text(json.dumps(odd))
    reports = Reports(drill_state, example)
    html = await reports.drills_html()
    rows = re.findall(r'<tr data-scenario="restore" data-passed="(true|false)">', html)
    assert sorted(rows) == ["false", "false", "true"], rows
    page = reports.drill_report_html("restore-2.json")
    assert 'data-passed="false"' in page and "snapshot &lt;gone&gt;" in page
    assert "Drill restore" in reports.drill_report_html("restore-3.json")


async def test_reports_are_parsed_once_until_their_file_changes(drill_state, example, monkeypatch):
    import os

    from haplane.console import reports as reports_module
    from haplane.local import drill_schedule

    parsed: list[str] = []
    real = drill_schedule.run_of

    def counting(path):  # type: ignore[no-untyped-def]
        parsed.append(path.name)
        return real(path)

    monkeypatch.setattr(drill_schedule, "run_of", counting)
    monkeypatch.setattr(reports_module, "DRILLS_TTL", 0.0)
    reports = Reports(drill_state, example)
    await reports.drills_html()
    first = sorted(parsed)
    assert "replica-kill-1.json" in first and "link.json" not in first
    parsed.clear()
    await reports.drills_html()
    assert parsed == []  # nothing changed: nothing parsed again
    path = drill_state.root / "drills" / "replica-kill-1.json"
    path.write_text(render_json(_fault("replica-kill", 0.9)))
    os.utime(path, ns=(1, 1))  # another mtime whatever the clock's resolution
    html = await reports.drills_html()
    assert parsed == ["replica-kill-1.json"] and "0.900 s" in html


def test_lag_ignores_values_that_are_not_finite_numbers():
    for bad in (float("inf"), float("nan"), "1.5", True):
        row = _row("eu-central", "eu-west", 1.0)
        row.lag_seconds = bad  # type: ignore[assignment]
        assert lag_of(row) is None, bad


def test_each_pair_keeps_its_own_line_when_a_source_changes(example):
    h = LagHistory(example)
    h.add(1.0, [_row("c", "a", 0.1)])
    h.add(2.0, [_row("c", "a", 0.2)])
    h.add(3.0, [_row("c", "b", 5.0)])  # c now copies from b
    by = {(s.region, s.source): s for s in h.series()}
    assert set(by) == {("c", "a"), ("c", "b")}
    assert by[("c", "a")].points == [(1.0, 0.1), (2.0, 0.2), (3.0, None)]
    assert by[("c", "a")].peak == 0.2  # b's 5 s is not a's
    assert by[("c", "b")].points == [(1.0, None), (2.0, None), (3.0, 5.0)]


async def test_a_failed_gather_is_a_gap_in_the_lag_chart(example):
    fail = [False]
    clock = [100.0]

    async def gather() -> MapView:
        if fail[0]:
            raise OSError("control etcd away")
        rows = [_row("eu-central", "eu-west", 0.3)]
        return MapView("two-regions", "healthy", "eu-west", 1, True, [], replication=rows)

    live = LiveStatus(gather, lag=LagHistory(example), clock=lambda: clock[0])
    for failing in (False, True, False):
        fail[0] = failing
        clock[0] += 1.0
        await live.once()
    lines = re.findall(r'<polyline class="series"[^>]*data-points="(\d+)"', live.fragments["lag"])
    assert lines == ["1", "1"]  # the failed gather split the line


async def test_analysis_errors_are_said_and_kept_for_a_while(tmp_path, example, monkeypatch):
    from haplane.local import live_drift

    calls = []

    async def broken(topology, state, timeout=1.0):  # type: ignore[no-untyped-def]
        calls.append(1)
        raise OSError("ports file mid-rotation")

    monkeypatch.setattr(live_drift, "live_findings", broken)
    reports = Reports(StateDir(tmp_path), example)
    html = await reports.analysis_html()
    assert "live comparison not made: OSError: ports file mid-rotation" in html
    assert 'data-availability="' in html  # the file's analysis is still shown
    await reports.analysis_html()
    assert len(calls) == 1  # kept LIVE_TTL, not asked again by the next page


def test_console_token_refuses_a_binding_made_otherwise():
    from haplane.cli.console import binding_problem

    sa = {"kind": "ServiceAccount", "name": "haplane-console", "namespace": "kube-system"}
    good = {"roleRef": {"kind": "ClusterRole", "name": "haplane:auditor"}, "subjects": [sa]}
    assert binding_problem(good) is None
    other_role = {**good, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}}
    assert "not ClusterRole 'haplane:auditor'" in (binding_problem(other_role) or "")
    a_role = {**good, "roleRef": {"kind": "Role", "name": "haplane:auditor"}}
    assert binding_problem(a_role) is not None
    elsewhere = {**good, "subjects": [{**sa, "namespace": "default"}]}
    assert "does not name the ServiceAccount" in (binding_problem(elsewhere) or "")
    assert binding_problem({**good, "subjects": None}) is not None
