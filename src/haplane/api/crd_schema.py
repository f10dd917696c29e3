"""Layer: api. The openAPIV3Schema of a CustomResourceDefinition version, applied as
kube-apiserver applies it to every custom resource it creates or updates.

Pure: no I/O, no clock, and the inputs are never mutated (results are deep copies).

    check_crd_schema(schema, path)   is the schema one haplane can serve? (a 422 on the CRD)
    prune(obj, schema)               drop the fields the schema does not specify
    apply_defaults(obj, schema)      fill in `default`s where a field is absent
    validate(obj, schema, old=...)   check the value keywords; Kubernetes-style field errors;
                                     on an update, ratcheted (`haplane.api.ratcheting`)
    process(obj, schema)             prune, then default, then validate: create/update's path

Who does what: the value keywords (type, enum, bounds, lengths, pattern, items, properties,
additionalProperties, allOf/anyOf/oneOf/not, format, ...) are checked by the `jsonschema`
library's Draft 4 validator. The schema is first translated into Draft 4 form by a pure function
(`_to_draft4`): Draft 4 is the JSON Schema whose `exclusiveMinimum`/`exclusiveMaximum` are the
boolean modifiers OpenAPI v3.0 has, so only OpenAPI's extensions need rewriting (`nullable` and
`x-kubernetes-int-or-string` become type lists). Its errors are then reworded as
kube-openapi's validator and apiextensions-apiserver word them. The integer type check, the
formats (Kubernetes' list, with Go's parsers imitated) and the embedded-resource check are
plugged into that validator. Pruning, defaulting and the structural-schema checks have no
library: they are written here by hand, after apiextensions-apiserver's pkg/apiserver/schema
(pruning/algorithm.go, defaulting/algorithm.go, defaulting/prunenulls.go).

Schemas are taken as the JSON of the CRD (plain dicts and lists); so are objects.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final

import re2
from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from haplane.cel.library import RE2_OPTIONS, ROOMY_RE2_OPTIONS

from . import ratcheting
from .crd_rules import Programs, cost_errors, expressions_at, rules_errors, type_errors
from .validation import FieldError

__all__ = [
    "SchemaUnsupported",
    "apply_defaults",
    "check_crd_schema",
    "process",
    "prune",
    "validate",
]

# Kubernetes' field.ErrorType reasons (the `reason` of a StatusCause).
_INVALID: Final = "FieldValueInvalid"
_REQUIRED: Final = "FieldValueRequired"
_NOT_SUPPORTED: Final = "FieldValueNotSupported"
_TYPE_INVALID: Final = "FieldValueTypeInvalid"
_TOO_LONG: Final = "FieldValueTooLong"
_TOO_MANY: Final = "FieldValueTooMany"
_FORBIDDEN: Final = "FieldValueForbidden"

_PRESERVE: Final = "x-kubernetes-preserve-unknown-fields"
_EMBEDDED: Final = "x-kubernetes-embedded-resource"
_INT_OR_STRING: Final = "x-kubernetes-int-or-string"

# The fields every resource and every embedded resource has, checked elsewhere.
_META_FIELDS: Final = frozenset({"apiVersion", "kind", "metadata"})
_OPENAPI_TYPES: Final = ("array", "boolean", "integer", "number", "object", "string")
_JUNCTORS: Final = ("allOf", "anyOf", "oneOf")

# Keywords whose OpenAPI v3.0 meaning is their JSON Schema Draft 4 meaning: copied as they are.
_DRAFT4_KEYWORDS: Final = (
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
    "format",
)

# Go's swag.IsFloat64AJSONInteger: a float is an integer when it is whole and within 2^53.
_MAX_JSON_INT_FLOAT: Final = float(2**53 - 1)


class SchemaUnsupported(Exception):
    """A CRD schema haplane cannot enforce.

    `validate` (and so `process`) raises it rather than silently skip a rule it cannot check
    (`$ref`). `errors` are the FieldErrors, paths relative to "openAPIV3Schema";
    str() joins them, fit for the message of a 422 on the CRD. `check_crd_schema` reports the
    same problems as FieldErrors, so a CRD admitted through it never raises this.
    """

    def __init__(self, errors: Sequence[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


# ---- small helpers ----------------------------------------------------------------------------


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _quote(value: str) -> str:
    """Go's %q, close enough for messages."""
    return json.dumps(value, ensure_ascii=False)


def _json_type(value: Any) -> str:
    """The JSON type name of a decoded value, as kube-openapi names it in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _is_whole_float(value: Any) -> bool:
    return (
        isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
        and abs(value) <= _MAX_JSON_INT_FLOAT
    )


def _go_ints(value: Any) -> Any:
    """Whole floats as ints, recursively: how Go's encoding/json writes float64s."""
    if _is_whole_float(value):
        return int(value)
    if isinstance(value, Mapping):
        return {k: _go_ints(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_go_ints(v) for v in value]
    return value


def _go_json(value: Any) -> str:
    return json.dumps(
        _go_ints(value), ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str
    )


def _value_text(value: Any) -> str:
    """The offending value as FieldError carries it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else _go_json(value)


def _go_float(value: float) -> str:
    """Go's %v of a float64: shortest digits, exponent form below 1e-4 and from 1e6 on."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return "+Inf" if value > 0 else ("-Inf" if value < 0 else "NaN")
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent  # position of the decimal point within `text`
    exp = point - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{minus}{text}{'0' * (point - len(text))}"
    return f"{minus}{text[:point]}.{text[point:]}"


def _bound_text(bound: Any, instance: Any) -> str:
    """A minimum/maximum/multipleOf as kube-openapi prints it: as an integer when checking an
    integer against a whole bound, else as Go prints a float64."""
    if isinstance(bound, bool):
        return str(bound).lower()
    is_int = isinstance(instance, int) and not isinstance(instance, bool)
    if is_int and (isinstance(bound, int) or _is_whole_float(bound)):
        return str(int(bound))
    if isinstance(bound, int | float):
        return _go_float(float(bound))
    return str(bound)


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _regex(pattern: str) -> Any:
    """The pattern compiled by RE2, whose syntax is Go's regexp (what Kubernetes validates
    `pattern` with: `\\pL` classes work, lookarounds and backreferences do not), in linear
    time whatever the value; the reason it does not compile, as a string, when it does not.
    RE2's default room first; one that needs Go's (a CRD's patterns are its author's, as
    Kubernetes compiles them) goes to a cache of its own, of a few."""
    compiled = _default_regex(pattern)
    return _roomy_regex(pattern) if compiled is None else compiled


@lru_cache(maxsize=1024)
def _default_regex(pattern: str) -> Any:
    """Compiled with RE2's default room; None when it does not compile so."""
    try:
        return re2.compile(pattern, options=RE2_OPTIONS)
    except re2.error:
        return None
    except UnicodeEncodeError:
        return "invalid UTF-8"


@lru_cache(maxsize=16)  # (few: such a pattern can take tens of MiB)
def _roomy_regex(pattern: str) -> Any:
    try:
        return re2.compile(pattern, options=ROOMY_RE2_OPTIONS)
    except UnicodeEncodeError:
        return "invalid UTF-8"
    except re2.error as e:
        reason = e.args[0] if e.args else ""
        return (reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)) or (
            "invalid pattern"
        )


