"""Logical backups (`haplane.backup`) against real API replicas on an etcd of their own, the
replicas sealing Secrets at rest under a local key-encryption key as `haplane up` sets them up:
a namespace with ConfigMaps, a Secret, a ServiceAccount, a CRD with custom objects and owner /
dependent pairs is backed up, deleted (with its CRD), and restored through the API with new
uids and every owner reference pointing at the restored owner, still there after the garbage
collector has had its rounds; `existing` skip and overwrite; one namespace of two; a dry-run;
no Secret value on disk; and every bad input refused with nothing applied. And the CLI, with
kubectl beside it, as a new user would.

The backup is a client only: it reaches the replicas over HTTP with a kubeconfig.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from haplane.auth.encryption import LocalKek, create_local_key, default_config
from haplane.auth.kms_plugin import PluginProcess
from haplane.auth.kubeconfig import load
from haplane.backup import (
    BackupError,
    Manifest,
    Sealer,
    SealingError,
    create_backup,
    plan,
    read_manifest,
    restore_backup,
)
from haplane.backup.restore import Item
from haplane.backup.selection import choose
from haplane.kubeclient import KubeClient, Resource
from haplane.local.api_replica import ApiReplica
from haplane.local.etcd_cluster import EtcdCluster
from haplane.local.secrets_ops import scan_retained
from haplane.local.state_dir import StateDir
from tests.test_gitops_engine import crd
from tests.topology_helpers import wait_for

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
SECRET = {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
Obj = dict[str, Any]


@dataclass
class Platform:
    replicas: list[ApiReplica]
    state: Path  # a state dir: the KEK and configuration, backups under backups/logical
    config: Path

    @property
    def api(self) -> ApiReplica:
        return self.replicas[0]

    @property
    def backups(self) -> Path:
        return self.state / "backups" / "logical"


def kek_config(directory: Path) -> Path:
    """A local KEK and the EncryptionConfiguration sealing Secrets under it, as `up` makes
    them in `STATE/encryption`."""
    create_local_key(directory / "kek.key")
    config = directory / "config.yaml"
    config.write_text(default_config(directory / "kek.key"))
    return config


@pytest_asyncio.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Platform]:
    """Two replicas on an etcd of their own (the garbage collector runs in whichever leads),
    sealing Secrets at rest under a local KEK, as `haplane up` writes it."""
    root = tmp_path_factory.mktemp("backup")
    state = root / "state"
    config = kek_config(state / "encryption")
    cluster = EtcdCluster(root / "etcd", size=1)
    await cluster.start()
    args = ["--encryption-provider-config", str(config)]
    replicas = [ApiReplica(root, f"bk-{i}", cluster.endpoints, extra_args=args) for i in (1, 2)]
    try:
        for r in replicas:
            await r.start()
        yield Platform(replicas, state, config)
    finally:
        for r in replicas:
            await r.stop()
        await cluster.stop()


@pytest_asyncio.fixture
async def kube(platform: Platform) -> AsyncIterator[KubeClient]:
    path = platform.api.kubeconfig(platform.state.parent / "kubeconfig")
    c = KubeClient(load(json.loads(path.read_text()), str(path)), agent="haplane-backup")
    yield c
    await c.close()


@pytest.fixture
def sealer(platform: Platform) -> Iterator[Sealer]:
    s = Sealer.from_config(platform.config)
    yield s
    s.close()


def uid() -> str:
    return uuid.uuid4().hex[:8]


def req(api: ApiReplica, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    status, _, out = api.request(method, path, body, **kw)
    assert status < 300, (method, path, status, out)
    return out


def status_of(api: ApiReplica, path: str) -> int:
    return int(api.request("GET", path)[0])


def namespace_with(api: ApiReplica, ns: str, **objects: list[Obj]) -> None:
    """The namespace `ns` with `objects` by resource: `configmaps=[{...}]`."""
    req(api, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    for resource, items in objects.items():
        for obj in items:
            req(api, "POST", f"/api/v1/namespaces/{ns}/{resource}", obj)


def owner_ref(obj: Obj) -> Obj:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
    }


@dataclass
class Shop:
    ns: str
    group: str
    password: str
    uids: dict[str, str]  # "Kind/name" -> uid at backup time
    gone_role: str  # a ClusterRole owning one ConfigMap, deleted before the restore


def make_shop(platform: Platform) -> Shop:
    """A namespace with ConfigMaps, a Secret, a ServiceAccount, Widgets of a CRD of its own, a
    ConfigMap owned by a Widget (written later in kind order, so only ownership puts the
    Widget first), a Widget owned by a ConfigMap, and ConfigMaps owned by ClusterRoles."""
    api = platform.api
    ns, group = f"shop-{uid()}", f"b{uid()}.example.com"
    password = secrets.token_urlsafe(18)
    req(api, "POST", CRDS, crd(group, "Widget"))
    wait_for(lambda: status_of(api, f"/apis/{group}/v1/widgets") == 200)
    req(api, "POST", "/api/v1/namespaces", {"metadata": {"name": ns, "labels": {"team": "a"}}})
    base = f"/api/v1/namespaces/{ns}"
    made: list[Obj] = []
    made.append(
        req(api, "POST", f"{base}/configmaps", {"metadata": {"name": "a"}, "data": {"x": "1"}})
    )
    made.append(
        req(api, "POST", f"{base}/configmaps", {"metadata": {"name": "b"}, "data": {"y": "2"}})
    )
    made.append(
        req(
            api,
            "POST",
            f"{base}/secrets",
            {"metadata": {"name": "db"}, "stringData": {"password": password}},
        )
    )
    made.append(req(api, "POST", f"{base}/serviceaccounts", {"metadata": {"name": "deployer"}}))
    widgets = f"/apis/{group}/v1/namespaces/{ns}/widgets"
    w1 = req(
        api,
        "POST",
        widgets,
        {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 3},
        },
    )
    made.append(w1)
    made.append(
        req(
            api,
            "POST",
            f"{base}/configmaps",
            {
                "metadata": {"name": "child", "ownerReferences": [owner_ref(w1)]},
                "data": {"of": "w1"},
            },
        )
    )
    a = made[0]
    made.append(
        req(
            api,
            "POST",
            widgets,
            {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": "w2", "ownerReferences": [owner_ref(a)]},
                "spec": {"size": 1},
            },
        )
    )
    roles = "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    keep = req(api, "POST", roles, {"metadata": {"name": f"keep-{ns}"}, "rules": []})
    gone = req(api, "POST", roles, {"metadata": {"name": f"gone-{ns}"}, "rules": []})
    for name, owner in (("by-keep", keep), ("by-gone", gone)):
        owned = {"metadata": {"name": name, "ownerReferences": [owner_ref(owner)]}}
        made.append(req(api, "POST", f"{base}/configmaps", owned))
    uids = {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["uid"] for o in made}
    return Shop(ns, group, password, uids, gone["metadata"]["name"])


def delete_and_wait(api: ApiReplica, path: str) -> None:
    api.request("DELETE", path)
    wait_for(lambda: status_of(api, path) == 404)


def live(api: ApiReplica, shop: Shop) -> dict[str, Obj]:
    """The shop's objects as the server has them now, by "Kind/name"."""
    base = f"/api/v1/namespaces/{shop.ns}"
    out = {}
    for path in (
        f"{base}/configmaps",
        f"{base}/secrets",
        f"{base}/serviceaccounts",
        f"/apis/{shop.group}/v1/namespaces/{shop.ns}/widgets",
    ):
        for o in req(api, "GET", path)["items"]:
            out[f"{o.get('kind') or path.rsplit('/', 1)[1]}/{o['metadata']['name']}"] = o
    return out


