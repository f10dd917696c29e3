"""Carrying out approved RoleGrants (`haplane.api.ops`): the one way a binding to a guarded
ClusterRole (`haplane.auth.rbac.GUARDED_ROLES`) comes to exist.

Layer: api. Runs in every API replica; acts only while its region is writable. Reads and
rewrites the grants in the global control etcd through `haplane.store.operations` and creates
the binding through the binding's own store, as the replica itself (no request user, so the
guard in `haplane.api.authorizer.escalation_check` lets it through).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from haplane.store import EtcdClient, EtcdError, KeyValue
from haplane.store import operations as store_ops
from haplane.store.operations import (
    APPROVED,
    EXPIRED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    now_rfc3339,
    parse_time,
)

from . import errors
from .generic_store import GenericStore
from .ops import expired
from .storage import StorageError

log = logging.getLogger("haplane.api.grants")

Obj = dict[str, Any]


def _dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


GRANT_ANNOTATION = "ops.haplane.dev/rolegrant"  # on a binding made by a grant: name/uid


def _made_by(existing: Obj, binding: Obj, mark: str) -> bool:
    """Whether `existing` is the binding this grant made: its annotation, and what it grants
    (an annotation alone could be copied onto another binding)."""
    meta = _dict(existing.get("metadata"))
    return (
        _dict(meta.get("annotations")).get(GRANT_ANNOTATION) == mark
        and existing.get("roleRef") == binding.get("roleRef")
        and existing.get("subjects") == binding.get("subjects")
    )


class GrantExecutor:
    """Carries out approved RoleGrants: on the replicas of the writable region (`may_act`; each
    claims a grant with a compare-and-swap and leaves one another replica claimed in the last
    30 s alone; a runner that takes over later finds the binding made and counts it done: no
    lease needed), it creates the binding a grant
    carries through the
    binding's own store, as the replica itself (so the guard on `rbac.GUARDED_ROLES` lets it
    through), annotated with the grant, and records the outcome in the grant's status
    (compare-and-swap in the global control etcd). Idempotent across leaders: a `Running`
    grant is finished by whoever acts next (a binding already carrying its annotation counts
    as done). Also expires `Pending` grants past their time."""

    def __init__(
        self,
        client: EtcdClient,
        global_prefix: bytes,
        binding_store: Callable[[str], GenericStore],
        may_act: Callable[[], bool],
        name: str,
    ) -> None:
        self.client = client
        self.prefix = global_prefix
        self.binding_store = binding_store  # "RoleBinding" | "ClusterRoleBinding" -> its store
        self.may_act = may_act
        self.name = name

    async def run(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every * (0.5 + random.random()))  # replicas out of step
            if not self.may_act():
                continue
            try:
                await self.one_pass()
            except (EtcdError, StorageError) as exc:  # the next pass tries again
                log.info(json.dumps({"msg": "role grants: pass failed", "error": str(exc)}))

    async def one_pass(self) -> None:
        for kv, obj in await store_ops.list_objects(
            self.client, self.prefix, "rolegrants", timeout=1.0
        ):
            status = _dict(obj.get("status"))
            phase = status.get("phase")
            if phase == RUNNING and status.get("runBy") != self.name:
                started = parse_time(status.get("startedAt"))
                if started is not None and time.time() - started < 30:
                    continue  # another replica is at it; finished by it, or after it
            try:
                if phase == PENDING and expired(obj):
                    await self._set(kv, EXPIRED, "not approved in time: ask again")
                elif phase in (APPROVED, RUNNING):
                    await self._carry_out(kv, obj)
            except store_ops.Lost:
                continue  # someone acted on it meanwhile: the next pass sees it as it is
            except Exception as exc:
                name = _dict(obj.get("metadata")).get("name")
                log.warning(
                    json.dumps({"msg": "role grant failed", "grant": name, "error": repr(exc)})
                )
                with contextlib.suppress(Exception):
                    await self._set(kv, FAILED, f"stopped by an error: {exc!r}")

    async def _set(self, kv: KeyValue, phase: str, message: str, **fields: Any) -> KeyValue:
        def change(st: Obj) -> None:
            st["phase"] = phase
            st["message"] = message
            if phase in TERMINAL:
                st["finishedAt"] = now_rfc3339()
            st.update(fields)

        new, _ = await store_ops.update_status(self.client, kv, change, timeout=1.0)
        return new

    async def _carry_out(self, kv: KeyValue, obj: Obj) -> None:
        grant = obj["metadata"]
        mark = f"{grant['name']}/{grant.get('uid', '')}"
        started = _dict(obj.get("status")).get("startedAt") or now_rfc3339()
        kv = await self._set(
            kv, RUNNING, "creating the binding", runBy=self.name, startedAt=started
        )
        binding = json.loads(json.dumps(_dict(obj.get("spec")).get("binding") or {}))
        binding.setdefault("apiVersion", "rbac.authorization.k8s.io/v1")
        meta = binding.setdefault("metadata", {})
        meta.setdefault("annotations", {})[GRANT_ANNOTATION] = mark
        kind = str(binding.get("kind"))
        store = self.binding_store(kind)
        namespace = meta.get("namespace") if kind == "RoleBinding" else None
        try:
            created = await store.create(namespace, binding)
        except errors.StatusError as exc:
            if exc.code == 429 or exc.code >= 500:
                # fenced, unavailable, or an outcome unknown: left Running, tried again next
                # pass (the annotation tells a binding this grant made from any other)
                log.info(json.dumps({"msg": "role grant: retrying", "error": exc.message}))
                return
            if exc.code != 409:
                await self._set(kv, FAILED, f"the binding was refused: {exc.message}")
                return
            existing = await store.get(namespace, meta.get("name", ""))
            if not _made_by(existing, binding, mark):
                await self._set(
                    kv, FAILED, f"{kind} {meta.get('name')} exists already: nothing done"
                )
                return
            created = existing  # made by this grant before the runner stopped
        made = _dict(created.get("metadata"))
        where = f" in {made.get('namespace')}" if made.get("namespace") else ""
        log.warning(
            json.dumps(
                {
                    "msg": "role grant carried out",
                    "grant": mark,
                    "binding": f"{kind}/{made.get('name')}{where}",
                    "role": _dict(binding.get("roleRef")).get("name"),
                }
            )
        )
        with contextlib.suppress(store_ops.Lost):
            await self._set(
                kv,
                SUCCEEDED,
                f"{kind} {made.get('name')}{where} created",
                binding={
                    "kind": kind,
                    "name": made.get("name"),
                    "namespace": made.get("namespace"),
                    "uid": made.get("uid"),
                },
            )
