"""Layer: api. Server-side apply and field ownership (`metadata.managedFields`, FieldsV1).

Pure: no I/O, no clock (the caller passes `now`), and the inputs are never mutated (results
share nothing with the arguments).

No maintained Python library implements Kubernetes' structured-merge-diff
(sigs.k8s.io/structured-merge-diff) or the API server's field manager
(k8s.io/apiserver/.../fieldmanager), so both are written here by hand, after those sources.

    apply(live, applied, manager=M, force)       PATCH application/apply-patch+yaml
        A       = fields(applied)                 leaves and list items (no map containers)
        merged  = live <- applied                 maps merge, keyed lists merge by key, set
                                                  lists union, atomic lists are replaced
        merged -= (M's previous Apply set - A)    unless some manager (or A) still owns the
                                                  field or anything inside it
        changed = diff(live, merged)              added | modified
        changed & fields(other manager)  ->  ApplyConflict (409), or with force they lose them
        M's Apply entry = A; every manager loses the removed fields; empty entries go

    update_managed_fields(old, new, manager=M)    create / update / non-apply patch
        every manager loses the changed and removed fields; M's Update entry gains the changed

    fields_v1(obj)                                every field of obj, as FieldsV1

Field sets. A field path is a tuple of FieldsV1 keys from the root: `f:<name>` a map member,
`k:<json>` an item of an associative list (its key fields, compact JSON, names sorted),
`v:<json>` a value of a set list. FieldsV1 nests them; a path that is itself owned has `{}`
(a leaf) or, when something inside it is owned too, a `".": {}` member.

Which paths are owned follows structured-merge-diff:
- Apply entries own what the applied configuration sets: scalar leaves, atomic lists (whole),
  and every item of a keyed/set list (so items carry `"."` next to their fields). Maps are
  never owned as such, so `{"f:data": {"f:a": {}}}` for a ConfigMap applied with `data.a`.
- Update entries own what the write changed: changed leaves, and every map or list item or
  list that the write created (`.` on them). A ConfigMap created by POST with `data.a` gives
  `{"f:data": {".": {}, "f:a": {}}}`, as kube-apiserver writes it; `metadata` itself is never
  owned, and neither are apiVersion, kind and the system-set metadata (name, namespace, uid,
  resourceVersion, generation, creationTimestamp, deletionTimestamp,
  deletionGracePeriodSeconds, selfLink, managedFields).

List semantics come from ListTypes, dotted paths (list items add no component, as in
patch.PatchSchema, which is accepted as is) -> ListType; a list with no entry is atomic.

Deviations from Kubernetes (no Go type schemas here, and a safer prune):
- Prune removes a given-up field only when no manager owns it or anything inside it, keeps
  the key fields of an item that stays, and drops a map or list only when that empties it.
  Kubernetes also drops a whole struct field (e.g. `.spec`) with never-owned fields in it, and
  an item whose own path nobody else owns even if they own fields inside it.
- No atomic maps (x-kubernetes-map-type: atomic) except list items (ListType.atomic_items);
  an object inside a free-form map (labels-like) is not owned as such (`.` in Kubernetes).
- Nulls in an applied configuration are dropped, as decoding into Go types does.
- Not done: reconciling managedFields when a list type changes, the cap of 10 Update entries
  ("ancient-changes"), kubectl's last-applied-configuration migration, subresource reset
  fields (the caller strips e.g. status), server-side defaulting of list keys.
- A new Apply entry gets `now` even when the object did not change; unreadable stored
  managedFields count as empty (Kubernetes fails the apply).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias

from .patch import OBJECT_META_STRATEGIES, ListStrategy, PatchError, PatchSchema

__all__ = [
    "OBJECT_META_LIST_TYPES",
    "ApplyConflict",
    "ListType",
    "ListTypes",
    "apply",
    "fields_v1",
    "list_types_from_openapi",
    "list_types_from_patch_schema",
    "update_managed_fields",
]


# --- list types ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListType:
    """How a list merges and is owned: Kubernetes' x-kubernetes-list-type / -list-map-keys.

    kind "atomic": one value, replaced by apply and owned as a whole (the default).
    kind "set":    scalars, each owned on its own (`v:"value"`); apply takes the union.
    kind "map":    objects identified by their `keys` fields (`k:{"name":"x"}`), merged item by
                   item. `atomic_items`: each item is one value (Go's `+structType=atomic`, e.g.
                   ObjectMeta.ownerReferences): owned and replaced as a whole.
    """

    kind: Literal["atomic", "set", "map"]
    keys: tuple[str, ...] = ()
    atomic_items: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("atomic", "set", "map"):
            raise ValueError(f"unknown list type {self.kind!r}")
        if (self.kind == "map") != bool(self.keys):
            raise ValueError("a map list needs key fields, and only a map list has them")
        if self.atomic_items and self.kind != "map":
            raise ValueError("atomic_items applies only to a map list")

    @classmethod
    def associative(cls, *keys: str, atomic_items: bool = False) -> ListType:
        return cls("map", tuple(keys), atomic_items)

    @classmethod
    def set(cls) -> ListType:
        return cls("set")

    @classmethod
    def atomic(cls) -> ListType:
        return cls("atomic")


# Dotted field path -> list type; a PatchSchema (ListStrategy values) is accepted too.
ListTypes: TypeAlias = Mapping[str, "ListType | ListStrategy"]

_ATOMIC: Final = ListType("atomic")

# ObjectMeta's OwnerReference is `+structType=atomic`: kube-apiserver owns each reference as
# one leaf, `k:{"uid":"..."}: {}`.
_ATOMIC_ITEM_LISTS: Final = frozenset({"metadata.ownerReferences"})


def list_types_from_patch_schema(schema: PatchSchema) -> dict[str, ListType]:
    """The list types of a built-in kind, from its strategic-merge PatchSchema.

    ListStrategy(key) -> a map list keyed by `key`; ListStrategy(None) -> a set list;
    metadata.ownerReferences items are atomic (see _ATOMIC_ITEM_LISTS).
    """
    return {path: _from_strategy(path, strategy) for path, strategy in schema.items()}


def _from_strategy(path: str, strategy: ListStrategy) -> ListType:
    if strategy.merge_key is None:
        return ListType.set()
    return ListType.associative(strategy.merge_key, atomic_items=path in _ATOMIC_ITEM_LISTS)


OBJECT_META_LIST_TYPES: Final[dict[str, ListType]] = list_types_from_patch_schema(
    OBJECT_META_STRATEGIES
)


def list_types_from_openapi(schema: Mapping[str, Any]) -> dict[str, ListType]:
    """The list types of a custom resource, from a CRD version's openAPIV3Schema.

    Arrays with `x-kubernetes-list-type: map` (keys from `x-kubernetes-list-map-keys`; items
    with `x-kubernetes-map-type: atomic` are atomic) or `set`; every other array is atomic, as
    in Kubernetes. Only `properties` and `items` are followed (not additionalProperties, whose
    keys are not known in advance). CRD schemas do not describe metadata: combine with
    OBJECT_META_LIST_TYPES, e.g. `{**OBJECT_META_LIST_TYPES, **list_types_from_openapi(s)}`.
    """
    found: dict[str, ListType] = {}

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, Mapping):
            return
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            for name, sub in properties.items():
                walk(sub, _join(path, str(name)))
        items = node.get("items")
        if node.get("type") == "array" or isinstance(items, Mapping):
            kind = node.get("x-kubernetes-list-type")
            keys = node.get("x-kubernetes-list-map-keys")
            if kind == "map" and isinstance(keys, list) and keys:
                atomic = isinstance(items, Mapping) and items.get("x-kubernetes-map-type") == (
                    "atomic"
                )
                found[path] = ListType.associative(*map(str, keys), atomic_items=atomic)
            elif kind == "set":
                found[path] = ListType.set()
            walk(items, path)  # list items add no path component

    walk(schema, "")
    return found


def _normalized(list_types: ListTypes) -> dict[str, ListType]:
    result: dict[str, ListType] = {}
    for path, entry in list_types.items():
        if isinstance(entry, ListType):
            result[path] = entry
        elif isinstance(entry, ListStrategy):
            result[path] = _from_strategy(path, entry)
        else:
            raise TypeError(f"{path}: expected a ListType or ListStrategy, got {entry!r}")
    return result


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --- errors -------------------------------------------------------------------------------------


class ApplyConflict(PatchError):
    """An apply that would change fields other managers own (HTTP 409, reason Conflict).

    conflicts: (manager, field) pairs, the field readable as Kubernetes prints it
    (".data.a", ".spec.ports[name=\"http\",protocol=\"TCP\"].port").
    causes: the matching Kubernetes StatusCauses ({"type": "FieldManagerConflict", "message":
    'conflict with "kubectl" using v1', "field": ".data.a"}) for the Status details.
    """

    def __init__(
        self, message: str, conflicts: list[tuple[str, str]], causes: list[dict[str, str]]
    ) -> None:
        super().__init__(message, 409)
        self.conflicts = conflicts
        self.causes = causes


# --- field paths --------------------------------------------------------------------------------

FieldPath: TypeAlias = tuple[str, ...]

_ABSENT: Final[Any] = object()  # a member that is not there, as opposed to JSON null


def _go_json(value: Any) -> str:
    """Compact JSON with sorted keys, escaped like Go's encoding/json (what FieldsV1 keys use)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def _key_element(item: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    return "k:" + _go_json({key: item[key] for key in keys})