def files_of(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


# ---- the whole cycle ----------------------------------------------------------------------


async def test_backup_delete_restore(platform: Platform, kube: KubeClient, sealer: Sealer) -> None:
    api = platform.api
    shop = make_shop(platform)
    path, manifest = await create_backup(
        kube, platform.backups, f"b-{shop.ns}", namespaces=[shop.ns], sealer=sealer
    )
    counts = {r["resource"]: r["count"] for r in manifest.resources()}
    assert counts == {
        "configmaps": 5,
        "secrets": 1,
        "serviceaccounts": 1,
        f"widgets.{shop.group}": 2,
        "namespaces": 1,
        "customresourcedefinitions.apiextensions.k8s.io": 1,
    }
    assert manifest.namespaces() == [shop.ns]
    assert manifest.source["clusterUID"] and manifest.source["region"] == "test"
    assert manifest.sealing and manifest.sealing["provider"] == "local"
    by_path = {f.path: f for f in manifest.files}
    secrets_file = by_path[f"resources/secrets/{shop.ns}.yaml.sealed"]
    assert secrets_file.sealed and secrets_file.uids == {"db": shop.uids["Secret/db"]}
    assert (
        by_path[f"resources/configmaps/{shop.ns}.yaml"].uids["child"]
        == shop.uids["ConfigMap/child"]
    )
    # server-side fields gone, ownerReferences (with their uids) kept
    text = (path / f"resources/configmaps/{shop.ns}.yaml").read_text()
    assert "resourceVersion" not in text and "managedFields" not in text
    assert (
        "creationTimestamp" not in text
        and shop.uids["ConfigMap/a"] not in text.split("ownerReferences")[0]
    )
    assert shop.uids["Widget/w1"] in text  # child's owner reference
    ns_text = (path / "resources/namespaces/_cluster.yaml").read_text()
    assert "team: a" in ns_text and "phase" not in ns_text  # status is a subresource

    # no Secret value in any file of the backup, raw or as the base64 a Secret's data holds
    needles = [shop.password.encode(), base64.b64encode(shop.password.encode())]
    for f in files_of(path):
        data = f.read_bytes()
        assert not any(n in data for n in needles), f
    # and `haplane secrets remove-key local` sees that this backup needs the key
    found = scan_retained(StateDir(platform.state), ["local"])
    assert any(r.path.name == f"{shop.ns}.yaml.sealed" and r.counts["local"] == 1 for r in found)

    # a kubectl delete namespace, and the CRD and a ClusterRole owner with it
    delete_and_wait(api, f"/api/v1/namespaces/{shop.ns}")
    delete_and_wait(api, f"{CRDS}/widgets.{shop.group}")
    delete_and_wait(api, f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{shop.gone_role}")

    report = await restore_backup(kube, path, sealer=sealer)
    assert report.ok, report.to_json()
    assert report.counts() == {"created": 11}, report.to_json()
    assert report.notes == [
        f"ConfigMap/by-gone (namespace {shop.ns}): its owner ClusterRole/{shop.gone_role} was not "
        "restored and does not exist: the reference is dropped (the object is kept, without "
        "that owner)"
    ]
    # written in order: CRD, namespace, then owners before dependents
    order = [o.object.split(" ")[0] for o in report.outcomes]
    assert order[:2] == [f"CustomResourceDefinition/widgets.{shop.group}", f"Namespace/{shop.ns}"]
    assert order.index("Widget/w1") < order.index("ConfigMap/child")
    assert order.index("ConfigMap/a") < order.index("Widget/w2")

    now = live(api, shop)
    assert set(now) == set(shop.uids)
    for key, old in shop.uids.items():
        assert now[key]["metadata"]["uid"] != old, key  # new objects, new uids
    secret = req(api, "GET", f"/api/v1/namespaces/{shop.ns}/secrets/db")
    assert base64.b64decode(secret["data"]["password"]).decode() == shop.password
    assert now["Widget/w1"]["spec"] == {"size": 3}

    def refs(key: str) -> list[str]:
        return [r["uid"] for r in now[key]["metadata"].get("ownerReferences") or ()]

    assert refs("ConfigMap/child") == [now["Widget/w1"]["metadata"]["uid"]]
    assert refs("Widget/w2") == [now["ConfigMap/a"]["metadata"]["uid"]]
    keep = req(api, "GET", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/keep-{shop.ns}")
    assert refs("ConfigMap/by-keep") == [keep["metadata"]["uid"]]  # present: kept as it is
    assert refs("ConfigMap/by-gone") == []

    # the garbage collector: a ConfigMap naming w1 by its old uid (what a restore without the
    # remapping would have written) is collected; the restored dependents stay
    base = f"/api/v1/namespaces/{shop.ns}/configmaps"
    stale = {**owner_ref(now["Widget/w1"]), "uid": shop.uids["Widget/w1"]}
    req(api, "POST", base, {"metadata": {"name": "stale", "ownerReferences": [stale]}})
    wait_for(lambda: status_of(api, f"{base}/stale") == 404)
    await asyncio.sleep(1.5)  # three more of the collector's rounds (every 0.5 s)
    for name in ("child", "by-keep", "by-gone"):
        assert status_of(api, f"{base}/{name}") == 200, name
    assert status_of(api, f"/apis/{shop.group}/v1/namespaces/{shop.ns}/widgets/w2") == 200


async def test_existing_skip_and_overwrite(
    platform: Platform, kube: KubeClient, sealer: Sealer
) -> None:
    api = platform.api
    ns = f"ex-{uid()}"
    base = f"/api/v1/namespaces/{ns}/configmaps"
    a = {"metadata": {"name": "a", "labels": {"v": "1"}}, "data": {"x": "1"}}
    namespace_with(api, ns, configmaps=[a, {"metadata": {"name": "b"}, "data": {"y": "1"}}])
    path, _ = await create_backup(kube, platform.backups, f"b-{ns}", namespaces=[ns])
    # changed since: a's data and a label another writer added; b deleted
    req(
        api,
        "PATCH",
        f"{base}/a",
        {"metadata": {"labels": {"other": "yes"}}, "data": {"x": "changed"}},
        content_type="application/merge-patch+json",
    )
    req(api, "DELETE", f"{base}/b")
    uid_a = req(api, "GET", f"{base}/a")["metadata"]["uid"]

    report = await restore_backup(kube, path, sealer=sealer)
    assert report.ok and {str(o) for o in report.outcomes} == {
        f"skipped: Namespace/{ns}: exists",
        f"skipped: ConfigMap/a (namespace {ns}): exists",
        f"created: ConfigMap/b (namespace {ns})",
    }
    assert req(api, "GET", f"{base}/a")["data"] == {"x": "changed"}

    report = await restore_backup(kube, path, existing="overwrite", sealer=sealer)
    assert report.ok and report.counts() == {"overwritten": 3}, report.to_json()
    a = req(api, "GET", f"{base}/a")
    assert a["data"] == {"x": "1"} and a["metadata"]["uid"] == uid_a
    assert a["metadata"]["labels"] == {"v": "1", "other": "yes"}  # fields others set stay
    assert any(m["manager"] == "haplane-backup" for m in a["metadata"]["managedFields"])

    # a dry-run of an overwrite changes nothing
    req(
        api,
        "PATCH",
        f"{base}/a",
        {"data": {"x": "again"}},
        content_type="application/merge-patch+json",
    )
    report = await restore_backup(kube, path, existing="overwrite", dry_run=True, sealer=sealer)
    assert report.ok and report.counts() == {"would overwrite": 3}, report.to_json()
    assert req(api, "GET", f"{base}/a")["data"] == {"x": "again"}


async def test_one_namespace_of_two_and_a_dry_run(
    platform: Platform, kube: KubeClient, sealer: Sealer
) -> None:
    api = platform.api
    one, two = f"one-{uid()}", f"two-{uid()}"
    for ns in (one, two):
        namespace_with(api, ns, configmaps=[{"metadata": {"name": "c"}}])
    path, manifest = await create_backup(
        kube, platform.backups, f"b-{one}", namespaces=[one, two], sealer=sealer
    )
    assert manifest.namespaces() == sorted([one, two])
    for ns in (one, two):
        delete_and_wait(api, f"/api/v1/namespaces/{ns}")

    with pytest.raises(BackupError, match="holds no namespace nope"):
        await restore_backup(kube, path, namespaces=["nope"], sealer=sealer)

    # a dry-run: the namespace does not exist, so its objects cannot be checked by the server
    report = await restore_backup(kube, path, namespaces=[one], dry_run=True, sealer=sealer)
    assert report.ok and [str(o) for o in report.outcomes] == [
        f"would create: Namespace/{one}",
        f"would create: ConfigMap/c (namespace {one}): not checked: its namespace is restored "
        "first",
    ]
    assert status_of(api, f"/api/v1/namespaces/{one}") == 404

    report = await restore_backup(kube, path, namespaces=[one], sealer=sealer)
    assert report.ok and report.counts() == {"created": 2}
    assert status_of(api, f"/api/v1/namespaces/{one}/configmaps/c") == 200
    assert status_of(api, f"/api/v1/namespaces/{two}") == 404


async def test_admission_applies_to_a_restore(
    platform: Platform, kube: KubeClient, sealer: Sealer
) -> None:
    """A restore writes as any client: a policy that refuses one object makes that object
    `failed` with the policy's message, the rest are restored, and the report is not ok."""
    api = platform.api
    ns = f"vap-{uid()}"
    base = f"/api/v1/namespaces/{ns}/configmaps"
    namespace_with(
        api, ns, configmaps=[{"metadata": {"name": n}, "data": {"k": n}} for n in ("fine", "tiny")]
    )
    path, _ = await create_backup(kube, platform.backups, f"b-{ns}", namespaces=[ns])
    delete_and_wait(api, f"/api/v1/namespaces/{ns}")
    vap = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
    policy = {
        "metadata": {"name": ns},
        "spec": {
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["configmaps"],
                    }
                ]
            },
            "matchConditions": [
                {"name": "ours", "expression": f"object.metadata.namespace == '{ns}'"}
            ],
            "validations": [
                {"expression": "object.metadata.name != 'tiny'", "message": "no tiny ones"}
            ],
        },
    }
    binding = {"metadata": {"name": ns}, "spec": {"policyName": ns, "validationActions": ["Deny"]}}
    req(api, "POST", vap, policy)
    req(api, "POST", vap.replace("policies", "policybindings"), binding)
    try:
        report = await restore_backup(kube, path, sealer=sealer)
        assert not report.ok
        assert report.counts() == {"created": 2, "failed": 1}, report.to_json()
        (failed,) = [o for o in report.outcomes if o.action == "failed"]
        assert failed.object == f"ConfigMap/tiny (namespace {ns})"
        assert "no tiny ones" in failed.message
        assert status_of(api, f"{base}/fine") == 200 and status_of(api, f"{base}/tiny") == 404
    finally:
        api.request("DELETE", f"{vap.replace('policies', 'policybindings')}/{ns}")
        api.request("DELETE", f"{vap}/{ns}")


