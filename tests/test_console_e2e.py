"""The web console in a real browser against the running two-regions example: Debian's
chromium driven by Playwright (its own browser download cannot work here), one topology for
the module, real etcd and processes, identities made through the API with kubectl.

Also writes the README's screenshots (docs/screenshots/*.png).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .topology_helpers import down_and_check, haplane, kubectl

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("console") / "state"
    try:
        haplane(state, "up", "-d", "--example", "two-regions", timeout=300)
        yield state
    finally:
        down_and_check(state)  # also after a failed `up`: nothing of this state dir is left


def _status(state: Path) -> dict[str, Any]:
    r = haplane(state, "status", "--json", check=False, timeout=120)
    return dict(json.loads(r.stdout))


@pytest.fixture(scope="module")
def console_url(topo: Path) -> str:
    consoles = _status(topo)["console"]
    assert [c["name"] for c in consoles] == ["global/console-1", "global/console-2"]
    assert all(c["ready"] and c["url"].startswith("https://") for c in consoles), consoles
    return str(consoles[0]["url"])


def _kubectl_ok(kubeconfig: Path, *args: str, tries: int = 20) -> str:
    """kubectl until it succeeds (a busy 2-core machine times writes out now and then); an
    AlreadyExists from an earlier try that did commit counts as done."""
    last = None
    for _ in range(tries):
        last = kubectl(kubeconfig, *args)
        if (
            last.returncode == 0
            or "AlreadyExists" in last.stderr
            or "already exists" in (last.stderr)
        ):
            return last.stdout
        time.sleep(2)
    raise AssertionError(f"kubectl {' '.join(args)}: {last.stderr if last else ''}")


@pytest.fixture(scope="module")
def admin_kubeconfig(topo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kubeconfig = tmp_path_factory.mktemp("console-kube") / "admin.kubeconfig"
    haplane(topo, "kubeconfig", "-o", str(kubeconfig))
    return kubeconfig


@pytest.fixture(scope="module")
def tokens(topo: Path, admin_kubeconfig: Path) -> dict[str, str]:
    """ServiceAccount tokens (TokenRequest, through the gate as haplane-admin): `auditor`
    from `haplane console token` (kube-system/haplane-console, bound to haplane:auditor:
    reads what view reads, Events, /audit), `viewer` made with kubectl and bound to view."""
    kubeconfig = admin_kubeconfig
    out = {}
    for _ in range(10):  # a busy machine's gate may refuse a write now and then
        r = haplane(topo, "console", "token", "--duration", "1h", check=False, timeout=60)
        if r.returncode == 0:
            break
        time.sleep(2)
    assert r.returncode == 0, r.stderr
    assert "haplane:auditor" in r.stderr and "valid until" in r.stderr
    out["auditor"] = r.stdout.strip()
    assert out["auditor"].count(".") == 2  # a JWT, and nothing else on stdout
    for name, namespace, role in [
        ("console-viewer", "default", "view"),
    ]:
        _kubectl_ok(kubeconfig, "create", "serviceaccount", name, "-n", namespace)
        _kubectl_ok(kubeconfig, "create", "clusterrolebinding", name, f"--clusterrole={role}",
                    f"--serviceaccount={namespace}:{name}")  # fmt: skip
        out[name.removeprefix("console-")] = _kubectl_ok(
            kubeconfig, "create", "token", name, "-n", namespace
        ).strip()
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # failing, not skipping, without them: `./dev setup` installs both (as promtool's tests do)
    assert Path(CHROMIUM).exists(), f"no {CHROMIUM}: `./dev setup` installs Debian's chromium"
    from playwright.sync_api import sync_playwright  # `[dev]` extra; imported only here

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()


class Page:
    """A signed-in page and the console messages and page errors it collected."""

    def __init__(self, browser: Any, url: str, token: str | None) -> None:
        # the console's certificate is from the platform CA, which chromium does not trust
        self.context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
        )
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(f"{m.type}: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.url = url
        if token is not None:
            self.page.goto(f"{url}/", timeout=60_000)
            assert self.page.url == f"{url}/login"  # anonymous: sent to the login page
            for attempt in (1, 2, 3):
                self.page.fill("#token", token)
                self.page.click("button[type=submit]")
                self.page.wait_for_selector("#active-region[data-region], .error", timeout=30_000)
                refused = self.page.locator(".login .error")
                if refused.count() == 0:
                    break
                # "did not answer": every gate refused clients (a loaded machine's control
                # etcd answering late); the console said so rather than guess: sign in again
                why = refused.inner_text()
                assert "did not answer" in why and attempt < 3, f"sign-in refused: {why}"
                time.sleep(5)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def auditor_page(browser: Any, console_url: str, tokens: dict[str, str]) -> Iterator[Page]:
    page = Page(browser, console_url, tokens["auditor"])
    try:
        yield page
    finally:
        page.close()


def _until(check: Any, seconds: float) -> None:
    """Poll `check` from Python: the console's CSP forbids eval, which Playwright's
    string predicates (wait_for_function) need, and the test must not switch the CSP off."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds}s"
        time.sleep(0.1)