def _value_element(value: Any) -> str:
    return "v:" + _go_json(value)


def _value_order(value: Any) -> tuple[Any, ...]:
    """structured-merge-diff's total order of values: numbers, strings, bools, lists, maps, null."""
    if isinstance(value, bool):
        return (2, value)
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, list):
        return (3, tuple(_value_order(v) for v in value))
    if isinstance(value, dict):
        return (4, tuple(sorted((k, _value_order(v)) for k, v in value.items())))
    return (5,)


@lru_cache(maxsize=8192)
def _element_order(element: str) -> tuple[Any, ...]:
    """Order of path elements as Kubernetes writes them: fields, then keys, values, indexes."""
    kind, text = element[:2], element[2:]
    try:
        if kind == "f:":
            return (0, text)
        if kind == "k:":
            fields = json.loads(text)
            return (1, tuple((name, _value_order(fields[name])) for name in sorted(fields)))
        if kind == "v:":
            return (2, _value_order(json.loads(text)))
        if kind == "i:":
            return (3, int(text))
    except (ValueError, TypeError, AttributeError):
        pass
    return (4, element)


def _path_order(path: FieldPath) -> tuple[tuple[Any, ...], ...]:
    return tuple(_element_order(element) for element in path)


def _readable_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _readable(path: FieldPath) -> str:
    """A path as structured-merge-diff prints it: .spec.ports[name="http"].port, [="value"]."""
    parts: list[str] = []
    for element in path:
        kind, text = element[:2], element[2:]
        if kind == "f:":
            parts.append("." + text)
            continue
        try:
            decoded = json.loads(text)
        except ValueError:
            parts.append(f"[{text}]")
            continue
        if kind == "k:" and isinstance(decoded, dict):
            keys = ",".join(f"{k}={_readable_value(v)}" for k, v in sorted(decoded.items()))
            parts.append(f"[{keys}]")
        elif kind == "v:":
            parts.append(f"[={_readable_value(decoded)}]")
        else:
            parts.append(f"[{text}]")
    return "".join(parts)


