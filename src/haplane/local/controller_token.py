"""The controllers' ServiceAccount tokens, kept fresh by the supervisor.

Layer: run (local). Asks an API replica (any region: TokenRequest reads the ServiceAccount
from the replica's cache and writes nothing) for a token of a controller's ServiceAccount
with the supervisor's admin client certificate, and writes it to a file (0600, written whole
then renamed: a reader never sees half a token):

- `kube-system/haplane-failover-controller` (haplane.auth.rbac.FAILOVER_CONTROLLER_SA) to
  `STATE/pki/tokens/failover-controller.token`: every gate's controller reads it when it
  records an automatic switch (haplane.gate.api_recorder);
- `kube-system/haplane-gitops` (GITOPS_CONTROLLER_SA) to
  `STATE/pki/tokens/gitops-controller.token`: the GitOps controller instances' kubeconfigs
  name it as their `tokenFile`, re-read as it is renewed.

Tokens live `LIFETIME` and are renewed every `RENEW` (Kubernetes' projected tokens are renewed
at 80 % of their life; here far sooner, so a supervisor down for a while leaves a token
valid for most of a day). Until the first one is written (the replicas create the
ServiceAccount once the region is writable) it asks again every `RETRY` seconds; the
controller records straight into the global control etcd meanwhile, and says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import aiohttp

from haplane.auth.rbac import FAILOVER_CONTROLLER_SA

log = logging.getLogger("haplane.local.controller_token")

LIFETIME = 24 * 3600
RENEW = 3600.0
RETRY = 2.0


class TokenError(Exception):
    pass


async def request_token(
    urls: list[str],
    ssl: object,
    lifetime: int = LIFETIME,
    account: tuple[str, str] = FAILOVER_CONTROLLER_SA,
) -> str:
    """A fresh token of `account` (namespace, name) from the first replica of `urls` that
    answers."""
    namespace, name = account
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": lifetime},
    }
    said = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        for url in urls:
            try:
                async with session.post(url + path, json=body, ssl=ssl) as resp:  # type: ignore[arg-type]
                    doc = await resp.json(content_type=None)
                    if resp.status == 201:
                        return str(doc["status"]["token"])
                    said.append(f"{url}: {resp.status} {doc.get('message', '')}")
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                said.append(f"{url}: {exc or type(exc).__name__}")
    raise TokenError("; ".join(said) or "no replica to ask")


def write_token(path: Path, token: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    tmp.replace(path)


async def keep(
    path: Path,
    urls: list[str],
    ssl: object,
    account: tuple[str, str] = FAILOVER_CONTROLLER_SA,
    written: asyncio.Event | None = None,
) -> None:
    """Write a fresh token of `account` now (retrying until a replica gives one), then every
    `RENEW`; `written` is set once the first one is on disk (a file left by an earlier run
    may have expired)."""
    failing = False
    who = "/".join(account)
    while True:
        try:
            token = await request_token(urls, ssl, account=account)
        except TokenError as exc:
            if not failing:
                said = {"msg": "controller token: not issued yet", "account": who}
                log.info(json.dumps({**said, "error": str(exc)}))
            failing = True
            await asyncio.sleep(RETRY)
            continue
        await asyncio.to_thread(write_token, path, token)
        if written is not None:
            written.set()
        if failing:
            log.info(
                json.dumps({"msg": "controller token written", "account": who, "path": str(path)})
            )
        failing = False
        await asyncio.sleep(RENEW)
