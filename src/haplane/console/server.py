"""The console's web application (aiohttp): pages, fragments, the live stream, static files.

Layer: console. Gathers the platform's status with `haplane.local.status` (the state dir's
credentials: read-only status calls, as `haplane status`), and asks the API as the signed-in
user for everything else (`auth.Platform`).

Routes (every page and fragment needs a signed-in user; anonymous requests get the login page,
or 401 and no data):

- `GET /login`, `POST /login` (form: `token`), `POST /logout`: sign in with a bearer token,
  sign out;
- `GET /`: the topology map and the failover history, live through `/sse`;
- `GET /sse`: server-sent events `map`, `history`, `lag` (the replication lag chart) and
  `diagram` (`haplane diagram` coloured by health), each a fragment's HTML, sent at connect
  and whenever it changed (gathered every second);
- `GET /events`: Events of kube-system, read through the API as the user (403: not allowed);
- `GET /audit`: the audit log: the API's `/audit` as the user; where the API does not serve
  it (404), a SelfSubjectAccessReview for `get /audit` decides, and the console reads the
  replicas' logs (`STATE/audit`, the last 10 minutes);
- `GET /drills`: every drill run (the history `haplane drills` shows) with its verdict, RTO
  and lost writes, per-scenario trends and the schedule; `GET /drills/report?path=P`: one
  report with its figures, the timeline of every client operation, events and findings;
- `GET /analysis`: `validate --live` of the running topology (at most every 15 s) and
  `analyse --availability` of its file;
- `GET /fragments/{map,history,lag,diagram,drills,analysis,events,audit}`: the same fragments alone
  (htmx refreshes);
- `GET /static/...`: htmx, its SSE extension, their licences, the stylesheet;
- `GET /livez`, `GET /readyz`: health (ready once the status was gathered within two idle
  intervals and 5 s).

Every answer carries a Content-Security-Policy that allows only the console's own scripts and
styles, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`; pages are `no-store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import web

from haplane.local.state_dir import StateDir
from haplane.topology import Topology, load_file
from haplane.topology.diagram import Live

from . import render
from .auth import (
    COOKIE,
    COOKIE_MAX_AGE,
    ConsoleAuthError,
    Credential,
    Identity,
    IdentityCache,
    NotAuthenticated,
    Platform,
    PlatformUnavailable,
    cert_user,
    check_token,
    token_from,
)
from .lag import LagHistory
from .reports import ReportNotFound, Reports
from .view import MapView, diagram_state, map_view, newer, with_active

log = logging.getLogger("haplane.console")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
STATIC = {
    "htmx.min.js": "text/javascript",
    "htmx-ext-sse.min.js": "text/javascript",
    "console.css": "text/css",
    "htmx.LICENSE": "text/plain",
    "htmx-ext-sse.LICENSE": "text/plain",
}
EVENTS_PATH = "/api/v1/namespaces/kube-system/events"
# who sees the Drills pages: those who may list Drills (dr-operators, auditors, admins); the
# Analysis page (addresses, ports, findings): those who may list the platform's parts (every
# operator role, auditors, admins). Asked as the user, per request.
DRILLS_PERMISSION = (("drills", "ops.haplane.dev"),)
ANALYSIS_PERMISSION = (("etcdmembers", "platform.haplane.io"), ("gates", "platform.haplane.io"))
AUDIT_WINDOW = timedelta(minutes=10)  # what the audit page shows, from the replicas' logs
AUDIT_ROWS = 200


def emit(msg: str, /, **fields: Any) -> None:
    log.info(json.dumps({"msg": msg, **fields}, default=str))


GatherFn = Callable[[], Awaitable[MapView]]
DrawFn = Callable[[Live], Awaitable[str]]


class LiveStatus:
    """The platform's status, gathered every `interval` seconds while someone looks (an open
    event stream, or a signed-in request in the last `interval_idle` seconds), every
    `interval_idle` seconds otherwise, rendered as the map and history fragments; `version`
    goes up when either changed, and waiters are woken.

    Why idle slower: a gather reads every etcd member's status, the control etcd and each
    component's health, which costs the platform it observes; two consoles nobody looks at
    should not read it twice a second. A page that opens asks for a gather at once (`kick`)."""

    def __init__(
        self,
        gather: GatherFn,
        interval: float = 1.0,
        interval_idle: float = 10.0,
        lag: LagHistory | None = None,
        clock: Callable[[], float] = time.time,
        draw: DrawFn | None = None,
    ) -> None:
        self._gather = gather
        self._draw = draw  # the diagram, coloured by health (None: not drawn)
        self._drawn: tuple[Any, str] | None = None  # (what it showed, the fragment)
        self.lag = lag  # replication lag samples, one per gather (None: not charted)
        self._clock = clock
        self._kick = asyncio.Event()
        self.interval = interval
        self.interval_idle = max(interval, interval_idle)
        self.watchers = 0  # open event streams
        self.demanded_at = -float("inf")  # monotonic, of the last signed-in request
        self.view: MapView | None = None
        # the newest active-region record the watch delivered (its `as_dict` form): a gather
        # that read an older one shows this instead (it began before the change)
        self.active: dict[str, Any] | None = None
        self.fragments: dict[str, str] = {
            "map": render.topology_map(None),
            "history": render.history(None),
            "lag": render.lag_chart([], 0.0),
            "diagram": render.diagram(None),
        }
        self.version = 0
        self.gathered_at: float | None = None  # monotonic, of the last success
        self.error: str | None = None
        self._changed = asyncio.Condition()
        self.stopping = False

    async def once(self) -> None:
        try:
            view = await self._gather()
        except Exception as exc:  # keep the loop alive: the next second may work
            self.error = f"{type(exc).__name__}: {exc}"
            emit("status not gathered", error=self.error)
            if self.lag is not None:  # nobody measured meanwhile: a gap, not a straight line
                self.lag.add(self._clock(), [])
                await self._publish({**self.fragments, "lag": self._lag_chart()})
            return
        self.error = None
        self.gathered_at = time.monotonic()
        if self.lag is not None:
            self.lag.add(self._clock(), view.replication)
        diagram = await self._diagram(self._shown(view))
        # the record may have changed during that await: what is shown is decided after it
        await self._show(self._shown(view), diagram)

    def _shown(self, gathered: MapView) -> MapView:
        """The gathered view, or the watched record's active region over it when that record
        is newer (the gather read the record before the change). Not over a gather that read
        no record: a failed read, or a record deleted, is shown as the gather found it."""
        active = self.active
        if active is None or gathered.epoch is None or gathered.error is not None:
            return gathered
        return with_active(gathered, active) if newer(active, gathered) else gathered

    async def _show(self, view: MapView, diagram: str) -> None:
        fragments = {
            "map": render.topology_map(view),
            "history": render.history(view),
            "lag": self._lag_chart() if self.lag is not None else self.fragments["lag"],
            "diagram": diagram,
        }
        self.view = view
        await self._publish(fragments)

    def _lag_chart(self) -> str:
        assert self.lag is not None
        try:
            return render.lag_chart(self.lag.series(), self._clock(), self.lag.window)
        except Exception as exc:  # a bug: say so in the page, keep the loop alive
            log.exception(json.dumps({"msg": "lag chart not drawn", "error": str(exc)}))
            return render.lag_chart([], 0.0) + render.unavailable("Lag chart", repr(exc))

    async def _publish(self, fragments: dict[str, str]) -> None:
        if fragments != self.fragments:
            self.fragments = fragments
            async with self._changed:
                self.version += 1
                self._changed.notify_all()

    async def _diagram(self, view: MapView) -> str:
        """Drawn again only when what it shows changed (health, leaders, the active region)."""
        if self._draw is None:
            return self.fragments["diagram"]
        state = diagram_state(view)
        if self._drawn is not None and self._drawn[0] == state:
            return self._drawn[1]
        try:
            fragment = render.diagram(await self._draw(state))
        except Exception as exc:  # Graphviz missing or failing: say so, keep the rest live
            fragment = render.diagram(None, f"{type(exc).__name__}: {exc}")
        self._drawn = (state, fragment)
        return fragment

    def kick(self) -> None:
        """Gather now rather than at the next tick (the active region changed)."""
        self._kick.set()

    async def active_changed(self, active: dict[str, Any] | None) -> None:
        """The watch saw the active-region record change: open pages show the new active
        region, epoch and history entry now (one rendering, no etcd read), and a gather
        follows at once for everything else. Why not wait for that gather: it asks every
        component, each with its own deadline, which takes seconds on a loaded machine; the
        record is what an operator watching a failover waits for."""
        self.active = active  # None: deleted; the gathers say what is shown then
        self.kick()
        if active is not None and self.view is not None and newer(active, self.view):
            view = with_active(self.view, active)
            await self._show(view, self.fragments["diagram"])
            diagram = await self._diagram(view)  # Graphviz, in a thread
            if self.view is view:  # nothing newer was shown meanwhile
                await self._show(view, diagram)

    def demand(self) -> None:
        """Someone signed in asked for a page: gather every `interval` for a while, and now
        if the last gather is older than that."""
        now = time.monotonic()
        idle = now - self.demanded_at > self.interval_idle and self.watchers == 0
        self.demanded_at = now
        if idle:
            self.kick()

    def current_interval(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self.watchers > 0 or now - self.demanded_at <= self.interval_idle:
            return self.interval
        return self.interval_idle

    async def run(self) -> None:
        while not self.stopping:
            t0 = time.monotonic()
            self._kick.clear()
            await self.once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._kick.wait(),
                    max(0.05, self.current_interval() - (time.monotonic() - t0)),
                )

    async def wait_change(self, seen: int, timeout: float) -> int:
        """The version once it differs from `seen`, or after `timeout` seconds."""
        async with self._changed:
            if self.version == seen and not self.stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
            return self.version

    async def stop(self) -> None:
        self.stopping = True
        async with self._changed:
            self._changed.notify_all()

    def ready(self, now: float | None = None) -> tuple[bool, str]:
        now = time.monotonic() if now is None else now
        if self.gathered_at is None:
            return False, self.error or "status not gathered yet"
        if now - self.gathered_at > 2 * self.interval_idle + 5.0:
            return False, f"status last gathered {now - self.gathered_at:.0f}s ago: {self.error}"
        return True, "ok"


def sse_message(event: str, data: str) -> bytes:
    """One server-sent event; every line of `data` is a `data:` line (the browser joins them
    with newlines)."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"event: {event}\n{lines}\n".encode()


