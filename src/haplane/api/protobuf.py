"""Layer: api. Kubernetes protobuf request bodies (application/vnd.kubernetes.protobuf) as dicts.

Pure: touches nothing (no I/O, no clock, no global state); bytes in, dict out.

    decode(body) -> dict   the dict the JSON form of the same object would parse to

kubectl sends typed creates (configmap, namespace, secret, serviceaccount) as protobuf: the magic
b"k8s\\x00" then a runtime.Unknown {typeMeta{apiVersion, kind}, raw, contentEncoding, contentType}
whose raw bytes are the object's own message. The result follows Go's encoding/json: Kubernetes
JSON field names, `[]byte` as base64, metav1.Time as RFC 3339 UTC seconds (null when zero), and
`omitempty` zero values dropped. Go's marshaller always writes non-pointer fields, so a message
field that is present but empty becomes {} (as Go's JSON prints `"spec": {}`), while a field absent
from the wire is left out. Invalid UTF-8 becomes U+FFFD, as Go's JSON encoder does.

The wire decoding is written by hand on purpose: the `protobuf` package needs generated classes or
descriptors for Kubernetes' schemas, which no maintained PyPI package ships, and a table-driven
decoder over the few message schemas served here is smaller. Field numbers come from
k8s.io/api core/v1/generated.proto and k8s.io/apimachinery pkg/apis/meta/v1/generated.proto and
pkg/runtime/generated.proto (checked against the struct tags in kubectl 1.32). A schema maps
field number -> (JSON name, kind), so serving another kind is one more table.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, TypeAlias

PROTOBUF = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a decodable Kubernetes protobuf envelope of a kind served here."""


class UnsupportedKind(ProtobufError):
    """A well-formed envelope of a kind this module has no schema for (HTTP 415)."""


# A kind is a scalar name, a nested Schema, or [kind] for a repeated field. Scalar names follow
# Go: "string"/"int64"/"bool" are `omitempty` (the zero value is dropped); "*string"/"*int64"/
# "*bool" are pointers or non-omitempty fields, kept whenever present on the wire.
Kind: TypeAlias = "str | dict[int, tuple[str, Kind]] | list[Kind]"
Schema: TypeAlias = "dict[int, tuple[str, Kind]]"

_OMITEMPTY = frozenset({"string", "int64", "bool"})
_VARINT = frozenset({"int64", "*int64", "bool", "*bool"})
_MASK64 = (1 << 64) - 1
_MAX_GROUP_DEPTH = 64
_EPOCH = datetime(1970, 1, 1)
_GO_ZERO_TIME = -62135596800  # 0001-01-01T00:00:00Z, Go's zero time.Time: JSON null