# ---- Secrets never in plain text ----------------------------------------------------------


async def test_secrets_without_a_key_are_refused(platform: Platform, kube: KubeClient) -> None:
    api = platform.api
    ns = f"nokey-{uid()}"
    namespace_with(api, ns, secrets=[SECRET], configmaps=[{"metadata": {"name": "c"}}])
    with pytest.raises(BackupError, match="1 objects of secrets would be backed up") as e:
        await create_backup(
            kube, platform.backups, f"b-{ns}", namespaces=[ns], no_sealer="no configuration here"
        )
    assert "no configuration here" in str(e.value) and "--exclude-resource" in str(e.value)
    assert not (platform.backups / f"b-{ns}").exists()
    assert not [p for p in platform.backups.iterdir() if p.name.startswith(f".b-{ns}")]
    # left out, the rest is backed up without a key
    _, manifest = await create_backup(
        kube, platform.backups, f"b-{ns}", namespaces=[ns], excluded=["secrets"]
    )
    assert {r["resource"] for r in manifest.resources()} == {"configmaps", "namespaces"}
    assert "secrets: excluded (--exclude-resource)" in manifest.left_out


async def test_a_backup_under_another_key_does_not_open(
    platform: Platform, kube: KubeClient, sealer: Sealer, tmp_path: Path
) -> None:
    api = platform.api
    ns = f"other-{uid()}"
    namespace_with(api, ns, secrets=[SECRET])
    path, _ = await create_backup(kube, platform.backups, f"b-{ns}", namespaces=[ns], sealer=sealer)
    create_local_key(tmp_path / "kek.key")
    other = tmp_path / "config.yaml"
    other.write_text(default_config(tmp_path / "kek.key"))
    wrong = Sealer.from_config(other)
    try:
        with pytest.raises(BackupError, match="nothing was applied") as e:
            await restore_backup(kube, path, namespaces=[ns], sealer=wrong)
        assert "key-encryption key" in str(e.value)
    finally:
        wrong.close()
    with pytest.raises(BackupError, match="no key-encryption key to open it"):
        await restore_backup(kube, path, sealer=None)


