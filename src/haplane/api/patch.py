"""Layer: api. The three Kubernetes PATCH flavours, applied to JSON-like Python data.

Pure: no I/O, no clock, and the inputs are never mutated (every function works on deep copies,
so the result shares nothing with its arguments).

    apply_merge_patch(original, patch)       RFC 7386 JSON merge patch
                                             (application/merge-patch+json)
    apply_json_patch(original, patch)        RFC 6902 JSON patch (application/json-patch+json)
    apply_strategic_merge_patch(original, patch, schema)
                                             Kubernetes strategic merge patch
                                             (application/strategic-merge-patch+json)

Every failure is a PatchError carrying the HTTP status the API server answers with: 400 for a
malformed patch (wrong shape, a directive whose value has the wrong type), 422 for a well-formed
patch that cannot apply (a failed JSON-patch `test`, a missing path, an unknown or invalid
strategic-merge directive, a merge-keyed list item without its key).

Strategic merge patch has no maintained Python implementation, so it is written here by hand
after apimachinery's pkg/util/strategicpatch (MergeOptions{MergeParallelList: true,
IgnoreUnmatchedNulls: true}, what the API server uses). Which lists merge rather than replace
comes from a PatchSchema: the Go struct tags `patchStrategy:"merge"` / `patchMergeKey`, written
out per kind in STRATEGIC_SCHEMAS.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

# Recent jsonpatch releases ship stubs, 1.33 does not: the ignore covers both.
import jsonpatch  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "OBJECT_META_STRATEGIES",
    "STRATEGIC_SCHEMAS",
    "ListStrategy",
    "PatchError",
    "PatchSchema",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
]


class PatchError(Exception):
    """A patch that is malformed or cannot apply.

    code: HTTP status the API server should answer (400 malformed patch, 422 a patch that cannot
    apply, e.g. a failed JSON-patch `test`, a path that does not exist, or a strategic-merge
    directive that is invalid).
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- RFC 7386 JSON merge patch ------------------------------------------------------------------


def apply_merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes a key, any other value replaces."""
    return _merge_patch(copy.deepcopy(original), patch)


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


# --- RFC 6902 JSON patch ------------------------------------------------------------------------

# The members each operation needs besides `op` and `path`.
_JSON_PATCH_OPS: Final[dict[str, tuple[str, ...]]] = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}


def apply_json_patch(original: Any, patch: Any) -> Any:
    """RFC 6902: apply the operations in order; the first one that fails fails the whole patch."""
    operations = _validated_json_patch(patch)
    document = copy.deepcopy(original)
    for index, operation in enumerate(operations):
        where = f"operation {index} ({operation['op']} {operation['path']!r})"
        try:
            # One operation at a time, so that an error can name the operation that failed.
            document = jsonpatch.JsonPatch([copy.deepcopy(operation)]).apply(
                document, in_place=True
            )
        except jsonpatch.JsonPatchTestFailed as exc:
            raise PatchError(f"json patch {where}: test failed: {exc}", 422) from exc
        except jsonpatch.InvalidJsonPatch as exc:
            raise PatchError(f"json patch {where}: invalid operation: {exc}", 400) from exc
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            # Conflicts (a missing path, a move into its own child) and pointers that do not
            # resolve in this document: the patch is well formed but cannot apply here.
            raise PatchError(f"json patch {where}: cannot apply: {exc}", 422) from exc
        except (TypeError, KeyError, IndexError) as exc:
            # A pointer that walks into a scalar (e.g. /name/x where name is a string) can
            # surface as a plain Python error from the library.
            raise PatchError(f"json patch {where}: cannot apply: {exc!r}", 422) from exc
    return document


def _validated_json_patch(patch: Any) -> list[dict[str, Any]]:
    """Check the patch's shape up front, so that shape errors are 400 and apply errors 422."""
    if not isinstance(patch, list):
        raise PatchError("a json patch must be a JSON array of operations", 400)
    for index, operation in enumerate(patch):
        if not isinstance(operation, dict):
            raise PatchError(f"json patch operation {index} is not a JSON object", 400)
        op = operation.get("op")
        if not isinstance(op, str) or op not in _JSON_PATCH_OPS:
            raise PatchError(
                f"json patch operation {index}: 'op' must be one of "
                f"{', '.join(_JSON_PATCH_OPS)}, got {op!r}",
                400,
            )
        for member in ("path", *_JSON_PATCH_OPS[op]):
            if member not in operation:
                raise PatchError(f"json patch operation {index} ({op}) lacks {member!r}", 400)
            if member != "value":
                _check_pointer(operation[member], index, member)
    return patch