_TYPE_META: Schema = {1: ("apiVersion", "string"), 2: ("kind", "string")}
_UNKNOWN: Schema = {  # runtime.Unknown
    1: ("typeMeta", _TYPE_META),
    2: ("raw", "bytes"),
    3: ("contentEncoding", "string"),
    4: ("contentType", "string"),
}
OWNER_REFERENCE: Schema = {
    5: ("apiVersion", "*string"),
    1: ("kind", "*string"),
    3: ("name", "*string"),
    4: ("uid", "*string"),
    6: ("controller", "*bool"),
    7: ("blockOwnerDeletion", "*bool"),
}
MANAGED_FIELDS_ENTRY: Schema = {
    1: ("manager", "string"),
    2: ("operation", "string"),
    3: ("apiVersion", "string"),
    4: ("time", "Time"),
    6: ("fieldsType", "string"),
    7: ("fieldsV1", "FieldsV1"),
    8: ("subresource", "string"),
}
OBJECT_META: Schema = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    4: ("selfLink", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    7: ("generation", "int64"),
    8: ("creationTimestamp", "Time"),
    9: ("deletionTimestamp", "Time"),
    10: ("deletionGracePeriodSeconds", "*int64"),
    11: ("labels", "map[string]string"),
    12: ("annotations", "map[string]string"),
    13: ("ownerReferences", [OWNER_REFERENCE]),
    14: ("finalizers", ["string"]),
    17: ("managedFields", [MANAGED_FIELDS_ENTRY]),
}
OBJECT_REFERENCE: Schema = {
    1: ("kind", "string"),
    2: ("namespace", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("resourceVersion", "string"),
    7: ("fieldPath", "string"),
}
LOCAL_OBJECT_REFERENCE: Schema = {1: ("name", "string")}
NAMESPACE_CONDITION: Schema = {
    1: ("type", "*string"),
    2: ("status", "*string"),
    4: ("lastTransitionTime", "Time"),
    5: ("reason", "string"),
    6: ("message", "string"),
}
NAMESPACE: Schema = {
    1: ("metadata", OBJECT_META),
    2: ("spec", {1: ("finalizers", ["string"])}),
    3: ("status", {1: ("phase", "string"), 2: ("conditions", [NAMESPACE_CONDITION])}),
}
CONFIG_MAP: Schema = {
    1: ("metadata", OBJECT_META),
    4: ("immutable", "*bool"),
    2: ("data", "map[string]string"),
    3: ("binaryData", "map[string][]byte"),
}
SECRET: Schema = {
    1: ("metadata", OBJECT_META),
    5: ("immutable", "*bool"),
    2: ("data", "map[string][]byte"),
    4: ("stringData", "map[string]string"),
    3: ("type", "string"),
}
SERVICE_ACCOUNT: Schema = {
    1: ("metadata", OBJECT_META),
    2: ("secrets", [OBJECT_REFERENCE]),
    3: ("imagePullSecrets", [LOCAL_OBJECT_REFERENCE]),
    4: ("automountServiceAccountToken", "*bool"),
}
DELETE_OPTIONS: Schema = {
    1: ("gracePeriodSeconds", "*int64"),
    2: ("preconditions", {1: ("uid", "*string"), 2: ("resourceVersion", "*string")}),
    3: ("orphanDependents", "*bool"),
    4: ("propagationPolicy", "*string"),
    5: ("dryRun", ["string"]),
    6: ("ignoreStoreReadErrorWithClusterBreakingPotential", "*bool"),
}

# authorization.k8s.io/v1 and authentication.k8s.io/v1 (kubectl auth can-i / whoami send them
# as protobuf); k8s.io/api authorization/v1 and authentication/v1 generated.proto
RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", "string"),
    2: ("verb", "string"),
    3: ("group", "string"),
    4: ("version", "string"),
    5: ("resource", "string"),
    6: ("subresource", "string"),
    7: ("name", "string"),
}
NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", "string"), 2: ("verb", "string")}
SELF_SUBJECT_ACCESS_REVIEW: Schema = {
    1: ("metadata", OBJECT_META),
    2: (
        "spec",
        {1: ("resourceAttributes", RESOURCE_ATTRIBUTES),
         2: ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES)},
    ),
}  # fmt: skip
SUBJECT_ACCESS_REVIEW: Schema = {
    1: ("metadata", OBJECT_META),
    2: (
        "spec",
        {1: ("resourceAttributes", RESOURCE_ATTRIBUTES),
         2: ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
         3: ("user", "string"), 4: ("groups", ["string"]), 6: ("uid", "string")},
    ),
}  # fmt: skip
SELF_SUBJECT_RULES_REVIEW: Schema = {
    1: ("metadata", OBJECT_META),
    2: ("spec", {1: ("namespace", "string")}),
}
SELF_SUBJECT_REVIEW: Schema = {1: ("metadata", OBJECT_META)}
TOKEN_REVIEW: Schema = {
    1: ("metadata", OBJECT_META),
    2: ("spec", {1: ("token", "string"), 2: ("audiences", ["string"])}),
}

TOKEN_REQUEST: Schema = {
    1: ("metadata", OBJECT_META),
    2: (
        "spec",
        {
            1: ("audiences", ["string"]),
            4: ("expirationSeconds", "*int64"),
            3: (
                "boundObjectRef",
                {1: ("kind", "string"), 2: ("apiVersion", "string"), 3: ("name", "string"),
                 4: ("uid", "string")},
            ),
        },
    ),
}  # fmt: skip

# rbac.authorization.k8s.io/v1 (kubectl create role/clusterrole/rolebinding send them as
# protobuf); k8s.io/api rbac/v1 generated.proto
POLICY_RULE: Schema = {
    1: ("verbs", ["string"]),
    2: ("apiGroups", ["string"]),
    3: ("resources", ["string"]),
    4: ("resourceNames", ["string"]),
    5: ("nonResourceURLs", ["string"]),
}
LABEL_SELECTOR: Schema = {
    1: ("matchLabels", "map[string]string"),
    2: ("matchExpressions", [{1: ("key", "string"), 2: ("operator", "string"),
                              3: ("values", ["string"])}]),
}  # fmt: skip
ROLE: Schema = {1: ("metadata", OBJECT_META), 2: ("rules", [POLICY_RULE])}
CLUSTER_ROLE: Schema = {
    1: ("metadata", OBJECT_META),
    2: ("rules", [POLICY_RULE]),
    3: ("aggregationRule", {1: ("clusterRoleSelectors", [LABEL_SELECTOR])}),
}
SUBJECT: Schema = {
    1: ("kind", "string"),
    2: ("apiGroup", "string"),
    3: ("name", "string"),
    4: ("namespace", "string"),
}
ROLE_BINDING: Schema = {
    1: ("metadata", OBJECT_META),
    2: ("subjects", [SUBJECT]),
    3: ("roleRef", {1: ("apiGroup", "string"), 2: ("kind", "string"), 3: ("name", "string")}),
}