async def test_secrets_sealed_through_a_kms_plugin(platform: Platform, kube: KubeClient) -> None:
    """A KEK behind a KMS v2 plugin (haplane's reference plugin as a process): the backup asks
    it to wrap its seed as a replica would, the restore to unwrap it; with the plugin down, a
    backup of Secrets is refused and nothing is written."""
    api = platform.api
    ns = f"kms-{uid()}"
    namespace_with(api, ns, secrets=[SECRET])
    directory = Path(tempfile.mkdtemp(prefix="kms-", dir="/tmp"))  # (a short socket path)
    key = directory / "current.key"
    create_local_key(key)
    plugin = PluginProcess(directory / "kms.sock", [key])
    config = directory / "config.yaml"
    config.write_text(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
        "  - resources: [secrets]\n    providers:\n"
        f"      - kms: {{apiVersion: v2, name: vault, endpoint: 'unix://{plugin.socket}'}}\n"
    )
    plugin.start()
    sealer = Sealer.from_config(config)
    try:
        path, manifest = await create_backup(
            kube, platform.backups, f"b-{ns}", namespaces=[ns], sealer=sealer
        )
        assert manifest.sealing == {"provider": "vault", "keyId": LocalKek(key).key_id()}
        delete_and_wait(api, f"/api/v1/namespaces/{ns}")
        report = await restore_backup(kube, path, sealer=sealer)
        assert report.ok and report.counts() == {"created": 2}, report.to_json()
        plugin.stop()
        down = Sealer.from_config(config)
        try:
            with pytest.raises(BackupError, match=r"vault.*not reachable.*nothing was written"):
                await create_backup(kube, platform.backups, f"c-{ns}", namespaces=[ns], sealer=down)
        finally:
            down.close()
        assert not (platform.backups / f"c-{ns}").exists()
    finally:
        sealer.close()
        plugin.stop()
        shutil.rmtree(directory, ignore_errors=True)


