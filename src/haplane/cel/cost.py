"""The worst-case cost of an expression, estimated statically from the schema's bounds, as
Kubernetes estimates it before it accepts a CRD rule or a policy (cel-go's checker cost
estimator with apiextensions-apiserver's sizes), so that a pathological expression is refused
when it is written, not found out when it stalls a replica: a C++ evaluation cannot be
interrupted from Python, so this limit is the real protection.

Layer: cel. Pure.

    estimate(program, {"self": schema})   an upper bound of the evaluation's cost

The unit is cel-go's: about one per node visited (an identifier, a field selection, a call),
string work at 0.1 per character, a comprehension its body times the most elements its range
can hold. Sizes come from the schema: `maxItems`, `maxProperties`, `maxLength`; an unbounded
one is as large as a request can make it (Kubernetes: 3 MiB of JSON divided by the smallest
an element can serialize to). A value whose size is unknown (a variable without a schema)
counts as unbounded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .ast import Node
from .formats import FORMAT_ERRORS
from .library import escape

MAX_REQUEST_BYTES = 3 * 1024 * 1024
STRING_FACTOR = 0.1  # per character of a string walked (cel-go StringTraversalCostFactor)
REGEX_FACTOR = 0.25  # per character of a regular expression (cel-go RegexStringLengthCostFactor)
# what Kubernetes allows: one rule, and every rule of a CRD times how often each runs
RULE_LIMIT = 10_000_000  # apiextensions StaticEstimatedCostLimit
TOTAL_LIMIT = 100_000_000  # apiextensions StaticEstimatedCRDCostLimit

_COMPARE = frozenset({"_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_"})
# linear in a string's length (cel-go's ext strings and Kubernetes' libraries)
_STRING_LINEAR = frozenset(
    {
        "lowerAscii",
        "upperAscii",
        "trim",
        "reverse",
        "replace",
        "split",
        "substring",
        "indexOf",
        "lastIndexOf",
        "charAt",
        "join",
        "format",
        "strings.quote",
        "isURL",
        "isQuantity",
        "isIP",
        "isCIDR",
    }
)
_LIST_LINEAR = frozenset({"isSorted", "sum", "min", "max", "indexOf", "lastIndexOf"})
# Kubernetes' typed values (haplane.cel.kinds; apiserver's library/cost.go): making one parses a
# string (linear in it); a method of one is one step
_PARSE = frozenset({"url", "quantity", "ip", "cidr"})
_VALUE_STEP = frozenset(
    {
        "sign",
        "asInteger",
        "isInteger",
        "asApproximateFloat",
        "isGreaterThan",
        "isLessThan",
        "compareTo",
        "family",
        "isUnspecified",
        "isLoopback",
        "isLinkLocalMulticast",
        "isLinkLocalUnicast",
        "isGlobalUnicast",
        "prefixLength",
    }
)
_VALUE_RESULT = frozenset({"add", "sub", "masked", "ip"})  # one step, a value (compared in one)
_URL_PART = frozenset(
    {"getScheme", "getHost", "getHostname", "getPort", "getEscapedPath", "getQuery"}
)  # one step, a result of unknown size (as Kubernetes' estimate has it)
# containsIP, containsCIDR: comparing two addresses of up to 16 bytes (and the masks)
_CONTAINS = {"containsIP": 4, "containsCIDR": 4 + 2 + 1}
_TYPED = _PARSE | _VALUE_STEP | _VALUE_RESULT | _URL_PART | {"ip.isCanonical", *_CONTAINS}
# functions whose result is one value: compared in one step
_SCALAR_RESULT = frozenset(
    {
        "int",
        "uint",
        "double",
        "bool",
        "type",
        "has",
        "!_",
        "-_",
        "_-_",
        "_*_",
        "_/_",
        "_%_",
        "hasValue",
        "@not_strictly_false",
        "startsWith",
        "endsWith",
        "contains",
        "matches",
        "isSorted",
        "isURL",
        "isQuantity",
        "isIP",
        "isCIDR",
        "timestamp",
        "duration",
    }
)
# optionals: the value inside is what its shape was
_PASS_THROUGH = frozenset({"orValue", "value", "optional.of", "optional.ofNonZeroValue", "dyn"})


@dataclass(frozen=True)
class Shape:
    """What is known of a value's size: its schema node (None: unknown) and the most
    elements (list, map) or characters (string) it can hold."""

    schema: Mapping[str, Any] | None
    size: int


def unbounded(schema: Mapping[str, Any] | None) -> int:
    """The most a value of `schema` can hold when the schema sets no bound (Kubernetes: as
    much as a request holds, divided by the smallest an element serializes to)."""
    if schema is None:
        return MAX_REQUEST_BYTES
    kind = schema.get("type")
    if kind == "string" or schema.get("x-kubernetes-int-or-string") is True:
        return MAX_REQUEST_BYTES - 2
    if kind == "array":
        return (MAX_REQUEST_BYTES - 2) // (min_size(schema.get("items")) + 1)
    if kind == "object":
        value = schema.get("additionalProperties")
        if isinstance(value, Mapping):
            return (MAX_REQUEST_BYTES - 2) // (min_size(value) + 6)
    return MAX_REQUEST_BYTES


def min_size(schema: Any) -> int:
    """The fewest bytes a value of `schema` serializes to (Kubernetes' minimum sizes: an object
    `{}` and its required fields without defaults, a string `""`, a number one digit)."""
    if not isinstance(schema, Mapping):
        return 1
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        size = 2
        required = schema.get("required")
        for name in required if isinstance(required, list) else ():
            sub = props.get(name)
            if isinstance(sub, Mapping) and "default" not in sub:
                size += len(str(name)) + min_size(sub) + 4
        return size
    fmt = schema.get("format")
    if kind == "string" and isinstance(fmt, str) and fmt in _FORMAT_MIN_SIZES:
        return _FORMAT_MIN_SIZES[fmt]
    return {"string": 2, "boolean": 4, "integer": 1, "number": 1, "array": 2}.get(str(kind), 1)


# the fewest bytes a formatted string serializes to, as Kubernetes counts them (apiserver's
# cel/types.go: MinDurationSizeJSON, JSONDateSize, MinDatetimeSizeJSON)
_FORMAT_MIN_SIZES = {"duration": 4, "date": 12, "date-time": 21}


SCALAR = Shape(None, 1)
VALUE = Shape(None, 1)  # a typed value (a quantity, an IP, a CIDR): compared in one step
_NAME = {"type": "string", "maxLength": 253}
_METADATA = {
    "type": "object",
    "properties": {"name": _NAME, "generateName": _NAME},
}  # an int, a double, a bool: compared in one step


def shape_of(schema: Mapping[str, Any] | None) -> Shape:
    if schema is None:
        return Shape(None, MAX_REQUEST_BYTES)
    kind = schema.get("type")
    if kind in ("integer", "number", "boolean"):
        return Shape(schema, 1)
    if kind == "string" or schema.get("x-kubernetes-int-or-string") is True:
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and not isinstance(max_length, bool):
            return Shape(schema, max(0, max_length) * 4)  # bytes: a code point is up to 4
        listed = schema.get("enum")
        enum = [v for v in listed if isinstance(v, str)] if isinstance(listed, list) else []
        if enum:
            return Shape(schema, max(len(v) for v in enum))
        return Shape(schema, unbounded(schema))
    for bound in ("maxItems", "maxProperties"):
        value = schema.get(bound)
        if isinstance(value, int) and not isinstance(value, bool):
            return Shape(schema, max(0, value))
    if (
        kind == "object"
        and not isinstance(schema.get("additionalProperties"), Mapping)
        and schema.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        # an object of declared properties: Kubernetes gives it no size (its DeclType's
        # MaxElements is 0), so comparing two costs what comparing scalars does
        return Shape(schema, 0)
    return Shape(schema, unbounded(schema))


def _child(shape: Shape, field: str) -> Shape:
    schema = shape.schema
    if schema is None:
        return Shape(None, MAX_REQUEST_BYTES)
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for name, sub in props.items():
            if isinstance(sub, Mapping) and field in (escape(str(name)), str(name)):
                return shape_of(sub)
    if field == "metadata" and schema.get("type") == "object":
        return Shape(_METADATA, 2)  # what rules see of it at a resource's root: names
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        return shape_of(additional)
    return Shape(None, MAX_REQUEST_BYTES)


def _element(shape: Shape) -> Shape:
    schema = shape.schema
    if schema is None:
        return Shape(None, MAX_REQUEST_BYTES)
    if schema.get("type") == "array" and isinstance(schema.get("items"), Mapping):
        return shape_of(schema["items"])
    if schema.get("type") == "object":
        # a map's keys: Kubernetes declares them as strings of no estimated length
        return Shape({"type": "string"}, 0)
    return Shape(None, MAX_REQUEST_BYTES)


def _ceil(x: float) -> int:
    return math.ceil(round(x, 9))


class _Estimator:
    def __init__(self, variables: Mapping[str, Shape]) -> None:
        self.scope: list[dict[str, Shape]] = [dict(variables)]

    def lookup(self, name: str) -> Shape:
        for frame in reversed(self.scope):
            if name in frame:
                return frame[name]
        return Shape(None, MAX_REQUEST_BYTES)

    def cost(self, node: Node | None) -> tuple[float, Shape]:
        """(the most this node costs, the shape of its value)."""
        if node is None or node.kind == "const":
            value = node.value if node is not None else None
            size = len(value) if isinstance(value, str | bytes) else 1
            return 0.0, Shape(None, size)
        if node.kind == "ident":
            return 1.0, self.lookup(node.name)
        if node.kind == "select":
            inner, shape = self.cost(node.target)
            if node.test_only:
                # `has()`: its operand's cost alone (Kubernetes' PresenceTestHasCost(false))
                return inner, Shape(None, 1)
            return inner + 1.0, _child(shape, node.name)
        if node.kind in ("list", "struct"):
            total = sum(self.cost(a)[0] for a in node.args)
            return total + 1.0, Shape(None, max(1, len(node.args)))
        if node.kind == "comprehension":
            return self._comprehension(node)
        return self._call(node)

    def _comprehension(self, node: Node) -> tuple[float, Shape]:
        range_cost, range_shape = self.cost(node.iter_range)
        init_cost, init_shape = self.cost(node.accu_init)
        n = range_shape.size
        self.scope.append({node.iter_var: _element(range_shape)})
        # the accumulator: its initial value (`cel.bind` binds its value so, over an empty
        # range) grown by at most one element per iteration (map, filter); a filter's
        # elements are the range's own
        keeps = _adds_itself(node.loop_step, node.iter_var)
        accu = Shape(range_shape.schema if keeps else init_shape.schema, max(init_shape.size, n))
        self.scope[-1][node.accu_var] = accu
        cond_cost, _ = self.cost(node.loop_condition)
        step_cost, _ = self.cost(node.loop_step)
        result_cost, result_shape = self.cost(node.result)
        self.scope.pop()
        total = range_cost + init_cost + n * (cond_cost + step_cost) + result_cost
        return total, result_shape

    def _call(self, node: Node) -> tuple[float, Shape]:
        """cel-go's function costs (checker/cost.go), Kubernetes' libraries at their size."""
        name = node.name
        costs: list[float] = []
        shapes: list[Shape] = []
        for sub in ([node.target] if node.target is not None else []) + node.args:
            c, sh = self.cost(sub)
            costs.append(c)
            shapes.append(sh)
        args = sum(costs)
        sizes = [sh.size for sh in shapes]
        if name in ("_&&_", "_||_"):
            return args, SCALAR
        if name == "_?_:_" and len(costs) == 3:
            return costs[0] + max(costs[1], costs[2]), _either(shapes[1], shapes[2])
        if name == "matches" and len(sizes) == 2:
            work = _ceil((sizes[0] + 1) * STRING_FACTOR) * _ceil(sizes[1] * REGEX_FACTOR)
            return args + work, SCALAR
        if name == FORMAT_ERRORS and len(sizes) == 2:
            # Kubernetes' format.X().validate(s): the string's length times its bound on a
            # format's regular expression (MaxNameFormatRegexSize, 128); a few messages
            work = _ceil(sizes[1] * STRING_FACTOR) * _ceil(128 * REGEX_FACTOR)
            return args + work, Shape(None, 4)
        if name in ("find", "findAll") and len(sizes) >= 2:
            work = _ceil((sizes[0] + 1) * STRING_FACTOR) * _ceil(sizes[1] * REGEX_FACTOR)
            return args + work, Shape(None, sizes[0])
        if name == "contains" and len(sizes) == 2:
            work = _ceil(sizes[0] * STRING_FACTOR) * _ceil(sizes[1] * STRING_FACTOR)
            return args + work, SCALAR
        if name in ("startsWith", "endsWith") and len(sizes) == 2:
            return args + _ceil(sizes[1] * STRING_FACTOR), SCALAR
        if name in _COMPARE and len(sizes) == 2:
            return args + _ceil(min(sizes) * STRING_FACTOR), SCALAR
        if name == "_+_" and len(sizes) == 2:
            size = sizes[0] + sizes[1]
            if _concatenates_lists(node):
                return args + 1, Shape(None, size)  # O(1), as cel-go counts it
            return args + _ceil(size * STRING_FACTOR), Shape(None, size)
        if name in ("@in", "_in_") and len(sizes) == 2:
            return args + sizes[1], SCALAR
        if name in _LIST_LINEAR and shapes and _is_list(shapes[0]):
            return args + 1 + sizes[0], Shape(None, sizes[0])
        if name in _STRING_LINEAR and sizes:
            return args + _ceil(max(sizes) * STRING_FACTOR), Shape(None, max(sizes))
        if name == "size" or name in _SCALAR_RESULT:
            return args + 1, SCALAR
        if name in _TYPED:
            return self._typed(node, args, sizes)
        if name in ("_[_]", "_[?_]") and shapes:
            return args + 1, _indexed(shapes[0], node.args[1] if len(node.args) > 1 else None)
        if name == "_?._" and len(node.args) == 2 and isinstance(node.args[1].value, str):
            return args + 1, _child(shapes[0], node.args[1].value)
        if name == "optional.none":
            return args + 1, Shape(None, 0)
        if name in _PASS_THROUGH and shapes:
            merged = shapes[0]
            for other in shapes[1:]:
                merged = _either(merged, other)
            return args + 1, merged
        if name in ("string", "bytes") and shapes:
            return args + _ceil(sizes[0] * STRING_FACTOR), Shape(None, max(sizes[0], 32))
        # anything else: its result's size is not known (as large as a request)
        return args + 1, Shape(None, MAX_REQUEST_BYTES)

    def _typed(self, node: Node, args: float, sizes: list[int]) -> tuple[float, Shape]:
        """Kubernetes' typed values (apiserver's library/cost.go)."""
        name = node.name
        if name in _PARSE and node.target is None and sizes:
            # a URL is compared as its string; the others in one step
            shape = Shape(None, sizes[0]) if name == "url" else VALUE
            return args + _ceil(sizes[0] * STRING_FACTOR), shape
        if name == "ip.isCanonical" and sizes:
            # parsed, then compared with its canonical form
            return args + _ceil(sizes[0] * 2 * STRING_FACTOR), SCALAR
        if name in _CONTAINS and len(sizes) == 2:
            # a string argument is parsed first
            parse = 0 if _is_value(node.args[0]) else _ceil(sizes[1] * STRING_FACTOR)
            return args + _CONTAINS[name] + parse, SCALAR
        if name in _URL_PART:
            return args + 1, Shape(None, MAX_REQUEST_BYTES)
        return args + 1, (VALUE if name in _VALUE_RESULT else SCALAR)


def _either(a: Shape, b: Shape) -> Shape:
    """The shape of a value that is one of two: a schema is kept only when both have it (or
    one is an empty value, `optional.none()`: optionalOldSelf's `p ? optional.of(old) :
    optional.none()` keeps `old`'s bounds); else the larger size with no schema, so nothing
    nested below is sized from the wrong branch."""
    if a.schema is b.schema:
        return Shape(a.schema, max(a.size, b.size))
    if b.schema is None and b.size == 0:
        return a
    if a.schema is None and a.size == 0:
        return b
    return Shape(None, max(a.size, b.size))


def _concatenates_lists(node: Node) -> bool:
    """Whether `_+_` joins lists: the overloads the checker chose say so (all `add_list`), or,
    unchecked, an operand is a list written out (a filter's or map's step)."""
    if node.overloads:
        return all(o == "add_list" for o in node.overloads)
    return any(a.kind == "list" for a in node.args)


def _is_value(node: Node) -> bool:
    """Whether a node's value is a typed value (made by a call the library declares)."""
    return node.kind == "call" and (node.name in _PARSE or node.name in _VALUE_RESULT)


def _adds_itself(step: Node | None, var: str) -> bool:
    """Whether a comprehension's step appends the iteration variable itself (a filter)."""
    if step is None:
        return False
    if step.kind == "list" and len(step.args) == 1:
        item = step.args[0]
        return item.kind == "ident" and item.name == var
    children = [step.target, *step.args] if step.kind in ("call", "select") else []
    return any(_adds_itself(c, var) for c in children if c is not None)


def _indexed(shape: Shape, key: Node | None) -> Shape:
    """`x[i]`: a list's element, a map's value (a declared property for a constant key)."""
    schema = shape.schema
    if schema is None:
        return Shape(None, MAX_REQUEST_BYTES)
    if schema.get("type") == "array":
        return _element(shape)
    if key is not None and key.kind == "const" and isinstance(key.value, str):
        return _child(shape, str(key.value))
    additional = schema.get("additionalProperties")
    return (
        shape_of(additional) if isinstance(additional, Mapping) else Shape(None, MAX_REQUEST_BYTES)
    )


def _is_list(shape: Shape) -> bool:
    return shape.schema is None or shape.schema.get("type") == "array"


def estimate(root: Node, variables: Mapping[str, Mapping[str, Any] | None]) -> float:
    """The most evaluating `root` can cost, with each variable's value bounded by its schema
    (None: unknown, unbounded)."""
    shapes = {name: shape_of(schema) for name, schema in variables.items()}
    cost, _ = _Estimator(shapes).cost(root)
    return cost
