"""Validation ratcheting for custom resources (Kubernetes' CRDValidationRatcheting, GA in 1.33):
on an update, an error about a value the update did not change is not reported, so a CRD's
author may tighten its schema or rules and objects stored under the older ones can still be
updated (`kubectl label`, a status write, any change elsewhere), while a changed value must
satisfy the new ones.

Layer: api. Pure. The walk follows k8s.io/apiserver/pkg/cel/common/equality.go
(CorrelatedObject): a value is paired with its old self ("correlated") through object
properties and map keys; through list items by index, by their keys in an
`x-kubernetes-list-type: map` list, never in a `set` or `atomic` list. An error raised at a
value is ratcheted when the nearest correlated value at or above it is unchanged (deep-equal,
types included: 1 is not 1.0, true is not 1). What never ratchets is the callers' to say
(`crd_schema.validate`, `crd_rules.enforce`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

ABSENT: Final = object()  # no old value to pair with

# (the value, its old self) of the nearest correlated value; None: nothing to pair with
Nearest = tuple[Any, Any] | None


def same(a: Any, b: Any) -> bool:
    """Deep equality as Go's reflect.DeepEqual on decoded JSON: types must match."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def unchanged(nearest: Nearest) -> bool:
    return nearest is not None and same(*nearest)


def old_child(schema: Mapping[str, Any], new: Any, old: Any, key: str | int) -> Any:
    """The old self of `new[key]` (ABSENT when it has none): by property or map key in an
    object, by the list type's rule in a list."""
    if isinstance(key, str):
        if not isinstance(new, dict) or not isinstance(old, dict) or key not in old:
            return ABSENT
        props = schema.get("properties")
        declared = isinstance(props, Mapping) and key in props
        if not declared and not isinstance(schema.get("additionalProperties"), Mapping):
            return ABSENT  # (no schema for the value: Kubernetes does not pair it)
        return old[key]
    if not isinstance(new, list) or not isinstance(old, list) or key >= len(new):
        return ABSENT
    if not isinstance(schema.get("items"), Mapping):
        return ABSENT
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        found = _by_keys(schema.get("x-kubernetes-list-map-keys"), new[key], old)
    elif list_type in ("set", "atomic"):
        found = ABSENT
    else:
        found = old[key] if key < len(old) else ABSENT
    return ABSENT if found is None else found  # a null old item pairs with nothing


def _by_keys(keys: Any, item: Any, old: Sequence[Any]) -> Any:
    if not isinstance(keys, list) or not isinstance(item, dict):
        return ABSENT
    want = tuple(item.get(k) for k in keys)
    for o in old:
        if isinstance(o, dict) and tuple(o.get(k) for k in keys) == want:
            return o
    return ABSENT


def child(schema: Mapping[str, Any], nearest: Nearest, new: Any, key: str | int) -> Nearest:
    """`nearest` one step down, to `new[key]`: that value and its old self when it pairs,
    else the same nearest (nothing below an unpaired value pairs either)."""
    if nearest is None or nearest[0] is not new:
        return nearest  # (`new` itself did not pair: keep its nearest ancestor)
    before = old_child(schema, new, nearest[1], key)
    return nearest if before is ABSENT else (new[key], before)


def along(schema: Mapping[str, Any], new: Any, old: Any, path: Sequence[str | int]) -> Nearest:
    """The nearest value paired with its old self at or above `path` (keys and indexes from
    the root of `new`)."""
    nearest: Nearest = (new, old)
    node: Any = new
    for key in path:
        try:
            below = node[key]
        except (KeyError, IndexError, TypeError):
            return nearest
        nearest = child(schema, nearest, node, key)
        node, schema = below, _schema_of(schema, key)
    return nearest


def _schema_of(schema: Mapping[str, Any], key: str | int) -> Mapping[str, Any]:
    if isinstance(key, int):
        items = schema.get("items")
        return items if isinstance(items, Mapping) else {}
    props = schema.get("properties")
    if isinstance(props, Mapping) and isinstance(props.get(key), Mapping):
        sub: Mapping[str, Any] = props[key]
        return sub
    additional = schema.get("additionalProperties")
    return additional if isinstance(additional, Mapping) else {}
