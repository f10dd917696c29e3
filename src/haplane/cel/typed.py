"""Types for CEL's type checker from OpenAPI schemas, as Kubernetes' SchemaDeclType
(k8s.io/apiserver/pkg/cel/common/schemas.go) makes them: an expression checked against them
names a misspelt field or a wrong operand at compile time instead of failing on an object.

Layer: cel. Pure: no I/O.

    schemas = Schemas()
    deployment = schemas.declare(schema, "Deployment")       # a DeclaredType (DYN if none)
    env = Environment(("object",), types={"object": deployment}, schemas=schemas)
    env.compile("object.spec.replicsa > 1")   # CompileError: undefined field 'replicsa' ...

How: the engine (cel-cpp) knows object types only as protobuf messages, so each schema
becomes messages in a descriptor pool of its own (`Schemas`), built here from descriptor
protos, never from generated code. Programs compiled against these types are for checking:
the values given at evaluation stay plain JSON (and environments that evaluate declare every
variable `dyn`).

The mapping, as Kubernetes' where the engine allows it:
- `integer` int, `number` double, `boolean` bool, `string` string;
- `array` a list of its items' type; `object` with `additionalProperties` a map from string,
  with `properties` a message with one field per property (absent fields are not errors at
  check time: `has()` and `?.` are the expressions' business);
- `x-kubernetes-int-or-string`, and anything without a type, `dyn`;
- an `x-kubernetes-embedded-resource` object has `apiVersion` and `kind` strings and its
  `metadata` (see `_with_type_and_meta`), whatever its schema declares.
Where haplane differs, so that fewer warnings are false (a warning is the checker's judgement
on types, not proof of a failure: an expression warned of may still succeed, in a branch no
object takes, or on values the schema does not describe):
- format `byte`, `date`, `date-time` and `duration` strings stay strings (Kubernetes declares
  bytes, timestamps, durations, but an admission policy's `object` is the JSON, so the values
  are strings there too);
- an object with `x-kubernetes-preserve-unknown-fields` is `dyn` (Kubernetes declares only its
  known fields, so reading an unknown one is a type error there and works at evaluation);
- a property no expression can select (a name that is no CEL identifier, or `in`, `true`,
  `false`, `null`) makes its object `dyn` (a message cannot be indexed by name);
- `nullable` scalars are the protobuf wrappers (int or null), nullable lists and maps `dyn`;
- what a message cannot hold (a list of lists or maps, a map of lists or maps) is `list(dyn)`
  or `map(string, dyn)`.
Field names are the schema's own (admission policies read the JSON as it is).

`declare(..., crd=True)` makes the types CRD validation rules see, as apiextensions-apiserver
declares them (haplane's `api.crd_rules` gives the values the same shape):
- property names escaped as Kubernetes escapes them (`namespace` is `__namespace__`, `a-b`
  `a__dash__b`; `library.escape`), a reserved word also as written (`self.namespace`, as
  Kubernetes 1.32+ reads it); a property no escaping can name is left out (no expression
  can read it there either), rather than making its object `dyn`;
- format `date` and `date-time` strings are timestamps, `duration` strings durations, `byte`
  strings bytes (the values are converted to match);
- `root=True`: the object itself, whose `metadata` holds only `name` and `generateName` and
  which always has `apiVersion` and `kind` (Kubernetes' WithTypeAndObjectMeta).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Final

from cel_expr_python import cel
from google.protobuf import (  # type: ignore[import-untyped]  # no stubs installed
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)

from .library import KEYWORD_FIELDS, escape

_F = descriptor_pb2.FieldDescriptorProto
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNSELECTABLE: Final = frozenset({"in", "true", "false", "null"})  # `.in` is a syntax error
_SCALARS: Final = {
    "integer": (_F.TYPE_INT64, ".google.protobuf.Int64Value"),
    "number": (_F.TYPE_DOUBLE, ".google.protobuf.DoubleValue"),
    "boolean": (_F.TYPE_BOOL, ".google.protobuf.BoolValue"),
    "string": (_F.TYPE_STRING, ".google.protobuf.StringValue"),
}
_FORMATS: Final = {  # CRD rules: formatted strings as Kubernetes gives them
    "date": ".google.protobuf.Timestamp",
    "date-time": ".google.protobuf.Timestamp",
    "duration": ".google.protobuf.Duration",
}
_VALUE: Final = ".google.protobuf.Value"  # dyn
_LIST: Final = ".google.protobuf.ListValue"  # list(dyn)
_STRUCT: Final = ".google.protobuf.Struct"  # map(string, dyn)
_WELL_KNOWN: Final = (any_pb2, duration_pb2, empty_pb2, struct_pb2, timestamp_pb2, wrappers_pb2)


@dataclass(frozen=True, eq=False)
class DeclaredType:
    """A type a variable can be declared with (opaque outside haplane.cel)."""

    engine: Any  # the engine's type
    name: str


DYN: Final = DeclaredType(cel.Type.DYN, "dyn")


@dataclass(frozen=True)
class _Field:
    """How a value sits in a message: a scalar, a message, a repeated or a map field."""

    type: int
    type_name: str = ""
    repeated: bool = False
    map_value: _Field | None = None  # a map field: its values


@dataclass(frozen=True)
class _Scope:
    """A message being built, and its full name."""

    message: descriptor_pb2.DescriptorProto
    full_name: str
    fields: frozenset[str] = frozenset()  # its fields' names (nested types may not take them)


class Schemas:
    """A descriptor pool and the types declared in it. Environments that use its types keep
    it alive."""

    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        for module in _WELL_KNOWN:
            self.pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
        self._count = itertools.count(1)
        self._names: set[str] = set()
        self._declared: dict[tuple[Any, ...], tuple[Mapping[str, Any], DeclaredType]] = {}

    def declare(
        self,
        schema: Any,
        name: str,
        *,
        crd: bool = False,
        root: bool = False,
        string_formats: bool = False,
    ) -> DeclaredType:
        """The type of values `schema` describes (an object, a list, a map, a scalar), its
        messages named after `name` (a kind: `Deployment`, `Deployment.Spec`, ...); DYN when
        the schema gives no type.
        `crd`: as CRD validation rules see the values (escaped names, formats); `root`: the
        CRD's whole object (see the module's doc); `string_formats`: formatted strings as
        strings (what rules written before haplane typed them expect)."""
        if not isinstance(schema, Mapping):
            return DYN
        if crd and root:
            schema = {**schema, "properties": _crd_root_properties(schema.get("properties"))}
        key = (id(schema), name, crd, string_formats)
        if key in self._declared:
            return self._declared[key][1]
        top = _unique(_identifier(name) or "Object", self._names)
        file = descriptor_pb2.FileDescriptorProto(
            name=f"haplane/schema_{next(self._count)}.proto",
            syntax="proto2",
            dependency=[m.DESCRIPTOR.name for m in _WELL_KNOWN],
        )
        declared = DYN
        try:
            made = _Builder(file, crd=crd, formats=not string_formats).field_for(schema, None, top)
            if file.message_type:
                self.pool.AddSerializedFile(file.SerializeToString())
        except (TypeError, ValueError, AttributeError):  # a schema this mapping missed (or
            pass  # a malformed one, whose own errors are reported elsewhere): checked as dyn
        else:
            self._names.update(m.name for m in file.message_type)
            engine = _engine_type(made)
            if engine != cel.Type.DYN:
                declared = DeclaredType(engine, str(engine.name()))
        self._declared[key] = (schema, declared)  # the schema kept: its id stays its own
        return declared


class _Builder:
    """One file's messages: the top one and those nested in it."""

    def __init__(
        self, file: descriptor_pb2.FileDescriptorProto, *, crd: bool = False, formats: bool = True
    ) -> None:
        self.file = file
        self.crd = crd
        self.formats = crd and formats  # formatted strings as timestamps, durations, bytes

    def field_for(self, schema: Any, parent: _Scope | None, name: str) -> _Field:
        """The field type for values of `schema`; a message it needs is nested in `parent`
        (at the top of the file when None) under `name`."""
        if not isinstance(schema, Mapping) or schema.get("x-kubernetes-int-or-string"):
            return _Field(_F.TYPE_MESSAGE, _VALUE)
        nullable = schema.get("nullable") is True
        kind = schema.get("type")
        fmt = schema.get("format")
        if self.formats and kind == "string" and isinstance(fmt, str) and fmt in _FORMATS:
            return _Field(_F.TYPE_MESSAGE, _FORMATS[fmt])
        if self.formats and kind == "string" and fmt == "byte":
            if nullable:
                return _Field(_F.TYPE_MESSAGE, ".google.protobuf.BytesValue")
            return _Field(_F.TYPE_BYTES)
        if kind in _SCALARS:
            scalar, wrapper = _SCALARS[kind]
            return _Field(_F.TYPE_MESSAGE, wrapper) if nullable else _Field(scalar)
        if kind == "array":
            if nullable:
                return _Field(_F.TYPE_MESSAGE, _VALUE)
            item = self.field_for(schema.get("items"), parent, f"{name}Item")
            if item.repeated or item.map_value is not None:
                return _Field(_F.TYPE_MESSAGE, _LIST)
            return _Field(item.type, item.type_name, repeated=True)
        if kind != "object" or schema.get("x-kubernetes-preserve-unknown-fields"):
            return _Field(_F.TYPE_MESSAGE, _VALUE)
        additional = schema.get("additionalProperties")
        properties = schema.get("properties")
        map_like = (isinstance(additional, Mapping) or additional is True) and not properties
        if schema.get("x-kubernetes-embedded-resource") is True and not map_like:
            properties = _with_type_and_meta(properties)  # (a map stays a map, as there)
        if map_like:
            if nullable:
                return _Field(_F.TYPE_MESSAGE, _VALUE)
            value = self.field_for(additional, parent, f"{name}Value")
            if value.repeated or value.map_value is not None:
                return _Field(_F.TYPE_MESSAGE, _STRUCT)
            return _Field(_F.TYPE_MESSAGE, map_value=value)
        properties = properties if isinstance(properties, Mapping) else {}
        if self.crd:  # as expressions spell them; what none can spell is left out
            spelt = {}
            for p, sub in properties.items():
                escaped = escape(p)
                if escaped is not None:
                    spelt[escaped] = sub
                if p in KEYWORD_FIELDS:
                    spelt[p] = sub  # `self.namespace` beside `self.__namespace__`
            properties = spelt
        elif any(not _selectable(p) for p in properties):
            return _Field(_F.TYPE_MESSAGE, _VALUE)
        return _Field(_F.TYPE_MESSAGE, self._message(properties, parent, name))

    def _message(self, properties: Mapping[str, Any], parent: _Scope | None, name: str) -> str:
        """A message with a field per property, nested in `parent`; its full name."""
        if parent is None:
            scope = _Scope(self.file.message_type.add(name=name), name, frozenset(properties))
            # (each field's JSON name is its own: no check of protobuf's default JSON names,
            # which would log a warning for properties like `foo_bar` beside `fooBar`)
        else:
            taken = parent.fields | {m.name for m in parent.message.nested_type}
            message = parent.message.nested_type.add(name=_unique(name, taken))
            scope = _Scope(message, f"{parent.full_name}.{message.name}", frozenset(properties))
        scope.message.options.deprecated_legacy_json_field_conflicts = True
        fields = []
        for prop, sub in properties.items():
            nested = _capitalised(prop)
            fields.append((prop, self.field_for(sub, scope, nested)))
        for number, (prop, field) in enumerate(fields, start=1):
            self._add(scope, prop, number, field)
        return "." + scope.full_name

    def _add(self, scope: _Scope, name: str, number: int, field: _Field) -> None:
        message = scope.message
        value = field.map_value
        entry_name = _map_entry_name(name)
        if value is not None and (
            entry_name in scope.fields or entry_name in {m.name for m in message.nested_type}
        ):
            field, value = _Field(_F.TYPE_MESSAGE, _STRUCT), None  # (a property took its name)
        if value is None:
            label = _F.LABEL_REPEATED if field.repeated else _F.LABEL_OPTIONAL
            # the JSON name set to the field's own: protobuf's default (camelCase) makes
            # properties `foo_bar` and `fooBar` clash, and the whole type would be dyn
            added = message.field.add(
                name=name, number=number, label=label, type=field.type, json_name=name
            )
            if field.type_name:
                added.type_name = field.type_name
            return
        # a map: a repeated entry message, named as protoc names it (FieldNameEntry)
        entry = message.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
        added = entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=value.type)
        if value.type_name:
            added.type_name = value.type_name
        message.field.add(
            name=name,
            number=number,
            label=_F.LABEL_REPEATED,
            type=_F.TYPE_MESSAGE,
            type_name=f".{scope.full_name}.{entry_name}",
            json_name=name,
        )


