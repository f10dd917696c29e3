"""Layer: api. Validation of names and object metadata, by the rules kube-apiserver applies.

Pure: no I/O. Every check returns a list of messages (or `FieldError`s); an empty list means valid.
The messages are worded as Kubernetes words them (k8s.io/apimachinery/pkg/util/validation and
pkg/api/validation), so clients and people see what they would see from a real cluster.

Lengths are counted in UTF-8 bytes, as Go's `len` counts them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from haplane.names import (
    DNS1123_LABEL_MAX_LENGTH,
    DNS1123_SUBDOMAIN_MAX_LENGTH,
    LABEL_VALUE_MAX_LENGTH,
    QUALIFIED_NAME_MAX_LENGTH,
    byte_len,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    label_key_errors,
    label_value_errors,
    mask_trailing_dash,
)

NameRule = Literal["dns1123-subdomain", "dns1123-label", "path-segment"]
__all__ = [  # the name rules live in haplane.names (the CEL format library uses them too)
    "DNS1123_LABEL_MAX_LENGTH",
    "DNS1123_SUBDOMAIN_MAX_LENGTH",
    "LABEL_VALUE_MAX_LENGTH",
    "QUALIFIED_NAME_MAX_LENGTH",
    "dns1123_label_errors",
    "dns1123_subdomain_errors",
    "label_key_errors",
    "label_value_errors",
]

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024  # bytes, keys and values together

# Kubernetes' SimpleNameGenerator (k8s.io/apiserver/pkg/storage/names).
GENERATED_NAME_RANDOM_LENGTH = 5
MAX_GENERATED_NAME_PREFIX_LENGTH = DNS1123_LABEL_MAX_LENGTH - GENERATED_NAME_RANDOM_LENGTH  # 58
GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # no vowels: no accidental words

_INVALID = "FieldValueInvalid"
_REQUIRED = "FieldValueRequired"
_TOO_LONG = "FieldValueTooLong"

# How Kubernetes renders each cause type at the start of a cause's message (field.Error).
_TYPE_TEXT = {
    _INVALID: "Invalid value",
    _REQUIRED: "Required value",
    _TOO_LONG: "Too long",
    "FieldValueForbidden": "Forbidden",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueDuplicate": "Duplicate value",
}


def _quote(value: str) -> str:
    """A value quoted as Go's %q would (close enough for messages)."""
    return json.dumps(value, ensure_ascii=False)


# ---- names ------------------------------------------------------------------------------------


def path_segment_name_errors(value: str) -> list[str]:
    """A name usable as one URL path segment: not '.' or '..', and without '/' or '%'.

    Like Kubernetes, the empty string passes here (a missing name is reported as required by
    `object_meta_errors`).
    """
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return _path_segment_prefix_errors(value)


def _path_segment_prefix_errors(value: str) -> list[str]:
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


def _name_errors(value: str, rule: NameRule, *, prefix: bool) -> list[str]:
    """Kubernetes' ValidateNameFunc: `prefix` is true when validating a generateName."""
    if rule == "path-segment":
        return _path_segment_prefix_errors(value) if prefix else path_segment_name_errors(value)
    if prefix:
        value = mask_trailing_dash(value)
    if rule == "dns1123-label":
        return dns1123_label_errors(value)
    return dns1123_subdomain_errors(value)


# ---- labels and annotations -------------------------------------------------------------------


def _annotation_key_errors(key: str) -> list[str]:
    # Annotation keys are qualified names in which case does not matter (so an upper-case
    # prefix is fine), exactly as Kubernetes lower-cases them before checking.
    return label_key_errors(key.lower())


def _annotations_too_long(annotations: Mapping[Any, Any]) -> int | None:
    """The total size of the string keys and values, if it is over the limit."""
    total = sum(
        byte_len(k) + byte_len(v)
        for k, v in annotations.items()
        if isinstance(k, str) and isinstance(v, str)
    )
    return total if total > TOTAL_ANNOTATION_SIZE_LIMIT else None


def _annotations_size_message(total: int) -> str:
    return (
        f"may not be more than {TOTAL_ANNOTATION_SIZE_LIMIT} bytes "
        f"(the keys and values of the annotations total {total} bytes)"
    )


def annotations_errors(annotations: Mapping[str, str]) -> list[str]:
    """Keys must be qualified names (case-insensitively); keys and values together must not
    exceed 256 KiB. Each message names the key it is about, as a Kubernetes cause would."""
    errs = [
        f"Invalid value: {_quote(key)}: {msg}"
        for key in annotations
        for msg in _annotation_key_errors(key)
    ]
    total = _annotations_too_long(annotations)
    if total is not None:
        errs.append(f"Too long: {_annotations_size_message(total)}")
    return errs