def _check_pointer(pointer: Any, index: int, member: str) -> None:
    if not isinstance(pointer, str):
        raise PatchError(f"json patch operation {index}: {member!r} must be a string", 400)
    try:
        jsonpatch.JsonPointer(pointer)
    except jsonpatch.JsonPointerException as exc:
        raise PatchError(
            f"json patch operation {index}: {member!r} {pointer!r} is not a JSON pointer: {exc}",
            400,
        ) from exc


# --- Kubernetes strategic merge patch: schemas --------------------------------------------------


@dataclass(frozen=True)
class ListStrategy:
    """A list with patchStrategy "merge".

    merge_key: the patchMergeKey (items are objects merged by that member), or None for a list
    of primitives merged as a set.
    """

    merge_key: str | None


# Keyed by dotted field path from the object root, e.g. "metadata.ownerReferences"; list items do
# not add path components ("spec.containers.ports" is the `ports` list inside each element of
# `spec.containers`). A list whose path is absent is replaced wholesale by a patch.
PatchSchema: TypeAlias = Mapping[str, ListStrategy]

# From k8s.io/apimachinery/pkg/apis/meta/v1 ObjectMeta: OwnerReferences has
# `patchStrategy:"merge" patchMergeKey:"uid"`, Finalizers `patchStrategy:"merge"`;
# managedFields has no strategy.
OBJECT_META_STRATEGIES: Final[dict[str, ListStrategy]] = {
    "metadata.ownerReferences": ListStrategy("uid"),
    "metadata.finalizers": ListStrategy(None),
}

# The merge lists of each built-in kind, from the Go struct tags in k8s.io/api (core/v1 and
# coordination/v1 types.go), checked against those sources:
# - Namespace: NamespaceStatus.Conditions is `patchStrategy:"merge" patchMergeKey:"type"`;
#   NamespaceSpec.Finalizers has no patch strategy, so it is replaced.
# - ServiceAccount: Secrets is `patchStrategy:"merge" patchMergeKey:"name"`; ImagePullSecrets has
#   no strategy.
# - ConfigMap and Secret have only maps (data, binaryData, stringData); Event (core/v1) and Lease
#   (coordination.k8s.io/v1) have no list with a patch strategy.
STRATEGIC_SCHEMAS: Final[dict[str, PatchSchema]] = {
    "Namespace": {**OBJECT_META_STRATEGIES, "status.conditions": ListStrategy("type")},
    "ConfigMap": dict(OBJECT_META_STRATEGIES),
    "Secret": dict(OBJECT_META_STRATEGIES),
    "ServiceAccount": {**OBJECT_META_STRATEGIES, "secrets": ListStrategy("name")},
    "Event": dict(OBJECT_META_STRATEGIES),
    "Lease": dict(OBJECT_META_STRATEGIES),
}


# --- Kubernetes strategic merge patch: application ----------------------------------------------

_PATCH: Final = "$patch"
_RETAIN_KEYS: Final = "$retainKeys"
_SET_ELEMENT_ORDER: Final = "$setElementOrder/"
_DELETE_FROM_PRIMITIVE_LIST: Final = "$deleteFromPrimitiveList/"
_PATCH_VALUES: Final = ("replace", "delete", "merge")

