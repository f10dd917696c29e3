"""CEL, the Common Expression Language, as Kubernetes uses it: compile once, evaluate often.

Layer: cel (a library of its own, beside auth: it imports nothing of haplane). Its users are
the API's CRD validation rules (`haplane.api.crd_rules`) and admission policies
(`haplane.api.admission_policies`, and their type checking in
`haplane.api.policy_type_checking`).

    env = Environment(("self", "oldSelf"))
    program = env.compile("self.replicas <= self.maxReplicas")   # CompileError, with position
    program.eval({"self": {...}, "oldSelf": None})                # EvalError on a runtime error

The engine is `cel-expr-python` (Google's cel-cpp, with its type checker): chosen by
measurement (`bench/cel.py`), behind this module alone, so another engine replaces it here.
Kubernetes' extension libraries, which no engine ships, are `haplane.cel.library`.
Variables that are evaluated are declared `dyn`: an expression is checked for syntax, macros
and functions, and a misspelt field is an evaluation error. For checking alone, variables can
be declared with the types of OpenAPI schemas (`haplane.cel.typed`): a misspelt field is then
a compile error naming it.

    schemas = Schemas()
    typed = Environment(("object",), types={"object": schemas.declare(schema, "Widget")},
                        schemas=schemas)
"""

from __future__ import annotations

from .env import Bound, CompileError, Environment, EvalError, Program
from .typed import DYN, DeclaredType, Schemas

__all__ = [
    "DYN",
    "Bound",
    "CompileError",
    "DeclaredType",
    "Environment",
    "EvalError",
    "Program",
    "Schemas",
]
