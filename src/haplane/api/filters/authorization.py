"""May they. Layer: api (filters).

`authorizer` None: everything is allowed (a bare replica in tests, an insecure topology:
`authorization: AlwaysAllow`). Otherwise each request is judged on the attributes resolved
from its path (`request["info"]`) for the authenticated user, and refused with kube-apiserver's
403 wording; the decision and its reason go to the audit event.
"""

from __future__ import annotations

from aiohttp import web

from .. import errors
from ..authorizer import Authorizer
from ..request import Handler, RequestInfo


class Authorize:
    def __init__(self, authorizer: Authorizer | None):
        self.authorizer = authorizer

    async def __call__(self, request: web.BaseRequest, handler: Handler) -> web.StreamResponse:
        if self.authorizer is None:
            return await handler(request)
        info: RequestInfo = request["info"]
        user = request["user"]
        decision = await self.authorizer.authorize(user, info)
        ev = request.get("audit")
        if ev is not None:
            ev.set_authorization(decision.allowed, decision.reason)
        if not decision.allowed:
            raise errors.forbidden(
                user.name,
                info.verb,
                resource=info.resource if info.resource_request else "",
                subresource=info.subresource,
                group=info.api_group,
                namespace=info.namespace,
                name=info.name,
                path=info.path,
            )
        return await handler(request)
