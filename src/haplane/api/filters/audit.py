"""Audit: one `audit.k8s.io/v1` Event per stage of every request the policy selects, written
to this replica's audit log (haplane.auth.audit: the policy, the event, the rotating file).

Layer: api (filters). Runs after authentication (it records who) and before authorization
(whose decision and reason it records, through `request["audit"]`). Stages: RequestReceived
before the handler; ResponseStarted when a watch's stream begins (the handler calls
`request[RESPONSE_STARTED]`); ResponseComplete with the code and Status of every answer,
refusals included; Panic for a bug (answered 500 by the Status link outside this one).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from aiohttp import web

from haplane.auth.audit import AuditEvent, AuditLog, Level, Policy, Stage
from haplane.auth.audit_batch import BatchingAuditLog
from haplane.auth.user import ANONYMOUS, UserInfo

from ..errors import StatusError
from ..request import RESPONSE_STARTED, Handler, RequestInfo, attributes

log = logging.getLogger("haplane.api")


class Audit:
    def __init__(self, policy: Policy, sink: AuditLog | BatchingAuditLog):
        self.policy = policy
        self.sink = sink
        self.batch = sink if isinstance(sink, BatchingAuditLog) else None

    async def __call__(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        info: RequestInfo = request["info"]
        user: UserInfo = request.get("user", ANONYMOUS)
        attrs = attributes(info, user)
        decision = self.policy.decide(attrs)
        if decision.level is Level.NONE:
            return await handler(request)
        ev = AuditEvent(
            attrs,
            decision,
            request_uri=request.path_qs,
            user=user,
            source_ips=source_ips(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        request["audit"] = ev
        omitted = decision.omit_stages
        if Stage.REQUEST_RECEIVED not in omitted:  # (the default policy omits it for reads)
            self._record(ev, Stage.REQUEST_RECEIVED)
        if info.verb == "watch":  # only a watch has a response that starts before it ends

            def started() -> None:
                ev.set_response(200)
                self._record(ev, Stage.RESPONSE_STARTED)

            request[RESPONSE_STARTED] = started
        try:
            response = await handler(request)
        except StatusError as exc:
            ev.set_request_object(request.get("object"))
            ev.set_response(exc.code, exc.status())
            self._record(ev, Stage.RESPONSE_COMPLETE)
            await self.room()
            raise
        except web.HTTPException as exc:  # aiohttp's own refusals (a body too large)
            ev.set_response(exc.status)
            self._record(ev, Stage.RESPONSE_COMPLETE)
            await self.room()
            raise
        except Exception as exc:
            ev.set_panic(f"{type(exc).__name__}: {exc}")
            self._record(ev, Stage.PANIC)
            raise
        ev.set_request_object(request.get("object"))
        ev.set_response(response.status, _body(response, ev.level))
        self._record(ev, Stage.RESPONSE_COMPLETE)
        await self.room()
        return response

    async def room(self) -> None:
        """The batch backend's back-pressure: a request that finds its buffer full waits
        until it is written out (off the event loop), so a stalled disk slows requests rather
        than losing their record or freezing the replica."""
        batch = self.batch
        if batch is not None and batch.full:
            # a failure is logged where it happens; the request goes on, as in blocking mode
            with contextlib.suppress(Exception):
                await batch.make_room()

    def _record(self, ev: AuditEvent, stage: Stage) -> None:
        try:
            self.sink.record(ev, stage)
        except (OSError, TypeError, ValueError):
            # kube-apiserver's blocking backend fails the request when it cannot log; here a
            # full disk (or an event that cannot be written) is logged loudly and the request
            # goes on: it may already be committed (documented limit)
            log.exception("audit log write failed")


class FailedAuthenticationAudit:
    """Before authentication, as Kubernetes' WithFailedAuthenticationAudit: a request whose
    credentials were refused (401) is audited too (brute force must show), at the level the
    policy gives it for an unknown user, one ResponseStarted event with the 401."""

    def __init__(self, audit: Audit):
        self.audit = audit

    async def __call__(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except StatusError as exc:
            if exc.code == 401 and "user" not in request:
                self._record(request, exc)
                await self.audit.room()
            raise

    def _record(self, request: web.BaseRequest, exc: StatusError) -> None:
        nobody = UserInfo("")
        attrs = attributes(request["info"], nobody)
        decision = self.audit.policy.decide(attrs)
        if decision.level is Level.NONE:
            return
        ev = AuditEvent(
            attrs,
            decision,
            request_uri=request.path_qs,
            user=nobody,
            source_ips=source_ips(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        ev.set_response(exc.code, exc.status())
        ev.annotate("authentication.k8s.io/failed", "true")
        self.audit._record(ev, Stage.RESPONSE_STARTED)


def _body(response: web.StreamResponse, level: Level) -> Any:
    """The response's JSON body: as the responseObject at RequestResponse, and the Status of a
    failure at every level (for the event's responseStatus)."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    if level is not Level.REQUEST_RESPONSE and response.status < 300:
        return None
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None


def source_ips(request: web.BaseRequest) -> list[str]:
    """The peer's address, after a verified front proxy's forwarded chain (set by
    authentication only for a proxy whose certificate it trusts), as Kubernetes records it."""
    ips: list[str] = list(request.get("forwarded_for", ()))
    if request.remote:
        ips.append(request.remote)
    return ips
