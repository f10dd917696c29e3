"""CEL, the Common Expression Language, as Kubernetes uses it: compile once, evaluate often.

Layer: cel (a library of its own, beside auth: it imports nothing of haplane). The API's CRD
validation rules (`haplane.api.crd_rules`) are its user; admission policies (#18) are next.

    env = Environment(("self", "oldSelf"))
    program = env.compile("self.replicas <= self.maxReplicas")   # CompileError, with position
    program.eval({"self": {...}, "oldSelf": None})                # EvalError on a runtime error

The engine is `cel-expr-python` (Google's cel-cpp, with its type checker): chosen by
measurement (`bench/cel.py`), behind this module alone, so another engine replaces it here.
Kubernetes' extension libraries, which no engine ships, are `haplane.cel.library`.
Variables are declared `dyn`: an expression is checked for syntax, macros and functions, but
not yet against a schema's field types (a misspelt field is an evaluation error, not a
compile error, until schema types are declared).
"""

from __future__ import annotations

from .env import Bound, CompileError, Environment, EvalError, Program

__all__ = ["Bound", "CompileError", "Environment", "EvalError", "Program"]
