"""The three PATCH flavours of haplane.api.patch: exact results, error codes, inputs untouched."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from haplane.api.patch import (
    OBJECT_META_STRATEGIES,
    STRATEGIC_SCHEMAS,
    ListStrategy,
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)

CONFIGMAP = STRATEGIC_SCHEMAS["ConfigMap"]


def _error(call: Any, *args: Any) -> PatchError:
    with pytest.raises(PatchError) as info:
        call(*args)
    return info.value


# --- JSON merge patch ---------------------------------------------------------------------------


def test_merge_patch_adds_replaces_and_deletes_with_null() -> None:
    original = {"a": 1, "b": 2, "c": {"d": 3, "e": 4}}
    patch = {"a": 10, "b": None, "c": {"e": None, "f": 5}, "g": [1, 2]}
    assert apply_merge_patch(original, patch) == {"a": 10, "c": {"d": 3, "f": 5}, "g": [1, 2]}


def test_merge_patch_nested_object_into_missing_or_scalar_drops_nulls() -> None:
    assert apply_merge_patch({"a": "x"}, {"a": {"b": 1, "c": None}}) == {"a": {"b": 1}}
    assert apply_merge_patch({}, {"n": {"m": {"k": None, "v": 1}}}) == {"n": {"m": {"v": 1}}}


def test_merge_patch_replaces_lists_and_non_dict_patches_replace_the_document() -> None:
    assert apply_merge_patch({"l": [1, 2, 3]}, {"l": [4]}) == {"l": [4]}
    assert apply_merge_patch({"a": 1}, ["x"]) == ["x"]
    assert apply_merge_patch({"a": 1}, "text") == "text"
    assert apply_merge_patch([1, 2], {"a": 1}) == {"a": 1}
    assert apply_merge_patch({"a": 1}, None) is None


def test_merge_patch_does_not_mutate_or_alias_its_inputs() -> None:
    original = {"a": {"b": [1]}, "keep": {"x": 1}}
    patch = {"a": {"c": {"d": 1}}}
    saved_original, saved_patch = copy.deepcopy(original), copy.deepcopy(patch)
    result = apply_merge_patch(original, patch)
    assert result == {"a": {"b": [1], "c": {"d": 1}}, "keep": {"x": 1}}
    result["a"]["c"]["d"] = 2
    result["keep"]["x"] = 2
    assert original == saved_original
    assert patch == saved_patch


# --- JSON patch ---------------------------------------------------------------------------------


def test_json_patch_every_operation() -> None:
    original = {"a": {"b": 1}, "list": [1, 2, 3], "s": "x"}
    patch = [
        {"op": "add", "path": "/a/c", "value": {"d": True}},
        {"op": "add", "path": "/list/1", "value": 9},
        {"op": "add", "path": "/list/-", "value": 4},
        {"op": "remove", "path": "/list/0"},
        {"op": "replace", "path": "/s", "value": "y"},
        {"op": "move", "from": "/a/b", "path": "/moved"},
        {"op": "copy", "from": "/a/c", "path": "/copied"},
        {"op": "test", "path": "/list", "value": [9, 2, 3, 4]},
        {"op": "test", "path": "/copied/d", "value": True},
    ]
    assert apply_json_patch(original, patch) == {
        "a": {"c": {"d": True}},
        "list": [9, 2, 3, 4],
        "s": "y",
        "moved": 1,
        "copied": {"d": True},
    }


def test_json_patch_root_replace_and_empty_patch() -> None:
    assert apply_json_patch({"a": 1}, [{"op": "replace", "path": "", "value": [1]}]) == [1]
    assert apply_json_patch({"a": 1}, []) == {"a": 1}


def test_json_patch_failed_test_is_422_and_names_the_path() -> None:
    error = _error(
        apply_json_patch,
        {"metadata": {"resourceVersion": "5"}},
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "4"},
            {"op": "replace", "path": "/metadata/resourceVersion", "value": "6"},
        ],
    )
    assert error.code == 422
    assert "/metadata/resourceVersion" in error.message
    assert "test" in error.message


def test_json_patch_test_distinguishes_bool_from_number() -> None:
    assert (
        _error(apply_json_patch, {"a": 1}, [{"op": "test", "path": "/a", "value": True}]).code
        == 422
    )


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "remove", "path": "/missing"},
        {"op": "replace", "path": "/missing", "value": 1},
        {"op": "remove", "path": "/list/5"},
        {"op": "add", "path": "/list/7", "value": 1},
        {"op": "add", "path": "/missing/child", "value": 1},
        {"op": "add", "path": "/s/child", "value": 1},
        {"op": "move", "from": "/missing", "path": "/x"},
        {"op": "copy", "from": "/missing", "path": "/x"},
        {"op": "test", "path": "/missing", "value": 1},
        {"op": "move", "from": "/obj", "path": "/obj/inner"},
    ],
)
def test_json_patch_paths_that_do_not_apply_are_422(operation: dict[str, Any]) -> None:
    original = {"list": [1], "s": "text", "obj": {"k": 1}}
    error = _error(apply_json_patch, original, [operation])
    assert error.code == 422
    assert operation["path"] in error.message


@pytest.mark.parametrize(
    "patch",
    [
        {"op": "add", "path": "/a", "value": 1},
        "not a list",
        None,
        [1],
        [{"path": "/a"}],
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": "add", "value": 1}],
        [{"op": "add", "path": "/a"}],
        [{"op": "replace", "path": "/a"}],
        [{"op": "test", "path": "/a"}],
        [{"op": "move", "path": "/a"}],
        [{"op": "copy", "path": "/a"}],
        [{"op": "add", "path": "a", "value": 1}],
        [{"op": "add", "path": 5, "value": 1}],
        [{"op": "add", "path": "/a~2", "value": 1}],
        [{"op": "move", "from": "nope", "path": "/a"}],
    ],
)
def test_json_patch_malformed_is_400(patch: Any) -> None:
    assert _error(apply_json_patch, {"a": 1}, patch).code == 400


def test_json_patch_does_not_mutate_or_alias_its_inputs() -> None:
    original = {"a": {"b": [1, 2]}, "c": 1}
    value = {"deep": [1]}
    patch = [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/v", "value": value},
        {"op": "remove", "path": "/c"},
    ]
    saved_original, saved_patch = copy.deepcopy(original), copy.deepcopy(patch)
    result = apply_json_patch(original, patch)
    assert result == {"a": {"b": [1, 2, 3]}, "v": {"deep": [1]}}
    result["v"]["deep"].append(2)
    assert original == saved_original
    assert patch == saved_patch


def test_json_patch_failure_leaves_the_original_untouched() -> None:
    original = {"a": [1]}
    saved = copy.deepcopy(original)
    patch = [{"op": "add", "path": "/a/-", "value": 2}, {"op": "remove", "path": "/nope"}]
    assert _error(apply_json_patch, original, patch).code == 422
    assert original == saved


# --- strategic merge patch: schemas -------------------------------------------------------------


def test_schemas_cover_the_built_in_kinds_and_object_meta() -> None:
    meta = dict(OBJECT_META_STRATEGIES)
    assert meta == {
        "metadata.ownerReferences": ListStrategy("uid"),
        "metadata.finalizers": ListStrategy(None),
    }
    assert set(STRATEGIC_SCHEMAS) == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Event",
        "Lease",
    }
    for schema in STRATEGIC_SCHEMAS.values():
        assert dict(schema).items() >= OBJECT_META_STRATEGIES.items()
    assert STRATEGIC_SCHEMAS["ServiceAccount"]["secrets"] == ListStrategy("name")
    assert "spec.finalizers" not in STRATEGIC_SCHEMAS["Namespace"]
    assert STRATEGIC_SCHEMAS["Namespace"]["status.conditions"] == ListStrategy("type")


# --- strategic merge patch: maps ----------------------------------------------------------------


def test_strategic_maps_merge_recursively_and_null_deletes() -> None:
    original = {
        "metadata": {"name": "cm", "labels": {"a": "1", "b": "2"}},
        "data": {"k": "v", "old": "x"},
    }
    patch = {"metadata": {"labels": {"b": None, "c": "3"}}, "data": {"old": None, "new": "n"}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"name": "cm", "labels": {"a": "1", "c": "3"}},
        "data": {"k": "v", "new": "n"},
    }


def test_strategic_patch_that_is_not_an_object_is_400() -> None:
    not_objects: list[Any] = [[], "x", None, 1]
    for patch in not_objects:
        assert _error(apply_strategic_merge_patch, {"a": 1}, patch, CONFIGMAP).code == 400


def test_strategic_type_change_replaces_and_new_maps_are_cleaned() -> None:
    original = {"spec": {"x": [1, 2], "y": "s"}}
    patch = {"spec": {"x": "now a string", "y": {"z": 1, "gone": None}, "n": {"$patch": "merge"}}}
    assert apply_strategic_merge_patch(original, patch, {}) == {
        "spec": {"x": "now a string", "y": {"z": 1}, "n": {}}
    }


def test_strategic_patch_replace_on_a_map() -> None:
    original = {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}}
    patch = {"data": {"$patch": "replace", "c": "3"}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"name": "cm"},
        "data": {"c": "3"},
    }


def test_strategic_patch_delete_on_a_map_removes_the_key() -> None:
    original = {"metadata": {"name": "cm", "labels": {"a": "1"}}, "data": {"a": "1"}}
    patch = {"metadata": {"labels": {"$patch": "delete"}}, "data": {"$patch": "delete"}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {"metadata": {"name": "cm"}}
    assert apply_strategic_merge_patch(original, {"$patch": "delete"}, CONFIGMAP) == {}


def test_strategic_retain_keys_keeps_only_the_listed_keys() -> None:
    original = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert apply_strategic_merge_patch(original, patch, {}) == {
        "spec": {"strategy": {"type": "Recreate"}}
    }


def test_strategic_retain_keys_must_cover_the_fields_the_patch_sets() -> None:
    original = {"spec": {"a": 1, "b": 2}}
    error = _error(
        apply_strategic_merge_patch, original, {"spec": {"$retainKeys": ["a"], "b": 3}}, {}
    )
    assert error.code == 422
    # A null is a deletion, not a field the patch sets.
    patch = {"spec": {"$retainKeys": ["a"], "b": None, "a": 5}}
    assert apply_strategic_merge_patch(original, patch, {}) == {"spec": {"a": 5}}


@pytest.mark.parametrize(
    "patch",
    [
        {"metadata": {"$unknown": 1}},
        {"$frobnicate": True},
        {"data": {"$patch": "explode"}},
        {"data": {"$patch": 1}},
        {"metadata": {"ownerReferences": [{"$patch": "merge"}]}},
        {"metadata": {"ownerReferences": [{"$patch": "bogus", "uid": "a"}]}},
    ],
)
def test_strategic_unknown_or_invalid_directive_is_422(patch: dict[str, Any]) -> None:
    original = {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    assert _error(apply_strategic_merge_patch, original, patch, CONFIGMAP).code == 422


@pytest.mark.parametrize(
    "patch",
    [
        {"metadata": {"$retainKeys": "name"}},
        {"metadata": {"$setElementOrder/finalizers": "a"}},
        {"metadata": {"$deleteFromPrimitiveList/finalizers": {"a": 1}}},
        {"metadata": {"$setElementOrder/": []}},
    ],
)
def test_strategic_directive_of_the_wrong_shape_is_400(patch: dict[str, Any]) -> None:
    original = {"metadata": {"name": "cm", "finalizers": ["a"]}}
    assert _error(apply_strategic_merge_patch, original, patch, CONFIGMAP).code == 400


def test_strategic_patch_merge_on_a_map_is_the_default_merge() -> None:
    original = {"data": {"a": "1"}}
    patch = {"data": {"$patch": "merge", "b": "2"}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {"data": {"a": "1", "b": "2"}}


# --- strategic merge patch: merge-keyed lists ---------------------------------------------------


def _ref(uid: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}


def test_strategic_owner_references_update_add_and_delete_by_uid() -> None:
    original = {"metadata": {"name": "cm", "ownerReferences": [_ref("u1", "a"), _ref("u2", "b")]}}
    patch = {
        "metadata": {
            "ownerReferences": [
                {"uid": "u2", "controller": True},
                _ref("u3", "c"),
                {"$patch": "delete", "uid": "u1"},
            ]
        }
    }
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {
            "name": "cm",
            "ownerReferences": [{**_ref("u2", "b"), "controller": True}, _ref("u3", "c")],
        }
    }


def test_strategic_keyed_list_items_merge_recursively_with_null_deletes() -> None:
    original = {"metadata": {"ownerReferences": [{**_ref("u1", "a"), "controller": True}]}}
    patch = {"metadata": {"ownerReferences": [{"uid": "u1", "controller": None, "name": "z"}]}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"ownerReferences": [_ref("u1", "z")]}
    }


def test_strategic_new_item_without_set_element_order_goes_first_as_in_kubernetes() -> None:
    original = {"metadata": {"ownerReferences": [_ref("u1", "a"), _ref("u2", "b")]}}
    patch = {"metadata": {"ownerReferences": [_ref("u3", "c")]}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"ownerReferences": [_ref("u3", "c"), _ref("u1", "a"), _ref("u2", "b")]}
    }


def test_strategic_patch_list_order_ranks_the_items_it_names() -> None:
    original = {
        "metadata": {"ownerReferences": [_ref("u1", "a"), _ref("u2", "b"), _ref("u3", "c")]}
    }
    patch = {"metadata": {"ownerReferences": [{"uid": "u2"}, {"uid": "u1"}]}}
    result = apply_strategic_merge_patch(original, patch, CONFIGMAP)
    assert [r["uid"] for r in result["metadata"]["ownerReferences"]] == ["u2", "u1", "u3"]


def test_strategic_keyed_item_lacking_its_merge_key_is_422() -> None:
    original = {"metadata": {"ownerReferences": [_ref("u1", "a")]}}
    for item in (
        {"name": "no-uid"},
        {"uid": None, "name": "null-uid"},
        {"$patch": "delete", "name": "no-uid"},
        "not-an-object",
    ):
        patch = {"metadata": {"ownerReferences": [item]}}
        error = _error(apply_strategic_merge_patch, original, patch, CONFIGMAP)
        assert error.code == 422
        assert "metadata.ownerReferences" in error.message


def test_strategic_patch_replace_in_a_keyed_list() -> None:
    original = {"metadata": {"ownerReferences": [_ref("u1", "a"), _ref("u2", "b")]}}
    patch = {"metadata": {"ownerReferences": [{"$patch": "replace"}, _ref("u9", "z")]}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"ownerReferences": [_ref("u9", "z")]}
    }
    only_replace = {"metadata": {"ownerReferences": [{"$patch": "replace"}]}}
    assert apply_strategic_merge_patch(original, only_replace, CONFIGMAP) == {
        "metadata": {"ownerReferences": []}
    }


def test_strategic_keyed_list_created_from_the_patch_has_no_directives() -> None:
    patch = {
        "metadata": {
            "ownerReferences": [
                _ref("u1", "a"),
                {"$patch": "delete", "uid": "u0"},
                {**_ref("u2", "b"), "extra": {"drop": None, "keep": 1}},
            ]
        }
    }
    assert apply_strategic_merge_patch({"metadata": {"name": "n"}}, patch, CONFIGMAP) == {
        "metadata": {
            "name": "n",
            "ownerReferences": [_ref("u1", "a"), {**_ref("u2", "b"), "extra": {"keep": 1}}],
        }
    }


def test_strategic_service_account_secrets_merge_by_name() -> None:
    schema = STRATEGIC_SCHEMAS["ServiceAccount"]
    original = {
        "metadata": {"name": "sa"},
        "secrets": [{"name": "tok-1"}, {"name": "tok-2", "namespace": "ns"}],
        "imagePullSecrets": [{"name": "pull-1"}],
    }
    patch = {
        "secrets": [{"name": "tok-2", "namespace": "other"}, {"$patch": "delete", "name": "tok-1"}],
        "imagePullSecrets": [{"name": "pull-2"}],
    }
    assert apply_strategic_merge_patch(original, patch, schema) == {
        "metadata": {"name": "sa"},
        "secrets": [{"name": "tok-2", "namespace": "other"}],
        "imagePullSecrets": [{"name": "pull-2"}],
    }


def test_strategic_namespace_conditions_merge_and_spec_finalizers_replace() -> None:
    schema = STRATEGIC_SCHEMAS["Namespace"]
    original = {
        "metadata": {"name": "ns"},
        "spec": {"finalizers": ["kubernetes", "example.com/x"]},
        "status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "x"}]},
    }
    patch = {
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"conditions": [{"type": "B", "status": "False"}]},
    }
    assert apply_strategic_merge_patch(original, patch, schema) == {
        "metadata": {"name": "ns"},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {
            "conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "False"}]
        },
    }


def test_strategic_nested_schema_paths_skip_list_items() -> None:
    schema = {
        "spec.containers": ListStrategy("name"),
        "spec.containers.ports": ListStrategy("containerPort"),
    }
    original = {
        "spec": {
            "containers": [
                {"name": "app", "ports": [{"containerPort": 80}], "args": ["a"]},
                {"name": "side", "ports": [{"containerPort": 9000}]},
            ]
        }
    }
    patch = {
        "spec": {
            "containers": [
                {"name": "app", "ports": [{"containerPort": 443, "name": "tls"}], "args": ["b"]}
            ]
        }
    }
    assert apply_strategic_merge_patch(original, patch, schema) == {
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "ports": [{"containerPort": 443, "name": "tls"}, {"containerPort": 80}],
                    "args": ["b"],
                },
                {"name": "side", "ports": [{"containerPort": 9000}]},
            ]
        }
    }


# --- strategic merge patch: primitive lists and lists that replace ------------------------------


def test_strategic_finalizers_union_and_delete_from_primitive_list() -> None:
    original = {"metadata": {"name": "cm", "finalizers": ["a", "b", "c"]}}
    patch = {"metadata": {"finalizers": ["c", "d"], "$deleteFromPrimitiveList/finalizers": ["b"]}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"name": "cm", "finalizers": ["a", "c", "d"]}
    }


def test_strategic_primitive_union_deduplicates_and_new_values_lead() -> None:
    original = {"metadata": {"finalizers": ["a", "b", "a"]}}
    patch = {"metadata": {"finalizers": ["b", "x"]}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"finalizers": ["a", "b", "x"]}
    }
    only_new = {"metadata": {"finalizers": ["x"]}}
    assert apply_strategic_merge_patch(original, only_new, CONFIGMAP) == {
        "metadata": {"finalizers": ["x", "a", "b"]}
    }


def test_strategic_delete_from_primitive_list_alone_and_on_a_missing_list() -> None:
    original = {"metadata": {"finalizers": ["a", "b"]}}
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "zzz"]}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"finalizers": ["b"]}
    }
    assert apply_strategic_merge_patch({"metadata": {"name": "n"}}, patch, CONFIGMAP) == {
        "metadata": {"name": "n"}
    }


def test_strategic_delete_from_primitive_list_on_a_list_that_is_not_one_is_422() -> None:
    original = {"metadata": {"ownerReferences": [_ref("u1", "a")]}, "spec": {"l": ["a"]}}
    for patch in (
        {"metadata": {"$deleteFromPrimitiveList/ownerReferences": ["u1"]}},
        {"spec": {"$deleteFromPrimitiveList/l": ["a"]}},
    ):
        assert _error(apply_strategic_merge_patch, original, patch, CONFIGMAP).code == 422


def test_strategic_list_not_in_schema_is_replaced() -> None:
    original = {"spec": {"finalizers": ["a", "b"], "items": [{"name": "x", "v": 1}]}}
    patch = {"spec": {"finalizers": ["c"], "items": [{"name": "x", "w": 2}]}}
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "spec": {"finalizers": ["c"], "items": [{"name": "x", "w": 2}]}
    }


def test_strategic_primitive_list_holding_objects_is_422() -> None:
    original = {"metadata": {"finalizers": ["a"]}}
    patch = {"metadata": {"finalizers": [{"a": 1}]}}
    assert _error(apply_strategic_merge_patch, original, patch, CONFIGMAP).code == 422


# --- strategic merge patch: $setElementOrder ----------------------------------------------------


def test_strategic_set_element_order_on_a_primitive_list() -> None:
    original = {"metadata": {"finalizers": ["a", "b", "c"]}}
    patch = {"metadata": {"$setElementOrder/finalizers": ["c", "x", "a"], "finalizers": ["x"]}}
    # b is named nowhere in the patch: it stays before c, which it preceded in the stored list
    # (apimachinery's mergeSortedSlice).
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"finalizers": ["b", "c", "x", "a"]}
    }


def test_strategic_set_element_order_on_a_keyed_list() -> None:
    original = {"metadata": {"ownerReferences": [_ref("u1", "a"), _ref("u2", "b")]}}
    patch = {
        "metadata": {
            "$setElementOrder/ownerReferences": [{"uid": "u1"}, {"uid": "u3"}, {"uid": "u2"}],
            "ownerReferences": [_ref("u3", "c")],
        }
    }
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"ownerReferences": [_ref("u1", "a"), _ref("u3", "c"), _ref("u2", "b")]}
    }


def test_strategic_set_element_order_alone_reorders_and_keeps_server_only_items() -> None:
    original = {"metadata": {"ownerReferences": [_ref("u1", "a"), _ref("s", "s"), _ref("u2", "b")]}}
    patch = {"metadata": {"$setElementOrder/ownerReferences": [{"uid": "u2"}, {"uid": "u1"}]}}
    result = apply_strategic_merge_patch(original, patch, CONFIGMAP)
    # s stays before u2, which it preceded in the stored list.
    assert [r["uid"] for r in result["metadata"]["ownerReferences"]] == ["s", "u2", "u1"]


def test_strategic_set_element_order_with_deletions_like_kubectl_apply() -> None:
    original = {"metadata": {"finalizers": ["a", "b", "c"]}}
    patch = {
        "metadata": {
            "$setElementOrder/finalizers": ["c", "a"],
            "$deleteFromPrimitiveList/finalizers": ["b"],
        }
    }
    assert apply_strategic_merge_patch(original, patch, CONFIGMAP) == {
        "metadata": {"finalizers": ["c", "a"]}
    }


def test_strategic_set_element_order_that_contradicts_the_patch_list_is_422() -> None:
    original = {"metadata": {"finalizers": ["a"]}}
    patch = {"metadata": {"$setElementOrder/finalizers": ["y", "x"], "finalizers": ["x", "y"]}}
    assert _error(apply_strategic_merge_patch, original, patch, CONFIGMAP).code == 422
    missing = {"metadata": {"$setElementOrder/finalizers": ["a"], "finalizers": ["z"]}}
    assert _error(apply_strategic_merge_patch, original, missing, CONFIGMAP).code == 422
    no_key = {"metadata": {"$setElementOrder/ownerReferences": [{"name": "x"}]}}
    with_refs = {"metadata": {"ownerReferences": [_ref("u1", "a")]}}
    assert _error(apply_strategic_merge_patch, with_refs, no_key, CONFIGMAP).code == 422


def test_strategic_set_element_order_for_an_absent_list_creates_nothing() -> None:
    patch = {"metadata": {"$setElementOrder/finalizers": ["a"]}}
    assert apply_strategic_merge_patch({"metadata": {}}, patch, CONFIGMAP) == {"metadata": {}}


# --- strategic merge patch: a kubectl apply, purity ---------------------------------------------


def test_strategic_kubectl_apply_patch_on_a_configmap() -> None:
    last_applied_key = "kubectl.kubernetes.io/last-applied-configuration"
    old_applied = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "default"},
        "data": {"color": "blue", "size": "L", "legacy": "yes"},
    }
    new_applied = {**old_applied, "data": {"color": "green", "size": "L"}}
    live = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "settings",
            "namespace": "default",
            "uid": "0c6c5e5a-1111-4c1e-9a3e-5f0f4b1e2d3c",
            "resourceVersion": "41",
            "annotations": {last_applied_key: json.dumps(old_applied) + "\n"},
            "labels": {"added-by": "controller"},
        },
        "data": {"color": "blue", "size": "L", "legacy": "yes"},
    }
    # What `kubectl apply` sends when `color` changes and `legacy` is dropped from the file.
    patch = {
        "data": {"color": "green", "legacy": None},
        "metadata": {"annotations": {last_applied_key: json.dumps(new_applied) + "\n"}},
    }
    saved_live, saved_patch = copy.deepcopy(live), copy.deepcopy(patch)
    assert apply_strategic_merge_patch(live, patch, CONFIGMAP) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "settings",
            "namespace": "default",
            "uid": "0c6c5e5a-1111-4c1e-9a3e-5f0f4b1e2d3c",
            "resourceVersion": "41",
            "annotations": {last_applied_key: json.dumps(new_applied) + "\n"},
            "labels": {"added-by": "controller"},
        },
        "data": {"color": "green", "size": "L"},
    }
    assert live == saved_live
    assert patch == saved_patch


def test_strategic_does_not_mutate_or_alias_its_inputs() -> None:
    original = {
        "metadata": {
            "ownerReferences": [_ref("u1", "a")],
            "finalizers": ["a"],
            "labels": {"k": "v"},
        },
        "data": {"x": "1"},
    }
    patch = {
        "metadata": {
            "ownerReferences": [
                {"uid": "u1", "extra": {"n": 1}},
                {"$patch": "delete", "uid": "u0"},
            ],
            "finalizers": ["b"],
            "$setElementOrder/finalizers": ["a", "b"],
            "labels": {"$patch": "replace", "j": "w"},
        },
        "data": {"$retainKeys": ["x"], "x": "2"},
    }
    saved_original, saved_patch = copy.deepcopy(original), copy.deepcopy(patch)
    result = apply_strategic_merge_patch(original, patch, CONFIGMAP)
    assert result == {
        "metadata": {
            "ownerReferences": [{**_ref("u1", "a"), "extra": {"n": 1}}],
            "finalizers": ["a", "b"],
            "labels": {"j": "w"},
        },
        "data": {"x": "2"},
    }
    result["metadata"]["ownerReferences"][0]["extra"]["n"] = 2
    result["metadata"]["finalizers"].append("z")
    assert original == saved_original
    assert patch == saved_patch


def test_strategic_result_never_holds_a_directive() -> None:
    def directive_keys(value: Any) -> list[str]:
        if isinstance(value, dict):
            own = [k for k in value if k.startswith("$")]
            return own + [k for v in value.values() for k in directive_keys(v)]
        if isinstance(value, list):
            return [k for v in value for k in directive_keys(v)]
        return []

    patch = {
        "metadata": {
            "$setElementOrder/finalizers": ["b", "a"],
            "finalizers": ["b"],
            "annotations": {"$patch": "replace", "a": "1"},
            "ownerReferences": [
                {"$patch": "replace"},
                {**_ref("u1", "a"), "x": {"$patch": "merge"}},
            ],
        },
        "spec": {"list": [{"$patch": "delete"}, {"k": {"$retainKeys": ["v"], "v": 1}}]},
        "new": {"$retainKeys": ["a"], "a": {"$patch": "replace"}},
    }
    original = {"metadata": {"finalizers": ["a"]}}
    result = apply_strategic_merge_patch(original, patch, CONFIGMAP)
    assert directive_keys(result) == []
    assert result == {
        "metadata": {
            "finalizers": ["b", "a"],
            "annotations": {"a": "1"},
            "ownerReferences": [{**_ref("u1", "a"), "x": {}}],
        },
        "spec": {"list": [{"k": {"v": 1}}]},
        "new": {"a": {}},
    }


def test_strategic_merge_key_values_compare_like_json() -> None:
    schema = {"items": ListStrategy("id")}
    original = {"items": [{"id": 1, "v": "one"}, {"id": True, "v": "true"}, {"id": "1", "v": "s"}]}
    patch = {"items": [{"id": 1.0, "v": "ONE"}]}
    assert apply_strategic_merge_patch(original, patch, schema) == {
        "items": [{"id": 1, "v": "ONE"}, {"id": True, "v": "true"}, {"id": "1", "v": "s"}]
    }
