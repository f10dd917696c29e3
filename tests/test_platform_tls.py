"""TLS on every link of a topology started by `haplane up` (the default): every listener
refuses plain text, etcd admits only certificates of its own CA, admin listeners answer health
to anyone and everything else only to the right groups, and kubectl works with the kubeconfig
`haplane kubeconfig` writes (the admin, and a user with only what RBAC grants). A topology
with `security.insecure: true` runs plain HTTP as before."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from haplane.local.gate_plans import plan_of
from haplane.local.state_dir import StateDir
from haplane.store import EtcdClient, EtcdError, EtcdTls
from haplane.topology import load_file
from haplane.topology.loader import example_text
from tests.topology_helpers import (
    down_and_check,
    files_holding,
    haplane,
    kubectl,
    status,
    wait_for,
)

pytestmark = pytest.mark.slow


def _plain_http(host: str, port: int) -> bytes:
    """What a listener answers to a plain-text HTTP request (b"" when it closes at once)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def _tls_status(host: str, port: int, ca: Path, pair: tuple[Path, Path] | None, path: str) -> int:
    """The HTTP status a TLS listener answers `path` with, presenting `pair` (or none); 0 when
    the handshake or the connection is refused (TLS 1.3 reports a refused client certificate
    only at the first read)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if pair is not None:
        ctx.load_cert_chain(str(pair[0]), str(pair[1]))
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as s,
        ):
            s.sendall(request)
            head = s.recv(65536).split(b"\r\n", 1)[0]
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return 0
    return int(head.split()[1]) if head.startswith(b"HTTP/1.") else 0


def _refused(answer: bytes) -> bool:
    """Nothing, a TLS alert, or Go's "Client sent an HTTP request to an HTTPS server" (400)."""
    if not answer:
        return True
    if answer[:1] == b"\x15":  # a TLS alert record
        return True
    head = answer.split(b"\r\n", 1)[0]
    return head.startswith(b"HTTP/1.") and b" 400 " in head and b"HTTPS" in answer


