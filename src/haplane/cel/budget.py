"""A time limit on each CEL evaluation, checked whenever the engine calls one of haplane's
functions (Kubernetes' libraries, written in Python).

Layer: cel. Pure but for the clock.

Why: Kubernetes stops an evaluation at a runtime cost budget (PerCallLimit, "roughly 0.1
second"). A cel-cpp evaluation cannot be interrupted from Python and the engine exposes no
cost budget, but every call of a Python-written function passes through here: an
evaluation past its deadline fails at its next such call, with a message that says why.
What else bounds an evaluation: cel-cpp's own cap of 10,000 comprehension iterations per
evaluation, RE2 regular expressions (linear), results of string-building functions capped at
3 MiB (`library.MAX_RESULT`), and the static cost estimate of CRD rules. Measured before this
guard: 9,000 iterations of `lowerAscii()` over a 1 MiB value ran for minutes; now they stop
after TIME_LIMIT.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

from cel_expr_python import cel

# longer than Kubernetes' ~0.1 s per call: this machine's scheduler noise must not fail an
# ordinary evaluation (they take microseconds)
TIME_LIMIT = 0.25
DEADLINE: ContextVar[float] = ContextVar("haplane_cel_deadline", default=math.inf)


# how its message begins (a caller tells a stopped evaluation from others by it)
STOPPED = "evaluation stopped"


class TimeLimitExceeded(ValueError):
    """Raised inside a function called after the evaluation's deadline."""


def guarded(impl: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if time.monotonic() > DEADLINE.get():
            raise TimeLimitExceeded(
                f"{STOPPED}: it ran longer than {TIME_LIMIT:g} s (the time limit of one CEL "
                "evaluation)"
            )
        return impl(*args)

    return call


def overload(
    oid: str, ret: Any, params: Sequence[Any], member: bool, impl: Callable[..., Any]
) -> Any:
    """A function's overload whose every call checks the evaluation's deadline."""
    return cel.Overload(oid, ret, list(params), member, guarded(impl))