# --- FieldsV1 -----------------------------------------------------------------------------------


def _encode_fields(paths: Iterable[FieldPath]) -> dict[str, Any]:
    """A set of paths as FieldsV1: nested keys, `{}` for an owned leaf, `"."` for an owned
    path that has owned paths inside it; members in Kubernetes' order."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for element in path:
            node = node.setdefault(element, {})
        node["."] = {}

    def emit(node: dict[str, Any]) -> dict[str, Any]:
        children = sorted((k for k in node if k != "."), key=_element_order)
        out: dict[str, Any] = {}
        if "." in node and children:
            out["."] = {}
        for child in children:
            out[child] = emit(node[child])
        return out

    return emit(tree)


def _decode_fields(fields: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    """FieldsV1 -> set of paths; ValueError when it is not FieldsV1."""
    if not isinstance(fields, dict):
        raise ValueError(f"FieldsV1 must be an object, got {fields!r}")
    paths: set[FieldPath] = set()
    for key, sub in fields.items():
        if key == ".":
            if sub != {} or not prefix:
                raise ValueError('a FieldsV1 "." member must be {} and inside a field')
            paths.add(prefix)
            continue
        if not isinstance(key, str) or key[:2] not in ("f:", "k:", "v:", "i:"):
            raise ValueError(f"not a FieldsV1 key: {key!r}")
        if not isinstance(sub, dict):
            raise ValueError(f"FieldsV1 {key!r} must map to an object")
        path = (*prefix, key)
        if sub:
            paths |= _decode_fields(sub, path)
        else:
            paths.add(path)
    return paths


# --- the object as owned fields -----------------------------------------------------------------

_UNOWNED_ROOT: Final = frozenset({"apiVersion", "kind"})
# kube-apiserver's stripMeta set, plus the deletion fields that only the server sets.
_UNOWNED_METADATA: Final = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    }
)
_METADATA_PATH: Final[FieldPath] = ("f:metadata",)


def _owned_view(obj: Any) -> dict[str, Any]:
    """The object less the fields nobody owns (shallow: the walkers below only read it)."""
    if not isinstance(obj, dict):
        return {}
    view = {k: v for k, v in obj.items() if k not in _UNOWNED_ROOT}
    metadata = view.get("metadata")
    if isinstance(metadata, dict):
        view["metadata"] = {k: v for k, v in metadata.items() if k not in _UNOWNED_METADATA}
    return view


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, 1 is 1.0 (as structured-merge-diff compares)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(_equal(value, b[key]) for key, value in a.items())
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and bool(a == b)


def _index(items: list[Any], list_type: ListType, where: FieldPath | None) -> dict[str, Any] | None:
    """The items of a set or map list by their path element, in list order.

    `where` set: the list comes from an applied configuration, and an item without its keys or
    a duplicate is an error (422). Unset: a stored list that cannot be keyed that way is
    treated as atomic (None), so odd stored data never breaks a write.
    """
    indexed: dict[str, Any] = {}
    for item in items:
        if list_type.kind == "set":
            element = _value_element(item)
        elif isinstance(item, dict) and all(item.get(k) is not None for k in list_type.keys):
            element = _key_element(item, list_type.keys)
        elif where is None:
            return None
        else:
            raise PatchError(
                f"{_readable(where) or '<root>'}: associative list with keys "
                f"{list(list_type.keys)} has an element that omits a key field: {item!r}",
                422,
            )
        if element in indexed:
            if where is None:
                return None
            raise PatchError(
                f"{_readable(where)}: duplicate entries for key {_readable((element,))}", 422
            )
        indexed[element] = item
    return indexed


def _applied_fields(config: dict[str, Any], types: Mapping[str, ListType]) -> set[FieldPath]:
    """What applying `config` owns: leaves, atomic lists and list items (not maps)."""
    owned: set[FieldPath] = set()

    def walk(value: Any, path: FieldPath, schema_path: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, (*path, f"f:{key}"), _join(schema_path, key))
        elif isinstance(value, list) and types.get(schema_path, _ATOMIC).kind != "atomic":
            list_type = types[schema_path]
            items = _index(value, list_type, path)
            assert items is not None  # strict indexing raises instead
            for element, item in items.items():
                owned.add((*path, element))
                if list_type.kind == "map" and not list_type.atomic_items:
                    walk(item, (*path, element), schema_path)
        elif path:
            owned.add(path)

    walk(config, (), "")
    return owned


@dataclass
class _Diff:
    added: set[FieldPath] = field(default_factory=set)
    modified: set[FieldPath] = field(default_factory=set)
    removed: set[FieldPath] = field(default_factory=set)


def _compare(lhs: Any, rhs: Any, types: Mapping[str, ListType]) -> _Diff:
    """structured-merge-diff's Compare: leaves (scalars, atomic lists, empty containers) are
    added, removed or modified; maps, keyed/set lists and their items only added or removed."""
    diff = _Diff()

    def leaf(left: Any, right: Any, path: FieldPath) -> None:
        if left is _ABSENT:
            diff.added.add(path)
        elif right is _ABSENT:
            diff.removed.add(path)
        elif not _equal(left, right):
            diff.modified.add(path)

    def container(left: Any, right: Any, path: FieldPath) -> None:
        if left is _ABSENT:
            diff.added.add(path)
        elif right is _ABSENT:
            diff.removed.add(path)

    def shape(value: Any) -> str:
        if value is _ABSENT:
            return "absent"
        return "map" if isinstance(value, dict) else "list" if isinstance(value, list) else "-"

    def walk(left: Any, right: Any, path: FieldPath, schema_path: str) -> None:
        lshape, rshape = shape(left), shape(right)
        if "absent" not in (lshape, rshape) and lshape != rshape:
            # A change of type: the field is modified, whatever was inside either side went or
            # came.
            walk(left, _ABSENT, path, schema_path)
            walk(_ABSENT, right, path, schema_path)
            diff.added.discard(path)
            diff.removed.discard(path)
            diff.modified.add(path)
            return
        if "map" in (lshape, rshape):
            lmap = left if lshape == "map" else {}
            rmap = right if rshape == "map" else {}
            if not lmap and not rmap:
                leaf(left, right, path)
                return
            for key in {**lmap, **rmap}:
                walk(
                    lmap.get(key, _ABSENT),
                    rmap.get(key, _ABSENT),
                    (*path, f"f:{key}"),
                    _join(schema_path, key),
                )
            if path:
                container(left, right, path)
            return
        if "list" in (lshape, rshape):
            list_type = types.get(schema_path, _ATOMIC)
            llist = left if lshape == "list" else []
            rlist = right if rshape == "list" else []
            lidx = _index(llist, list_type, None) if list_type.kind != "atomic" else None
            ridx = _index(rlist, list_type, None) if list_type.kind != "atomic" else None
            if (not llist and not rlist) or lidx is None or ridx is None:
                leaf(left, right, path)
                return
            items_are_leaves = list_type.kind == "set" or list_type.atomic_items
            for element in {**lidx, **ridx}:
                litem, ritem = lidx.get(element, _ABSENT), ridx.get(element, _ABSENT)
                if items_are_leaves:
                    leaf(litem, ritem, (*path, element))
                else:
                    walk(litem, ritem, (*path, element), schema_path)
            container(left, right, path)
            return
        leaf(left, right, path)

    walk(lhs, rhs, (), "")
    for found in (diff.added, diff.modified, diff.removed):
        found.discard(_METADATA_PATH)
    return diff


def _added_paths(view: dict[str, Any], types: Mapping[str, ListType]) -> set[FieldPath]:
    """`_compare({}, view, types).added`, for what every create asks: one walk of `view`
    without a left side to compare with (the general walk showed at ~5% of a create)."""
    added: set[FieldPath] = set()

    def walk(value: Any, path: FieldPath, schema_path: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, (*path, f"f:{key}"), _join(schema_path, key))
        elif isinstance(value, list) and value:
            list_type = types.get(schema_path, _ATOMIC)
            items = _index(value, list_type, None) if list_type.kind != "atomic" else None
            if items is not None:
                leaves = list_type.kind == "set" or list_type.atomic_items
                for element, item in items.items():
                    if leaves:
                        added.add((*path, element))
                    else:
                        walk(item, (*path, element), schema_path)
        added.add(path)  # a leaf, or a container with fields inside

    for key, child in view.items():
        walk(child, (f"f:{key}",), key)
    added.discard(_METADATA_PATH)
    return added


# --- merge and prune ----------------------------------------------------------------------------


def _merge(live: Any, config: Any, schema_path: str, types: Mapping[str, ListType]) -> Any:
    """structured-merge-diff's Merge (the config wins) on private copies: maps merge, keyed and
    set lists merge item by item in Kubernetes' order, everything else is replaced."""
    if isinstance(config, dict):
        if not isinstance(live, dict):
            return copy.deepcopy(config)
        merged = {
            key: (
                _merge(value, config[key], _join(schema_path, key), types)
                if key in config
                else copy.deepcopy(value)
            )
            for key, value in live.items()
        }
        for key, value in config.items():
            if key not in live:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(config, list):
        list_type = types.get(schema_path, _ATOMIC)
        if list_type.kind == "atomic" or not isinstance(live, list):
            return copy.deepcopy(config)
        lidx = _index(live, list_type, None)
        ridx = _index(config, list_type, None)
        if lidx is None or ridx is None:
            return copy.deepcopy(config)
        merge_items = list_type.kind == "map" and not list_type.atomic_items
        result: list[Any] = []
        for element in _merged_order(list(lidx), list(ridx)):
            if element not in ridx:
                result.append(copy.deepcopy(lidx[element]))
            elif merge_items and element in lidx:
                result.append(_merge(lidx[element], ridx[element], schema_path, types))
            else:
                result.append(copy.deepcopy(ridx[element]))
        return result
    return copy.deepcopy(config)