# A member that is not there at all, as opposed to one whose value is JSON null.
_ABSENT: Final = object()


def apply_strategic_merge_patch(
    original: dict[str, Any], patch: Any, schema: PatchSchema
) -> dict[str, Any]:
    """Apply a strategic merge patch the way the Kubernetes API server does.

    - maps merge recursively and `null` deletes a key; a value of another type replaces;
    - a list whose path is in `schema` merges: by its merge key (an item
      `{"$patch": "delete", key: v}` deletes, an item `{"$patch": "replace"}` makes the rest of
      the patch list replace the list), or, for primitives, as a set with the sibling
      `$deleteFromPrimitiveList/<field>: [values]` removing values; any other list is replaced;
    - `$patch: replace` in a map replaces it with the patch map, `$patch: delete` removes it
      (at the root: the result is `{}`);
    - `$retainKeys: [keys]` in a map keeps only those keys after the merge;
    - `$setElementOrder/<field>: [...]` orders a merge list; without it the patch list's own
      order ranks the items it names. Either way apimachinery's rule applies: the named items in
      that order, interleaved with the other (server-only) items so that each of those keeps its
      place relative to the named items it preceded in the original list. Notably a new item
      whose position nothing fixes goes before the server-only items, as in Kubernetes.
    The result never contains a `$` directive.
    """
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object", 400)
    merged = _merge_map(copy.deepcopy(original), copy.deepcopy(patch), "", schema)
    return {} if merged is None else merged


@dataclass
class _Directives:
    """A patch map split into its plain fields and its `$` directives."""

    fields: dict[str, Any] = field(default_factory=dict)
    patch: str | None = None
    retain_keys: list[str] | None = None
    set_element_order: dict[str, list[Any]] = field(default_factory=dict)
    delete_from_primitive_list: dict[str, list[Any]] = field(default_factory=dict)


def _where(path: str) -> str:
    return path or "<root>"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _split_directives(patch: dict[str, Any], path: str) -> _Directives:
    parts = _Directives()
    for key, value in patch.items():
        if not key.startswith("$"):
            parts.fields[key] = value
        elif key == _PATCH:
            if not isinstance(value, str) or value not in _PATCH_VALUES:
                raise PatchError(
                    f"{_where(path)}: $patch must be one of {', '.join(_PATCH_VALUES)}, "
                    f"got {value!r}",
                    422,
                )
            parts.patch = value
        elif key == _RETAIN_KEYS:
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise PatchError(f"{_where(path)}: $retainKeys must be a list of strings", 400)
            parts.retain_keys = value
        elif key.startswith((_SET_ELEMENT_ORDER, _DELETE_FROM_PRIMITIVE_LIST)):
            prefix, _, name = key.partition("/")
            if not name or not isinstance(value, list):
                raise PatchError(f"{_where(path)}: {key} must name a field and be a list", 400)
            if prefix + "/" == _SET_ELEMENT_ORDER:
                parts.set_element_order[name] = value
            else:
                parts.delete_from_primitive_list[name] = value
        else:
            raise PatchError(f"{_where(path)}: unknown patch directive {key!r}", 422)
    return parts


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], path: str, schema: PatchSchema
) -> dict[str, Any] | None:
    """Merge `patch` into `original` (both private copies, reused in the result).

    None means the patch deletes this map.
    """
    parts = _split_directives(patch, path)
    if parts.patch == "delete":
        return None
    result = {} if parts.patch == "replace" else original

    if parts.retain_keys is not None:
        retained = set(parts.retain_keys)
        stray = [k for k, v in parts.fields.items() if v is not None and k not in retained]
        if stray:
            raise PatchError(
                f"{_where(path)}: fields {stray} are set by the patch but not in $retainKeys",
                422,
            )
        for key in [k for k in result if k not in retained]:
            del result[key]

    names = dict.fromkeys(
        [*parts.fields, *parts.set_element_order, *parts.delete_from_primitive_list]
    )
    for name in names:
        child = _join(path, name)
        value = parts.fields.get(name, _ABSENT)
        if value is None:
            result.pop(name, None)
            continue
        strategy = schema.get(child)
        order = parts.set_element_order.get(name)
        to_delete = parts.delete_from_primitive_list.get(name)
        if to_delete is not None and (strategy is None or strategy.merge_key is not None):
            raise PatchError(
                f"{child}: $deleteFromPrimitiveList applies only to a merge list of primitives",
                422,
            )
        current = result.get(name, _ABSENT)

        if isinstance(value, dict):
            merged = _merge_map(current if isinstance(current, dict) else {}, value, child, schema)
            if merged is None:
                result.pop(name, None)
            else:
                result[name] = merged
        elif strategy is not None and (isinstance(value, list) or value is _ABSENT):
            if value is _ABSENT and current is _ABSENT:
                continue  # an order or deletion for a list that exists nowhere: nothing to do
            if current is not _ABSENT and not isinstance(current, list):
                if value is _ABSENT:
                    raise PatchError(
                        f"{child}: a list directive names a field that is not a list", 422
                    )
                result[name] = _cleaned(value, child, schema)  # a type change replaces
                continue
            result[name] = _merge_list(
                current if isinstance(current, list) else [],
                value if isinstance(value, list) else [],
                strategy,
                child,
                schema,
                to_delete or [],
                order,
            )
        elif value is not _ABSENT:
            # A scalar, or a list that is not merged. A $setElementOrder for such a list is
            # ignored: the list is replaced, and the patch's own order is the order.
            result[name] = _cleaned(value, child, schema)
    return result


