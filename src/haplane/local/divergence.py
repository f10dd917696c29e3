"""Divergence a returning region wrote after the cut, as saved by its replicator
(`haplane.replication.rejoin`): list it, show it, and re-apply it through the API.

Layer: run (`haplane.local`). Reads `STATE/divergence/<name>/` (a `summary.json` and the stored
bytes of each object); re-applies through the gate, like any client, so admission, fencing and
replication see an ordinary write.

Re-applying an object: its stored bytes are the object as the old region kept it (JSON today;
with encryption at rest, the API would have to decrypt them: they are never decoded here to
plaintext on disk). The object is created where absent, else replaced over the current version
(its `resourceVersion` and `uid` are the old region's, so both are dropped). Keys the old region
deleted after the cut, or that the comparison found only in the active region, are listed and
left alone: deleting an object someone may have written since is an operator's decision.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import Any

from haplane.api.resources import BUILTIN


class DivergenceError(Exception):
    pass


def directory(root: Path) -> Path:
    return root / "divergence"


def list_saved(root: Path) -> list[dict[str, Any]]:
    """Every saved divergence's summary (without its entries), oldest first."""
    out = []
    for summary in sorted(directory(root).glob("*/summary.json")):
        doc = json.loads(summary.read_text())
        doc.pop("entries", None)
        doc["path"] = str(summary.parent)
        out.append(doc)
    return sorted(out, key=lambda d: d.get("epoch", 0))


def load(root: Path, name: str) -> dict[str, Any]:
    path = directory(root) / name / "summary.json"
    if not path.exists():
        known = ", ".join(d["name"] for d in list_saved(root)) or "none"
        raise DivergenceError(f"no divergence named {name!r} (saved: {known})")
    doc: dict[str, Any] = json.loads(path.read_text())
    doc["path"] = str(path.parent)
    return doc


@dataclass(frozen=True)
class Target:
    """Where an etcd key is served: the collection URL path and the object's name."""

    collection: str
    name: str


def api_target(key: str, obj: dict[str, Any] | None) -> Target | None:
    """The API path of a stored key (kube-apiserver's layout); None when it is not an object
    the API serves (then it cannot be re-applied through it)."""
    for t in BUILTIN:
        prefix = t.key_prefix()
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :].split("/")
        base = f"/api/{t.version}" if not t.group else f"/apis/{t.group}/{t.version}"
        if t.namespaced and len(rest) == 2:
            return Target(f"{base}/namespaces/{rest[0]}/{t.plural}", rest[1])
        if not t.namespaced and len(rest) == 1:
            return Target(f"{base}/{t.plural}", rest[0])
    parts = key.removeprefix("/registry/").split("/")
    api_version = (obj or {}).get("apiVersion")
    if len(parts) in (3, 4) and isinstance(api_version, str) and "/" in api_version:
        group, plural = parts[0], parts[1]
        if api_version.split("/")[0] != group:
            return None
        base = f"/apis/{api_version}"
        if len(parts) == 4:
            return Target(f"{base}/namespaces/{parts[2]}/{plural}", parts[3])
        return Target(f"{base}/{plural}", parts[2])
    return None


def reapply_plan(
    root: Path,
    name: str,
    keys: list[str] | None = None,
    decrypt: Callable[[bytes, bytes], bytes] | None = None,
) -> list[dict[str, Any]]:
    """What `apply` would do per entry: (entry, object, target, action or why it is skipped).
    `decrypt(value, key)`: opens values sealed at rest, in memory only (the saved files stay
    ciphertext)."""
    doc = load(root, name)
    base = Path(doc["path"])
    chosen = set(keys) if keys else None
    out = []
    for e in doc["entries"]:
        if chosen is not None and e["key"] not in chosen:
            continue
        step: dict[str, Any] = {"key": e["key"], "change": e["change"], "object": None}
        if not e.get("file"):
            step["action"] = "skip"
            step["why"] = (
                "deleted in the old region after the cut"
                if e["change"] == "delete"
                else "absent in the old region"
            )
            out.append(step)
            continue
        raw = (base / e["file"]).read_bytes()
        if raw.startswith(b"k8s:enc:") and decrypt is not None:
            try:
                raw = decrypt(raw, e["key"].encode())
            except Exception as exc:  # the configuration's EncryptionError, said as it is
                step["action"], step["why"] = "skip", f"cannot be decrypted here: {exc}"
                out.append(step)
                continue
        try:
            obj = json.loads(raw)
        except ValueError:
            step["action"], step["why"] = "skip", "not a JSON object (encrypted or internal)"
            out.append(step)
            continue
        target = api_target(e["key"], obj) if isinstance(obj, dict) else None
        if target is None:
            step["action"], step["why"] = "skip", "not an object the API serves"
        else:
            meta = obj.setdefault("metadata", {})
            for field in ("resourceVersion", "uid"):
                meta.pop(field, None)
            step["object"], step["target"], step["action"] = obj, target, "apply"
        out.append(step)
    return out


async def reapply(
    gate: str, steps: list[dict[str, Any]], ssl: SSLContext | bool = True
) -> list[dict[str, Any]]:
    """Create each object where absent, else replace it over the current version; the outcome
    per step (HTTP status and message). `ssl`: the platform CA and the operator's
    certificate (the writes are audited under that identity)."""
    import aiohttp

    results = []
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10), connector=aiohttp.TCPConnector(ssl=ssl)
    ) as s:
        for step in steps:
            if step["action"] != "apply":
                results.append({**_brief(step), "result": "skipped", "why": step["why"]})
                continue
            t: Target = step["target"]
            obj = step["object"]
            async with s.post(f"{gate}{t.collection}", json=obj) as r:
                status, body = r.status, await r.json(content_type=None)
            if status == 409:
                async with s.get(f"{gate}{t.collection}/{t.name}") as r:
                    current = await r.json(content_type=None)
                rv = (current.get("metadata") or {}).get("resourceVersion")
                obj["metadata"]["resourceVersion"] = rv
                async with s.put(f"{gate}{t.collection}/{t.name}", json=obj) as r:
                    status, body = r.status, await r.json(content_type=None)
                verb = "replaced"
            else:
                verb = "created"
            ok = status in (200, 201)
            results.append(
                {
                    **_brief(step),
                    "result": verb if ok else "failed",
                    "status": status,
                    "why": None if ok else (body or {}).get("message"),
                }
            )
    return results


def _brief(step: dict[str, Any]) -> dict[str, Any]:
    return {"key": step["key"], "change": step["change"]}