def _merged_order(lhs: list[str], rhs: list[str]) -> list[str]:
    """The order of a merged list, as structured-merge-diff's mergingWalker.visitListItems.

    The applied items keep their order; a live-only item stays where it was relative to the
    items around it in the live list.
    """
    in_rhs, in_lhs = set(rhs), set(lhs)
    shared = [element for element in rhs if element in in_lhs]
    next_shared = 0  # index into `shared` of the next shared item to place
    placed: set[str] = set()
    order: list[str] = []
    li = ri = 0
    while li < len(lhs) or ri < len(rhs):
        if li < len(lhs) and ri < len(rhs):
            element = lhs[li]
            if element == rhs[ri]:
                order.append(element)
                placed.add(element)
                li, ri, next_shared = li + 1, ri + 1, next_shared + 1
                continue
            if element in in_rhs and next_shared < len(shared) and shared[next_shared] != element:
                li += 1  # a shared item, but not the one to place now
                continue
        if li < len(lhs):
            element = lhs[li]
            if element not in in_rhs:
                order.append(element)
                li += 1
                continue
            if element in placed:
                li += 1
                continue
        if ri < len(rhs):
            element = rhs[ri]
            order.append(element)
            placed.add(element)
            ri += 1
            if next_shared < len(shared) and shared[next_shared] == element:
                next_shared += 1
        else:
            li += 1  # cannot happen (every applied item is placed by now); ensures progress
    return order