class StatusGatherer:
    """What the console gathers each second: `haplane status` without the certificate
    inventory, with the last 20 epochs, over etcd channels and HTTPS connections kept between
    gathers (`KeptClients`, as the supervisor keeps them): a console gathers every second
    while someone looks and every 10 s otherwise, and a new gRPC channel and TLS handshake
    to every member and listener each time cost more than the questions. `close()` when
    done."""

    def __init__(self, state: StateDir, topology: Topology, timeout: float = 0.8) -> None:
        from haplane.local.status import KeptClients

        self.state = state
        self.topology = topology
        self.timeout = timeout
        self.clients = KeptClients(timeout)

    async def __call__(self) -> MapView:
        from haplane.local.status import gather_status

        report = await gather_status(
            self.state, self.timeout, history=20, certificates=False, clients=self.clients
        )
        return map_view(report, self.topology)

    async def close(self) -> None:
        await self.clients.close()


def diagram_drawer(topology: Topology) -> DrawFn:
    """`haplane diagram` as SVG text, coloured by `Live`, drawn by Graphviz in a thread."""
    from haplane.topology import diagram

    async def draw(live: Live) -> str:
        data = await asyncio.to_thread(diagram.render, topology, "svg", (), live)
        return data.decode()

    return draw


async def watch_active_region(state: StateDir, topology: Topology, live: LiveStatus) -> None:
    """Kick `live` whenever the global control etcd's active-region record changes (a
    failover, a switchover, an unfence), so that it reaches open pages without waiting for
    the next tick; the watch is made again after any failure."""
    from haplane.local.gate_plans import plan_of
    from haplane.local.plans import global_plan
    from haplane.store import EtcdError, GlobalState

    while not live.stopping:
        try:
            async with global_plan(plan_of(topology, state).clusters).client(2.0) as client:
                async for record in GlobalState(client).watch():
                    await live.active_changed(record.as_dict() if record is not None else None)
        except (EtcdError, OSError) as exc:
            emit("active-region watch ended", error=str(exc))
        except Exception as exc:  # a bug: say so loudly, keep the console serving
            log.exception(json.dumps({"msg": "active-region watch failed", "error": str(exc)}))
        # unwatched, the record may change unseen (a control etcd rebuilt, epochs restarting
        # lower): gathers alone say what is shown until the watch is back
        live.active = None
        await asyncio.sleep(1.0)