def _cleaned(value: Any, path: str, schema: PatchSchema) -> Any:
    """A patch value stored as it is, less any directives inside it."""
    if isinstance(value, dict):
        return _merge_map({}, value, path, schema) or {}
    if isinstance(value, list):
        items = (_cleaned(item, path, schema) for item in value if not _deletes_itself(item))
        return list(items)
    return value


def _deletes_itself(item: Any) -> bool:
    return isinstance(item, dict) and item.get(_PATCH) == "delete"


def _identity(value: Any) -> Hashable:
    """What makes two JSON values the same list item: bool is not 1, 1 is 1.0 (as in Go)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    return ("json", json.dumps(value, sort_keys=True))


def _merge_list(
    original: list[Any],
    patch: list[Any],
    strategy: ListStrategy,
    path: str,
    schema: PatchSchema,
    to_delete: list[Any],
    order: list[Any] | None,
) -> list[Any]:
    key = strategy.merge_key
    if key is None:
        for item in [*original, *patch]:
            if isinstance(item, dict | list):
                raise PatchError(f"{path}: a list of primitives cannot hold {item!r}", 422)
        deleted = {_identity(v) for v in to_delete}
        base = [v for v in original if _identity(v) not in deleted]
        merged: list[Any] = list({_identity(v): v for v in [*base, *patch]}.values())
        merged_ids = [_identity(v) for v in merged]
        base_ids = [_identity(v) for v in base]
        patch_ids = [_identity(v) for v in patch]
        order_ids = None if order is None else [_identity(v) for v in order]
    else:
        base, items = _apply_list_directives(original, patch, key, path)
        merged = list(base)
        position = {_identity(item[key]): i for i, item in reversed(list(enumerate(base)))}
        for item in items:
            item_id = _identity(item[key])
            if item_id in position:
                # `or {}`: the item carries no $patch, so the merge never deletes it.
                merged[position[item_id]] = (
                    _merge_map(merged[position[item_id]], item, path, schema) or {}
                )
            else:
                position[item_id] = len(merged)
                merged.append(_merge_map({}, item, path, schema) or {})
        merged_ids = [_identity(item[key]) for item in merged]
        base_ids = [_identity(item[key]) for item in base]
        patch_ids = [_identity(item[key]) for item in items]
        order_ids = None
        if order is not None:
            for entry in order:
                if not isinstance(entry, dict) or key not in entry:
                    raise PatchError(
                        f"{path}: $setElementOrder entries must be objects with {key!r}", 422
                    )
            order_ids = [_identity(entry[key]) for entry in order]

    merged = _normalize_order(merged, merged_ids, patch_ids, base_ids)
    if order_ids is not None:
        # Every item the patch names must appear in $setElementOrder, in the same relative order
        # (`in` on an iterator consumes it up to the match, which checks for a subsequence).
        remaining = iter(order_ids)
        if not all(item_id in remaining for item_id in patch_ids):
            raise PatchError(
                f"{path}: the order of the patch list does not match $setElementOrder", 422
            )
        merged_ids = [_identity(v if key is None else v[key]) for v in merged]
        merged = _normalize_order(merged, merged_ids, order_ids, base_ids)
    return merged


def _apply_list_directives(
    original: list[Any], patch: list[Any], key: str, path: str
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Apply the `$patch` items of a merge-keyed patch list.

    Returns the original list after deletions (empty if the patch replaces it) and the patch
    items left to merge.
    """
    for item in original:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"{path}: a stored list item lacks the merge key {key!r}", 422)
    items: list[dict[str, Any]] = []
    replace = False
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"{path}: items must be objects merged by {key!r}, got {item!r}", 422)
        directive = item.get(_PATCH, _ABSENT)
        if directive is _ABSENT:
            # A null key could match nothing, and the merge would drop it from the item.
            if item.get(key) is None:
                raise PatchError(f"{path}: a patch item lacks the merge key {key!r}", 422)
            items.append(item)
        elif directive == "delete":
            if item.get(key) is None:
                raise PatchError(f"{path}: a $patch: delete item lacks the merge key {key!r}", 422)
            gone = _identity(item[key])
            original = [o for o in original if _identity(o[key]) != gone]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            # apimachinery rejects it too ("merging lists cannot yet be specified in the patch").
            raise PatchError(f"{path}: $patch: merge is not supported inside a list", 422)
        else:
            raise PatchError(
                f"{path}: $patch must be one of {', '.join(_PATCH_VALUES)}, got {directive!r}",
                422,
            )
    return ([] if replace else original), items


