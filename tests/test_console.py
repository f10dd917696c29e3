"""The web console without a topology: the status as a map (`haplane.console.view`), the HTML
(`render`), the credential rules (`auth`) and the application's routes (`server`) with the
API behind a stub of its one seam (`Platform.request`). The browser and the real platform are
in tests/test_console_e2e.py."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from haplane.console import render
from haplane.console.auth import (
    COOKIE,
    BadToken,
    Identity,
    IdentityCache,
    NotAuthenticated,
    Platform,
    PlatformUnavailable,
    check_token,
    identity_of,
    token_from,
)
from haplane.console.server import Console, LiveStatus, sse_message
from haplane.console.view import MapView, map_view, newer, with_active
from haplane.local.status import (
    ClusterReport,
    ConsoleReport,
    EdgeReport,
    GlobalReport,
    MemberReport,
    ReplicaReport,
    ReplicationRow,
    StatusReport,
)
from haplane.topology import Topology, load_example

# ---- the status as a map ---------------------------------------------------------------------


def _member(name: str, *, leader: bool = False, healthy: bool = True, state: str = "running"):
    return MemberReport(name, "etcd", "https://x", state, 1, 0, is_leader=leader, healthy=healthy)


def _report(topology: Topology, **changes: Any) -> StatusReport:
    """A healthy report of the two-regions example: every component the topology names."""
    clusters = []
    for cluster in topology.etcd_clusters():
        members = [_member(m.qualified_name, leader=i == 0) for i, m in enumerate(cluster.members)]
        clusters.append(ClusterReport(cluster.name, True, members[0].name, members))
    replicas, edges, replication = [], [], []
    for site, region in topology.regions():
        replicas += [
            ReplicaReport(f"{site.name}/{a.name}", "api", "https://x", "running", 1, 0, True, "ok")
            for a in region.api_servers
        ]
        edges += [
            EdgeReport(f"{site.name}/{b.name}", "balancer", "u", "a", "running", 1, 0, True)
            for b in region.balancers
        ]
        row = ReplicationRow(
            site.name, "Streaming", leader=f"{site.name}/{region.replicators[0].name}"
        )
        row.replicators = [
            {"name": f"{site.name}/{r.name}", "state": "running"} for r in region.replicators
        ]
        replication.append(row)
    edges += [
        EdgeReport(
            f"global/{g.name}", "gate", "u", "a", "running", 1, 0, True, active_pool="eu-west"
        )
        for g in topology.spec.global_.gates
    ]
    consoles = [
        ConsoleReport(f"global/{c.name}", c.site, "https://c", "https://g", "running", 1, 0, True)
        for c in topology.spec.global_.console.instances
    ]
    active = {"region": "eu-west", "epoch": 3, "writable": True, "since": "t3", "by": "op",
              "reason": "drill", "from": "eu-central", "unfenced": "t3+1.25s"}  # fmt: skip
    history = [
        {"region": "eu-west", "epoch": 1, "by": "haplane up", "reason": "first", "unfenced": "t1"},
        {"region": "eu-central", "epoch": 2, "by": "controller:gate-witness", "from": "eu-west",
         "reason": "eu-west down", "unfenced": None},
        {**active, "unfenced": None},  # the history entry is written before the unfence
    ]  # fmt: skip
    fields: dict[str, Any] = {
        "topology": topology.name,
        "state_dir": "/s",
        "supervisor": "healthy",
        "etcd_version": "3.4",
        "clusters": clusters,
        "replicas": replicas,
        "global_state": GlobalReport(active, history, None, {"eu-west": "active:eu-west@3"}),
        "edges": edges,
        "replication": replication,
        "console": consoles,
    }
    fields.update(changes)
    return StatusReport(**fields)


@pytest.fixture(scope="module")
def example() -> Topology:
    return load_example("two-regions")


def test_map_places_every_component_on_its_site_and_zone(example):
    view = map_view(_report(example), example)
    assert [s.name for s in view.sites] == ["eu-west", "eu-central", "witness"]
    west = view.sites[0]
    assert west.region and west.active and west.fence == "active:eu-west@3"
    assert [z.name for z in west.zones] == ["a", "b", "c", ""]
    zone_a = [c.name for c in west.zones[0].components]
    assert zone_a == ["eu-west/etcd-1", "eu-west/api-1", "eu-west/lb-1", "eu-west/rep-1"]
    site_wide = {c.name for c in west.zones[-1].components}
    assert {"global/control-1", "global/gate-eu-west", "global/console-1"} <= site_wide
    witness = view.sites[2]
    assert not witness.region and not witness.active and witness.fence is None
    names = {c.name for c in view.components()}
    assert "global/console-2" in names and "global/gate-witness" in names
    assert view.counts() == {"ok": len(names), "warn": 0, "down": 0}
    kinds = {c.name: c.kind for c in view.components()}
    assert (kinds["global/control-1"], kinds["eu-west/etcd-1"]) == ("control", "etcd")
    leaders = {c.name for c in view.components() if c.leader}
    assert {"eu-west/etcd-1", "global/control-1", "eu-west/rep-1"} <= leaders
    assert "eu-west/etcd-2" not in leaders


def test_a_killed_member_is_down_a_drained_balancer_a_warning(example):
    report = _report(example)
    report.clusters[0].members[1] = _member("eu-west/etcd-2", healthy=False, state="killed")
    report.edges[0].drained = "maintenance"
    report.edges[0].ready = False
    report.replicas[1] = ReplicaReport(
        "eu-west/api-2", "api", "https://x", "running", 1, 0, False, "etcd: no quorum"
    )
    report.console[1] = ConsoleReport(
        "global/console-2", "eu-central", "u", "g", "backoff", None, 3, False
    )
    health = {c.name: (c.health, c.detail) for c in map_view(report, example).components()}
    assert health["eu-west/etcd-2"] == ("down", "killed")
    assert health["eu-west/lb-1"] == ("warn", "drained: maintenance")
    assert health["eu-west/api-2"] == ("down", "etcd: no quorum")
    assert health["global/console-2"] == ("warn", "backoff")
    assert health["eu-west/etcd-1"] == ("ok", "healthy, leader")


def test_history_is_newest_first_and_the_current_epoch_takes_its_unfence(example):
    view = map_view(_report(example), example)
    assert (view.active_region, view.epoch, view.writable) == ("eu-west", 3, True)
    assert [e.epoch for e in view.history] == [3, 2, 1]
    assert view.history[0].current and view.history[0].unfenced == "t3+1.25s"
    assert view.history[1].previous == "eu-west" and view.history[1].by.startswith("controller")
    html = render.history(view)
    assert "not recorded" in html  # epoch 2: its unfence is in no record any more
    assert 'data-epoch="3" class="current"' in html


def test_without_the_control_etcd_the_map_says_so(example):
    report = _report(example, global_state=GlobalReport(None, [], "global control etcd: down"))
    view = map_view(report, example)
    assert view.active_region is None and view.error == "global control etcd: down"
    html = render.topology_map(view)
    assert 'id="active-region" class="down" data-region=""' in html
    assert "global control etcd: down" in html


# ---- the HTML --------------------------------------------------------------------------------


def _no_inline_code(html: str) -> None:
    """What the CSP forbids: inline scripts, styles and handlers."""
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), html
    assert " style=" not in html and "<style" not in html
    # escaped text has no "<" and attribute values no '"': what is left are real attributes
    tags = [re.sub(r'"[^"]*"', '""', t) for t in re.findall(r"<[^>]*>", html)]
    assert not [t for t in tags if re.search(r"\son[a-z]+=", t)]


def test_pages_escape_what_comes_from_outside_and_carry_no_inline_code(example):
    report = _report(example)
    evil = '<img src=x onerror="alert(1)">'
    report.clusters[0].members[0] = _member("eu-west/etcd-1", healthy=False, state=evil)
    view = map_view(report, example)
    frags = {"map": render.topology_map(view), "history": render.history(view)}
    html = render.dashboard(frags, user=evil)
    assert evil not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    _no_inline_code(html)
    assert 'hx-ext="sse" sse-connect="/sse"' in html
    for name in ("map", "history", "lag", "diagram"):
        assert f'sse-swap="{name}"' in html
    login = render.login(evil)
    _no_inline_code(login)
    assert evil not in login and "<nav>" not in login  # nobody is signed in
    events = render.events([{"type": "Warning", "reason": evil, "message": evil,
                             "involvedObject": {"kind": "Region", "name": "eu-west"}}])  # fmt: skip
    assert evil not in events and 'class="warn"' in events
    audit = render.audit([{"verb": "get", "user": {"username": evil}, "requestURI": "/x"}])
    assert evil not in audit


def test_a_refusal_is_marked_and_quotes_the_api():
    html = render.not_allowed("the audit log", 'User "v" cannot get path "/audit"')
    assert 'data-not-allowed="true"' in html and "cannot get path &quot;/audit&quot;" in html


def test_sse_message_splits_lines_into_data_fields():
    assert (
        sse_message("map", "<p>a</p>\n<p>b</p>")
        == b"event: map\ndata: <p>a</p>\ndata: <p>b</p>\n\n"
    )
    assert sse_message("history", "") == b"event: history\ndata: \n\n"


# ---- credentials ------------------------------------------------------------------------------


def test_check_token():
    assert check_token("  abc.def-ghi_ \n") == "abc.def-ghi_"
    assert check_token("Bearer xyz") == "xyz"
    for bad, why in [("", "no token"), ("a b", "visible ASCII"), ("x" * 9000, "at most"),
                     ("ab\ncd", "visible ASCII"), ("tökén", "visible ASCII")]:  # fmt: skip
        with pytest.raises(BadToken, match=why):
            check_token(bad)


def test_token_from_prefers_the_header_and_takes_bearer_only():
    assert token_from("Bearer h", "c") == "h"
    assert token_from(None, "c") == "c"
    assert token_from("Basic dXNlcjpwYXNz", "c") is None  # not silently the cookie's user
    assert token_from("Bearer ", None) is None
    assert token_from(None, "") is None


def test_identity_of_refuses_the_anonymous_user():
    ok = identity_of({"status": {"userInfo": {"username": "alice", "groups": ["dev"]}}})
    assert ok == Identity("alice", ("dev",), "")
    for review in [{"status": {"userInfo": {"username": "system:anonymous"}}}, {}, None]:
        with pytest.raises(NotAuthenticated):
            identity_of(review)


def test_identity_cache_expires_and_stays_bounded():
    cache = IdentityCache(ttl=10.0, size=3)
    cache.put("t1", Identity("a"), now=0.0)
    assert cache.get("t1", now=9.0) == Identity("a")
    assert cache.get("t1", now=10.5) is None
    for i in range(10):
        cache.put(f"x{i}", Identity(str(i)), now=20.0)
    assert len(cache._seen) <= 3
    assert cache.get("x9", now=20.0) == Identity("9")
    assert "x9" not in "".join(cache._seen)  # keyed by digest, never the token


# ---- the application, the API behind its seam -------------------------------------------------

ADMIN, VIEWER, REVOKED = "admin-token", "viewer-token", "revoked-token"
USERS = {ADMIN: "system:serviceaccount:kube-system:auditor", VIEWER: "viewer"}


class StubPlatform(Platform):
    """The API's answers as a real replica gives them, per token (no network)."""

    def __init__(self) -> None:
        super().__init__("https://gate.invalid", None)
        self.calls: list[tuple[str, str, str]] = []
        self.down = False

    async def request(self, token, method, path, body=None, params=None):  # type: ignore[no-untyped-def]
        self.calls.append((token, method, path))
        if self.down:
            raise PlatformUnavailable("the platform did not answer (stub)")
        user = USERS.get(token)
        if user is None:
            return 401, {"kind": "Status", "code": 401, "message": "Unauthorized"}
        if path.endswith("/selfsubjectreviews"):
            return 201, {"status": {"userInfo": {"username": user, "groups": []}}}
        if path.endswith("/selfsubjectaccessreviews"):
            return 201, {"status": {"allowed": token == ADMIN}}
        if path == "/audit":
            if token == ADMIN:
                return 404, {"kind": "Status", "code": 404, "message": "not found"}
            return 403, {"code": 403, "message": f'User "{user}" cannot get path "/audit"'}
        if path.endswith("/events"):
            if token == ADMIN:
                return 200, {"items": [{"type": "Normal", "reason": "EpochUnfenced",
                                        "message": "epoch 2 writable"}]}  # fmt: skip
            return 403, {"code": 403, "message": f'User "{user}" cannot list resource "events"'}
        return 404, {}


