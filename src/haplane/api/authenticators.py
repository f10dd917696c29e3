"""The token authenticators' contract, below the filter chain and the review handlers, which
both use them (the authentication filter on every request, TokenReview on demand).

Layer: api.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from haplane.auth.user import UserInfo

# a token authenticator: the user, None when the token is not one of its kind, or raises
# `InvalidToken` when it is one of its kind and does not check out
TokenAuthenticator = Callable[[str], Awaitable[UserInfo | None]]


class InvalidToken(Exception):
    """A token of the authenticator's kind that failed (expired, wrong audience, revoked)."""
