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


def test_the_lag_chart_is_live(auditor_page: Page):
    """The standby's lag is charted from the replicators' reports and the chart grows on the
    open page, sample by sample (one per second while someone looks)."""
    page = auditor_page.page
    series = "#lag-chart polyline.series"

    def points() -> int:
        counts = page.eval_on_selector_all(series, "els => els.map(e => +e.dataset.points)")
        return sum(counts)

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


def test_the_analysis_of_the_running_topology(auditor_page: Page):
    page = auditor_page.page
    page.click("nav a[href='/analysis']")
    page.wait_for_selector("#analysis-report[data-availability]", timeout=60_000)
    # what runs is what the file says, and the example breaks no HA rule
    assert page.get_attribute("#analysis-report", "data-errors") == "0"
    assert page.locator("#findings-table tr[data-severity=error]").count() == 0
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
    page.wait_for_selector("#lag-chart polyline.series", timeout=30_000)
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