# ---- bad input ----------------------------------------------------------------------------


async def test_bad_backups_are_refused_before_anything_is_applied(
    platform: Platform, kube: KubeClient, sealer: Sealer, tmp_path: Path
) -> None:
    api = platform.api
    ns = f"bad-{uid()}"
    namespace_with(api, ns, configmaps=[{"metadata": {"name": "c"}, "data": {"k": "v"}}])
    good, _ = await create_backup(kube, platform.backups, f"b-{ns}", namespaces=[ns], sealer=sealer)
    delete_and_wait(api, f"/api/v1/namespaces/{ns}")

    def copy(name: str) -> Path:
        out = tmp_path / name
        shutil.copytree(good, out)
        return out

    tampered = copy("tampered")
    f = tampered / f"resources/configmaps/{ns}.yaml"
    f.write_bytes(f.read_bytes().replace(b"k: v", b"k: w"))
    with pytest.raises(BackupError, match=f"configmaps/{ns}.yaml: sha256 .* is not the") as e:
        await restore_backup(kube, tampered, sealer=sealer)
    assert "nothing was applied" in str(e.value)

    missing = copy("missing")
    (missing / "resources/namespaces/_cluster.yaml").unlink()
    with pytest.raises(BackupError, match=r"resources/namespaces/_cluster\.yaml: missing"):
        await restore_backup(kube, missing, sealer=sealer)

    newer = copy("newer")
    doc = json.loads((newer / "manifest.json").read_text())
    doc["formatVersion"] = 99
    (newer / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackupError, match=r"backup format 99 .* restore it with a newer haplane"):
        await restore_backup(kube, newer, sealer=sealer)

    outside = copy("outside")
    doc = json.loads((outside / "manifest.json").read_text())
    doc["files"][0]["path"] = "../../../etc/passwd"
    (outside / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackupError, match="names a file outside the backup"):
        await restore_backup(kube, outside, sealer=sealer)

    with pytest.raises(BackupError, match="no backup at"):
        await restore_backup(kube, tmp_path / "none", sealer=sealer)
    assert status_of(api, f"/api/v1/namespaces/{ns}") == 404  # nothing was applied

    # a namespace still terminating (a finalizer holds its last object)
    hold = {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}
    namespace_with(api, ns, configmaps=[hold])
    held = f"/api/v1/namespaces/{ns}/configmaps/held"
    api.request("DELETE", f"/api/v1/namespaces/{ns}")
    try:
        with pytest.raises(BackupError, match=f"namespace {ns} is being deleted"):
            await restore_backup(kube, good, sealer=sealer)
    finally:
        api.request(
            "PATCH",
            held,
            {"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )
    delete_and_wait(api, f"/api/v1/namespaces/{ns}")
    # the same backup, whole, restores
    report = await restore_backup(kube, good, sealer=sealer)
    assert report.ok and report.counts() == {"created": 2}

    # and a backup name that is taken is refused
    with pytest.raises(BackupError, match="exists already"):
        await create_backup(kube, platform.backups, f"b-{ns}", namespaces=[ns], sealer=sealer)


# ---- the CLI ------------------------------------------------------------------------------


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120)


def test_the_cli_with_kubectl(platform: Platform) -> None:
    """`haplane backup` as a new user would: a namespace made with kubectl is backed up, deleted
    with `kubectl delete namespace`, restored (a dry-run first); a damaged backup is described as
    such and refused; without a key-encryption key Secrets are refused unless left out."""
    state = platform.state
    kc = str(platform.api.kubeconfig(state.parent / "cli-kubeconfig"))
    password = secrets.token_urlsafe(18)

    def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run("kubectl", "--kubeconfig", kc, *args, stdin=stdin)

    def backup(*args: str) -> subprocess.CompletedProcess[str]:
        return run(
            sys.executable, "-m", "haplane.cli", "backup", *args,
            "--kubeconfig", kc, "--state-dir", str(state),
        )  # fmt: skip

    def local(*args: str) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "haplane.cli", "backup", *args, "--state-dir", str(state))

    assert kubectl("create", "namespace", "shop").returncode == 0
    r = kubectl("-n", "shop", "create", "configmap", "settings", "--from-literal=a=1")
    assert r.returncode == 0, r.stderr
    secret = f"--from-literal=password={password}"
    r = kubectl("-n", "shop", "create", "secret", "generic", "db", secret)
    assert r.returncode == 0, r.stderr

    r = backup("create", "nightly", "-n", "shop")
    assert r.returncode == 0, r.stderr
    assert "backup nightly: 3 objects of 3 resources in 1 namespaces (1 sealed)" in r.stdout
    where = state / "backups" / "logical" / "nightly"
    for f in where.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert password.encode() not in data and base64.b64encode(password.encode()) not in data

    r = local("list")
    assert r.returncode == 0 and "nightly" in r.stdout, r.stdout
    assert " 3       1  shop / " in r.stdout, r.stdout  # objects, sealed, namespaces
    r = local("describe", "nightly")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "files: whole (sha256 checked)" in r.stdout and "sealed under provider local" in r.stdout

    assert kubectl("delete", "namespace", "shop").returncode == 0  # (waits until it is gone)
    r = backup("restore", "nightly", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would create: Secret/db (namespace shop): not checked" in r.stdout
    assert kubectl("get", "namespace", "shop").returncode != 0

    r = backup("restore", "nightly")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restore of nightly: created 3" in r.stdout
    got = kubectl("-n", "shop", "get", "secret", "db", "-o", "jsonpath={.data.password}")
    assert base64.b64decode(got.stdout).decode() == password
    r = backup("restore", "nightly", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["counts"] == {"skipped": 3}

    # damaged: describe says so, restore refuses (exit 1, one error line)
    cm = where / "resources" / "configmaps" / "shop.yaml"
    cm.write_text(cm.read_text().replace("a: '1'", "a: '2'"))
    r = local("describe", "nightly")
    assert r.returncode == 1 and "DAMAGED" in r.stdout
    assert "configmaps/shop.yaml: sha256" in r.stdout
    r = backup("restore", "nightly", "--existing", "overwrite")
    assert r.returncode == 1 and "is damaged; nothing was applied" in r.stderr, r.stderr
    r = backup("restore", "nightly", "--existing", "replace")
    assert r.returncode == 1 and "--existing: skip or overwrite" in r.stderr

    # no key-encryption key (a state dir without one): Secrets refused, unless left out
    empty = state.parent / "empty-state"
    r = run(
        sys.executable, "-m", "haplane.cli", "backup", "create", "nokey", "-n", "shop",
        "--kubeconfig", kc, "--state-dir", str(empty),
    )  # fmt: skip
    assert r.returncode == 1, r.stdout
    assert "no encryption configuration at" in r.stderr and "--exclude-resource" in r.stderr
    r = run(
        sys.executable, "-m", "haplane.cli", "backup", "create", "nokey", "-n", "shop",
        "--exclude-resource", "secrets", "--kubeconfig", kc, "--state-dir", str(empty),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "left out: secrets: excluded" in r.stderr


# ---- decisions, as pure functions ---------------------------------------------------------


def item(kind: str, name: str, owners: tuple[str, ...] = (), api: str = "v1") -> Item:
    meta: Obj = {"name": name, "namespace": "n"}
    if owners:
        meta["ownerReferences"] = [{"uid": f"u-{o}"} for o in owners]
    return Item({"apiVersion": api, "kind": kind, "metadata": meta}, f"u-{name}", kind.lower())


def test_plan_orders_foundation_then_owners_then_kinds() -> None:
    items = [
        item("ConfigMap", "child", ("w1",)),
        item("Widget", "w1", api="x.example.com/v1"),
        item("Widget", "w2", ("a",), api="x.example.com/v1"),
        item("ConfigMap", "a"),
        item("ServiceAccount", "sa"),
        item("Namespace", "n"),
        item("CustomResourceDefinition", "widgets.x.example.com", api="apiextensions.k8s.io/v1"),
        item("ConfigMap", "grandchild", ("child",)),
        item("ConfigMap", "loop1", ("loop2",)),
        item("ConfigMap", "loop2", ("loop1",)),
    ]
    steps = [[i.name for i in s] for s in plan(items)]
    assert steps == [
        ["widgets.x.example.com"],
        ["n"],
        ["sa"],  # kind rank: ServiceAccounts before ConfigMaps before the rest
        ["a", "loop2"],  # (a cycle is cut where it closes: loop1 goes after loop2)
        ["w1"],
        ["child", "loop1"],
        ["w2"],
        ["grandchild"],
    ]


def test_choose_leaves_out_volatile_kinds_and_never_takes_operations() -> None:
    rw = ("create", "get", "list")
    served = [
        Resource("", "v1", "ConfigMap", "configmaps", True, verbs=rw, short_names=("cm",)),
        Resource("", "v1", "Event", "events", True, verbs=rw, short_names=("ev",)),
        Resource("coordination.k8s.io", "v1", "Lease", "leases", True, verbs=rw),
        Resource("ops.haplane.dev", "v1", "Switchover", "switchovers", False, verbs=rw),
        Resource(
            "authentication.k8s.io", "v1", "TokenReview", "tokenreviews", False, verbs=("create",)
        ),
        Resource("a.example.com", "v1", "Widget", "widgets", True, verbs=rw),
        Resource("b.example.com", "v1", "Widget", "widgets", True, verbs=rw),
    ]
    chosen, left_out = choose(served)
    assert [r.qualified for r in chosen] == [
        "configmaps",
        "widgets.a.example.com",
        "widgets.b.example.com",
    ]
    assert [w.split(":")[0] for w in left_out] == [
        "events",
        "leases.coordination.k8s.io",
        "switchovers.ops.haplane.dev",
    ]
    assert [r.qualified for r in choose(served, ["cm", "ev"])[0]] == ["configmaps", "events"]
    assert [r.qualified for r in choose(served, ["widget.b.example.com"])[0]] == [
        "widgets.b.example.com"
    ]
    with pytest.raises(BackupError, match="names several resources"):
        choose(served, ["widgets"])
    with pytest.raises(BackupError, match="never backed up"):
        choose(served, ["switchovers"])
    with pytest.raises(BackupError, match="no resource 'pods'"):
        choose(served, ["pods"])
    assert [r.qualified for r in choose(served, excluded=["widgets.a.example.com"])[0]] == [
        "configmaps",
        "widgets.b.example.com",
    ]


def test_what_the_platform_seals_at_rest_is_sealed(tmp_path: Path) -> None:
    """Secrets always; any other resource the configuration encrypts too; the rest not."""
    create_local_key(tmp_path / "kek.key")
    config = tmp_path / "config.yaml"
    config.write_text(
        default_config(tmp_path / "kek.key").replace("[secrets]", "[secrets, configmaps]")
    )
    sealer = Sealer.from_config(config)
    try:
        assert sealer.seals_at_rest("", "secrets") and sealer.seals_at_rest("", "configmaps")
        assert not sealer.seals_at_rest("", "serviceaccounts")
        sealed = sealer.seal(b"data", b"backup b/resources/configmaps/n.yaml.sealed")
        assert sealed.startswith(b"k8s:enc:kms:v2:local:") and b"data" not in sealed
        assert sealer.open(sealed, b"backup b/resources/configmaps/n.yaml.sealed") == b"data"
        with pytest.raises(SealingError):  # moved to another path: it does not open
            sealer.open(sealed, b"backup b/resources/configmaps/m.yaml.sealed")
    finally:
        sealer.close()


def test_a_manifest_round_trips(tmp_path: Path) -> None:
    m = Manifest("n", "2026-12-06T00:00:00Z", "0.1.0", {"server": "s"}, {}, [])
    (tmp_path / "manifest.json").write_text(json.dumps(m.to_json()))
    assert read_manifest(tmp_path).to_json() == m.to_json()
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(BackupError, match="not JSON"):
        read_manifest(tmp_path)
