"""What the review types ask of a replica: decisions by its own authorizer, the rules it
grants, and token checks by its own authenticators.

Layer: api. Built by the server from the same objects its filter chain uses, so that a review
answers exactly what a request would meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from haplane.auth import rbac
from haplane.auth.tokens import ServiceAccountTokens
from haplane.auth.user import MASTERS, UserInfo

from . import errors
from .authenticators import InvalidToken, TokenAuthenticator
from .authorizer import Authorizer, RbacAuthorizer
from .request import RequestInfo
from .resources import Obj
from .service_accounts import Lookup, token_request


class Access:
    def __init__(
        self,
        authorizer: Authorizer,
        tokens: Sequence[TokenAuthenticator] = (),
        sa_tokens: ServiceAccountTokens | None = None,
        audiences: Sequence[str] = (),
        *,
        lookup: Lookup,
    ):
        self.authorizer = authorizer
        self.tokens = tuple(tokens)
        self.sa_tokens = sa_tokens
        self.audiences = list(audiences)
        # TokenRequest's read of the object a token is bound to (from etcd, not a cache)
        self.lookup = lookup

    async def token_request(self, sa: Obj, body: Obj) -> Obj:
        if self.sa_tokens is None:
            raise errors.no_such_resource("serviceaccounts/token: no signing key configured")
        return await token_request(self.sa_tokens, self.audiences, sa, body, self.lookup)

    async def authorize(self, user: UserInfo, info: RequestInfo) -> rbac.Decision:
        return await self.authorizer.authorize(user, info)

    async def rules_review(self, user: UserInfo, namespace: str) -> dict[str, Any]:
        """SelfSubjectRulesReview's status: what RBAC grants the user in `namespace` (the
        cluster-wide grants included), as kube-apiserver lists them."""
        if MASTERS in user.groups or not isinstance(self.authorizer, RbacAuthorizer):
            return {
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": False,
            }
        resource_rules, non_resource_rules, incomplete, errors = self.authorizer.index.rules_for(
            user.name, user.groups, namespace
        )
        status: dict[str, Any] = {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": incomplete,
        }
        if errors:
            status["evaluationError"] = "; ".join(errors)
        return status

    async def token_review(self, spec: dict[str, Any]) -> dict[str, Any]:
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            return {"authenticated": False, "error": "spec.token is required"}
        for authenticate in self.tokens:
            try:
                user = await authenticate(token)
            except InvalidToken as exc:
                return {"authenticated": False, "error": str(exc) or "invalid token"}
            if user is not None:
                return {"authenticated": True, "user": user.authenticated().to_dict()}
        return {"authenticated": False, "error": "the token is not known"}
