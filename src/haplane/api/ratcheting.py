"""Validation ratcheting for custom resources (Kubernetes' CRDValidationRatcheting, GA in 1.33):
on an update, an error about a value the update did not change is not reported, so a CRD's
author may tighten its schema or rules and objects stored under the older ones can still be
updated (`kubectl label`, a status write, any change elsewhere), while a changed value must
satisfy the new ones.

Layer: api. Pure. The walk follows k8s.io/apiserver/pkg/cel/common/equality.go
(CorrelatedObject): a value is paired with its old self ("correlated") through object
properties and map keys; through list items by index, by their keys in an
`x-kubernetes-list-type: map` list (one to one: a key repeated pairs its n-th item with the
n-th old one), never in a `set` or `atomic` list. An error raised at a value is ratcheted when
the nearest correlated value at or above it is unchanged (deep-equal, types included: 1 is
not 1.0, true is not 1). What never ratchets is the callers' to say (`crd_schema.validate`,
`crd_rules.enforce`).

Cost: one `Comparison` serves one update (the schema's pass and the rules'): each pair is
compared once and each map list indexed once (Kubernetes' CachedDeepEqual), so N errors
under one unchanged list of N items cost O(N), not O(N^2). The values must not change while
it is in use (it keys on identity).
"""

from __future__ import annotations

import json
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


def item_key(keys: Sequence[str], item: Any) -> str | None:
    """A map list item's identity: its key fields' values (an absent field apart from null,
    types apart: 1 is not true), or None for an item that is no object."""
    if not isinstance(item, dict):
        return None
    return json.dumps([[k in item, item.get(k)] for k in keys], sort_keys=True)


def pair_by_keys(keys: Sequence[str], new: Sequence[Any], old: Sequence[Any]) -> list[Any]:
    """Each item of `new`'s old self in `old` by its keys (ABSENT when none), one to one: the
    n-th item with a key pairs with the n-th old item with it (keys are unique in a valid
    map list; one stored before that was checked must not pair two new items with one)."""
    by_key: dict[str, list[Any]] = {}
    for o in old:
        k = item_key(keys, o)
        if k is not None:
            by_key.setdefault(k, []).append(o)
    taken: dict[str, int] = {}
    paired: list[Any] = []
    for item in new:
        k = item_key(keys, item)
        olds = by_key.get(k, []) if k is not None else []
        n = taken.get(k, 0) if k is not None else 0
        paired.append(olds[n] if n < len(olds) else ABSENT)
        if k is not None:
            taken[k] = n + 1
    return paired


class Comparison:
    """The equality and pairing of one update's values, each worked out once (keyed on the
    values' identity, which it keeps alive); `compared` counts the deep comparisons made."""

    def __init__(self) -> None:
        self._equal: dict[tuple[int, int], bool] = {}
        self._pairs: dict[tuple[int, int], list[Any]] = {}
        self._held: list[Any] = []  # the values keyed on: their ids stay theirs
        self.compared = 0

    def same(self, a: Any, b: Any) -> bool:
        key = (id(a), id(b))
        known = self._equal.get(key)
        if known is None:
            self.compared += 1
            known = self._equal[key] = same(a, b)
            self._held.append((a, b))
        return known

    def unchanged(self, nearest: Nearest) -> bool:
        return nearest is not None and self.same(*nearest)

    def by_keys(self, keys: Sequence[str], new: list[Any], old: list[Any]) -> list[Any]:
        key = (id(new), id(old))
        paired = self._pairs.get(key)
        if paired is None:
            paired = self._pairs[key] = pair_by_keys(keys, new, old)
            self._held.append((new, old))
        return paired

    def old_child(self, schema: Mapping[str, Any], new: Any, old: Any, key: str | int) -> Any:
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
            keys: Any = schema.get("x-kubernetes-list-map-keys")
            found = self.by_keys(keys, new, old)[key] if _names(keys) else ABSENT
        elif list_type in ("set", "atomic"):
            found = ABSENT
        else:
            found = old[key] if key < len(old) else ABSENT
        return ABSENT if found is None else found  # a null old item pairs with nothing

    def child(
        self, schema: Mapping[str, Any], nearest: Nearest, new: Any, key: str | int
    ) -> Nearest:
        """`nearest` one step down, to `new[key]`: that value and its old self when it pairs,
        else the same nearest (nothing below an unpaired value pairs either)."""
        if nearest is None or nearest[0] is not new:
            return nearest  # (`new` itself did not pair: keep its nearest ancestor)
        before = self.old_child(schema, new, nearest[1], key)
        return nearest if before is ABSENT else (new[key], before)

    def along(
        self, schema: Mapping[str, Any], new: Any, old: Any, path: Sequence[str | int]
    ) -> Nearest:
        """The nearest value paired with its old self at or above `path` (keys and indexes
        from the root of `new`)."""
        nearest: Nearest = (new, old)
        node: Any = new
        for key in path:
            try:
                below = node[key]
            except (KeyError, IndexError, TypeError):
                return nearest
            nearest = self.child(schema, nearest, node, key)
            node, schema = below, _schema_of(schema, key)
        return nearest


def _names(keys: Any) -> bool:
    return isinstance(keys, list) and all(isinstance(k, str) for k in keys)


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