def _compiles(pattern: str) -> str | None:
    """None when the pattern compiles (`_regex`), else the reason it does not."""
    compiled = _regex(pattern)
    return compiled if isinstance(compiled, str) else None


@lru_cache(maxsize=256)
def _legacy(pattern: str) -> re.Pattern[str] | None:
    """A pattern only Python's `re` reads (a lookahead...): haplane accepted such patterns
    before it read them as Go does, and a CRD stored then keeps them (an update does not
    check them again: `Preexisting`); its objects are still checked against them, by `re`."""
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _pattern_keyword(
    _validator: Any, pattern: Any, instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    """`pattern` with RE2 (jsonschema's own uses Python's `re`): a string that no part of
    matches fails."""
    if not isinstance(instance, str) or not isinstance(pattern, str):
        return
    compiled = _regex(pattern)
    if isinstance(compiled, str):
        legacy = _legacy(pattern)
        if legacy is not None and legacy.search(instance) is None:
            yield ValidationError(f"{instance!r} does not match {pattern!r}")
        return
    try:
        found = compiled.search(instance)
    except UnicodeEncodeError:  # a lone surrogate (JSON allows one): as Go reads it, U+FFFD
        fixed = instance.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        found = compiled.search(fixed)
    if found is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@dataclass(frozen=True)
class Preexisting:
    """What a version of a CRD held before an update, by place in its schema: its CEL
    expressions (`crd_rules.Expression`: path, field, text) and its patterns (path, text).
    They are not checked again (types, cost, RE2 syntax), so that a CRD stored by an earlier
    haplane, which checked less, stays updatable and deletable as it is (Kubernetes, too,
    keeps stored expressions within reach); the same text put anywhere else is checked."""

    expressions: frozenset[tuple[str, str, str]] = frozenset()
    patterns: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, schema: Any) -> Preexisting:
        if not isinstance(schema, Mapping):
            return cls()
        patterns = frozenset(
            (at, node["pattern"])
            for at, node in _nodes(schema, "")
            if isinstance(node.get("pattern"), str)
        )
        return cls(expressions_at(schema), patterns)