def _key_names(element: str) -> frozenset[str]:
    if not element.startswith("k:"):
        return frozenset()
    try:
        decoded = json.loads(element[2:])
    except ValueError:
        return frozenset()
    return frozenset(decoded) if isinstance(decoded, dict) else frozenset()


def _find_item(items: list[Any], element: str) -> int | None:
    try:
        wanted = json.loads(element[2:])
    except ValueError:
        return None
    for index, item in enumerate(items):
        if element.startswith("v:") and _equal(item, wanted):
            return index
        if (
            element.startswith("k:")
            and isinstance(item, dict)
            and isinstance(wanted, dict)
            and all(k in item and _equal(item[k], v) for k, v in wanted.items())
        ):
            return index
    return None


def _prune(obj: dict[str, Any], disowned: set[FieldPath], owned: set[FieldPath]) -> None:
    """Remove (in place) each disowned path unless some owned path is it or lies inside it.

    The key fields of a list item that stays are kept. A map or list this empties goes too,
    unless it is itself owned (e.g. the `.` of a map an updater created).
    """
    protected = {path[:n] for path in owned for n in range(1, len(path) + 1)}
    for path in sorted(disowned - protected, key=_path_order):
        if len(path) >= 2 and path[-1].startswith("f:") and path[-1][2:] in _key_names(path[-2]):
            continue
        _remove(obj, path, owned)