def _get(
    url: str, ca: Path, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    ctx = ssl.create_default_context(cafile=str(ca))

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_anonymous_requests_get_the_login_page_or_401_and_no_data(topo: Path, console_url: str):
    ca = topo / "pki" / "platform" / "ca.crt"
    code, _, headers = _get(f"{console_url}/", ca, {"Accept": "text/html"})
    assert code == 303 and headers["Location"] == "/login"
    for path in ("/fragments/map", "/fragments/history", "/fragments/lag", "/sse", "/events",
                 "/audit", "/drills", "/analysis"):  # fmt: skip
        code, body, _ = _get(f"{console_url}{path}", ca)
        assert code == 401, path
        assert "eu-west" not in body and "data-name" not in body, path
    code, body, _ = _get(f"{console_url}/fragments/map", ca, {"Authorization": "Bearer nope"})
    assert code == 401 and "data-name" not in body
    code, body, _ = _get(f"{console_url}/login", ca)
    assert code == 200 and 'name="token"' in body
    # the certificate names the console's address, from the platform CA (checked above)


def test_page_loads_with_every_component_and_no_console_errors(auditor_page: Page, topo: Path):
    page = auditor_page.page
    expected = 9 + 4 + 4 + 4 + 3 + 2 + 2  # etcd, replicas, balancers, replicators, gates, ...
    _until(lambda: page.locator("li.component[data-health=ok]").count() == expected, 60)
    assert page.get_attribute("#active-region", "data-region") == "eu-west"
    assert len(_diagram_nodes(page, "ok")) == expected  # consoles are drawn too, on their sites
    leaders = page.eval_on_selector_all(
        "li.component[data-kind=etcd][data-leader=true]", "els => els.map(e => e.dataset.name)"
    )
    assert len(leaders) == 2, leaders  # one per regional cluster
    assert page.locator("#history tr[data-epoch='1']").count() == 1
    assert "system:serviceaccount:kube-system:haplane-console" in page.inner_text("#user")
    time.sleep(2)  # a few live updates in
    assert auditor_page.errors == []


def test_a_console_keeps_its_etcd_channels_between_gathers(auditor_page: Page, topo: Path):
    """With a page open, the console gathers every second over the same gRPC channels: its
    connections to the etcd members are the same sockets seconds apart (a console that made
    new channels per gather would show new local ports every second)."""
    import psutil

    doc = _status(topo)
    ports = {int(m["endpoint"].rsplit(":", 1)[1]) for c in doc["clusters"] for m in c["members"]}
    assert len(ports) == 9, ports  # two regions' members and the control etcd's
    pid = next(c["pid"] for c in doc["console"] if c["url"] == auditor_page.url)

    def etcd_sockets() -> set[tuple[int, int]]:
        return {
            (c.laddr.port, c.raddr.port)
            for c in psutil.Process(pid).net_connections("tcp")
            if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED
        }

    # a channel to every member (and the active-region watch's to the control etcd's)
    _until(lambda: {r for _, r in etcd_sockets()} == ports, 30)
    before = etcd_sockets()
    time.sleep(3.5)  # three gathers or more
    after = etcd_sockets()
    # the same sockets: none made for a gather since (a gather's new channels would show new
    # local ports here, to the control etcd's members too)
    assert after == before, (sorted(before), sorted(after))


def test_failover_shows_on_the_open_page_within_2s_without_reload(auditor_page: Page, topo: Path):
    page = auditor_page.page
    page.evaluate("window.__same_page = true")
    before = int(page.get_attribute("#active-region", "data-epoch") or 0)
    r = haplane(topo, "failover", "--to", "eu-central", "--reason", "console e2e", "--direct",
                timeout=120)  # fmt: skip
    done = time.monotonic()
    page.wait_for_selector("#active-region[data-region='eu-central']", timeout=2_000)
    shown = time.monotonic() - done
    assert int(page.get_attribute("#active-region", "data-epoch") or 0) > before
    assert page.evaluate("window.__same_page === true"), "the page was reloaded"
    row = page.locator(f"#history tr[data-epoch='{before + 1}']")
    row.wait_for(timeout=2_000)
    assert "console e2e" in row.inner_text()
    _until(lambda: f"region eu-central (active, epoch {before + 1})" in page.inner_text(
        "#diagram"), 5)  # fmt: skip
    print(f"failover shown {shown:.2f}s after `haplane failover` returned ({r.stderr[-200:]})")
    assert auditor_page.errors == []


def test_a_killed_member_turns_red_and_back(auditor_page: Page, topo: Path):
    page = auditor_page.page
    leader = page.eval_on_selector_all(
        "li.component[data-kind=etcd][data-leader=true]",
        "els => els.map(e => e.dataset.name).filter(n => n.startsWith('eu-west/'))",
    )
    victim = next(f"eu-west/etcd-{i}" for i in (2, 3, 1) if f"eu-west/etcd-{i}" not in leader)
    selector = f"li.component[data-name='{victim}']"
    # healthy first (a busy machine can time a status read out after the switch)
    _until(lambda: page.get_attribute(selector, "data-health") == "ok", 30)
    haplane(topo, "fault", "kill", victim)
    t0 = time.monotonic()
    try:
        page.wait_for_selector(f"{selector}[data-health='down']", timeout=5_000)
        print(f"{victim} red {time.monotonic() - t0:.2f}s after the kill")
        # red as soon as it stops answering; the supervisor's word for why follows with the
        # next gather (the first may see it unreachable before the supervisor reaped it)
        _until(lambda: "killed" in page.inner_text(selector), 5)
        # and on the diagram (drawn again when the health changed, pushed on the same stream)
        _until(lambda: victim in _diagram_nodes(page, "down"), 5)
    finally:
        haplane(topo, "fault", "restart", victim)
    page.wait_for_selector(f"{selector}[data-health='ok']", timeout=30_000)
    _until(lambda: victim in _diagram_nodes(page, "ok"), 10)
    assert auditor_page.errors == []


def _diagram_nodes(page: Any, health: str) -> list[str]:
    return list(
        page.eval_on_selector_all(
            f"#diagram g.node.{health} > title", "els => els.map(e => e.textContent)"
        )
    )


def _line_points(page: Any) -> list[int]:
    """How many samples each line of the lag chart has."""
    return list(
        page.eval_on_selector_all(
            "#lag-chart polyline.series", "els => els.map(e => +e.dataset.points)"
        )
    )


def test_the_lag_chart_is_live(auditor_page: Page):
    """The standby's lag is charted from the replicators' reports and the chart grows on the
    open page, sample by sample (one per second while someone looks)."""
    page = auditor_page.page

    def points() -> int:
        return sum(_line_points(page))

    _until(lambda: points() >= 2, 30)
    before = points()
    _until(lambda: points() > before, 10)
    standby = page.get_attribute("#lag li[data-last]:not([data-last=''])", "data-region")
    assert standby in ("eu-west", "eu-central"), standby
    last = float(page.get_attribute(f"#lag li[data-region='{standby}']", "data-last") or "nan")
    assert 0.0 <= last < 30.0, last  # seconds, measured while the source answered
    assert page.locator("#lag-chart line.limit").count() >= 1  # the pair's maxLagMs
    assert auditor_page.errors == []


def test_a_drill_shows_in_the_history_with_its_timeline(auditor_page: Page, topo: Path):
    r = haplane(topo, "drill", "replica-kill", "--direct", "--warmup", "1", "--observe", "2",
                check=False, timeout=180)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr[-2000:]  # a verdict either way: it is listed
    page = auditor_page.page
    page.click("nav a[href='/drills']")
    row = page.locator("#drills-table tr[data-scenario='replica-kill']").first
    row.wait_for(timeout=15_000)
    passed = row.get_attribute("data-passed")
    assert passed == ("true" if r.returncode == 0 else "false")
    row.locator("a.report").click()
    page.wait_for_selector("#drill-report[data-scenario='replica-kill']", timeout=15_000)
    assert page.get_attribute("#drill-report", "data-passed") == passed
    assert page.locator("#drill-report svg rect.op").count() > 10  # every client operation
    assert page.locator("#drill-figures tr").count() > 3
    assert auditor_page.errors == []


def test_the_analysis_of_the_running_topology(auditor_page: Page, topo: Path):
    # the drill before restarted what it killed: a component not yet back would be a finding
    # of `validate --live` ("does not answer"), rightly; the analysis is of a whole topology
    _until(lambda: haplane(topo, "status", "--json", check=False).returncode == 0, 90)
    page = auditor_page.page
    deadline = time.monotonic() + 60
    while True:
        page.click("nav a[href='/analysis']")
        page.wait_for_selector("#analysis-report[data-availability]", timeout=60_000)
        # what runs is what the file says, and the example breaks no HA rule
        errors = page.locator("#findings-table tr[data-severity=error]")
        found = [errors.nth(i).inner_text() for i in range(errors.count())]
        # a member that missed its 1 s to answer on a loaded machine is a finding of that
        # moment (rightly): asked again; any other finding fails at once
        if not found or not all("live-unreachable" in f for f in found):
            break
        assert time.monotonic() < deadline, found
        time.sleep(2)
    assert page.get_attribute("#analysis-report", "data-errors") == "0", found
    assert not found
    assert float(page.get_attribute("#analysis-report", "data-availability") or 0) > 0.999
    assert page.locator("#analysis-table tr").count() > 3
    assert auditor_page.errors == []


def test_events_and_audit_for_the_auditor(auditor_page: Page):
    page = auditor_page.page
    page.click("nav a[href='/events']")

    def events_shown() -> bool:  # a 503 (gates refusing clients under load): ask again
        if page.locator("#events-table, #events-empty").count():
            return True
        page.goto(f"{auditor_page.url}/events")
        return False

    _until(events_shown, 60)
    assert page.locator("[data-not-allowed]").count() == 0
    # the switch above is an Event (the supervisor's watch posts it)
    _until(lambda: page.locator("#events-table >> text=/Committed/").count() > 0, 20)
    page.click("nav a[href='/audit']")
    page.wait_for_selector("#audit-table", timeout=10_000)
    assert page.locator("[data-not-allowed]").count() == 0
    assert auditor_page.errors == []
    page.click("nav a[href='/']")
    page.wait_for_selector("#active-region[data-region]", timeout=10_000)


def test_a_view_user_cannot_open_the_audit_page(
    browser: Any, console_url: str, tokens: dict[str, str]
):
    viewer = Page(browser, console_url, tokens["viewer"])
    try:
        page = viewer.page
        assert "console-viewer" in page.inner_text("#user")
        resp = page.goto(f"{console_url}/audit")
        assert resp is not None and resp.status == 403
        page.wait_for_selector("[data-not-allowed]")
        assert page.locator("#audit-table").count() == 0
        assert 'cannot get path "/audit"' in page.inner_text("[data-not-allowed]")
        # view may read Events, as in Kubernetes (503 is the console saying the gates did not
        # take the connection: a loaded machine's control etcd answering late; ask again)
        statuses: list[int] = []

        def events_shown() -> bool:
            resp = page.goto(f"{console_url}/events")
            statuses.append(resp.status if resp is not None else 0)
            return statuses[-1] != 503

        _until(events_shown, 60)
        assert statuses[-1] == 200, statuses
    finally:
        viewer.close()


def test_a_client_certificate_signs_in_without_a_token(
    browser: Any,
    topo: Path,
    console_url: str,
    admin_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """A person's certificate from the platform CA (`haplane kubeconfig --user`) imported in
    the browser signs in with no token; the console acts as its owner by impersonation, so
    RBAC judges that person (a view binding of their group: no audit log), and the API's
    audit log names the console and whom it acted as."""
    import base64

    import yaml

    d = tmp_path_factory.mktemp("console-cert")
    kubeconfig = d / "carol.kubeconfig"
    haplane(topo, "kubeconfig", "--user", "carol", "--group", "console-viewers",
            "-o", str(kubeconfig))  # fmt: skip
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    cert, key = d / "carol.crt", d / "carol.key"
    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    key.write_bytes(base64.b64decode(user["client-key-data"]))
    _kubectl_ok(admin_kubeconfig, "create", "clusterrolebinding", "console-viewers",
                "--clusterrole=view", "--group=console-viewers")  # fmt: skip
    context = browser.new_context(
        ignore_https_errors=True,
        client_certificates=[{"origin": console_url, "certPath": str(cert), "keyPath": str(key)}],
    )
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        resp = page.goto(f"{console_url}/", timeout=60_000)
        assert resp is not None and resp.status == 200 and page.url == f"{console_url}/"
        assert page.inner_text("#user") == "carol"
        _until(lambda: page.locator("li.component[data-health=ok]").count() > 20, 60)
        resp = page.goto(f"{console_url}/audit")
        assert resp is not None and resp.status == 403
        assert 'User "carol" cannot get path "/audit"' in page.inner_text("[data-not-allowed]")
        statuses: list[int] = []

        def events_shown() -> bool:  # view reads Events (503: the gates were busy; again)
            r = page.goto(f"{console_url}/events")
            statuses.append(r.status if r is not None else 0)
            return statuses[-1] != 503

        _until(events_shown, 60)
        assert statuses[-1] == 200, statuses
        assert errors == []
    finally:
        context.close()
    acted = []
    for log in (topo / "audit").rglob("*.log"):
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            if (ev.get("impersonatedUser") or {}).get("username") == "carol":
                acted.append(ev["user"]["username"])
    assert acted and set(acted) == {"system:haplane:console"}


def test_screenshots_for_the_readme(
    browser: Any, auditor_page: Page, console_url: str, tokens: dict[str, str]
):
    """docs/screenshots/: the live map with its history, the Events page, and the audit page
    as a `view` user sees it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = auditor_page.page
    page.goto(f"{console_url}/")
    _until(lambda: page.locator("li.component[data-health=ok]").count() >= 28, 90)
    # a line of two samples or more (wait_for_selector would look at the first line only,
    # which may be an older pair's lone sample: an invisible one-point polyline)
    _until(lambda: max(_line_points(page), default=0) >= 2, 60)
    page.screenshot(path=str(SCREENSHOTS / "console-map.png"), full_page=True)
    page.goto(f"{console_url}/drills")
    page.locator("#drills-table a.report").first.click()
    page.wait_for_selector("#drill-report svg", timeout=15_000)
    page.screenshot(path=str(SCREENSHOTS / "console-drill.png"), full_page=True)
    page.goto(f"{console_url}/events")
    page.wait_for_selector("#events-table", timeout=10_000)
    page.screenshot(path=str(SCREENSHOTS / "console-events.png"), full_page=True)
    viewer = Page(browser, console_url, tokens["viewer"])
    try:
        viewer.page.goto(f"{console_url}/audit")
        viewer.page.wait_for_selector("[data-not-allowed]")
        viewer.page.screenshot(path=str(SCREENSHOTS / "console-audit-view-user.png"))
    finally:
        viewer.close()
    for name in ("console-map.png", "console-drill.png", "console-events.png",
                 "console-audit-view-user.png"):  # fmt: skip
        data = (SCREENSHOTS / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, name
    page.goto(f"{console_url}/")


def test_consoles_are_processes_of_this_state_dir(topo: Path):
    """Supervised like every component (`haplane down`, in the fixture, must stop them: it
    fails on any process of this state dir left behind)."""
    import psutil

    consoles = _status(topo)["console"]
    assert all(c["state"] == "running" and c["pid"] for c in consoles), consoles
    for c in consoles:
        argv = psutil.Process(c["pid"]).cmdline()
        assert argv[1:3] == ["-m", "haplane.console"] and str(topo) in argv, argv


# what the open page shows, read in one go (a function handed to the page, not eval'd text:
# the console's CSP forbids eval)
_PAGE_STATE = """() => {
  const q = (s) => Array.from(document.querySelectorAll(s));
  const active = document.querySelector('#active-region');
  return {
    marker: window.__region_kill_marker || null,
    url: location.href,
    region: active ? active.dataset.region : null,
    epoch: active ? Number(active.dataset.epoch) : null,
    fenced: q('#map .summary .badge.warn').some((b) => b.textContent.trim() === 'fenced'),
    components: Object.fromEntries(q('li.component').map((e) => [e.dataset.name,
                                                                 e.dataset.health])),
    diagramDown: q('#diagram g.node.down > title').map((e) => e.textContent),
    history: q('#history tr[data-epoch]').map((tr) => ({
      epoch: Number(tr.dataset.epoch), region: tr.cells[1].textContent,
      from: tr.cells[2].textContent, by: tr.cells[3].textContent,
      reason: tr.cells[4].textContent, unfenced: tr.cells[6].textContent})),
    lag: q('#lag li[data-region]').map((li) => ({region: li.dataset.region,
      source: li.dataset.source, state: li.dataset.state, last: li.dataset.last})),
    points: q('#lag-chart polyline.series').map((p) => [p.dataset.region, p.dataset.source,
                                                        Number(p.dataset.points)]),
  };
}"""


def _kills_since(state: Path, since: float) -> dict[str, float]:
    """Each component the supervisor SIGKILLed at or after `since` (unix time), and when: its
    `fault` events in STATE/supervisor.log (wall clock, milliseconds)."""
    from datetime import datetime

    out: dict[str, float] = {}
    for line in (state / "supervisor.log").read_text(errors="replace").splitlines():
        if '"fault"' not in line or not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("msg") != "fault" or rec.get("action") != "kill":
            continue
        t = datetime.fromisoformat(rec["ts"]).timestamp()
        if t >= since:
            out.setdefault(rec["component"], t)
    return out


@pytest.mark.timeout(900)
def test_a_region_kill_drill_on_the_open_page(
    browser: Any,
    topo: Path,
    tokens: dict[str, str],
    admin_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """Issue 20's "done when", as a new user would: one page of a console the drill leaves
    running, signed in with `haplane console token`, open (never reloaded) while `haplane
    drill region-kill` asks for a Drill through the API (another operator approves it: the
    default policy for drills that move the active region) and the supervisor's agent kills
    the active region under load. The page must show the region's components down, the
    surviving region active in a new epoch with the controller's history entry, the lag
    chart's stream breaking and coming back reversed, and the recovery the drill leaves.

    Last in the module: it moves the active region (nothing after it assumes one). Times are
    printed (`-s`), not asserted: timing targets belong in bench/."""
    import re
    import subprocess
    import sys
    import uuid

    doc = _status(topo)
    # a console on another site than the region the drill kills (the one on the killed site
    # dies with it, checked below)
    active = doc["global_state"]["active"]["region"]
    console = next(c for c in doc["console"] if c["site"] != active)
    d = tmp_path_factory.mktemp("console-region-kill")
    # the second pair of eyes: a dr-operator with a certificate of the platform CA
    approver = d / "dora.kubeconfig"
    haplane(topo, "kubeconfig", "--user", "dora", "-o", str(approver))
    _kubectl_ok(admin_kubeconfig, "create", "clusterrolebinding", "console-e2e-dora",
                "--clusterrole=haplane:dr-operator", "--user=dora")  # fmt: skip

    viewer = Page(browser, str(console["url"]), tokens["auditor"])
    try:
        page = viewer.page
        marker = uuid.uuid4().hex
        page.evaluate(f"window.__region_kill_marker = '{marker}'")
        url = page.url
        n_components = 28

        def state() -> dict[str, Any]:
            return dict(page.evaluate(_PAGE_STATE))

        # a healthy start, and the standby's stream from the region about to die measured
        def healthy() -> bool:
            return list(state()["components"].values()).count("ok") == n_components

        try:
            _until(healthy, 90)
        except AssertionError:
            raise AssertionError(f"not all healthy: {state()['components']}") from None

        def streaming_pair(s: dict[str, Any], region: str, source: str) -> dict[str, Any] | None:
            for row in s["lag"]:
                if (row["region"], row["source"]) == (region, source) and (
                    row["state"] == "Streaming" and row["last"] != ""
                ):
                    return dict(row)
            return None

        def other(region: str) -> str:
            return next(r for r in ("eu-west", "eu-central") if r != region)

        # the region the drill will kill: the one the page shows active, with the standby's
        # stream from it measured (read again: a loaded machine's controller may have
        # failed over since the status above)
        start: dict[str, Any] = {}

        def stream_measured() -> bool:
            start.update(state())
            region = start["region"]
            return bool(region) and streaming_pair(start, other(region), region) is not None

        try:
            _until(stream_measured, 90)
        except AssertionError:
            raise AssertionError(f"no measured stream: {start['lag']}") from None
        killed, standby = start["region"], other(start["region"])
        points_before = sum(n for r, s, n in start["points"] if (r, s) == (killed, standby))

        out_path, err_path = d / "drill.out", d / "drill.err"
        t0 = time.time()

        def ask() -> subprocess.Popen[str]:
            with open(out_path, "w") as out, open(err_path, "w") as err:
                return subprocess.Popen(
                    [sys.executable, "-m", "haplane.cli", "drill", "region-kill", "--warmup",
                     "1", "--reason", "console e2e: region-kill", "--state-dir", str(topo)],
                    stdout=out, stderr=err, stdin=subprocess.DEVNULL, text=True,
                )  # fmt: skip

        proc = ask()
        samples: list[tuple[float, dict[str, Any]]] = []
        shot = SCREENSHOTS / "console-region-kill.png"
        shot_taken = False
        approved_at = None
        try:
            # its name (a loaded machine's gate may refuse the connection, "did not answer":
            # asked again, as a person would), then another operator's approval (a new
            # binding may take a moment to reach every replica: asked again)
            name = None
            deadline = time.monotonic() + 180
            while name is None:
                m = re.search(r"drill/(\S+) created", out_path.read_text())
                name = m.group(1) if m else None
                if name is None and proc.poll() is not None:
                    said = err_path.read_text()
                    assert "did not answer" in said and time.monotonic() < deadline, said
                    time.sleep(5)
                    proc = ask()
                assert time.monotonic() < deadline, err_path.read_text()
                time.sleep(0.2)

            def phase() -> str | None:
                r = kubectl(admin_kubeconfig, "get", "drill", name, "-o", "json")
                return json.loads(r.stdout)["status"].get("phase") if r.returncode == 0 else None

            said = ""
            for _ in range(10):
                try:
                    r = haplane(topo, "approve", name, "--kubeconfig", str(approver),
                                "--message", "console e2e", check=False, timeout=120)  # fmt: skip
                    said = r.stdout + r.stderr
                    if r.returncode == 0:
                        break
                except subprocess.TimeoutExpired:
                    said = "`haplane approve` timed out"
                if phase() not in ("Pending", None):  # an answer lost on the way back
                    break
                time.sleep(2)
            assert phase() != "Pending", said
            approved_at = time.time()
            # the page while the agent runs the drill: every state it shows, timed
            deadline = time.monotonic() + 600
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the drill did not end within 600 s"
                s = state()
                samples.append((time.time(), s))
                victims_down = [
                    n for n, h in s["components"].items()
                    if n.startswith(f"{killed}/") and h == "down"
                ]  # fmt: skip
                if (
                    not shot_taken
                    and s["region"] == standby
                    and len(victims_down) >= 9  # etcd, replicas, balancers, replicators
                ):
                    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shot), full_page=True)
                    shot_taken = True
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()  # our own child, by its PID (the agent's drill undoes its fault)
                proc.wait()
        drill_done = time.time()
        drill_out, drill_err = out_path.read_text(), err_path.read_text()
        assert proc.returncode == 0, (drill_out, drill_err)
        assert "succeeded" in drill_out and "failedOver: true" in drill_out, drill_out

        # what the drill says it killed, and when (the supervisor's log)
        m = re.search(r"reports: (\S+\.json)", drill_out)
        assert m, drill_out
        report = json.loads(Path(m.group(1)).read_text())
        fault = next(e for e in report["events"] if e["name"] == "fault")
        victims = fault["detail"].split(", ")
        assert victims and all(v.startswith(f"{killed}/") or v.startswith("global/")
                               for v in victims), victims  # fmt: skip
        # what the example places on the site dies with it: a console on either region's site
        # (GitOps controllers only on eu-west's and the witness: none when eu-central is the
        # one killed, as after the failover test above; the drill's unit test covers eu-west)
        consoles = [c["name"] for c in doc["console"] if c["site"] == killed]
        assert consoles and [v for v in victims if "console" in v] == consoles, victims
        assert [v for v in victims if "gitops" in v] == [
            g["name"] for g in doc["gitops"] if g["site"] == killed
        ], victims
        kills = _kills_since(topo, t0)
        assert set(victims) <= set(kills), (victims, kills)
        t_fault = min(kills[v] for v in victims)
        committed = next((e["t"] for e in report["events"] if e["name"] == "committed"), None)
        t_commit = t_fault + (committed - fault["t"]) if committed is not None else None
        before, after = report["meta"]["before"], report["meta"]["after"]
        assert before["region"] == killed, (
            f"the drill found {before['region']} active, the page {killed} just before: an "
            "automatic failover in between (a loaded machine?)"
        )
        assert after["region"] == standby and after["epoch"] == before["epoch"] + 1, after

        # and the page recovers as the drill leaves it: every component healthy, the
        # survivor active and writable, the new stream (the killed region copying from the
        # survivor) measured
        def recovered(s: dict[str, Any]) -> bool:
            return (
                list(s["components"].values()).count("ok") == n_components
                and s["region"] == standby
                and not s["fenced"]
                and streaming_pair(s, killed, standby) is not None
            )

        def sample() -> bool:
            samples.append((time.time(), state()))
            return recovered(samples[-1][1])

        _until(sample, 120)
        end = samples[-1][1]
        recovered_at = next(t for t, s in samples if recovered(s))

        # 1. one page all along: the marker set before the drill is there, the URL the same
        assert all(s["marker"] == marker for _, s in samples), "the page was reloaded"
        assert page.evaluate("window.__region_kill_marker") == marker
        assert page.url == url == end["url"]
        # 2. the map showed every component the drill killed down, at some point between
        # the kill and the drill's end (a loaded machine's component may look down for a
        # moment before: that does not count)
        first_down: dict[str, float] = {}
        diagram_down: dict[str, float] = {}
        for t, s in samples:
            if not t_fault <= t <= drill_done:
                continue
            for n, h in s["components"].items():
                if h == "down":
                    first_down.setdefault(n, t)
            for n in s["diagramDown"]:
                diagram_down.setdefault(n, t)
        not_seen = [v for v in victims if v not in first_down]
        assert not not_seen, f"never shown down: {not_seen}"
        # the console the page came from kept serving (same process), and it was not down
        assert console["name"] not in first_down
        assert {c["name"]: c["pid"] for c in _status(topo)["console"]}[console["name"]] == (
            console["pid"]
        )
        # 3. the surviving region active in the new epoch, and its history row: made by the
        # failover controller (automatic), from the killed region, saying why
        new_epoch = before["epoch"] + 1
        shown_active = next(
            (t for t, s in samples if s["region"] == standby and s["epoch"] == new_epoch), None
        )
        assert shown_active is not None, [s["region"] for _, s in samples]
        shown_fenced = next(
            (t for t, s in samples if s["epoch"] == new_epoch and s["fenced"]), None
        )
        shown_writable = next(
            (t for t, s in samples if s["epoch"] == new_epoch and not s["fenced"]), None
        )
        row = next(h for h in end["history"] if h["epoch"] == new_epoch)
        assert (row["region"], row["from"]) == (standby, killed), row
        assert row["by"].startswith("controller:"), row  # automatic, not an operator
        assert killed in row["reason"] and "down" in row["reason"], row
        assert row["unfenced"] not in ("", "not recorded"), row
        shown_row = next(
            t for t, s in samples if any(h["epoch"] == new_epoch for h in s["history"])
        )

        # 4. the lag chart: the survivor's stream from the killed region broke (no longer
        # Streaming with a measure: Disconnected while its source was dead, or no measure),
        # was Stopped once the survivor was promoted, and the killed region, back, copies
        # from the survivor, measured, with new points on its line
        def old_stream(s: dict[str, Any]) -> dict[str, Any]:
            absent = {"state": None, "last": None}  # not in the legend (never, after a start)
            pairs = (r for r in s["lag"] if (r["region"], r["source"]) == (standby, killed))
            return next(pairs, absent)

        after_kill = [(t, s) for t, s in samples if t >= t_fault]
        broke = next(
            (
                t
                for t, s in after_kill
                if old_stream(s)["state"] not in ("Streaming", None) or old_stream(s)["last"] == ""
            ),
            None,
        )
        assert broke is not None, [old_stream(s) for _, s in samples[:: len(samples) // 20 + 1]]
        disconnected = next(
            (t for t, s in after_kill if old_stream(s)["state"] == "Disconnected"), None
        )
        assert old_stream(end)["state"] == "Stopped" and old_stream(end)["last"] == "", end
        peak = max(float(old_stream(s)["last"] or 0) for _, s in samples)
        reversed_at = next(t for t, s in samples if streaming_pair(s, killed, standby))
        points_after = sum(n for r, s_, n in end["points"] if (r, s_) == (killed, standby))
        assert points_after > points_before, (points_before, points_after)
        states = []
        for _, s in samples:
            seen = tuple(sorted((r["source"], r["region"], r["state"]) for r in s["lag"]))
            if not states or states[-1] != seen:
                states.append(seen)
        assert viewer.errors == [], viewer.errors
        if shot_taken:
            data = shot.read_bytes()
            assert data.startswith(b"\x89PNG") and len(data) > 10_000

        def rel(t: float | None, zero: float) -> str:
            return "never" if t is None else f"{t - zero:+.2f}s"

        down_at = [first_down[v] for v in victims]
        on_diagram = [diagram_down[v] for v in victims if v in diagram_down]
        print(
            f"\nregion-kill of {killed} seen on {console['name']}'s open page "
            f"({len(samples)} samples)\n"
            f"from `haplane drill region-kill`: approved {rel(approved_at, t0)}, first SIGKILL "
            f"{rel(t_fault, t0)} ({len(victims)} components), committed {rel(t_commit, t0)}, "
            f"drill ended {rel(drill_done, t0)}\n"
            f"from the first SIGKILL: first shown down {rel(min(down_at), t_fault)}, all "
            f"{len(victims)} {rel(max(down_at), t_fault)}, on the diagram "
            f"{rel(min(on_diagram, default=None), t_fault)}; {standby} active in epoch "
            f"{new_epoch} {rel(shown_active, t_fault)} (after the commit "
            f"{rel(shown_active, t_commit) if t_commit else '?'}), fenced "
            f"{rel(shown_fenced, t_fault)}, writable {rel(shown_writable, t_fault)}, history "
            f"row {rel(shown_row, t_fault)}; lag stream broken {rel(broke, t_fault)} "
            f"(Disconnected {rel(disconnected, t_fault)}, peak {peak:.2f}s), reversed stream "
            f"measured {rel(reversed_at, t_fault)}; all healthy {rel(recovered_at, t_fault)}\n"
            f"history row: {row}\nlag legend (source, region, state): {states}\n"
            f"drill phases: {report.get('phases')}\n"
            f"screenshot: {shot if shot_taken else 'not taken'}"
        )
    finally:
        viewer.close()