def _nodes(node: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each schema node (junctors' included) with its path, as `_check_node` names them."""
    yield path, node
    for sub_path, sub, _ in _subschemas(node, path):
        if isinstance(sub, Mapping):
            yield from _nodes(sub, sub_path)


# ---- the structure a schema gives a value (for pruning and defaulting) ------------------------


def _properties(schema: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The properties of a node: its own, then any that only its allOf/anyOf/oneOf name.

    Structural schemas must repeat under `properties` every field a junctor mentions, so for
    them this is just `properties`; the union keeps schemas that do not, but are otherwise
    fine, from losing those fields to pruning.
    """
    out: dict[str, Mapping[str, Any]] = {}
    props = _as_mapping(schema.get("properties"))
    if props:
        out.update((k, v) for k, v in props.items() if isinstance(v, Mapping))
    for junctor in _JUNCTORS:
        subs = schema.get(junctor)
        if isinstance(subs, list):
            for sub in subs:
                if isinstance(sub, Mapping):
                    for k, v in _properties(sub).items():
                        out.setdefault(k, v)
    return out


def _additional(schema: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any] | None]:
    """(present, schema) of additionalProperties; a boolean one has no schema."""
    if "additionalProperties" not in schema:
        return False, None
    return True, _as_mapping(schema["additionalProperties"])


def _items(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return _as_mapping(schema.get("items"))


def _drops_null(value: Any, schema: Mapping[str, Any] | None) -> bool:
    """Kubernetes' isNonNullableNonDefaultableNull."""
    return (
        value is None
        and schema is not None
        and not schema.get("nullable")
        and schema.get("default") is None
    )


# ---- pruning (by hand) ------------------------------------------------------------------------


def prune(obj: Any, schema: Mapping[str, Any]) -> Any:
    """A deep copy of `obj` without the fields `schema` does not specify.

    As apiextensions-apiserver prunes (pruning.Prune with root=true, then
    PruneNonNullableNullsWithoutDefaults):
    - at the root, and in objects marked x-kubernetes-embedded-resource, apiVersion, kind and
      metadata are kept as they are (metadata is validated elsewhere);
    - an object keeps the fields under `properties` (or under the properties of its
      allOf/anyOf/oneOf) and, with an `additionalProperties` schema, every other field, each
      pruned by its own schema; other fields are dropped, unless the node has
      x-kubernetes-preserve-unknown-fields: true, which keeps them, unpruned, at that level;
    - array items are pruned by `items`; an object with no schema at all (under a boolean
      additionalProperties, or in an array without `items`) loses all its fields;
    - a null for a field that is neither nullable nor defaulted is dropped.
    """
    return _prune(obj, schema, embedded=True, drop_nulls=True)


def _prune(
    value: Any, schema: Mapping[str, Any] | None, *, embedded: bool, drop_nulls: bool
) -> Any:
    if schema is not None and schema.get(_PRESERVE) is True:
        return _skip_prune(value, schema, embedded=embedded, drop_nulls=drop_nulls)
    if isinstance(value, Mapping):
        if schema is None:
            return {}
        embedded = embedded or schema.get(_EMBEDDED) is True
        props = _properties(schema)
        has_additional, additional = _additional(schema)
        out: dict[str, Any] = {}
        for key, v in value.items():
            if embedded and key in _META_FIELDS:
                out[key] = copy.deepcopy(v)
                continue
            if key in props:
                sub: Mapping[str, Any] | None = props[key]
            elif has_additional:
                sub = additional
            else:
                continue
            if drop_nulls and _drops_null(v, sub):
                continue
            out[key] = _prune(v, sub, embedded=False, drop_nulls=drop_nulls)
        return out
    if isinstance(value, list):
        items = None if schema is None else _items(schema)
        return [_prune(v, items, embedded=False, drop_nulls=drop_nulls) for v in value]
    return copy.deepcopy(value)


def _skip_prune(value: Any, schema: Mapping[str, Any], *, embedded: bool, drop_nulls: bool) -> Any:
    """x-kubernetes-preserve-unknown-fields: unknown fields stay, known ones are still pruned."""
    if isinstance(value, Mapping):
        embedded = embedded or schema.get(_EMBEDDED) is True
        props = _properties(schema)
        has_additional, additional = _additional(schema)
        out: dict[str, Any] = {}
        for key, v in value.items():
            if embedded and key in _META_FIELDS:
                out[key] = copy.deepcopy(v)
            elif key in props or has_additional:
                sub = props.get(key, additional)
                if not (drop_nulls and _drops_null(v, sub)):
                    out[key] = _prune(v, sub, embedded=False, drop_nulls=drop_nulls)
            else:
                out[key] = copy.deepcopy(v)
        return out
    if isinstance(value, list):
        items = _items(schema)
        if items is None:
            return copy.deepcopy(value)
        return [_skip_prune(v, items, embedded=False, drop_nulls=drop_nulls) for v in value]
    return copy.deepcopy(value)


# ---- defaulting (by hand) ---------------------------------------------------------------------


def apply_defaults(obj: Any, schema: Mapping[str, Any]) -> Any:
    """A deep copy of `obj` with the schema's `default`s filled in, as apiextensions-apiserver's
    defaulting.Default does it.

    A property's default is set where its parent object exists but the property is absent, or
    is null while the property is not nullable. Defaults apply recursively, also inside a
    default just set, inside array items and additionalProperties values (a null item or
    value is replaced by the items/additionalProperties default). A `default: null` is no
    default.
    """
    result = copy.deepcopy(obj)
    _default(result, schema)
    return result


def _default(value: Any, schema: Mapping[str, Any] | None) -> None:
    if schema is None:
        return
    if isinstance(value, dict):
        props = _properties(schema)
        for key, prop in props.items():
            default = prop.get("default")
            if default is None:
                continue
            if key not in value or (value[key] is None and not prop.get("nullable")):
                value[key] = copy.deepcopy(default)
        _, additional = _additional(schema)
        for key in list(value):
            if key in props:
                _default(value[key], props[key])
            elif additional is not None:
                value[key] = _null_to_default(value[key], additional)
                _default(value[key], additional)
    elif isinstance(value, list):
        items = _items(schema)
        if items is not None:
            for i, item in enumerate(value):
                value[i] = _null_to_default(item, items)
                _default(value[i], items)


def _null_to_default(value: Any, schema: Mapping[str, Any]) -> Any:
    default = schema.get("default")
    if value is None and default is not None and not schema.get("nullable"):
        return copy.deepcopy(default)
    return value


# ---- OpenAPI v3.0 -> JSON Schema Draft 4 ------------------------------------------------------


def _to_draft4(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The Draft 4 JSON Schema that means what this OpenAPI v3.0 schema node means.

    Draft 4 keeps OpenAPI's boolean exclusiveMinimum/exclusiveMaximum, so most keywords copy
    over. Rewritten: `nullable: true` adds "null" to the type; x-kubernetes-int-or-string
    makes the type ["integer", "string"] (as kube-openapi does); x-kubernetes-embedded-resource
    stays, as a keyword the validator below knows. Dropped: descriptions, `default`, the other
    x-kubernetes-* extensions, unknown types and patterns neither RE2 nor `re` compiles (both
    are reported by check_crd_schema), `$ref` and CEL rules (validate refuses those).
    """
    out: dict[str, Any] = {}  # jsonschema checks in this order: the type first, as kube-openapi
    declared = schema.get("type")
    types: list[str] = []
    if schema.get(_INT_OR_STRING) is True:
        types = ["integer", "string"]
    elif declared in _OPENAPI_TYPES:
        types = [declared]
    if types:
        if schema.get("nullable") is True:
            types.append("null")
        out["type"] = types[0] if len(types) == 1 else types
    out.update((k, schema[k]) for k in _DRAFT4_KEYWORDS if k in schema)
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and (_compiles(pattern) is None or _legacy(pattern) is not None):
        out["pattern"] = pattern  # (a legacy one too: `_pattern_keyword` reads it with `re`)

    props = _as_mapping(schema.get("properties"))
    if props is not None:
        out["properties"] = {k: _to_draft4(v) for k, v in props.items() if isinstance(v, Mapping)}
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        out["additionalProperties"] = _to_draft4(additional)
    elif isinstance(additional, bool):
        out["additionalProperties"] = additional
    items = schema.get("items")
    if isinstance(items, Mapping):
        out["items"] = _to_draft4(items)
    elif isinstance(items, list):
        out["items"] = [_to_draft4(i) for i in items if isinstance(i, Mapping)]
    for junctor in _JUNCTORS:
        subs = schema.get(junctor)
        if isinstance(subs, list):
            out[junctor] = [_to_draft4(s) for s in subs if isinstance(s, Mapping)]
    not_ = schema.get("not")
    if isinstance(not_, Mapping):
        out["not"] = _to_draft4(not_)
    if schema.get(_EMBEDDED) is True:
        out[_EMBEDDED] = True
    return out


def _unenforceable(schema: Any, path: str) -> Iterator[FieldError]:
    """The rules of `schema` haplane cannot enforce: `$ref`s."""
    if not isinstance(schema, Mapping):
        return
    if "$ref" in schema:
        yield FieldError(f"{path}.$ref", _FORBIDDEN, "$ref is not supported")
    for sub_path, sub, _ in _subschemas(schema, path):
        yield from _unenforceable(sub, sub_path)


def _subschemas(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, Any, str]]:
    """(path, subschema, level) of each schema nested in this one; level is "field", "item"
    or "junctor" (inside allOf/anyOf/oneOf/not)."""
    props = schema.get("properties")
    if isinstance(props, Mapping):
        for key, sub in props.items():
            yield f"{path}.properties[{key}]", sub, "field"
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        yield f"{path}.additionalProperties", additional, "field"
    items = schema.get("items")
    if isinstance(items, Mapping):
        yield f"{path}.items", items, "item"
    for junctor in _JUNCTORS:
        subs = schema.get(junctor)
        if isinstance(subs, list):
            for i, sub in enumerate(subs):
                yield f"{path}.{junctor}[{i}]", sub, "junctor"
    if "not" in schema:
        yield f"{path}.not", schema["not"], "junctor"


# ---- the validator: jsonschema's Draft 4, with Kubernetes' types and formats ------------------


def _is_integer(_checker: Any, instance: Any) -> bool:
    # kube-openapi's type validator accepts a whole float64 (1.0 decodes as one) for "integer".
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or _is_whole_float(instance)


def _embedded_problems(instance: Any, path: str) -> list[FieldError]:
    """apiVersion and kind of an embedded resource (objectmeta.validateEmbeddedResource)."""
    if not isinstance(instance, Mapping):
        return []
    errs: list[FieldError] = []
    for key in ("apiVersion", "kind"):
        field = _child(path, key)
        if key not in instance:
            errs.append(FieldError(field, _REQUIRED, "must not be empty"))
            continue
        value = instance[key]
        if not isinstance(value, str):
            errs.append(FieldError(field, _INVALID, "must be a string", _value_text(value)))
        elif not value:
            errs.append(FieldError(field, _INVALID, "must not be empty", value))
        elif key == "apiVersion" and value.count("/") > 1:
            errs.append(
                FieldError(field, _INVALID, f"unexpected GroupVersion string: {value}", value)
            )
    return errs


def _embedded_keyword(
    _validator: Any, value: Any, instance: Any, _schema: Any
) -> Iterator[ValidationError]:
    if value is True and _embedded_problems(instance, ""):
        yield ValidationError("embedded resource lacks a valid apiVersion or kind")


_FORMATS = FormatChecker(formats=())


def _format(*names: str) -> Callable[[Callable[[Any], bool]], Callable[[Any], bool]]:
    def register(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
        for name in names:
            _FORMATS.checks(name)(check)
        return check

    return register


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if _is_whole_float(value):
        return int(value)
    return None


@_format("int32")
def _is_int32(value: Any) -> bool:
    n = _whole(value)
    return n is None or -(2**31) <= n < 2**31


@_format("int64")
def _is_int64(value: Any) -> bool:
    n = _whole(value)
    return n is None or -(2**63) <= n < 2**63


@_format("float")
def _is_float32(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return math.isfinite(value) and abs(value) <= 3.4028234663852886e38


@_format("double")
def _is_float64(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    return math.isfinite(value)


@_format("byte")
def _is_base64(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    try:
        base64.b64decode(value, validate=True)  # padded standard alphabet, as Go's StdEncoding
    except (binascii.Error, ValueError):
        return False
    return True


_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATE_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))"
)


@_format("date")
def _is_date(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    m = _DATE_RE.fullmatch(value)
    if not m:
        return False
    try:
        date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return False
    return True


@_format("date-time", "datetime")
def _is_date_time(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    m = _DATE_TIME_RE.fullmatch(value)
    if not m:
        return False
    try:
        datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]))
    except ValueError:
        return False
    return m[9] is None or (int(m[9]) < 24 and int(m[10]) < 60)


_UUID_RE = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.I)


@_format("uuid")
def _is_uuid(value: Any) -> bool:
    return not isinstance(value, str) or _UUID_RE.fullmatch(value) is not None


_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL_RE = re.compile(
    rf"{_ATEXT}(\.{_ATEXT})*@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)


@_format("email")
def _is_email(value: Any) -> bool:
    return not isinstance(value, str) or _EMAIL_RE.fullmatch(value) is not None


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}|({_LABEL}\.)+[A-Za-z]{{2,63}}")


@_format("hostname")
def _is_hostname(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    return len(value) <= 255 and _HOSTNAME_RE.fullmatch(value) is not None


@_format("ipv4")
def _is_ipv4(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


@_format("ipv6")
def _is_ipv6(value: Any) -> bool:
    if not isinstance(value, str):
        return True
    if ":" not in value or "%" in value:  # Go's net.ParseIP takes no zone
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


@_format("cidr")
def _is_cidr(value: Any) -> bool:
    if not isinstance(value, str) or not re.fullmatch(r"[^/]+/\d{1,3}", value):
        return not isinstance(value, str)
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


_URI_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:|/)[^\s\x00-\x1f\x7f]*")
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@_format("uri")
def _is_uri(value: Any) -> bool:
    # Go's url.ParseRequestURI: an absolute URI or an absolute path.
    if not isinstance(value, str):
        return True
    return _URI_RE.fullmatch(value) is not None and not _BAD_ESCAPE_RE.search(value)


# types-jsonschema leaves `extend` unannotated.
_Validator: type[Validator] = extend(  # type: ignore[no-untyped-call]
    Draft4Validator,
    validators={_EMBEDDED: _embedded_keyword, "pattern": _pattern_keyword},
    type_checker=Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


# ---- validation ---------------------------------------------------------------------------------


def validate(
    obj: Any,
    schema: Mapping[str, Any],
    root: str = "",
    *,
    old: Mapping[str, Any] | None = None,
    comparison: ratcheting.Comparison | None = None,
) -> list[FieldError]:
    """The schema's value checks on `obj`, as Kubernetes reports them; on an update (`old`,
    the object before it), ratcheted (`haplane.api.ratcheting`): an error about a value the
    update left unchanged is not reported. As in Kubernetes, never ratcheted: `required`,
    `additionalProperties` (a forbidden property), allOf, anyOf, oneOf, not and anything
    below them, an embedded resource's apiVersion and kind, and the uniqueness of a `set`
    list's items and of a `map` list's keys (FieldValueDuplicate, after the rest, as
    apiextensions-apiserver's listtype validation). `comparison`: the update's, shared with
    the rules' pass (`crd_rules.enforce`).

    Field paths are Kubernetes-style ("spec.replicas", "spec.items[2].name",
    "spec.labels[key]"), prefixed with `root`; messages are kube-openapi's ("spec.replicas in
    body must be of type integer: \"string\""). Cause types: FieldValueTypeInvalid (a wrong
    type or format), FieldValueRequired, FieldValueNotSupported (enum), FieldValueTooLong
    (maxLength), FieldValueTooMany (maxItems, maxProperties), FieldValueInvalid (the rest).
    apiVersion, kind and metadata at the root are skipped: they are checked elsewhere.

    Raises SchemaUnsupported for a schema with rules haplane cannot enforce (`$ref`). CEL
    rules are `crd_rules.enforce`'s.
    """
    problems = list(_unenforceable(schema, "openAPIV3Schema"))
    if problems:
        raise SchemaUnsupported(problems)
    errs = _validate(obj, schema, root, resource_root=True, old=old, comparison=comparison)
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if key not in _META_FIELDS:
                _duplicates(_sub_schema(schema, key), value, _join_key(root, key, schema), errs)
    return errs


# ---- list-type uniqueness (apiextensions-apiserver's schema/listtype) ---------------------------


def _sub_schema(schema: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    props = schema.get("properties")
    if isinstance(props, Mapping) and isinstance(props.get(key), Mapping):
        sub: Mapping[str, Any] = props[key]
        return sub
    additional = schema.get("additionalProperties")
    return additional if isinstance(additional, Mapping) else None


def _join_key(path: str, key: str, schema: Mapping[str, Any]) -> str:
    props = schema.get("properties")
    if isinstance(props, Mapping) and key in props:  # Go's fldPath.Child
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]"  # fldPath.Key


def _duplicates(
    schema: Mapping[str, Any] | None, value: Any, path: str, errs: list[FieldError]
) -> None:
    """A `set` list's repeated items and a `map` list's repeated keys, each reported once, at
    its second appearance (Kubernetes' ValidateListSetsAndMaps). Never ratcheted."""
    if schema is None:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _duplicates(_sub_schema(schema, key), item, _join_key(path, key, schema), errs)
        return
    if not isinstance(value, list):
        return
    list_type = schema.get("x-kubernetes-list-type")
    keys = schema.get("x-kubernetes-list-map-keys")
    if list_type == "set":
        for i in _repeated(value):
            errs.append(FieldError(f"{path}[{i}]", "FieldValueDuplicate", _go_value(value[i])))
    elif list_type == "map" and isinstance(keys, list) and all(_object_or_null(v) for v in value):
        named = [{k: item[k] for k in keys if k in item} if item else {} for item in value]
        for i in _repeated(named):
            errs.append(FieldError(f"{path}[{i}]", "FieldValueDuplicate", _go_value(named[i])))
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            _duplicates(items, item, f"{path}[{i}]", errs)


def _object_or_null(value: Any) -> bool:
    return value is None or isinstance(value, dict)  # (other items: the schema's type error)


def _repeated(values: list[Any]) -> list[int]:
    """The index of each value's second appearance (types apart: 1 is not 1.0 nor true)."""
    seen: dict[str, int] = {}
    found: list[int] = []
    for i, v in enumerate(values):
        k = json.dumps([type(v).__name__, v], sort_keys=True, separators=(",", ":"))
        seen[k] = seen.get(k, 0) + 1
        if seen[k] == 2:
            found.append(i)
    return found


def _go_value(value: Any) -> str:
    """A value as Go's field.Error shows it: %q for a string, %v for a number or a bool, %#v
    for the rest (`map[string]interface {}{"name":"a"}`)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool | int | float):
        return "null" if value is None else json.dumps(value)
    return _go_syntax(value)


def _go_syntax(value: Any) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)}:{_go_syntax(value[k])}" for k in sorted(value))
        return f"map[string]interface {{}}{{{inner}}}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(_go_syntax(v) for v in value) + "}"
    if value is None:
        return "interface {}(nil)"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value)


def _validate(
    obj: Any,
    schema: Mapping[str, Any],
    root: str,
    *,
    resource_root: bool,
    old: Mapping[str, Any] | None = None,
    comparison: ratcheting.Comparison | None = None,
) -> list[FieldError]:
    draft4 = _to_draft4(schema)
    instance = obj
    before: Any = old
    if resource_root:
        _drop_meta(draft4)
        if isinstance(obj, Mapping):
            instance = {k: v for k, v in obj.items() if k not in _META_FIELDS}
        if isinstance(old, Mapping):
            before = {k: v for k, v in old.items() if k not in _META_FIELDS}
    validator = _Validator(draft4, format_checker=_FORMATS)
    compare = comparison if comparison is not None else ratcheting.Comparison()

    errs: list[FieldError] = []
    seen: set[tuple[Any, ...]] = set()
    all_ofs: dict[str, tuple[list[Any], Any]] = {}
    for error in validator.iter_errors(instance):
        if before is not None and _ratcheted(error, schema, instance, before, compare):
            continue
        path, passed = _locate(error, root, draft4, instance)
        for at, subschemas, value in passed:
            all_ofs.setdefault(at, (subschemas, value))
        errs.extend(_field_errors(error, path, validator, seen))
    # kube-openapi adds one error per failing allOf, after the errors of its members.
    for at, (subschemas, value) in all_ofs.items():
        valid = sum(validator.evolve(schema=s).is_valid(value) for s in subschemas)
        if valid < len(subschemas):
            tail = ". None validated" if valid == 0 else ""
            errs.append(
                FieldError(
                    at, _INVALID, f"{_quote(at)} must validate all the schemas (allOf){tail}", ""
                )
            )
    return errs


_NEVER_RATCHETED: Final = frozenset({"required", "additionalProperties", _EMBEDDED})


def _ratcheted(
    error: ValidationError,
    schema: Mapping[str, Any],
    new: Any,
    old: Any,
    comparison: ratcheting.Comparison,
) -> bool:
    """Whether an error is about a value the update left unchanged (and may be ratcheted)."""
    if str(error.validator) in _NEVER_RATCHETED:
        return False
    tokens = list(error.absolute_schema_path)
    i = 0
    while i < len(tokens):
        if tokens[i] == "properties":
            i += 2  # (a property's name is no keyword, whatever it is)
            continue
        if tokens[i] in _JUNCTORS or tokens[i] == "not":
            return False
        i += 1
    return comparison.unchanged(comparison.along(schema, new, old, list(error.absolute_path)))


def _drop_meta(draft4: dict[str, Any]) -> None:
    props = draft4.get("properties")
    if isinstance(props, dict):
        for key in _META_FIELDS:
            props.pop(key, None)
    required = draft4.get("required")
    if isinstance(required, list):
        draft4["required"] = [r for r in required if r not in _META_FIELDS]


def _locate(
    error: ValidationError, root: str, schema: Any, instance: Any
) -> tuple[str, list[tuple[str, list[Any], Any]]]:
    """The Kubernetes-style path of the value an error is about, and the allOfs passed on the
    way there (path, members, value). Walks the schema path beside the data path, so that map
    keys (additionalProperties) render as [key] and properties as .name."""
    path = root
    data = list(error.absolute_path)
    tokens = list(error.absolute_schema_path)[:-1]  # the last one is the failing keyword
    all_ofs: list[tuple[str, list[Any], Any]] = []
    node, value, d, i = schema, instance, 0, 0
    try:
        while i < len(tokens):
            token = tokens[i]
            if token == "properties" and i + 1 < len(tokens):
                key = data[d]
                path, node, value = _child(path, str(key)), node["properties"][key], value[key]
                d, i = d + 1, i + 2
            elif token == "additionalProperties":
                key = data[d]
                path, node, value = f"{path}[{key}]", node["additionalProperties"], value[key]
                d, i = d + 1, i + 1
            elif token == "items":
                index = data[d]
                path, value = f"{path}[{index}]", value[index]
                if i + 1 < len(tokens) and isinstance(tokens[i + 1], int):
                    node, i = node["items"][tokens[i + 1]], i + 2
                else:
                    node, i = node["items"], i + 1
                d += 1
            elif token in _JUNCTORS and i + 1 < len(tokens):
                if token == "allOf":
                    all_ofs.append((path, node["allOf"], value))
                node, i = node[token][tokens[i + 1]], i + 2
            elif token == "not":
                node, i = node["not"], i + 1
            else:
                break
    except (KeyError, IndexError, TypeError):
        pass
    for extra in data[d:]:
        path = f"{path}[{extra}]" if isinstance(extra, int) else _child(path, str(extra))
    return path, all_ofs


def _field_errors(
    error: ValidationError, path: str, validator: Validator, seen: set[tuple[Any, ...]]
) -> list[FieldError]:
    """One jsonschema error as the FieldErrors kube-apiserver reports for it."""
    # jsonschema's error attributes are typed "or Unset"; on a yielded error they are all set.
    keyword = str(error.validator)
    rule: Any = error.validator_value
    instance: Any = error.instance
    node: Any = error.schema
    name = path or "<root>"
    value = _value_text(instance)

    if keyword == "type":
        expected = [rule] if isinstance(rule, str) else [t for t in rule if t != "null"]
        actual = _json_type(instance)
        message = f"{name} in body must be of type {','.join(expected)}: {_quote(actual)}"
        return [FieldError(path, _TYPE_INVALID, message, actual)]
    if keyword == "required":
        # jsonschema reports each missing property; Kubernetes too, so report them all once.
        key = (tuple(error.absolute_path), tuple(error.absolute_schema_path))
        if key in seen or not isinstance(instance, Mapping):
            return []
        seen.add(key)
        return [FieldError(_child(path, r), _REQUIRED, "") for r in rule if r not in instance]
    if keyword == "enum":
        supported = ", ".join(_quote(v if isinstance(v, str) else _go_json(v)) for v in rule)
        return [FieldError(path, _NOT_SUPPORTED, f"supported values: {supported}", value)]
    if keyword == "format":
        shown = instance if isinstance(instance, str) else value
        message = f"{name} in body must be of type {rule}: {_quote(shown)}"
        return [FieldError(path, _TYPE_INVALID, message, value)]
    if keyword == "maxLength":
        return [FieldError(path, _TOO_LONG, f"may not be longer than {rule}", value)]
    if keyword in ("maxItems", "maxProperties"):
        noun = "item" if rule == 1 else "items"
        return [FieldError(path, _TOO_MANY, f"must have at most {rule} {noun}", str(len(instance)))]
    if keyword == "additionalProperties":
        known = node.get("properties", {})
        return [
            FieldError(path, _INVALID, f"{name}.{k} in body is a forbidden property", k)
            for k in instance
            if k not in known
        ]
    if keyword == _EMBEDDED:
        return _embedded_problems(instance, path)
    if keyword == "oneOf":
        valid = sum(validator.evolve(schema=s).is_valid(instance) for s in rule)
        found = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
        message = f"{_quote(name)} must validate one and only one schema (oneOf). {found}"
        return [FieldError(path, _INVALID, message, "")]
    if keyword == "anyOf":
        message = f"{_quote(name)} must validate at least one schema (anyOf)"
        return [FieldError(path, _INVALID, message, "")]
    if keyword == "not":
        return [
            FieldError(path, _INVALID, f"{_quote(name)} must not validate the schema (not)", "")
        ]
    return [FieldError(path, _INVALID, _message(keyword, rule, error, name), value)]


def _message(keyword: str, rule: Any, error: ValidationError, name: str) -> str:
    """kube-openapi's wording of the remaining keywords."""
    instance: Any = error.instance
    node: Any = error.schema
    if keyword == "minLength":
        return f"{name} in body should be at least {rule} chars long"
    if keyword == "pattern":
        return f"{name} in body should match '{rule}'"
    if keyword == "minimum":
        relation = "greater than" if node.get("exclusiveMinimum") else "greater than or equal to"
        return f"{name} in body should be {relation} {_bound_text(rule, instance)}"
    if keyword == "maximum":
        relation = "less than" if node.get("exclusiveMaximum") else "less than or equal to"
        return f"{name} in body should be {relation} {_bound_text(rule, instance)}"
    if keyword == "multipleOf":
        return f"{name} in body should be a multiple of {_bound_text(rule, instance)}"
    if keyword == "minItems":
        return f"{name} in body should have at least {rule} items"
    if keyword == "uniqueItems":
        return f"{name} in body shouldn't contain duplicates"
    if keyword == "minProperties":
        return f"{name} in body should have at least {rule} properties"
    return f"{name} in body: {error.message}"


# ---- checking a CRD's schema ------------------------------------------------------------------


def check_crd_schema(
    schema: Mapping[str, Any], path: str, *, preexisting: Preexisting | None = None
) -> list[FieldError]:
    """Why this openAPIV3Schema cannot be served, as apiextensions-apiserver words it (empty if
    it can). `path` is where the schema sits in the CRD, e.g.
    "spec.versions[0].schema.openAPIV3Schema".

    Checked, at every level: CEL rules (x-kubernetes-validations: `crd_rules.rules_errors`,
    each rule compiled; `crd_rules.type_errors`, type-checked against its node's schema
    once the schema itself is sound, as Kubernetes orders it), `$ref`,
    `type` values, patterns RE2 (Go's regexp syntax) cannot compile, `items` given as an array,
    additionalProperties false or beside properties, x-kubernetes-preserve-unknown-fields
    false, and `default`s that would be pruned or do not validate against their own schema.
    Structural-schema rules: the root is `type: object`; every field (under properties or
    additionalProperties) and every array item outside allOf/anyOf/oneOf/not has a type,
    unless it is x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields; arrays
    have `items`; embedded resources are objects. `preexisting`: what the version held
    before an update, not checked again (`Preexisting`).
    """
    if not isinstance(schema, Mapping):
        return [FieldError(path, _INVALID, "must be an object", _value_text(schema))]
    before = preexisting or Preexisting()
    errs: list[FieldError] = []
    declared = schema.get("type")
    if not declared:
        errs.append(FieldError(f"{path}.type", _REQUIRED, "must not be empty at the root"))
    elif declared != "object":
        errs.append(
            FieldError(f"{path}.type", _INVALID, "must be object at the root", str(declared))
        )
    _check_node(schema, path, "root", errs)
    if before.patterns:
        errs = [e for e in errs if not _kept_pattern(e, path, before)]
    programs = Programs()
    if not errs:  # rules are typed against a sound schema only
        errs.extend(type_errors(schema, path, preexisting=before.expressions, programs=programs))
    errs.extend(cost_errors(schema, path, preexisting=before.expressions, programs=programs))
    return errs


def _kept_pattern(err: FieldError, path: str, before: Preexisting) -> bool:
    """A pattern RE2 cannot read that the version held at that place before the update."""
    if not err.field.endswith(".pattern") or not err.message.startswith("must be a valid reg"):
        return False
    return (err.field[len(path) : -len(".pattern")], err.value) in before.patterns


_TYPE_REQUIRED = {
    "field": "must not be empty for specified object fields",
    "item": "must not be empty for specified array items",
}


def _map_key_errors(node: Mapping[str, Any], path: str) -> list[FieldError]:
    """A `map` list's keys are scalar properties of its items, as Kubernetes requires (an
    object or a list as a key cannot index the items)."""
    items = node.get("items")
    keys = node.get("x-kubernetes-list-map-keys")
    if node.get("x-kubernetes-list-type") != "map" or not isinstance(items, Mapping):
        return []
    if items.get("type") != "object" or not isinstance(keys, list):
        return []
    props = items.get("properties")
    props = props if isinstance(props, Mapping) else {}
    errs: list[FieldError] = []
    for k in keys:
        sub = props.get(k) if isinstance(k, str) else None
        if isinstance(sub, Mapping) and sub.get("type") in ("array", "object"):
            errs.append(
                FieldError(
                    f"{path}.items.properties[{k}].type",
                    _INVALID,
                    "must be a scalar type if parent array's x-kubernetes-list-type is map",
                    "object",
                )
            )
    return errs


def _check_node(node: Any, path: str, level: str, errs: list[FieldError]) -> None:
    if not isinstance(node, Mapping):
        errs.append(FieldError(path, _INVALID, "must be an object", _value_text(node)))
        return
    structural = level != "junctor"
    errs.extend(rules_errors(node, path, in_junctor=not structural))
    if "$ref" in node:
        errs.append(FieldError(f"{path}.$ref", _FORBIDDEN, "$ref is not supported"))

    declared = node.get("type")
    preserve = node.get(_PRESERVE)
    int_or_string = node.get(_INT_OR_STRING) is True
    if declared is not None and not isinstance(declared, str):
        errs.append(FieldError(f"{path}.type", _INVALID, "must be a string", _go_json(declared)))
    elif declared == "null":
        errs.append(
            FieldError(
                f"{path}.type",
                _FORBIDDEN,
                "type cannot be set to null, use nullable as an alternative",
            )
        )
    elif declared and declared not in _OPENAPI_TYPES:
        supported = ", ".join(_quote(t) for t in _OPENAPI_TYPES)
        errs.append(
            FieldError(f"{path}.type", _NOT_SUPPORTED, f"supported values: {supported}", declared)
        )
    if node.get(_EMBEDDED) is True and declared != "object":
        message = "must be object if x-kubernetes-embedded-resource is true"
        if declared:
            errs.append(FieldError(f"{path}.type", _INVALID, message, str(declared)))
        else:
            errs.append(FieldError(f"{path}.type", _REQUIRED, message))
    elif (
        structural
        and level in _TYPE_REQUIRED
        and not declared
        and not int_or_string
        and preserve is not True
    ):
        errs.append(FieldError(f"{path}.type", _REQUIRED, _TYPE_REQUIRED[level]))
    if structural and declared == "array" and "items" not in node:
        errs.append(FieldError(f"{path}.items", _REQUIRED, "must be specified"))
    errs.extend(_map_key_errors(node, path))
    if isinstance(node.get("items"), list):
        errs.append(
            FieldError(
                f"{path}.items", _FORBIDDEN, "items must be a schema object and not an array"
            )
        )

    for keyword, kind, wanted in (("format", str, "a string"), ("enum", list, "an array")):
        if node.get(keyword) is not None and not isinstance(node[keyword], kind):
            value = _go_json(node[keyword])
            errs.append(FieldError(f"{path}.{keyword}", _INVALID, f"must be {wanted}", value))
    required = node.get("required")
    if required is not None and not (
        isinstance(required, list) and all(isinstance(r, str) for r in required)
    ):
        value = _go_json(required)
        errs.append(FieldError(f"{path}.required", _INVALID, "must be a list of names", value))
    pattern = node.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            errs.append(
                FieldError(f"{path}.pattern", _INVALID, "must be a string", _go_json(pattern))
            )
        elif (reason := _compiles(pattern)) is not None:
            errs.append(
                FieldError(
                    f"{path}.pattern",
                    _INVALID,
                    f"must be a valid regular expression, but isn't: {reason}",
                    pattern,
                )
            )
    if preserve is not None and preserve is not True:
        errs.append(
            FieldError(
                f"{path}.{_PRESERVE}", _INVALID, "must be true or undefined", _go_json(preserve)
            )
        )
    additional = node.get("additionalProperties")
    if additional is False:
        errs.append(
            FieldError(
                f"{path}.additionalProperties",
                _FORBIDDEN,
                "additionalProperties cannot be set to false",
            )
        )
    elif additional is not None and node.get("properties"):
        errs.append(
            FieldError(
                f"{path}.additionalProperties",
                _FORBIDDEN,
                "additionalProperties and properties are mutual exclusive",
            )
        )
    props = node.get("properties")
    if props is not None and not isinstance(props, Mapping):
        errs.append(FieldError(f"{path}.properties", _INVALID, "must be an object", None))

    if "default" in node and node["default"] is not None:
        errs.extend(_default_errors(node, f"{path}.default"))

    for sub_path, sub, sub_level in _subschemas(node, path):
        # everything under a junctor is a value validation, not structure (no type needed),
        # as in apiextensions-apiserver (Gateway API's address oneOf holds such properties)
        _check_node(sub, sub_path, "junctor" if not structural else sub_level, errs)


def _default_errors(node: Mapping[str, Any], path: str) -> list[FieldError]:
    """A default must survive pruning unchanged and, defaulted itself, validate."""
    default = node["default"]
    if _prune(default, node, embedded=False, drop_nulls=False) != default:
        return [FieldError(path, _INVALID, "must not have unknown fields", _value_text(default))]
    if any(True for _ in _unenforceable(node, path)):
        return []  # reported on its own; the rest of this schema cannot be enforced
    filled = apply_defaults(default, node)
    return _validate(filled, node, path, resource_root=False)


# ---- the whole path -----------------------------------------------------------------------------


def process(
    obj: dict[str, Any], schema: Mapping[str, Any]
) -> tuple[dict[str, Any], list[FieldError]]:
    """What kube-apiserver does to a custom resource on create and update: prune, then apply
    defaults, then validate. Returns the new object (a deep copy) and its errors.

    Defaults are applied after pruning, so a field the request sent but the schema does not
    know never blocks or replaces a default; defaults themselves are not pruned again
    (check_crd_schema refuses defaults that would be). Finally a whole float in an integer
    field (1.0, which Kubernetes accepts as an integer) is stored as an int, as Go's JSON
    encoder would write it back, so typed clients can read it.
    """
    pruned = prune(obj, schema)
    defaulted = apply_defaults(pruned, schema)
    errs = validate(defaulted, schema)
    result = _integers(defaulted, schema)
    return (result if isinstance(result, dict) else {}), errs


def _integers(value: Any, schema: Mapping[str, Any] | None) -> Any:
    if schema is None:
        return value
    if _is_whole_float(value) and (
        schema.get("type") == "integer" or schema.get(_INT_OR_STRING) is True
    ):
        return int(value)
    if isinstance(value, dict):
        props = _properties(schema)
        _, additional = _additional(schema)
        return {k: _integers(v, props.get(k, additional)) for k, v in value.items()}
    if isinstance(value, list):
        items = _items(schema)
        return [_integers(v, items) for v in value]
    return value