def _remove(root: dict[str, Any], path: FieldPath, owned: set[FieldPath]) -> None:
    chain: list[tuple[Any, Any]] = []  # (container, member) from the root down
    node: Any = root
    for element in path:
        location: Any
        if isinstance(node, dict) and element.startswith("f:") and element[2:] in node:
            location = element[2:]
        elif isinstance(node, list) and element[:2] in ("k:", "v:"):
            location = _find_item(node, element)
            if location is None:
                return
        else:
            return  # already gone (e.g. with its list item)
        chain.append((node, location))
        node = node[location]
    container, location = chain[-1]
    del container[location]
    for depth in range(len(chain) - 1, 0, -1):
        container, _ = chain[depth]
        if container or path[:depth] in owned or path[:depth] == _METADATA_PATH:
            break
        parent, location = chain[depth - 1]
        del parent[location]


def _without_nulls(value: Any) -> Any:
    """An applied configuration less its null members (as decoding into Go types drops them)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


# --- managedFields entries ----------------------------------------------------------------------

_Identity: TypeAlias = tuple[str, str, str, str]


@dataclass
class _Manager:
    manager: str
    operation: str  # "Apply" | "Update"
    api_version: str
    subresource: str
    time: str | None
    fields: set[FieldPath]

    @property
    def identity(self) -> _Identity:
        # As kube-apiserver's BuildManagerIdentifier: an applier is one manager whatever the
        # apiVersion it applies with; an updater is one per apiVersion.
        version = "" if self.operation == "Apply" else self.api_version
        return (self.manager, self.operation, version, self.subresource)

    def who(self) -> str:
        """How a conflict names the manager (kube-apiserver's printManager)."""
        text = json.dumps(self.manager, ensure_ascii=False)
        if self.subresource:
            text += f" with subresource {json.dumps(self.subresource, ensure_ascii=False)}"
        if self.operation == "Update":
            text += f" using {self.api_version}"
        return text


def _decode_managers(entries: Any) -> dict[_Identity, _Manager] | None:
    """managedFields -> managers by identity; None when it is not a valid managedFields."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        return None
    managers: dict[_Identity, _Manager] = {}
    try:
        for entry in entries:
            if not isinstance(entry, dict):
                return None
            manager, operation = entry.get("manager", ""), entry.get("operation")
            api_version, subresource = entry.get("apiVersion", ""), entry.get("subresource", "")
            time, fields_type = entry.get("time"), entry.get("fieldsType", "FieldsV1")
            if (
                not isinstance(manager, str)
                or operation not in ("Apply", "Update")
                or not isinstance(api_version, str)
                or not isinstance(subresource, str)
                or not (time is None or isinstance(time, str))
                or fields_type != "FieldsV1"
            ):
                return None
            fields = _decode_fields(entry.get("fieldsV1") or {})
            decoded = _Manager(manager, operation, api_version, subresource, time, fields)
            if decoded.identity in managers:  # the same manager twice: keep both halves
                managers[decoded.identity].fields |= fields
            else:
                managers[decoded.identity] = decoded
    except ValueError:
        return None
    return managers


@lru_cache(maxsize=1024)
def _seconds(time: str | None) -> int:
    if not time:
        return 0
    try:
        return int(datetime.fromisoformat(time.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _encode_managers(managers: Iterable[_Manager]) -> list[dict[str, Any]]:
    """managedFields as kube-apiserver writes it: no empty entry; Apply entries before Update
    ones, then oldest first, then by manager, apiVersion and subresource."""
    kept = [m for m in managers if m.fields]
    if len(kept) > 1:
        kept.sort(
            key=lambda m: (m.operation, _seconds(m.time), m.manager, m.api_version, m.subresource)
        )
    entries: list[dict[str, Any]] = []
    for m in kept:
        entry: dict[str, Any] = {"manager": m.manager, "operation": m.operation}
        if m.api_version:
            entry["apiVersion"] = m.api_version
        if m.time is not None:
            entry["time"] = m.time
        entry["fieldsType"] = "FieldsV1"
        entry["fieldsV1"] = _encode_fields(m.fields)
        if m.subresource:
            entry["subresource"] = m.subresource
        entries.append(entry)
    return entries


def _conflict_error(
    conflicts: dict[_Identity, set[FieldPath]], managers: dict[_Identity, _Manager]
) -> ApplyConflict:
    ordered = sorted(conflicts, key=lambda ident: managers[ident].who())
    pairs: list[tuple[str, str]] = []
    causes: list[dict[str, str]] = []
    lines: list[str] = []
    for ident in ordered:
        who = managers[ident].who()
        lines.append(f"conflicts with {who}:")
        for path in sorted(conflicts[ident], key=_path_order):
            readable = _readable(path)
            pairs.append((managers[ident].manager, readable))
            causes.append(
                {
                    "type": "FieldManagerConflict",
                    "message": f"conflict with {who}",
                    "field": readable,
                }
            )
            lines.append(f"- {readable}")
    if len(pairs) == 1:
        message = f"Apply failed with 1 conflict: {causes[0]['message']}: {pairs[0][1]}"
    else:
        message = f"Apply failed with {len(pairs)} conflicts: " + "\n".join(lines)
    return ApplyConflict(message, pairs, causes)


# --- the operations -----------------------------------------------------------------------------


def _check_applied(live: dict[str, Any] | None, applied: Any, api_version: str) -> None:
    if not isinstance(applied, dict):
        raise PatchError("an apply patch must be an object", 400)
    metadata = applied.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise PatchError("metadata of an apply patch must be an object", 400)
    if isinstance(metadata, dict) and metadata.get("managedFields") is not None:
        raise PatchError("metadata.managedFields must be nil", 400)
    version = applied.get("apiVersion")
    if version is not None and version != api_version:
        raise PatchError(
            "Incorrect version specified in apply patch. "
            f"Specified patch version: {version}, expected: {api_version}",
            400,
        )
    kind = applied.get("kind")
    if live is not None and kind is not None and live.get("kind") not in (None, kind):
        raise PatchError(
            f"Incorrect kind specified in apply patch: {kind}, expected: {live.get('kind')}", 400
        )


def apply(
    live: dict[str, Any] | None,
    applied: dict[str, Any],
    *,
    manager: str,
    api_version: str,
    force: bool,
    list_types: ListTypes,
    now: str,
) -> dict[str, Any]:
    """Server-side apply `applied` (the request body, decoded) by `manager` to `live`.

    live None: the object does not exist yet (apply creates it). Returns the new object with
    its metadata.managedFields; on a no-op it equals `live` (the applier's entry keeps its
    time), so the caller may skip the write. api_version: the request's group/version, stored
    in the entry. now: RFC 3339, the time of the entry when this apply changes the object.

    Raises ApplyConflict (409) when the apply changes fields other managers own and not
    force; PatchError 400 for a body that is not an apply configuration (not an object, with
    managedFields, another apiVersion or kind), 422 for a keyed list item without its keys
    or a duplicate item. Stored managedFields that cannot be read count as empty.
    """
    types = _normalized(list_types)
    _check_applied(live, applied, api_version)
    config: dict[str, Any] = _without_nulls(applied)
    base: dict[str, Any] = copy.deepcopy(live) if live is not None else {}
    base_metadata = base.get("metadata")
    stored = base_metadata.pop("managedFields", None) if isinstance(base_metadata, dict) else None
    managers = _decode_managers(stored) or {}

    owned = _applied_fields(_owned_view(config), types)
    merged: dict[str, Any] = _merge(base, config, "", types)
    me = _Manager(manager, "Apply", api_version, "", now, owned)
    previous = managers.pop(me.identity, None)
    if previous is not None:
        keep = owned.union(*(m.fields for m in managers.values()))
        _prune(merged, previous.fields - owned, keep)

    diff = _compare(_owned_view(base), _owned_view(merged), types)
    changed = diff.added | diff.modified
    conflicts = {ident: m.fields & changed for ident, m in managers.items() if m.fields & changed}
    if conflicts and not force:
        raise _conflict_error(conflicts, managers)
    for m in managers.values():
        m.fields -= changed | diff.removed  # forced away, or gone from the object
    if previous is not None and _equal(base, merged):
        me.time = previous.time
    managers[me.identity] = me

    entries = _encode_managers(managers.values())
    metadata = merged.setdefault("metadata", {})
    if not isinstance(metadata, dict):  # only when live had a broken metadata and config none
        return merged
    if entries:
        metadata["managedFields"] = entries
    else:
        metadata.pop("managedFields", None)
    return merged


def update_managed_fields(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    manager: str,
    api_version: str,
    list_types: ListTypes,
    now: str,
) -> list[dict[str, Any]]:
    """The managedFields of `new`, written by `manager` over `old` (None on create).

    For every write but apply (create, update, JSON/merge/strategic patch). The manager's
    Update entry for `api_version` gains every field the write added or changed (on create:
    all of them) and takes `now` as its time; other managers lose those fields, and every
    manager loses the fields the write removed; empty entries are dropped. The caller stores
    the result as new.metadata.managedFields (or omits the member when it is empty); the
    default manager name (from the User-Agent) is the caller's to derive.

    As kube-apiserver: managedFields written in `new` itself are the starting point (clients
    may edit them); `[]` or `[{}]` there reset them; absent or unreadable, those of `old` are
    used (unreadable ones of `old` count as empty).
    """
    types = _normalized(list_types)
    new_metadata = new.get("metadata")
    supplied = new_metadata.get("managedFields") if isinstance(new_metadata, dict) else None
    if old is None and supplied is None:  # a plain create: the manager owns every field
        owned = _added_paths(_owned_view(new), types)
        return _encode_managers([_Manager(manager, "Update", api_version, "", now, owned)])
    managers: dict[_Identity, _Manager] | None
    if supplied == [] or supplied == [{}]:
        managers = {}
    else:
        managers = _decode_managers(supplied) if supplied is not None else None
        if not managers:
            old_metadata = old.get("metadata") if old is not None else None
            stored = old_metadata.get("managedFields") if isinstance(old_metadata, dict) else None
            managers = _decode_managers(stored) or {}

    diff = _compare(_owned_view(old), _owned_view(new), types)
    changed = diff.added | diff.modified
    for m in managers.values():
        m.fields -= changed | diff.removed
    if changed:
        me = _Manager(manager, "Update", api_version, "", now, set(changed))
        previous = managers.get(me.identity)
        if previous is not None:
            me.fields |= previous.fields
        managers[me.identity] = me
    return _encode_managers(managers.values())


def fields_v1(obj: Mapping[str, Any], list_types: ListTypes) -> dict[str, Any]:
    """Every owned field of `obj` as FieldsV1: what an Update that created `obj` owns.

    Leaves, list items and lists, and maps (`"."` on the ones with fields inside); never
    apiVersion, kind, metadata itself or the system-set metadata fields.
    """
    diff = _compare({}, _owned_view(dict(obj)), _normalized(list_types))
    return _encode_fields(diff.added)