def _https_get(
    url: str,
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _https_post(url: str, ca: Path, cert: Path, key: Path, body: dict) -> int:
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _https_post_json(url: str, ca: Path, body: dict, token: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_insecure_topology_runs_plain_http(state: Path, tmp_path: Path, start_topology):
    """Plain HTTP when asked; and with encryption at rest off too, the scan for a Secret's
    value finds it on disk in both forms (the scan the encrypted topology passes can fail)."""
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["security"] = {"insecure": True, "encryption": {"enabled": False}}
    path = tmp_path / "insecure.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = haplane(state, "validate", str(path), check=False)
    assert "insecure" in r.stdout + r.stderr
    doc = start_topology(path)
    assert all(r["url"].startswith("http://") for r in doc["replicas"])
    root = StateDir(state)
    assert not (root.root / "pki").exists()
    kc = state / "kc"
    haplane(state, "kubeconfig", "-o", str(kc))
    r = kubectl(kc, "get", "secrets", "-n", "default")
    assert r.returncode == 0, r.stderr
    raw = f"hunter2-{os.urandom(6).hex()}"
    r = kubectl(kc, "create", "secret", "generic", "db", f"--from-literal=password={raw}")
    assert r.returncode == 0, r.stderr
    needles = (raw.encode(), base64.b64encode(raw.encode()))
    # in both regions' etcd files once replicated
    wait_for(lambda: len({f.split("/")[0] for f in files_holding(state / "data", needles)}) >= 2)
    # the base64 form (what a Secret's `data` holds) is there; the raw value is not, which
    # is why a scan for the raw value alone proves nothing
    found = files_holding(state, needles)
    assert any(needles[1].decode() in f for f in found), found
    assert not any(f.endswith(f": {raw}") for f in found), found
    # its etcd members keep their http peer URLs: the same data is not restarted with TLS
    haplane(state, "down")
    r = haplane(state, "up", "-d", "--example", "two-regions", check=False)
    assert r.returncode == 1 and "started without TLS" in r.stderr, r.stderr
    assert not (root.root / "pki").exists()


def test_l7_gate_terminates_tls_and_passes_identities_on(
    state: Path, tmp_path: Path, start_topology
):
    """Gates in l7 mode, with a CA the user supplies: the client's certificate identity
    reaches the replicas through the front-proxy certificate (from a CA of its own); headers
    a client forges are dropped; a bearer token passes through; the listener refuses plain
    text; a certificate the user's CA issued to the front proxy's name is no front proxy."""
    from haplane.auth.pki import CertRequest, Pki

    mine = Pki(tmp_path / "my-ca")
    mine.ensure_ca("my organisation's CA")
    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"]["security"] = {"ca": {"certFile": str(mine.ca_cert), "keyFile": str(mine.ca_key)}}
    for g in doc["spec"]["global"]["gates"]:
        g["mode"] = "l7"
    path = tmp_path / "l7.yaml"
    path.write_text(yaml.safe_dump(doc))
    start_topology(path)
    root = StateDir(state)
    plan = plan_of(load_file(root.topology_file), root)
    assert plan.tls is not None and all(g.mode == "l7" for g in plan.gates)
    gate = plan.gates[0]
    assert _refused(_plain_http(gate.host, gate.port))
    ca = plan.tls.ca
    admin = haplane(state, "kubeconfig", "-o", str(state / "a.kc"))
    assert admin.returncode == 0
    r = kubectl(state / "a.kc", "auth", "whoami", "-o", "json")
    assert r.returncode == 0, r.stderr
    who = json.loads(r.stdout)["status"]["userInfo"]
    assert who["username"] == "haplane-admin" and "system:masters" in who["groups"]
    # it went through the l7 proxy: the gate re-encrypted with the front-proxy certificate
    status_code, body = _https_get(f"{gate.url}/version", ca)
    assert status_code == 200
    haplane(state, "kubeconfig", "--user", "dave", "--group", "ops", "-o", str(state / "d.kc"))
    dave = (root.root / "pki/platform/user.dave.crt", root.root / "pki/platform/user.dave.key")
    forged = {"X-Remote-User": "haplane-admin", "X-Remote-Group": "system:masters"}
    code, body = _https_get(f"{gate.url}/api/v1/namespaces", ca, *dave, headers=forged)
    assert code == 403 and 'User \\"dave\\"' in body, body
    code, body = _https_get(f"{gate.url}/api/v1/namespaces", ca, headers=forged)
    assert code == 401, body
    # a ServiceAccount token passes through untouched
    assert kubectl(state / "a.kc", "create", "serviceaccount", "bot").returncode == 0
    r = kubectl(state / "a.kc", "create", "token", "bot")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    code, body = _https_post_json(
        f"{gate.url}/apis/authentication.k8s.io/v1/selfsubjectreviews", ca, review, token
    )
    assert code == 201, body
    assert json.loads(body)["status"]["userInfo"]["username"] == "system:serviceaccount:default:bot"
    # straight to a replica: the front-proxy CA's certificate may pass identities on; the
    # user's CA's certificate with the same name may not
    assert plan.tls.ca.read_bytes() == mine.ca_cert.read_bytes()
    replica = f"https://{plan.replicas[0].host}:{plan.replicas[0].port}/api/v1/namespaces"
    proxy = plan.tls.front_proxy
    as_admin = {"X-Remote-User": "haplane-admin", "X-Remote-Group": "system:masters"}
    assert _https_get(replica, ca, proxy.cert, proxy.key, headers=as_admin)[0] == 200
    impostor = mine.ensure(CertRequest("impostor", "haplane-front-proxy", client=True))
    code, body = _https_get(replica, ca, impostor.cert, impostor.key, headers=as_admin)
    assert code == 403 and 'User \\"haplane-front-proxy\\"' in body, body


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("platform-tls") / "state"
    haplane(state, "up", "-d", "--example", "two-regions")
    try:
        yield state
    finally:
        down_and_check(state)


def test_every_listener_refuses_plain_text(topo: Path):
    state = topo
    doc = status(state)
    assert doc["supervisor"] == "healthy"
    root = StateDir(state)
    plan = plan_of(load_file(root.topology_file), root)
    assert plan.tls is not None
    tls = plan.tls

    listeners: list[tuple[str, str, int]] = []
    for cluster in plan.clusters:
        for name, a in cluster.addresses.items():
            listeners += [(f"{name} client", a.host, a.client_port)]
            listeners += [(f"{name} peer", a.host, a.peer_port)]
    listeners += [(r.qualified_name, r.host, r.port) for r in plan.replicas]
    listeners += [(r.qualified_name, r.host, r.port) for r in plan.replicators]
    listeners += [(g.qualified_name, g.host, g.port) for g in plan.gitops]
    for e in (*plan.balancers, *plan.gates):
        listeners += [(e.qualified_name, e.host, e.port), (f"{e.qualified_name} admin", e.host,
                                                            e.admin_port)]  # fmt: skip
    listeners = sorted(set(listeners))
    # 9 etcd members x 2, 4 replicas, 4 replicators, 2 GitOps controllers, 4 balancers x 2,
    # 3 gates' admin + 1 shared
    assert len(plan.gitops) == 2
    assert len(listeners) >= 18 + 4 + 4 + 2 + 8 + 4, listeners
    answered = {
        name: answer
        for name, host, port in listeners
        if not _refused(answer := _plain_http(host, port))
    }
    assert answered == {}, f"served plain text: {answered}"

    # every URL the CLI shows says https
    assert all(r["url"].startswith("https://") for r in doc["replicas"])
    assert all(e["url"].startswith("https://") for e in doc["edges"])
    assert all(g["url"].startswith("https://") for g in doc["gitops"])
    assert sorted(g["url"] for g in doc["gitops"]) == sorted(g.url for g in plan.gitops)

    # etcd: TLS without a client certificate, or with one of the platform CA (a person's), is
    # refused; the etcd CA's client certificate is served
    endpoints = plan.clusters[0].endpoints
    admin = tls.admin
    supervisor = plan.clusters[0].tls
    assert supervisor is not None

    async def etcd_reads(client_tls: EtcdTls) -> bool:
        try:
            async with EtcdClient(endpoints, timeout=2.0, tls=client_tls) as c:
                await c.get(b"/haplane/fence")
            return True
        except EtcdError:
            return False

    assert asyncio.run(etcd_reads(supervisor))
    assert not asyncio.run(etcd_reads(EtcdTls(tls.etcd_ca, admin.cert, admin.key)))
    # at the byte level: no certificate is refused at the client port; the peer port takes
    # only its own cluster's peer certificates (CN `etcd-peer <cluster>`), not a client
    # certificate of the same CA, nor another cluster's member
    west = plan.clusters[0].view.members[0]
    west_addr = plan.clusters[0].addresses[west.qualified_name]
    other = next(c for c in plan.clusters if c.view.name != plan.clusters[0].view.name)
    own_peer, foreign_peer = (
        tls.member(west.qualified_name),
        tls.member(other.view.members[0].qualified_name),
    )
    etcd_client = (supervisor.cert, supervisor.key)
    h, client_port, peer_port = west_addr.host, west_addr.client_port, west_addr.peer_port
    assert _tls_status(h, client_port, tls.etcd_ca, etcd_client, "/version") == 200
    assert _tls_status(h, client_port, tls.etcd_ca, None, "/version") == 0
    assert _tls_status(h, peer_port, tls.etcd_ca, (own_peer.peer_cert, own_peer.peer_key),
                       "/version") == 200  # fmt: skip
    assert _tls_status(h, peer_port, tls.etcd_ca, etcd_client, "/version") == 0
    assert (
        _tls_status(
            h, peer_port, tls.etcd_ca, (foreign_peer.peer_cert, foreign_peer.peer_key), "/version"
        )
        == 0
    )
    assert _tls_status(h, peer_port, tls.etcd_ca, None, "/version") == 0
    # every key is its owner's alone, and so are the directories holding them
    keys = [*tls.root.rglob("*.key")]
    assert len(keys) >= 41 and tls.service_account_key in keys
    assert [k for k in keys if k.stat().st_mode & 0o077] == [], "keys readable by others"
    for d in (tls.root, tls.etcd_dir, tls.platform_dir, root.root / "audit"):
        assert d.stat().st_mode & 0o777 == 0o700, d

    # admin listeners: health to anyone, status to system:masters, POST /pool to masters only
    lb = plan.balancers[0]
    user = root.root / "pki" / "platform"
    haplane(state, "kubeconfig", "--user", "carol", "--group", "dev", "-o", str(state / "c.kc"))
    carol = (user / "user.carol.crt", user / "user.carol.key")
    assert _https_get(f"{lb.admin_url}/readyz", tls.ca)[0] == 200
    assert _https_get(f"{lb.admin_url}/healthz/region", tls.ca)[0] == 200
    assert _https_get(f"{lb.admin_url}/status", tls.ca)[0] == 401
    assert _https_get(f"{lb.admin_url}/status", tls.ca, *carol)[0] == 403
    assert _https_get(f"{lb.admin_url}/status", tls.ca, admin.cert, admin.key)[0] == 200
    assert _https_get(f"{lb.admin_url}/metrics", tls.ca, admin.cert, admin.key)[0] == 200
    body = {"pool": lb.region, "activate": True}
    assert _https_post(f"{lb.admin_url}/pool", tls.ca, *carol, body) == 403
    rep = plan.replicators[0]
    assert _https_get(f"{rep.url}/readyz", tls.ca)[0] in (200, 503)
    assert _https_get(f"{rep.url}/metrics", tls.ca)[0] == 401
    assert _https_get(f"{rep.url}/status", tls.ca, admin.cert, admin.key)[0] == 200

    # the API through the gate: anonymous is health only; the admin kubeconfig is everything;
    # a user has what RBAC grants
    gate = plan.gates[0]
    assert _https_get(f"{gate.url}/readyz", tls.ca)[0] == 200
    assert _https_get(f"{gate.url}/api/v1/namespaces", tls.ca)[0] == 401
    kc_admin = state / "admin.kc"
    haplane(state, "kubeconfig", "-o", str(kc_admin))
    assert kc_admin.stat().st_mode & 0o777 == 0o600
    cfg = yaml.safe_load(kc_admin.read_text())
    assert cfg["clusters"][0]["cluster"]["server"] == gate.url
    r = kubectl(kc_admin, "auth", "whoami", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert "system:masters" in json.loads(r.stdout)["status"]["userInfo"]["groups"]
    r = kubectl(state / "c.kc", "get", "configmaps", "-n", "default")
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()
    r = kubectl(kc_admin, "create", "rolebinding", "carol-view", "--clusterrole=view",
                 "--user=carol", "-n", "default")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = kubectl(state / "c.kc", "get", "configmaps", "-n", "default")
    assert r.returncode == 0, r.stderr
    r = kubectl(state / "c.kc", "auth", "can-i", "--list", "-n", "default")
    assert r.returncode == 0, r.stderr
    configmaps = next(line for line in r.stdout.splitlines() if line.startswith("configmaps "))
    assert "[get list watch]" in configmaps and "secrets " not in r.stdout, r.stdout
    for args, answer in (
        (["list", "configmaps", "-n", "default"], "yes"),
        (["delete", "configmaps", "-n", "default"], "no"),
        (["list", "configmaps", "-n", "kube-system"], "no"),
        (["get", "secrets", "-n", "default"], "no"),
    ):
        r = kubectl(state / "c.kc", "auth", "can-i", *args)
        assert r.stdout.strip() == answer, (args, r.stdout, r.stderr)
    r = kubectl(state / "c.kc", "get", "secrets", "-n", "default")
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()
    # system:masters is the admin's alone
    r = haplane(state, "kubeconfig", "--user", "eve", "--group", "system:masters", check=False)
    assert r.returncode == 2 and "system:masters" in r.stderr


def _textfile_collector(directory: Path) -> Any:
    """What node_exporter's textfile collector serves: every `*.prom` of `directory` at
    /metrics, over plain HTTP (a stand-in: node_exporter is not installed here)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = "".join(p.read_text() for p in sorted(directory.glob("*.prom"))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prometheus_query(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(json.load(resp)["data"]["result"])


def test_prometheus_scrapes_every_component_with_the_export(topo: Path, tmp_path: Path):
    """`haplane export prometheus` as a user would run it: the files pass promtool, every
    component answers the exported scrape with the exported certificates, exports only what
    the catalogue lists (type and labels), and a real Prometheus scrapes them all, reads the
    platform's epoch, and fires no alert on the healthy platform."""
    from prometheus_client.parser import text_string_to_metric_families

    from haplane import telemetry

    state, out = topo, tmp_path / "prometheus"
    textfile = _textfile_collector(state / "metrics")  # node_exporter's part, stood in for
    haplane(state, "export", "prometheus", "-o", str(out), "--scrape-interval", "1",
            "--node-exporter", f"127.0.0.1:{textfile.server_port}")  # fmt: skip
    config_file = out / "prometheus.yml"
    check = subprocess.run(["promtool", "check", "config", str(config_file)],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(config_file.read_text())
    catalogue: dict[str, dict[str, telemetry.MetricDef]] = {}
    for c in telemetry.COMPONENTS:
        catalogue.setdefault(c.job, {}).update((m.family_name, m) for m in c.metrics)
    seen: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        name = job["job_name"]
        ctx, scheme = None, "http"  # the textfile collector's: plain, as node_exporter's
        if "tls_config" in job:
            t = job["tls_config"]
            ctx = ssl.create_default_context(cafile=t["ca_file"])
            ctx.load_cert_chain(t["cert_file"], t["key_file"])
            scheme = "https"
        groups = json.loads((out / "targets" / f"{name}.json").read_text())
        assert groups, name
        for group in groups:
            (target,) = group["targets"]
            with urllib.request.urlopen(f"{scheme}://{target}/metrics", context=ctx,
                                        timeout=5) as resp:  # fmt: skip
                body = resp.read().decode()
            families = list(text_string_to_metric_families(body))
            seen.setdefault(name, set()).update(f.name for f in families)
            if name == "etcd":
                continue  # etcd's own names; the rules read four of them (checked below)
            lint = subprocess.run(["promtool", "check", "metrics"], input=body,
                                  capture_output=True, text=True)  # fmt: skip
            assert lint.returncode == 0 and not lint.stdout.strip(), (target, lint.stdout)
            for f in families:
                d = catalogue[name].get(f.name)
                assert d is not None, f"{group['labels']['name']} exports {f.name}: not in " \
                    f"the catalogue of {name}"  # fmt: skip
                assert f.type == d.kind, (f.name, f.type, d.kind)
                for sample in f.samples:
                    labels = set(sample.labels) - {"le"}
                    assert labels == set(d.labels), (f.name, labels, d.labels)
    assert {"apiserver_request", "apiserver_request_duration_seconds"} <= seen["haplane-api"]
    assert {"haplane_gate_epoch", "haplane_gate_upstream_state"} <= seen["haplane-gate"]
    assert "haplane_replication_lag_seconds" in seen["haplane-replicator"]
    assert "haplane_gitops_leader" in seen["haplane-gitops"]
    # the snapshot and backup schedules write theirs from their start
    assert "haplane_snapshot_last_failure_timestamp_seconds" in seen["haplane-textfile"]
    from haplane.local.prometheus_export import ETCD_METRICS

    assert {m.removesuffix("_total") for m in ETCD_METRICS} <= seen["etcd"]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={config_file}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip
    try:

        def all_up() -> list[dict[str, Any]] | None:
            try:
                with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=2) as resp:
                    active = json.load(resp)["data"]["activeTargets"]
            except OSError:
                return None
            return active if active and all(t["health"] == "up" for t in active) else None

        try:
            targets = wait_for(all_up, timeout=40, interval=0.5)
        except AssertionError:
            raise AssertionError(log.read_text()[-3000:]) from None
        assert len(targets) == 4 + 7 + 4 + 2 + 9 + 1  # ... and the textfile collector
        # (a loaded machine's status may miss the control etcd once: asked until it answers)
        glob = wait_for(lambda: (g := status(state).get("global_state")) and g.get("active") and g)
        epoch = glob["active"]["epoch"]
        got = _prometheus_query(base, 'max(haplane_gate_epoch{job="haplane-gate"})')
        assert [float(r["value"][1]) for r in got] == [float(epoch)]
        got = _prometheus_query(base, 'max(haplane_gate_epoch_writable{job="haplane-gate"})')
        assert [float(r["value"][1]) for r in got] == [1.0]
        # what the rules select is there, with the labels they group by (an alert whose
        # series never exist could never fire)
        for query, expected in (
            ('count(haplane_gate_upstream_state{job="haplane-gate",role="gate",state="up"})',
             3 * 4),  # three gates, two regions of two balancers
            ('count by (region) (up{job="haplane-api"})', 2),
            ('count(haplane_replication_lag_seconds{job="haplane-replicator"} and on(instance) '
             '(haplane_replication_leader{job="haplane-replicator"} == 1))', 1),  # the standby
            ('count(haplane_replication_state{exported_region!=""})', 0),
            ('count(etcd_mvcc_db_total_size_in_bytes{job="etcd"} / '
             'etcd_server_quota_backend_bytes{job="etcd"})', 9),
            ('count(etcd_server_has_leader{job="etcd"} == 1)', 9),
            ('count by (name) (haplane_certificate_expiry_seconds)', 4 + 7 + 4),
            ('count by (scope) (haplane_snapshot_last_failure_timestamp_seconds'
             '{job="haplane-textfile"})', 3),
        ):  # fmt: skip
            got = _prometheus_query(base, query)
            value = len(got) if "count by" in query else sum(float(r["value"][1]) for r in got)
            assert value == expected, (query, got)
        # rules run every second: give them several rounds on what was scraped; nothing is
        # firing, nor even pending
        time.sleep(4)
        alerts = _prometheus_query(base, "ALERTS")
        assert alerts == [], alerts
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=5) as resp:
            rules = json.load(resp)["data"]["groups"][0]["rules"]
        assert len(rules) >= 10 and all(r["health"] == "ok" for r in rules), rules
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        textfile.shutdown()
        textfile.server_close()


def test_logs_merge_every_component(topo: Path):
    """`haplane logs --json` on the running example: every process's log is in the timeline,
    in time order, and every line a component wrote carries its own time (API replicas and
    replicators once wrote lines without one)."""
    root = StateDir(topo)
    plan = plan_of(load_file(root.topology_file), root)
    r = haplane(topo, "logs", "--json")
    got = [json.loads(line) for line in r.stdout.splitlines()]
    expected = {
        "supervisor",
        *(m.qualified_name for c in plan.clusters for m in c.view.members),
        *(x.qualified_name for x in (*plan.replicas, *plan.balancers, *plan.gates)),
        *(x.qualified_name for x in (*plan.replicators, *plan.gitops)),
    }
    assert expected - {e["component"] for e in got} == set()
    members = {m.qualified_name for c in plan.clusters for m in c.view.members}
    untimed = [e for e in got if e.get("timed") is False and e["component"] != "supervisor"]
    # etcd writes zap's JSON and grpc-go's `WARNING: 2026/12/06 ...` lines: timed too (any
    # other plain line of etcd's takes its neighbour's); haplane's own processes, all of them
    assert [e for e in untimed if e["component"] not in members] == [], untimed[:5]
    untimed = [e for e in untimed if e["component"] in members and "grpc" in e["msg"]]
    assert untimed == [], untimed[:5]
    # the supervisor's lines about a process are that process's too
    started = [e for e in got if e["component"] == "supervisor" and e["msg"] == "started"]
    assert {e["fields"].get("component") for e in started} >= {"eu-west/api-1"}, started[:3]
    # the plain view of one kind of component
    r = haplane(topo, "logs", "-c", "*/rep-*", "--color", "never")
    shown = r.stdout.splitlines()
    assert shown and all(" eu-" in line[12:25] or "component=eu-" in line for line in shown)
    assert any(line[13:].startswith("eu-central/rep-1") for line in shown)


def test_no_secret_value_anywhere_on_disk(topo: Path):
    """`kubectl create secret`: the value, raw or base64 (what `data` holds), is in no file of
    the state dir once it has replicated to the other region (every member's WAL and
    database, logs, audit logs, divergence files, reports); reading it back gives it."""
    raw = f"hunter2-{os.urandom(6).hex()}"
    kc = topo / "secret-admin.kc"
    haplane(topo, "kubeconfig", "-o", str(kc))
    r = kubectl(kc, "create", "secret", "generic", "db", f"--from-literal=password={raw}")
    assert r.returncode == 0, r.stderr
    root = StateDir(topo)
    plan = plan_of(load_file(root.topology_file), root)
    regional = [c for c in plan.clusters if c.view.scope != "global"]

    async def stored_everywhere() -> list[bytes]:
        out = []
        for cluster in regional:
            async with cluster.client(timeout=3.0) as client:
                kv = await client.get(b"/registry/secrets/default/db")
            out.append(kv.value if kv is not None else b"")
        return out

    wait_for(lambda: all(asyncio.run(stored_everywhere())))
    for value in asyncio.run(stored_everywhere()):
        assert value.startswith(b"k8s:enc:kms:v2:local:"), value[:40]
    r = kubectl(kc, "get", "secret", "db", "-o", "jsonpath={.data.password}")
    assert r.returncode == 0 and base64.b64decode(r.stdout) == raw.encode(), r.stderr
    assert files_holding(topo, (raw.encode(), base64.b64encode(raw.encode()))) == []
    key = root.root / "encryption" / "kek.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_the_runbooks_etcdctl_commands_work(topo: Path):
    """The DR runbook's etcdctl setup (`haplane docs`) opens the running topology's etcd over
    TLS; without it etcdctl is refused."""
    import os
    import shlex
    import subprocess

    from haplane.topology.docs import ETCDCTL_TLS

    root = StateDir(topo)
    plan = plan_of(load_file(root.topology_file), root)
    env = dict(os.environ)
    for assignment in shlex.split(ETCDCTL_TLS.replace("$STATE", str(topo)))[1:]:
        key, _, value = assignment.partition("=")
        env[key] = value
    endpoints = ",".join(f"https://{e}" for e in plan.clusters[0].endpoints)
    health = ["etcdctl", "--endpoints", endpoints, "--dial-timeout", "3s", "endpoint", "health"]
    r = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr.count("is healthy") == 3, r.stdout + r.stderr
    bare = {k: v for k, v in env.items() if not k.startswith("ETCDCTL_")}
    r = subprocess.run(health, env=bare, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0


def test_secrets_rotate_and_rewrite_under_a_writer(topo: Path):
    """`haplane secrets rotate` then `rewrite` while a client writes Secrets through the gate
    at ~50 writes/s: every write is acknowledged and reads back as written, and afterwards
    every Secret in both regions is sealed under the new key (the old one seals nothing)."""
    import http.client
    import threading

    state = topo
    root = StateDir(state)
    plan = plan_of(load_file(root.topology_file), root)
    assert plan.tls is not None
    gate = plan.gates[0]
    path = "/api/v1/namespaces/default/secrets"
    acked: dict[str, str] = {}
    failures: list[str] = []
    stop = threading.Event()

    def call(conn: http.client.HTTPSConnection, method: str, url: str, body: dict) -> int:
        conn.request(method, url, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def secret(name: str, value: str) -> dict:
        data = {"v": base64.b64encode(value.encode()).decode()}
        return {"metadata": {"name": name}, "data": data}

    conn = http.client.HTTPSConnection(
        gate.host, gate.port, timeout=10, context=plan.tls.client_context()
    )
    for i in range(40):  # sealed under the first key
        assert call(conn, "POST", path, secret(f"rot-{i}", "v0")) == 201
        acked[f"rot-{i}"] = "v0"
    for i in range(20):  # never written again: only `rewrite` can move these
        assert call(conn, "POST", path, secret(f"rot-keep-{i}", "k")) == 201

    def writer() -> None:
        c = http.client.HTTPSConnection(
            gate.host, gate.port, timeout=10, context=plan.tls.client_context()
        )
        n = 0
        while not stop.is_set():
            n += 1
            name, value = f"rot-{n % 60}", f"v{n}"
            try:
                method, url = ("PUT", f"{path}/{name}") if name in acked else ("POST", path)
                code = call(c, method, url, secret(name, value))
                if code in (200, 201):
                    acked[name] = value
                else:
                    failures.append(f"{method} {name}: {code}")
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{name}: {exc}")
                c.close()
            time.sleep(0.02)
        c.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(1.0)
        r = haplane(state, "secrets", "rotate")
        assert "every replica (4) reads local-2" in r.stdout, r.stdout + r.stderr
        assert "every replica (4) writes under local-2" in r.stdout, r.stdout + r.stderr
        r = haplane(state, "secrets", "rewrite")
        rewritten = int(r.stdout.split(" rewritten")[0].rsplit(" ", 1)[1])
        assert rewritten >= 20, r.stdout + r.stderr
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert len(acked) == 60
    # what each client was told succeeded reads back through the gate
    for name, value in acked.items():
        conn.request("GET", f"{path}/{name}")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert base64.b64decode(body["data"]["v"]).decode() == value, name

    def providers() -> dict[str, set[str]]:
        async def read() -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for c in plan.clusters:
                if c.view.scope == "global":
                    continue
                async with c.client(timeout=5.0) as client:
                    kvs, _ = await client.range(b"/registry/secrets/default/rot-", prefix=True)
                out[c.view.scope] = {kv.value.split(b":")[4].decode() for kv in kvs}
                out[c.view.scope + " count"] = {str(len(kvs))}
            return out

        return asyncio.run(read())

    wait_for(lambda: all(v == {"80"} for k, v in providers().items() if k.endswith("count")))
    found = providers()
    assert {k: v for k, v in found.items() if not k.endswith("count")} == {
        "eu-west": {"local-2"},
        "eu-central": {"local-2"},
    }, found
    r = haplane(state, "secrets", "status")
    assert "local-2" in r.stdout and "written by: local-2" in r.stdout, r.stdout
    conn.close()


def test_rotation_keeps_clients_served(topo: Path):
    """`haplane pki rotate` under a client writing through the gate on new connections (each a
    new handshake) and on one kept connection: no request fails, every component serves a new
    certificate afterwards, and the previous admin kubeconfig still works (nothing revoked)."""
    import threading

    from haplane.local.pki_rotate import components, served_serial

    state = topo
    root = StateDir(state)
    plan = plan_of(load_file(root.topology_file), root)
    assert plan.tls is not None
    tls = plan.tls
    old_kc = state / "before-rotation.kc"
    haplane(state, "kubeconfig", "-o", str(old_kc))

    def serials() -> dict[str, int]:
        platform_ctx, etcd_ctx = tls.client_context(), tls.etcd_client_context()

        async def all_of() -> dict[str, int]:
            out = {}
            for c in components(plan):
                ctx = etcd_ctx if c.kind == "etcd" else platform_ctx
                out[c.name] = await served_serial(c.host, c.port, ctx, 5.0)
            return out

        return asyncio.run(all_of())

    before = serials()
    scraper_before = tls.scraper.cert.read_bytes()
    console_client_before = tls.console_client.cert.read_bytes()
    assert len(before) == 9 + 4 + 4 + 4 + 3 + 2 + 2  # ..., gates, GitOps controllers, consoles
    gate = plan.gates[0]
    ok, failed = [0], []
    stop = threading.Event()

    def client() -> None:
        import http.client

        ctx = tls.client_context()
        kept = http.client.HTTPSConnection(gate.host, gate.port, timeout=10, context=ctx)
        i = 0
        while not stop.is_set():
            i += 1
            body = json.dumps({"metadata": {"name": f"rot-{i}"}})
            fresh = http.client.HTTPSConnection(gate.host, gate.port, timeout=10, context=ctx)
            for conn in (fresh, kept):
                try:
                    conn.request("POST", "/api/v1/namespaces/default/configmaps", body,
                                 {"Content-Type": "application/json"})  # fmt: skip
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status in (201, 409):
                        ok[0] += 1
                    else:
                        failed.append(resp.status)
                except (OSError, http.client.HTTPException) as exc:
                    failed.append(f"{'kept' if conn is kept else 'new'}: {exc!r}")
                    conn.close()  # reconnects on its next request
                body = json.dumps({"metadata": {"name": f"rot-{i}-kept"}})
            fresh.close()
            time.sleep(0.02)
        kept.close()

    worker = threading.Thread(target=client)
    worker.start()
    try:
        time.sleep(1.0)
        r = haplane(state, "pki", "rotate", timeout=300)
    finally:
        stop.set()
        worker.join(30)
    assert "rotated" in r.stdout, r.stdout + r.stderr
    assert failed == [], failed
    assert ok[0] > 50
    after = serials()
    assert {n for n in before if before[n] == after[n]} == set(), "components still serving"
    assert tls.scraper.cert.read_bytes() != scraper_before
    assert tls.console_client.cert.read_bytes() != console_client_before
    # the CLI's own certificates were rotated too, and both old and new kubeconfigs work
    r = kubectl(old_kc, "get", "ns", "default")
    assert r.returncode == 0, r.stderr
    new_kc = state / "after-rotation.kc"
    haplane(state, "kubeconfig", "-o", str(new_kc))
    assert new_kc.read_text() != old_kc.read_text()
    assert kubectl(new_kc, "get", "ns", "default").returncode == 0
    doc = status(state)
    assert doc["certificates"]["count"] >= 41
    assert doc["certificates"]["within30Days"] == []
    # one component by name; an unknown name is refused before anything is rotated
    scraper = tls.scraper.cert.read_bytes()
    r = haplane(state, "pki", "rotate", "-c", "eu-west/api-1")
    assert "eu-west/api-1: serving its new certificate" in r.stderr
    r = haplane(state, "pki", "rotate", "-c", "eu-west/nope", check=False)
    assert r.returncode == 1 and "no component named eu-west/nope" in r.stderr
    # the rotation is an Event (a refusal before any work is not), and Prometheus' pair was
    # rotated with the operator's
    events = kubectl(new_kc, "get", "events", "-n", "kube-system", "-o", "json")
    rotated = [e for e in json.loads(events.stdout)["items"]
               if e["reason"] == "CertificatesRotated"]  # fmt: skip
    assert rotated and rotated[0]["involvedObject"]["kind"] == "Topology", events.stdout[-2000:]
    assert rotated[0]["count"] == 2  # every component, then eu-west/api-1
    assert not [e for e in json.loads(events.stdout)["items"]
                if e["reason"] == "CertificateRotationStopped"]  # fmt: skip
    assert scraper == tls.scraper.cert.read_bytes()  # `-c` rotates only the component