_STRING: Final = {"type": "string"}


def _with_type_and_meta(properties: Any) -> dict[str, Any]:
    """An embedded resource's properties with `apiVersion`, `kind` and `metadata`, which it
    always has whatever its schema says (Kubernetes' WithTypeAndObjectMeta): `metadata` as
    declared with `name` and `generateName` added, or, undeclared, `dyn` (the JSON holds all
    of ObjectMeta: Kubernetes' two fields alone would warn of `metadata.labels`)."""
    out = dict(properties) if isinstance(properties, Mapping) else {}
    out["apiVersion"] = out["kind"] = _STRING
    meta = out.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("properties"), Mapping):
        out["metadata"] = {
            **meta,
            "type": "object",
            "properties": {**meta["properties"], "name": _STRING, "generateName": _STRING},
        }
    else:
        out["metadata"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return out


_ENGINE_SCALARS: Final = {
    _F.TYPE_INT64: cel.Type.INT,
    _F.TYPE_DOUBLE: cel.Type.DOUBLE,
    _F.TYPE_BOOL: cel.Type.BOOL,
    _F.TYPE_STRING: cel.Type.STRING,
    _F.TYPE_BYTES: cel.Type.BYTES,
}
_ENGINE_MESSAGES: Final = {
    _VALUE: cel.Type.DYN,
    _LIST: cel.Type.List(cel.Type.DYN),
    _STRUCT: cel.Type.Map(cel.Type.STRING, cel.Type.DYN),
    ".google.protobuf.Timestamp": cel.Type.TIMESTAMP,
    ".google.protobuf.Duration": cel.Type.DURATION,
}


def _engine_type(field: _Field) -> Any:
    """The engine's type of the values a field holds."""
    if field.map_value is not None:
        return cel.Type.Map(cel.Type.STRING, _engine_type(field.map_value))
    if field.repeated:
        return cel.Type.List(_engine_type(_Field(field.type, field.type_name)))
    if field.type == _F.TYPE_MESSAGE:
        known = _ENGINE_MESSAGES.get(field.type_name)
        return known if known is not None else cel.Type(field.type_name.lstrip("."))
    return _ENGINE_SCALARS[field.type]


def _crd_root_properties(properties: Any) -> dict[str, Any]:
    """A CRD's root properties as its rules see them: `apiVersion` and `kind` strings,
    `metadata` with `name` and `generateName` alone (Kubernetes' WithTypeAndObjectMeta)."""
    out = dict(properties) if isinstance(properties, Mapping) else {}
    out["apiVersion"] = out["kind"] = _STRING
    out["metadata"] = {
        "type": "object",
        "properties": {"name": _STRING, "generateName": _STRING},
    }
    return out


def _selectable(name: str) -> bool:
    return bool(_IDENT.fullmatch(name)) and name not in _UNSELECTABLE


def _identifier(name: str) -> str:
    return "".join(c for c in name if c.isalnum() or c == "_").lstrip("0123456789_")


def _capitalised(name: str) -> str:
    return name[:1].upper() + name[1:]


def _map_entry_name(field: str) -> str:
    """protoc's: the field's name in CamelCase, then `Entry`."""
    parts = field.split("_")
    return "".join(p[:1].upper() + p[1:] for p in parts) + "Entry"


def _unique(name: str, taken: Set[str]) -> str:
    out = name
    while out in taken:
        out += "_"
    return out