# ---- object metadata --------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldError:
    """One invalid field, as Kubernetes reports it in a Status's `details.causes`.

    `reason` is the cause type ("FieldValueInvalid", "FieldValueRequired", "FieldValueTooLong");
    `message` is the rule that was broken; `value` is the offending value, when there is one to
    show. `cause()` renders the StatusCause exactly as Kubernetes words it.
    """

    field: str
    reason: str
    message: str
    value: str | None = None

    def body(self) -> str:
        """The cause's message as Kubernetes renders it, e.g.
        'Invalid value: "Foo": a lowercase RFC 1123 subdomain must ...'."""
        head = _TYPE_TEXT.get(self.reason, self.reason)
        if self.reason == _INVALID and self.value is not None:
            head = f"{head}: {_quote(self.value)}"
        return f"{head}: {self.message}" if self.message else head

    def cause(self) -> dict[str, str]:
        """A Kubernetes `StatusCause` object."""
        return {"reason": self.reason, "message": self.body(), "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _string_field(meta: Mapping[str, Any], key: str, errs: list[FieldError]) -> tuple[bool, str]:
    """(well-typed, value): a missing or null field reads as "" (as Go decodes it)."""
    value = meta.get(key)
    if value is None:
        return True, ""
    if not isinstance(value, str):
        errs.append(
            FieldError(f"metadata.{key}", _INVALID, f"must be a string, not {_json_type(value)}")
        )
        return False, ""
    return True, value


def _string_map(meta: Mapping[str, Any], key: str, errs: list[FieldError]) -> dict[str, str] | None:
    """The string entries of a string->string map field; type errors are appended to `errs`."""
    value = meta.get(key)
    if value is None:
        return {}
    path = f"metadata.{key}"
    if not isinstance(value, Mapping):
        errs.append(
            FieldError(
                path,
                _INVALID,
                f"must be an object of strings to strings, not {_json_type(value)}",
            )
        )
        return None
    good: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            errs.append(FieldError(path, _INVALID, f"keys must be strings, not {_json_type(k)}"))
        elif not isinstance(v, str):
            errs.append(
                FieldError(f"{path}[{k}]", _INVALID, f"must be a string, not {_json_type(v)}")
            )
        else:
            good[k] = v
    return good


def object_meta_errors(
    meta: Mapping[str, Any], *, namespaced: bool, name_rule: NameRule
) -> list[FieldError]:
    """The checks of Kubernetes' ValidateObjectMeta that haplane applies, in its order.

    - name: required unless generateName is set; valid by `name_rule`
    - generateName: valid as a prefix by `name_rule` (a trailing '-' is allowed), and, when it
      is what the name will be generated from, so is the name it would generate
    - namespace: required, and a DNS-1123 label, when `namespaced`. For a cluster-scoped kind a
      namespace is ignored (kube-apiserver clears it before validating; callers should too).
    - labels: keys are qualified names, values label values
    - annotations: keys are qualified names (case-insensitively), at most 256 KiB in total
    Values of the wrong JSON type are FieldValueInvalid errors, never exceptions.
    """
    if not isinstance(meta, Mapping):
        return [FieldError("metadata", _INVALID, f"must be an object, not {_json_type(meta)}")]
    errs: list[FieldError] = []

    name_ok, name = _string_field(meta, "name", errs)
    gen_ok, generate_name_prefix = _string_field(meta, "generateName", errs)
    if generate_name_prefix:
        gen_msgs = _name_errors(generate_name_prefix, name_rule, prefix=True)
        if not name and name_ok:
            would_be = _truncate_prefix(generate_name_prefix) + "x" * GENERATED_NAME_RANDOM_LENGTH
            gen_msgs += [
                m for m in _name_errors(would_be, name_rule, prefix=False) if m not in gen_msgs
            ]
        errs.extend(
            FieldError("metadata.generateName", _INVALID, m, generate_name_prefix) for m in gen_msgs
        )
    if name:
        errs.extend(
            FieldError("metadata.name", _INVALID, m, name)
            for m in _name_errors(name, name_rule, prefix=False)
        )
    elif name_ok and gen_ok and not generate_name_prefix:
        errs.append(FieldError("metadata.name", _REQUIRED, "name or generateName is required"))

    if namespaced:
        ns_ok, namespace = _string_field(meta, "namespace", errs)
        if ns_ok and not namespace:
            errs.append(
                FieldError("metadata.namespace", _REQUIRED, "namespace is required for this kind")
            )
        elif namespace:
            errs.extend(
                FieldError("metadata.namespace", _INVALID, m, namespace)
                for m in dns1123_label_errors(namespace)
            )
    else:
        _string_field(meta, "namespace", errs)  # only its type matters here

    labels = _string_map(meta, "labels", errs)
    for key, value in (labels or {}).items():
        errs.extend(FieldError("metadata.labels", _INVALID, m, key) for m in label_key_errors(key))
        errs.extend(
            FieldError("metadata.labels", _INVALID, m, value) for m in label_value_errors(value)
        )

    annotations = _string_map(meta, "annotations", errs)
    if annotations is not None:
        for key in annotations:
            errs.extend(
                FieldError("metadata.annotations", _INVALID, m, key)
                for m in _annotation_key_errors(key)
            )
        total = _annotations_too_long(annotations)
        if total is not None:
            errs.append(
                FieldError("metadata.annotations", _TOO_LONG, _annotations_size_message(total))
            )
    return errs


# ---- generated names --------------------------------------------------------------------------


def _truncate_prefix(prefix: str) -> str:
    return prefix[:MAX_GENERATED_NAME_PREFIX_LENGTH]


def generate_name(prefix: str, rng: random.Random | None = None) -> str:
    """A name from a generateName prefix, as Kubernetes' SimpleNameGenerator makes it: the prefix
    cut to 58 characters, then 5 random characters (so at most 63 in all)."""
    chooser = rng if rng is not None else random.SystemRandom()
    suffix = "".join(
        chooser.choice(GENERATED_NAME_ALPHABET) for _ in range(GENERATED_NAME_RANDOM_LENGTH)
    )
    return _truncate_prefix(prefix) + suffix
