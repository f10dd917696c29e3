"""`haplane divergence list|show|apply`: a saved divergence (as the rejoin writes it) reviewed
and re-applied through a real API server."""

from __future__ import annotations

import json
from pathlib import Path

from haplane.local.api_replica import ApiReplica
from haplane.local.divergence import api_target, reapply, reapply_plan
from haplane.replication.rejoin import Diverged, save
from tests.topology_helpers import haplane


def _saved(root: Path, namespace: str) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "late", "namespace": namespace, "uid": "old", "resourceVersion": "9"},
        "data": {"a": "from the old region"},
    }
    existing = {**cm, "metadata": {**cm["metadata"], "name": "both"}}
    key = f"/registry/configmaps/{namespace}/".encode()
    save(
        root / "divergence",
        7,
        "eu-west",
        "eu-central",
        1234,
        "history",
        [
            Diverged(
                f"/registry/configmaps/{namespace}/late".encode(),
                "put",
                json.dumps(cm).encode(),
                1240,
            ),
            Diverged(
                f"/registry/configmaps/{namespace}/both".encode(),
                "put",
                json.dumps(existing).encode(),
                1241,
            ),
            Diverged(key + b"gone", "delete", None, 1242),
            Diverged(b"/registry/something/odd", "put", b"\x00binary", 1243),
        ],
    )


def test_keys_map_to_api_paths() -> None:
    assert api_target("/registry/namespaces/shop", None).collection == "/api/v1/namespaces"  # type: ignore[union-attr]
    t = api_target("/registry/secrets/shop/db", None)
    assert t is not None and (t.collection, t.name) == ("/api/v1/namespaces/shop/secrets", "db")
    crd = {"apiVersion": "stable.example.com/v1"}
    t = api_target("/registry/stable.example.com/crontabs/shop/c1", crd)
    assert t is not None
    assert t.collection == "/apis/stable.example.com/v1/namespaces/shop/crontabs"
    assert api_target("/haplane/cut", None) is None


def test_list_and_show(tmp_path: Path) -> None:
    _saved(tmp_path, "ns")
    listed = json.loads(haplane(tmp_path, "divergence", "list", "--json").stdout)
    assert [(d["name"], d["region"], d["count"]) for d in listed] == [("7", "eu-west", 4)]
    shown = haplane(tmp_path, "divergence", "show", "7").stdout
    assert "/registry/configmaps/ns/late" in shown and "delete" in shown
    r = haplane(tmp_path, "divergence", "show", "8", check=False)
    assert r.returncode == 1 and "no divergence named '8'" in r.stderr
    dry = haplane(tmp_path, "divergence", "apply", "7", "--dry-run").stdout
    assert "apply: /registry/configmaps/ns/late" in dry
    assert "skip (deleted in the old region after the cut): /registry/configmaps/ns/gone" in dry


async def test_apply_creates_or_replaces_through_the_api(
    tmp_path: Path, api_replicas: list[ApiReplica], namespace: str
) -> None:
    api = api_replicas[0]
    api.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "both"}, "data": {"a": "written since"}},
    )
    _saved(tmp_path, namespace)
    steps = reapply_plan(tmp_path, "7")
    results = {r["key"].rsplit("/", 1)[-1]: r for r in await reapply(api.url, steps)}
    assert results["late"]["result"] == "created"
    assert results["both"]["result"] == "replaced"
    assert results["gone"]["result"] == "skipped" and results["odd"]["result"] == "skipped"
    _, _, late = api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/late")
    assert late["data"] == {"a": "from the old region"} and late["metadata"]["uid"] != "old"
    _, _, both = api.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/both")
    assert both["data"] == {"a": "from the old region"}


def test_sealed_secrets_are_opened_in_memory_to_be_reapplied(tmp_path: Path) -> None:
    """A Secret saved from a region that sealed it at rest stays ciphertext in the saved file,
    and is opened (with the state dir's configuration) only to be applied through the API."""
    from haplane.api.encryption import transformers
    from haplane.api.resources import BUILTIN
    from haplane.auth.encryption import create_local_key, default_config

    key = tmp_path / "encryption" / "kek.key"
    create_local_key(key)
    (tmp_path / "encryption" / "config.yaml").write_text(default_config(key))
    t = transformers(tmp_path / "encryption" / "config.yaml", BUILTIN)
    etcd_key = b"/registry/secrets/shop/db"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db",
              "namespace": "shop"}, "data": {"p": "aHVudGVyMg=="}}  # fmt: skip
    sealed = t.to_storage(json.dumps(secret).encode(), etcd_key)
    save(tmp_path / "divergence", 9, "eu-west", "eu-central", 1, "history",
         [Diverged(etcd_key, "put", sealed, 2)])  # fmt: skip
    assert all(b"aHVudGVyMg" not in p.read_bytes() for p in (tmp_path / "divergence").rglob("*")
               if p.is_file())  # fmt: skip
    (step,) = reapply_plan(tmp_path, "9")
    assert step["action"] == "skip" and "encrypted" in step["why"]
    (step,) = reapply_plan(tmp_path, "9", decrypt=t.from_storage)
    assert step["action"] == "apply" and step["object"]["data"] == {"p": "aHVudGVyMg=="}
    dry = haplane(tmp_path, "divergence", "apply", "9", "--dry-run").stdout
    assert "apply: /registry/secrets/shop/db" in dry, dry