def _fixed_view(example: Topology) -> MapView:
    return map_view(_report(example), example)


@pytest.fixture
async def app_client(example):
    platform = StubPlatform()

    async def gather() -> MapView:
        return _fixed_view(example)

    live = LiveStatus(gather)
    await live.once()
    audit_rows = [{"verb": "delete", "user": {"username": "mallory"}, "requestURI": "/api/v1/x"}]
    console = Console(live, platform, lambda: audit_rows)
    client = TestClient(TestServer(console.app()))
    await client.start_server()
    try:
        yield client, platform, live
    finally:
        await live.stop()
        await client.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "text/html"}


async def test_anonymous_gets_the_login_page_or_401_and_no_data(app_client):
    client, _, _ = app_client
    r = await client.get("/", headers={"Accept": "text/html"}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/login"
    for path in ("/fragments/map", "/fragments/history", "/fragments/events", "/sse", "/audit",
                 "/events"):  # fmt: skip
        r = await client.get(path, allow_redirects=False)
        text = await r.text()
        assert r.status == 401, path
        assert "eu-west" not in text and "data-name" not in text, path
        assert r.headers["HX-Redirect"] == "/login"
    r = await client.get("/fragments/map", headers={"Authorization": f"Bearer {REVOKED}"})
    assert r.status == 401
    r = await client.get("/login")
    assert r.status == 200 and 'name="token"' in await r.text()
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    for name in ("htmx.min.js", "htmx-ext-sse.min.js", "console.css", "htmx.LICENSE"):
        r = await client.get(f"/static/{name}")
        assert r.status == 200 and len(await r.read()) > 100, name
    assert (await client.get("/static/../auth.py")).status == 404
    assert (await client.get("/livez")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_login_sets_a_strict_cookie_and_refuses_bad_tokens(app_client):
    client, _, _ = app_client
    r = await client.post("/login", data={"token": REVOKED}, allow_redirects=False)
    assert r.status == 401 and "refused this token" in await r.text()
    r = await client.post("/login", data={"token": "with space"}, allow_redirects=False)
    assert r.status == 400 and "visible ASCII" in await r.text()
    r = await client.post("/login", data={"token": ADMIN}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/"
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}={ADMIN};")
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attr in cookie, cookie
    r = await client.get("/", headers={"Cookie": f"{COOKIE}={ADMIN}", "Accept": "text/html"})
    page = await r.text()
    assert r.status == 200 and USERS[ADMIN] in page and 'data-name="eu-west/etcd-1"' in page
    r = await client.post("/logout", headers={"Cookie": f"{COOKIE}={ADMIN}"},
                          allow_redirects=False)  # fmt: skip
    assert r.status == 303 and 'haplane_console=""' in r.headers["Set-Cookie"]


async def test_audit_and_events_as_the_user(app_client):
    client, platform, _ = app_client
    r = await client.get("/audit", headers=_auth(VIEWER))
    text = await r.text()
    assert r.status == 403 and 'data-not-allowed="true"' in text and "mallory" not in text
    assert "cannot get path &quot;/audit&quot;" in text
    r = await client.get("/audit", headers=_auth(ADMIN))
    text = await r.text()
    assert r.status == 200 and "mallory" in text  # the API's 404, then its review allowed it
    assert (
        ADMIN,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    ) in platform.calls
    r = await client.get("/events", headers=_auth(VIEWER))
    assert r.status == 403 and "cannot list resource" in await r.text()
    r = await client.get("/fragments/events", headers=_auth(ADMIN))
    assert r.status == 200 and "EpochUnfenced" in await r.text()
    every = {t for t, _, _ in platform.calls}
    assert every <= {ADMIN, VIEWER, REVOKED}  # nothing went with any other credential


async def test_identity_is_asked_once_per_ttl(app_client):
    client, platform, _ = app_client
    for _ in range(3):
        assert (await client.get("/fragments/map", headers=_auth(ADMIN))).status == 200
    reviews = [c for c in platform.calls if c[2].endswith("/selfsubjectreviews")]
    assert len(reviews) == 1


async def test_platform_down_is_503_never_a_guess(app_client):
    client, platform, _ = app_client
    platform.down = True
    r = await client.get("/fragments/map", headers=_auth(ADMIN))
    assert r.status == 503 and "did not answer" in await r.text()


async def test_sse_sends_every_fragment_then_each_change(app_client, example):
    client, _, live = app_client
    r = await client.get("/sse", headers=_auth(ADMIN))
    assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]

    async def next_event() -> tuple[str, str]:
        event, data = "", []
        while True:
            line = (await asyncio.wait_for(r.content.readline(), 5)).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and event:
                return event, "\n".join(data)

    first = dict([await next_event() for _ in range(4)])
    assert set(first) == {"map", "history", "lag", "diagram"}
    assert 'data-region="eu-west" data-epoch="3"' in first["map"]
    changed = _report(example)
    changed.global_state.active = {**changed.global_state.active, "region": "eu-central",
                                   "epoch": 4}  # fmt: skip

    async def moved() -> MapView:
        return map_view(changed, example)

    live._gather = moved
    await live.once()
    # only what changed is sent again: the map and the history; this fixture charts no lag
    # (no LagHistory), so that fragment did not change and is not sent (a real console's
    # chart moves with the clock and is sent at every gather)
    second = dict([await next_event(), await next_event()])
    assert set(second) == {"map", "history"}
    assert 'data-region="eu-central" data-epoch="4"' in second["map"]
    r.close()


async def test_a_failed_gather_keeps_the_last_view_and_is_not_ready(example):
    calls = 0

    async def flaky() -> MapView:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("supervisor socket gone")
        return _fixed_view(example)

    live = LiveStatus(flaky)
    assert live.ready() == (False, "status not gathered yet")
    await live.once()
    version = live.version
    await live.once()
    assert live.version == version and live.view is not None
    assert live.error == "OSError: supervisor socket gone"
    ok, why = live.ready(now=live.gathered_at + 26)  # type: ignore[operator]
    assert not ok and "supervisor socket gone" in why


async def test_a_kick_gathers_at_once_not_at_the_next_tick(example):
    gathered: list[float] = []

    async def gather() -> MapView:
        gathered.append(asyncio.get_running_loop().time())
        return _fixed_view(example)

    live = LiveStatus(gather, interval=60.0)
    task = asyncio.create_task(live.run())
    try:
        for _ in range(100):
            if gathered:
                break
            await asyncio.sleep(0.01)
        live.kick()
        for _ in range(100):
            if len(gathered) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(gathered) == 2 and gathered[1] - gathered[0] < 1.0
    finally:
        await live.stop()
        live.kick()
        await asyncio.wait_for(task, 2)


def test_an_active_record_moves_the_map_and_its_history_without_a_gather(example):
    view = map_view(_report(example), example)
    record = {"region": "eu-central", "epoch": 4, "writable": False, "since": "t4",
              "by": "operator:alice", "reason": "maintenance", "from": "eu-west"}  # fmt: skip
    assert newer(record, view)
    moved = with_active(view, record)
    assert (moved.active_region, moved.epoch, moved.writable) == ("eu-central", 4, False)
    assert [s.name for s in moved.sites if s.active] == ["eu-central"]
    assert [(e.epoch, e.current) for e in moved.history] == [(4, True), (3, False), (2, False),
                                                             (1, False)]  # fmt: skip
    assert moved.history[0].reason == "maintenance" and moved.history[0].unfenced is None
    assert moved.history[1].unfenced == "t3+1.25s"  # the old current epoch keeps what it had
    assert moved.components() == view.components()  # health waits for the next gather
    # the same epoch's unfence is newer; the record it replaced, or an older epoch, is not
    unfenced = {**record, "writable": True, "unfenced": "t4+1.1s"}
    assert newer(unfenced, moved) and not newer(record, moved)
    assert not newer({**record, "epoch": 3, "writable": True}, moved)
    again = with_active(moved, unfenced)
    assert again.writable and again.history[0].unfenced == "t4+1.1s"
    assert [e.epoch for e in again.history] == [4, 3, 2, 1]
    assert not newer(record, again) and not newer({"epoch": "x"}, again)


def _at_epoch(example: Topology, epoch: int | None, error: str | None = None) -> MapView:
    """The fixed view as a gather that read the record at `epoch` (None: read none)."""
    report = _report(example)
    glob = report.global_state
    assert glob is not None
    if epoch is None:
        report.global_state = GlobalReport(None, glob.history, error, glob.fences)
    else:
        glob.active = {**glob.active, "region": "eu-west", "epoch": epoch}  # type: ignore[dict-item]
    return map_view(report, example)


async def test_a_watched_record_reaches_the_page_at_once_and_outranks_an_older_gather(example):
    gathered: list[MapView] = [_fixed_view(example)]  # what the next gathers read, in turn
    drawn = asyncio.Event()

    async def gather() -> MapView:
        return gathered.pop(0) if len(gathered) > 1 else gathered[0]

    async def draw(live_state: Any) -> str:
        await drawn.wait()  # Graphviz in a thread: other work runs meanwhile
        return f"<svg>{live_state}</svg>"

    live = LiveStatus(gather, interval=60.0)
    await live.once()
    version = live.version
    record = {"region": "eu-central", "epoch": 4, "writable": True, "since": "t4",
              "by": "controller:gate-1", "reason": "eu-west down", "from": "eu-west"}  # fmt: skip
    await live.active_changed(record)
    assert live.version == version + 1  # shown without asking anyone
    assert 'data-region="eu-central" data-epoch="4"' in live.fragments["map"]
    assert 'data-epoch="4" class="current"' in live.fragments["history"]
    assert live._kick.is_set()  # and a gather follows at once for the rest
    await live.active_changed({**record, "epoch": 3})  # older: nothing shown
    assert live.version == version + 1 and 'data-epoch="4"' in live.fragments["map"]

    # a gather that read the record before the change (epoch 3) does not take the page back,
    # even when the record arrives while that gather's diagram is drawn
    live._draw = draw
    await live.active_changed(None)
    live.active = None
    task = asyncio.create_task(live.once())
    await asyncio.sleep(0.05)  # the gather is in, its diagram being drawn
    changed = asyncio.create_task(live.active_changed({**record, "epoch": 5}))
    await asyncio.sleep(0.05)  # shown at once; its own diagram being drawn too
    assert 'data-region="eu-central" data-epoch="5"' in live.fragments["map"]
    drawn.set()
    await asyncio.wait_for(asyncio.gather(task, changed), 5)
    assert live.view is not None and (live.view.active_region, live.view.epoch) == (
        "eu-central", 5)  # fmt: skip
    assert 'data-region="eu-central" data-epoch="5"' in live.fragments["map"]
    # a gather newer than the record is shown as gathered
    gathered[:] = [_at_epoch(example, 6)]
    await live.once()
    assert (live.view.active_region, live.view.epoch) == ("eu-west", 6)
    # a deleted record, or one the gather could not read: shown as the gather found it, with
    # its error, never as the last record watched
    await live.active_changed({**record, "epoch": 7})
    await live.active_changed(None)
    gathered[:] = [_at_epoch(example, None)]
    await live.once()
    assert live.view.active_region is None
    await live.active_changed({**record, "epoch": 7})
    assert live.view.active_region == "eu-central"  # a record watched shows at once...
    gathered[:] = [_at_epoch(example, None, "global control etcd: timed out")]
    await live.once()  # ... but a failed read says so
    assert live.view.active_region is None and live.view.error
    assert "global control etcd: timed out" in live.fragments["map"]


async def test_a_gate_that_refuses_the_connection_is_passed_over():
    """The first gate refuses (nothing listens there); the request goes to the next one."""
    from aiohttp import web

    async def review(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer t"
        return web.json_response({"status": {"userInfo": {"username": "alice"}}}, status=201)

    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
    server = TestServer(app)
    await server.start_server()
    closed = TestServer(web.Application())
    await closed.start_server()
    refused = str(closed.make_url("")).rstrip("/")
    await closed.close()
    platform = Platform(refused, None, timeout=2.0, fallbacks=(str(server.make_url("")),))
    try:
        assert (await platform.whoami("t")).username == "alice"
        alone = Platform(refused, None, timeout=2.0)
        with pytest.raises(PlatformUnavailable, match="did not answer"):
            await alone.whoami("t")
        await alone.close()
    finally:
        await platform.close()
        await server.close()


async def test_an_insecure_topology_asks_nobody_to_sign_in(example):
    """`security.insecure: true`: the platform authenticates nobody, nor does the console."""

    async def gather() -> MapView:
        return _fixed_view(example)

    live = LiveStatus(gather)
    await live.once()
    client = TestClient(TestServer(Console(live, None, lambda: []).app()))
    await client.start_server()
    try:
        r = await client.get("/", headers={"Accept": "text/html"}, allow_redirects=False)
        assert r.status == 200 and "anonymous (insecure topology)" in await r.text()
        r = await client.post("/login", data={"token": "x"}, allow_redirects=False)
        assert r.status == 303 and "Set-Cookie" not in r.headers
    finally:
        await live.stop()
        await client.close()


def test_gathers_every_second_only_while_someone_looks(example):
    async def gather() -> MapView:
        return _fixed_view(example)

    live = LiveStatus(gather, interval=1.0, interval_idle=10.0)
    assert live.current_interval() == 10.0  # nobody yet
    live.demand()
    assert live._kick.is_set()  # a page after a quiet while: gather now
    live._kick.clear()
    assert live.current_interval() == 1.0
    live.demand()
    assert not live._kick.is_set()  # busy already: the next tick is soon enough
    assert live.current_interval(now=live.demanded_at + 11) == 10.0
    live.watchers = 1  # an open stream keeps it busy
    assert live.current_interval(now=live.demanded_at + 11) == 1.0


def test_history_says_the_fence_wait_and_what_each_cut_cost(example):
    report = _report(example)
    report.global_state.active = {**report.global_state.active, "since": "2026-12-06T10:00:00Z",
                                  "unfenced": "2026-12-06T10:00:01.25Z"}  # fmt: skip
    report.cuts = [
        {"epoch": 2, "region": "eu-central", "revision": 900, "planned": False,
         "lagSeconds": 0.412, "synchronous": False, "partial": False},
        {"epoch": 3, "region": "eu-west", "revision": 1200, "planned": True,
         "lagSeconds": 0.0, "synchronous": False, "partial": False},
    ]  # fmt: skip
    report.divergences = [{"epoch": 2, "count": 7, "region": "eu-west"}]
    view = map_view(report, example)
    by = {e.epoch: e for e in view.history}
    assert by[3].fence_wait == 1.25 and by[3].data == "none (planned, cut at revision 1200)"
    assert by[2].data == "up to 0.412 s of writes (asynchronous, above revision 900)"
    assert by[2].saved == 7 and by[1].data is None and by[1].fence_wait is None
    html = render.history(view)
    assert "<th>fence wait</th>" in html and "1.25 s" in html
    assert "7 write(s) of the returning region saved aside" in html
    sync = {"epoch": 4, "planned": False, "synchronous": True, "revision": 5, "partial": True}
    from haplane.console.view import cut_words

    assert cut_words(sync).startswith("none acknowledged (synchronous standby")
    assert "its copy incomplete" in cut_words(sync)


def test_history_says_when_an_automatic_failover_was_detected_and_agreed(example):
    """The gates' controller records when the old region was first seen down and when a
    majority agreed; the history says how long before the commit. An operator's switchover
    (epoch 3 here) was decided by a person: it says nothing of detection."""
    report = _report(example)
    assert report.global_state is not None
    history = report.global_state.history
    history[1] = {**history[1], "since": "2026-12-06T10:00:05.500000Z",
                  "detected": "2026-12-06T10:00:02.000000Z",
                  "agreed": "2026-12-06T10:00:05.000000Z"}  # fmt: skip
    view = map_view(report, example)
    by = {e.epoch: e for e in view.history}
    assert (by[2].detected_before, by[2].agreed_before) == (3.5, 0.5)
    assert by[3].detected_before is None and by[1].agreed_before is None
    html = render.history(view)
    assert "<th>detected, agreed</th>" in html
    assert "seen down 3.50 s before the commit; agreed 0.50 s before the commit" in html
    row3 = html[html.index('data-epoch="3"') :].split("</tr>")[0]
    assert '<td class="found">-</td>' in row3