# (apiVersion, kind) -> schema of the message in Unknown.raw
KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): NAMESPACE,
    ("v1", "ConfigMap"): CONFIG_MAP,
    ("v1", "Secret"): SECRET,
    ("v1", "ServiceAccount"): SERVICE_ACCOUNT,
    ("v1", "DeleteOptions"): DELETE_OPTIONS,
    ("meta.k8s.io/v1", "DeleteOptions"): DELETE_OPTIONS,
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): SELF_SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io/v1", "SubjectAccessReview"): SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"): SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): SELF_SUBJECT_RULES_REVIEW,
    ("authentication.k8s.io/v1", "SelfSubjectReview"): SELF_SUBJECT_REVIEW,
    ("authentication.k8s.io/v1", "TokenReview"): TOKEN_REVIEW,
    ("authentication.k8s.io/v1", "TokenRequest"): TOKEN_REQUEST,
    ("rbac.authorization.k8s.io/v1", "Role"): ROLE,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): CLUSTER_ROLE,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ROLE_BINDING,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ROLE_BINDING,
}


def decode(body: bytes) -> dict[str, Any]:
    """The JSON-shaped dict of a Kubernetes protobuf body; ProtobufError when it cannot be."""
    buf = bytes(body)
    if not buf.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf envelope (missing the k8s\\0 prefix)")
    unknown = _message(buf, len(MAGIC), len(buf), _UNKNOWN, "envelope")
    type_meta = unknown.get("typeMeta", {})
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if not kind:
        raise ProtobufError("protobuf envelope has no typeMeta.kind, so its object cannot be read")
    if unknown.get("contentEncoding"):
        raise ProtobufError(f"contentEncoding {unknown['contentEncoding']!r} is not supported")
    if unknown.get("contentType", PROTOBUF) != PROTOBUF:
        raise ProtobufError(f"raw contentType {unknown['contentType']!r} is not protobuf")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise UnsupportedKind(
            f"kind {api_version or '(no apiVersion)'} {kind} is not served as protobuf here; "
            "send application/json"
        )
    raw: bytes = unknown.get("raw", b"")
    return {"apiVersion": api_version, "kind": kind, **_message(raw, 0, len(raw), schema, kind)}


