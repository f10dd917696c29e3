"""The GitOps controller as a component of `haplane up`, without starting a topology: where
each instance listens and which gate it dials, its kubeconfig, its ServiceAccount token, its
certificate, and what `status` makes of its metrics."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from haplane.auth.kubeconfig import load as load_kubeconfig
from haplane.auth.rbac import FAILOVER_CONTROLLER_SA, GITOPS_CONTROLLER_SA
from haplane.local import controller_token, security
from haplane.local.gate_plans import plan_of, resolve_all
from haplane.local.ports import PortRegistry
from haplane.local.state_dir import StateDir
from haplane.local.status import GitopsReport, StatusReport, leader_gauge
from haplane.local.supervisor import write_kubeconfig
from haplane.topology import load_text
from haplane.topology.loader import example_text


def example(edit: Any = None) -> Any:
    doc = yaml.safe_load(example_text("two-regions"))
    if edit is not None:
        edit(doc)
    return load_text(yaml.safe_dump(doc))


def test_each_instance_dials_its_own_sites_gate_on_a_port_kept_across_runs(tmp_path: Path):
    topology = example()
    plan = resolve_all(topology, PortRegistry(tmp_path / "ports.json"))
    gates = {g.site: g for g in plan.gates}
    assert [(x.qualified_name, x.site, x.server) for x in plan.gitops] == [
        ("global/gitops-1", "eu-west", gates["eu-west"].url),
        ("global/gitops-2", "witness", gates["witness"].url),
    ]
    assert all(x.url == f"http://127.0.0.1:{x.port}" for x in plan.gitops)  # no TLS asked
    ports = json.loads((tmp_path / "ports.json").read_text())
    assert ports["global/gitops-1#http"] == plan.gitops[0].port
    assert len({x.port for x in plan.gitops} | {g.admin_port for g in plan.gates}) == 5
    again = resolve_all(topology, PortRegistry(tmp_path / "ports.json"))
    assert [x.port for x in again.gitops] == [x.port for x in plan.gitops]


def test_an_instance_on_a_site_without_a_gate_dials_the_first_and_explicit_ports_hold(
    tmp_path: Path,
):
    def edit(doc: Any) -> None:
        doc["spec"]["sites"].append({"name": "lab", "zones": ["a"], "host": "127.0.0.5"})
        doc["spec"]["global"]["gitops"] = [{"name": "gitops-lab", "site": "lab", "port": 9911}]

    plan = resolve_all(example(edit), PortRegistry(tmp_path / "ports.json"))
    (x,) = plan.gitops
    assert (x.host, x.port, x.server) == ("127.0.0.5", 9911, plan.gates[0].url)
    none = resolve_all(
        example(lambda d: d["spec"]["global"].pop("gitops")), PortRegistry(tmp_path / "p2.json")
    )
    assert none.gitops == []


def test_with_tls_the_plan_is_https_and_each_instance_gets_a_serving_certificate(
    tmp_path: Path,
):
    from cryptography import x509

    topology = example()
    state = StateDir(tmp_path / "state")
    state.ensure()
    plan = plan_of(topology, state, read_only=False)
    assert plan.tls is not None
    assert all(
        x.url.startswith("https://") and x.server.startswith("https://") for x in plan.gitops
    )
    issued = security.ensure(plan.tls, topology, plan)
    assert {"platform/gitops.gitops-1", "platform/gitops.gitops-2"} <= set(issued)
    pair = plan.tls.serving("gitops", "gitops-2")
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage
    # a client of the platform through the gate: no etcd certificate
    assert not list(plan.tls.etcd_dir.glob("*gitops*"))
    assert plan.tls.gitops_token.name == "gitops-controller.token"
    assert plan.tls.gitops_token.parent == plan.tls.controller_token.parent


def test_the_kubeconfig_names_the_gate_the_ca_and_the_token_file(tmp_path: Path):
    token = tmp_path / "tokens" / "gitops-controller.token"
    from haplane.auth.pki import Pki

    pki = Pki(tmp_path / "pki")
    pki.ensure_ca("test CA")
    ca = pki.ca_cert
    path = write_kubeconfig(
        tmp_path / "gitops" / "gitops-1.kubeconfig",
        "two-regions",
        "https://127.0.0.1:6443",
        ca=ca,
        token_file=token,
        user="haplane-gitops",
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = yaml.safe_load(path.read_text())
    creds = load_kubeconfig(doc, str(path))
    assert creds.server == "https://127.0.0.1:6443" and creds.context is not None
    assert creds.token_file == str(token) and creds.current_token() is None
    token.parent.mkdir()
    token.write_text("abc\n")
    assert creds.current_token() == "abc"  # renewed in place, read again
    # insecure: plain HTTP, no user
    plain = write_kubeconfig(
        path, "two-regions", "http://127.0.0.1:6443", ca=None, token_file=None, user="u"
    )
    creds = load_kubeconfig(yaml.safe_load(plain.read_text()), str(plain))
    assert creds.context is None and creds.current_token() is None
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600


async def _token_server(seen: list[str], ready_after: int) -> tuple[web.AppRunner, str]:
    """A stand-in API replica: TokenRequest answers 404 (no ServiceAccount yet) the first
    `ready_after` times, then 201 with a token naming the account."""

    async def token(request: web.Request) -> web.Response:
        seen.append(request.path)
        if len(seen) <= ready_after:
            return web.json_response({"message": "serviceaccounts not found"}, status=404)
        body = await request.json()
        assert body["kind"] == "TokenRequest"
        name = request.match_info["name"]
        return web.json_response({"status": {"token": f"token-of-{name}"}}, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_tokens_are_kept_for_either_account_and_the_first_write_is_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(controller_token, "RETRY", 0.05)
    seen: list[str] = []
    runner, url = await _token_server(seen, ready_after=2)
    try:
        path = tmp_path / "tokens" / "gitops-controller.token"
        written = asyncio.Event()
        task = asyncio.create_task(
            controller_token.keep(path, [url], True, GITOPS_CONTROLLER_SA, written)
        )
        await asyncio.wait_for(written.wait(), 5)
        assert path.read_text() == f"token-of-{GITOPS_CONTROLLER_SA[1]}\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        ns, name = GITOPS_CONTROLLER_SA
        assert seen[-1] == f"/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the failover controller's is the default account, as before
        default = await controller_token.request_token([url], True)
        assert default == f"token-of-{FAILOVER_CONTROLLER_SA[1]}"
        assert seen[-1].endswith(f"/{FAILOVER_CONTROLLER_SA[1]}/token")
    finally:
        await runner.cleanup()


async def test_a_token_not_issued_yet_is_retried_before_it_is_signalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(controller_token, "RETRY", 0.05)
    seen: list[str] = []
    runner, url = await _token_server(seen, ready_after=3)
    try:
        written = asyncio.Event()
        path = tmp_path / "t.token"
        task = asyncio.create_task(
            controller_token.keep(path, [url], True, GITOPS_CONTROLLER_SA, written)
        )
        await asyncio.wait_for(written.wait(), 5)
        assert len(seen) == 4 and path.exists()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await runner.cleanup()


def test_status_reads_the_leader_from_each_instances_metrics():
    page = (
        "# HELP haplane_gitops_leader 1 while this instance holds the controller Lease\n"
        "# TYPE haplane_gitops_leader gauge\n"
        "haplane_gitops_leader 1.0\n"
        "haplane_gitops_webhooks_total 0.0\n"
    )
    assert leader_gauge(page) is True
    assert leader_gauge(page.replace("leader 1.0", "leader 0.0")) is False
    assert leader_gauge("haplane_gitops_leader_x 1.0\n") is None
    assert leader_gauge("") is None

    def report(*ready: bool) -> StatusReport:
        gitops = [
            GitopsReport(f"global/gitops-{i}", "s", "u", "g", "running", 1, 0, r)
            for i, r in enumerate(ready)
        ]
        return StatusReport("t", "/s", "healthy", None, [], gitops=gitops)

    assert report(True, True).healthy
    assert not report(True, False).healthy
    assert report(True).as_dict()["gitops"][0]["name"] == "global/gitops-0"