def audit_reader(state: StateDir) -> Callable[[], list[dict[str, Any]]]:
    """The replicas' audit logs of the last minutes, newest first (at most AUDIT_ROWS)."""

    def read() -> list[dict[str, Any]]:
        from haplane.auth import audit

        since = datetime.now(UTC) - AUDIT_WINDOW
        events = list(audit.read_events(state.audit_logs(), since=since))
        return events[-AUDIT_ROWS:][::-1]

    return read


class Console:
    def __init__(
        self,
        live: LiveStatus,
        platform: Platform | None,
        read_audit: Callable[[], list[dict[str, Any]]],
        *,
        identities: IdentityCache | None = None,
        reverify_every: float = 30.0,
        reports: Reports | None = None,
    ) -> None:
        """`platform` None: the topology is insecure (no authentication anywhere): everyone
        is `anonymous` and sees what the platform would show them, everything."""
        self.live = live
        self.platform = platform
        self.read_audit = read_audit
        self.identities = identities or IdentityCache()
        self.reverify_every = reverify_every
        self.reports = reports  # drills and analysis (None: those pages say so)

    # ---- who is asking -------------------------------------------------------------------

    async def user(self, request: web.Request) -> tuple[Credential, Identity] | None:
        """(credential, identity) of the request, None when it carries no credential the API
        takes: a bearer token (header, else cookie), else a verified client certificate of
        the platform CA. PlatformUnavailable propagates: the caller answers 503, never a
        guess."""
        if self.platform is None:
            return "", Identity("anonymous (insecure topology)")
        token: Credential | None = token_from(
            request.headers.get("Authorization"), request.cookies.get(COOKIE)
        )
        if token is None and self.platform.takes_certificates:
            transport = request.transport
            token = cert_user(transport.get_extra_info("peercert") if transport else None)
        if token is None:
            return None
        try:
            return token, await self.identities.identify(self.platform, token)
        except NotAuthenticated:
            return None

    def _anonymous(self, request: web.Request) -> web.Response:
        """A page asked for without a usable credential: the login page (a browser's page
        request is sent there), or 401 and no data (fragments, the stream, scripts)."""
        wants_page = (
            request.method == "GET"
            and "HX-Request" not in request.headers
            and "text/html" in request.headers.get("Accept", "")
            and request.path != "/sse"
        )
        if wants_page:
            resp = _see_other("/login")
        else:
            resp = web.Response(
                status=401,
                text="sign in first: POST /login with a token, or send Authorization: Bearer\n",
                headers={"HX-Redirect": "/login", "WWW-Authenticate": 'Bearer realm="haplane"'},
            )
        if COOKIE in request.cookies:
            resp.del_cookie(COOKIE, path="/")
        return resp

    # ---- routes ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[_headers])
        r = app.router
        r.add_get("/livez", self.livez)
        r.add_get("/readyz", self.readyz)
        r.add_get("/static/{name}", self.static)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/", self.dashboard)
        r.add_get("/sse", self.sse)
        r.add_get("/drills", self.drills_page)
        r.add_get("/drills/report", self.drill_report_page)
        r.add_get("/analysis", self.analysis_page)
        r.add_get("/events", self.events_page)
        r.add_get("/audit", self.audit_page)
        r.add_get("/fragments/{name}", self.fragment)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.live.stop()  # ends every open stream

    async def livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        ok, why = self.live.ready()
        return web.Response(status=200 if ok else 503, text=f"{why}\n")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        body = resources.files("haplane.console").joinpath("static", name).read_bytes()
        return web.Response(
            body=body,
            content_type=STATIC[name],
            headers={"Cache-Control": "public, max-age=3600"},
        )

    async def login_page(self, request: web.Request) -> web.Response:
        return _html(render.login())

    async def login(self, request: web.Request) -> web.Response:
        if self.platform is None:
            return _see_other("/")
        form = await request.post()
        try:
            token = check_token(str(form.get("token") or ""))
            identity = await self.platform.whoami(token)
        except ConsoleAuthError as exc:
            code = 503 if isinstance(exc, PlatformUnavailable) else 401
            code = 400 if code == 401 and not isinstance(exc, NotAuthenticated) else code
            emit("sign-in refused", reason=str(exc), remote=request.remote)
            return _html(render.login(str(exc)), status=code)
        self.identities.put(token, identity)
        emit("signed in", user=identity.username, remote=request.remote)
        resp = _see_other("/")
        resp.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_MAX_AGE,
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        return resp

    async def logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(COOKIE)
        if token:
            self.identities.forget(token)
        resp = _see_other("/login")
        resp.del_cookie(COOKIE, path="/")
        return resp

    async def _who(self, request: web.Request) -> tuple[Credential, Identity] | web.Response:
        try:
            who = await self.user(request)
        except PlatformUnavailable as exc:
            return web.Response(status=503, text=f"{exc}\n")
        if who is None:
            return self._anonymous(request)
        self.live.demand()
        return who

    async def dashboard(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        return _html(render.dashboard(self.live.fragments, user=who[1].username))

    async def events_page(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        status, content = await self._events(who[0])
        body = render.live_section("events", "Events in kube-system", "/fragments/events",
                                   content, "5s")  # fmt: skip
        return _html(render.page("Events", body, user=who[1].username, current="/events"),
                     status=status)  # fmt: skip

    async def drills_page(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        status, content = await self._drills(who[0])
        body = render.live_section("drills", "DR drills", "/fragments/drills", content, "5s")
        return _html(render.page("Drills", body, user=who[1].username, current="/drills"),
                     status=status)  # fmt: skip

    async def drill_report_page(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        refused = await self._may(who[0], DRILLS_PERMISSION, "the drills")
        if refused is not None:
            status, content = refused
        elif self.reports is None:
            status, content = 404, render.unavailable("Drills", "no state dir")
        else:
            try:
                content = await asyncio.to_thread(
                    self.reports.drill_report_html, request.query.get("path", "")
                )
                status = 200
            except ReportNotFound as exc:
                status, content = 404, render.unavailable("Drill report", str(exc))
        body = f'<p><a href="/drills">&larr; every drill</a></p>{content}'
        return _html(render.page("Drill report", body, user=who[1].username, current="/drills"),
                     status=status)  # fmt: skip

    async def analysis_page(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        status, content = await self._analysis(who[0])
        body = render.live_section("analysis", "Analysis", "/fragments/analysis", content, "30s")
        return _html(render.page("Analysis", body, user=who[1].username, current="/analysis"),
                     status=status)  # fmt: skip

    async def _may(
        self, token: Credential, permissions: tuple[tuple[str, str], ...], what: str
    ) -> tuple[int, str] | None:
        """None when the API lets the user `list` any of `permissions` ((resource, group)),
        asked as the user (SelfSubjectAccessReview); else the refusal to show."""
        if self.platform is None:
            return None  # an insecure topology: everything is allowed, as on the platform
        reasons = []
        try:
            for resource, group in permissions:
                allowed, reason = await self.platform.can_i(
                    token, "list", resource=resource, group=group
                )
                if allowed:
                    return None
                reasons.append(reason)
        except PlatformUnavailable as exc:
            return 503, render.unavailable(what[:1].upper() + what[1:], str(exc))
        except NotAuthenticated as exc:
            return 401, render.unavailable(what[:1].upper() + what[1:], str(exc))
        return 403, render.not_allowed(what, "; ".join(reasons))

    async def _drills(self, token: Credential) -> tuple[int, str]:
        refused = await self._may(token, DRILLS_PERMISSION, "the drills")
        if refused is not None:
            return refused
        if self.reports is None:
            return 404, render.unavailable("Drills", "no state dir")
        return 200, await self.reports.drills_html()

    async def _analysis(self, token: Credential) -> tuple[int, str]:
        refused = await self._may(token, ANALYSIS_PERMISSION, "the analysis of the platform")
        if refused is not None:
            return refused
        if self.reports is None:
            return 404, render.unavailable("Analysis", "no state dir")
        return 200, await self.reports.analysis_html()

    async def audit_page(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        status, content = await self._audit(who[0])
        body = f'<h2>Audit log</h2><section id="audit">{content}</section>'
        return _html(render.page("Audit", body, user=who[1].username, current="/audit"),
                     status=status)  # fmt: skip

    async def fragment(self, request: web.Request) -> web.Response:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        name = request.match_info["name"]
        if name in self.live.fragments:
            return _html(self.live.fragments[name])
        if name == "events":
            status, content = await self._events(who[0])
        elif name == "audit":
            status, content = await self._audit(who[0])
        elif name == "drills":
            status, content = await self._drills(who[0])
        elif name == "analysis":
            status, content = await self._analysis(who[0])
        else:
            raise web.HTTPNotFound()
        return _html(content, status=status)

    async def _events(self, token: Credential) -> tuple[int, str]:
        if self.platform is None:
            return 200, render.unavailable("Events", "the topology is insecure: no API identity")
        try:
            status, out = await self.platform.request(
                token, "GET", EVENTS_PATH, params={"limit": "200"}
            )
        except PlatformUnavailable as exc:
            return 503, render.unavailable("Events", str(exc))
        if status == 403:
            return 403, render.not_allowed("the Events of kube-system", _message(out))
        if status >= 400:
            return status, render.unavailable("Events", _message(out))
        return 200, render.events(out.get("items") or [])

    async def _audit(self, token: Credential) -> tuple[int, str]:
        """The API's `/audit` as the user; where it does not serve one (404), the console
        reads the replicas' logs once a SelfSubjectAccessReview says the user may get
        `/audit` (haplane:auditor, cluster-admin)."""
        if self.platform is None:
            return 200, render.audit(await asyncio.to_thread(self.read_audit))
        try:
            status, out = await self.platform.request(token, "GET", "/audit")
            if status == 403:
                return 403, render.not_allowed("the audit log", _message(out))
            if status == 200 and isinstance(out, dict) and isinstance(out.get("items"), list):
                return 200, render.audit(out["items"])
            allowed, reason = await self.platform.can_i(token, "get", path="/audit")
        except PlatformUnavailable as exc:
            return 503, render.unavailable("Audit", str(exc))
        except NotAuthenticated as exc:
            return 401, render.unavailable("Audit", str(exc))
        if not allowed:
            return 403, render.not_allowed("the audit log", reason)
        return 200, render.audit(await asyncio.to_thread(self.read_audit))

    async def sse(self, request: web.Request) -> web.StreamResponse:
        who = await self._who(request)
        if isinstance(who, web.Response):
            return who
        token, identity = who
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        _secure(resp.headers)
        await resp.prepare(request)
        seen = -1
        sent: dict[str, str] = {}  # what this page has of each fragment
        verified = time.monotonic()
        self.live.watchers += 1
        try:
            while not self.live.stopping:
                seen = self.live.version
                changed = {k: v for k, v in self.live.fragments.items() if sent.get(k) != v}
                if changed:
                    await resp.write(b"".join(sse_message(k, v) for k, v in changed.items()))
                    sent.update(changed)
                else:
                    await resp.write(b": keep-alive\n\n")
                await self.live.wait_change(seen, timeout=15.0)
                if self.platform is not None and time.monotonic() - verified > self.reverify_every:
                    # a token revoked or expired meanwhile ends the stream (the browser's
                    # reconnect then gets 401 and the page goes to the login)
                    try:
                        await self.identities.identify(self.platform, token)
                    except NotAuthenticated:
                        emit("stream ended: token no longer accepted", user=identity.username)
                        break
                    except PlatformUnavailable:
                        pass  # keep showing the platform's status, which needs no API
                    verified = time.monotonic()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.live.watchers -= 1
        return resp


def _message(out: Any) -> str:
    if isinstance(out, dict) and out.get("message"):
        return str(out["message"])
    return "no message"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


@web.middleware
async def _headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        _secure(exc.headers)
        raise
    if not resp.prepared:  # a stream sent its headers already (it set its own)
        _secure(resp.headers)
    return resp


def _secure(headers: Any) -> None:
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cache-Control", "no-store")


def load_topology(state: StateDir) -> Topology:
    return load_file(state.topology_file)