def _message(buf: bytes, start: int, end: int, schema: Schema, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, wire, a, b in _fields(buf, start, end, path):
        if number not in schema:
            continue  # unknown field: already skipped by wire type
        name, kind = schema[number]
        where = f"{path}.{name}"
        if isinstance(kind, list):
            out.setdefault(name, []).append(_value(buf, wire, a, b, kind[0], where))
        elif isinstance(kind, str) and kind.startswith("map["):
            key, value = _map_entry(buf, wire, a, b, kind, where)
            out.setdefault(name, {})[key] = value
        else:
            value = _value(buf, wire, a, b, kind, where)
            previous = out.get(name)
            if isinstance(kind, str) and kind in _OMITEMPTY and not value:
                out.pop(name, None)  # a repeated scalar: the last one wins, even a zero
            elif isinstance(previous, dict) and isinstance(value, dict):
                previous.update(value)  # a repeated message field merges, as protobuf does
            else:
                out[name] = value
    return out


def _value(buf: bytes, wire: int, a: int, b: int, kind: Kind, path: str) -> Any:
    expected = 0 if isinstance(kind, str) and kind in _VARINT else 2
    if wire != expected:
        raise ProtobufError(f"{path}: wire type {wire} where {expected} was expected")
    if kind in ("string", "*string"):
        return buf[a:b].decode("utf-8", "replace")
    if kind in ("int64", "*int64"):
        return a - (1 << 64) if a >> 63 else a
    if kind in ("bool", "*bool"):
        return a != 0
    if kind == "bytes":
        return buf[a:b]
    if kind == "Time":
        return _time(buf, a, b, path)
    if kind == "FieldsV1":  # {Raw bytes = 1}: the JSON it holds is the field's JSON form
        raw = _message(buf, a, b, {1: ("raw", "bytes")}, path).get("raw", b"")
        try:
            return json.loads(raw) if raw else None
        except (ValueError, RecursionError) as exc:
            raise ProtobufError(f"{path}: Raw is not JSON ({exc})") from None
    if isinstance(kind, dict):
        return _message(buf, a, b, kind, path)
    raise AssertionError(f"{path}: no decoder for kind {kind!r}")


def _map_entry(buf: bytes, wire: int, a: int, b: int, kind: str, path: str) -> tuple[str, Any]:
    entry = _value(buf, wire, a, b, {1: ("key", "*string"), 2: ("value", "bytes")}, path)
    value: bytes = entry.get("value", b"")
    if kind == "map[string][]byte":
        return entry.get("key", ""), base64.b64encode(value).decode("ascii")
    return entry.get("key", ""), value.decode("utf-8", "replace")


def _time(buf: bytes, a: int, b: int, path: str) -> str | None:
    """metav1.Time {int64 seconds = 1; int32 nanos = 2} as Go's JSON: RFC 3339 seconds, UTC."""
    fields = _message(buf, a, b, {1: ("seconds", "*int64"), 2: ("nanos", "*int64")}, path)
    seconds, nanos = fields.get("seconds", 0), fields.get("nanos", 0)
    if (seconds, nanos) == (0, 0):
        return None  # Go unmarshals 0/0 as the zero time, which marshals as null
    seconds += nanos // 1_000_000_000  # time.Unix normalizes nanos outside [0, 1e9)
    if seconds == _GO_ZERO_TIME and nanos % 1_000_000_000 == 0:
        return None
    try:
        return (_EPOCH + timedelta(seconds=seconds)).isoformat() + "Z"
    except OverflowError:
        raise ProtobufError(f"{path}: {seconds} seconds is outside years 1-9999") from None


def _fields(buf: bytes, pos: int, end: int, path: str) -> Iterator[tuple[int, int, int, int]]:
    """(number, wire type, a, b) per field of buf[pos:end]; groups are skipped.

    A varint or fixed field gives (value, 0), a length-delimited one its (start, stop)."""
    while pos < end:
        number, wire, a, b, pos = _field(buf, pos, end, path, 0)
        if wire == 4:
            raise ProtobufError(f"{path}: end-group for field {number} without a start")
        if wire != 3:
            yield number, wire, a, b


def _field(buf: bytes, pos: int, end: int, path: str, depth: int) -> tuple[int, int, int, int, int]:
    """Read one field at pos: (number, wire type, a, b, position after it)."""
    key, pos = _varint(buf, pos, end, path)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise ProtobufError(f"{path}: field number 0 at byte {pos}")
    if wire == 0:
        value, pos = _varint(buf, pos, end, path)
        return number, wire, value, 0, pos
    if wire == 2:
        length, pos = _varint(buf, pos, end, path)
        if length > end - pos:
            raise ProtobufError(
                f"{path}: field {number} has length {length} but only {end - pos} bytes are left"
            )
        return number, wire, pos, pos + length, pos + length
    if wire in (1, 5):
        size = 8 if wire == 1 else 4
        if size > end - pos:
            raise ProtobufError(f"{path}: field {number} is cut short (fixed{size * 8})")
        return number, wire, int.from_bytes(buf[pos : pos + size], "little"), 0, pos + size
    if wire == 3:  # a proto2 group: skip up to its matching end-group
        if depth >= _MAX_GROUP_DEPTH:
            raise ProtobufError(f"{path}: groups nested deeper than {_MAX_GROUP_DEPTH}")
        while pos < end:
            inner, inner_wire, _, _, pos = _field(buf, pos, end, path, depth + 1)
            if inner_wire == 4:
                if inner != number:
                    raise ProtobufError(f"{path}: group {number} closed by end-group {inner}")
                return number, wire, 0, 0, pos
        raise ProtobufError(f"{path}: group {number} has no end-group")
    if wire == 4:
        return number, wire, 0, 0, pos
    raise ProtobufError(f"{path}: invalid wire type {wire} for field {number}")


def _varint(buf: bytes, pos: int, end: int, path: str) -> tuple[int, int]:
    result = shift = 0
    while shift < 70:
        if pos >= end:
            raise ProtobufError(f"{path}: truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7
    raise ProtobufError(f"{path}: varint longer than 10 bytes ending at byte {pos}")