def _normalize_order(
    items: list[Any], ids: list[Hashable], preferred: list[Hashable], server: list[Hashable]
) -> list[Any]:
    """Order merged list items as apimachinery's normalizeElementOrder does.

    Items named in `preferred` come in that order; the others keep their order in `server` (the
    stored list). The two runs are then interleaved: a server-only item goes before a named
    item only when it preceded that item in the stored list; when either is not in the stored
    list, the named item goes first.
    """
    preferred_at = {item_id: i for i, item_id in reversed(list(enumerate(preferred)))}
    server_at = {item_id: i for i, item_id in reversed(list(enumerate(server)))}
    unranked = len(server)
    named = sorted(
        (pair for pair in zip(ids, items, strict=True) if pair[0] in preferred_at),
        key=lambda pair: preferred_at[pair[0]],
    )
    others = sorted(
        (pair for pair in zip(ids, items, strict=True) if pair[0] not in preferred_at),
        key=lambda pair: server_at.get(pair[0], unranked),
    )
    result: list[Any] = []
    i = j = 0
    while i < len(others) and j < len(named):
        left, right = server_at.get(others[i][0]), server_at.get(named[j][0])
        if left is not None and right is not None and left < right:
            result.append(others[i][1])
            i += 1
        else:
            result.append(named[j][1])
            j += 1
    result.extend(item for _, item in others[i:])
    result.extend(item for _, item in named[j:])
    return result
