"""Server-side apply and managedFields (haplane.api.server_side_apply): exact objects, exact
FieldsV1, conflicts as Kubernetes reports them, inputs untouched."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from haplane.api.patch import STRATEGIC_SCHEMAS, ListStrategy, PatchError
from haplane.api.server_side_apply import (
    OBJECT_META_LIST_TYPES,
    ApplyConflict,
    ListType,
    ListTypes,
    apply,
    fields_v1,
    list_types_from_openapi,
    list_types_from_patch_schema,
    update_managed_fields,
)

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T10:01:00Z"
T2 = "2024-05-01T10:02:00Z"
T3 = "2024-05-01T10:03:00Z"

CONFIGMAP = STRATEGIC_SCHEMAS["ConfigMap"]
WIDGET: ListTypes = {
    **OBJECT_META_LIST_TYPES,
    "spec.ports": ListType.associative("name", "protocol"),
    "spec.tags": ListType.set(),
}


def _cm(data: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "default", **metadata},
    }
    if data is not None:
        obj["data"] = data
    return obj


def _widget(spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "default", **metadata},
        "spec": spec,
    }


def _apply(
    live: dict[str, Any] | None,
    applied: dict[str, Any],
    manager: str,
    now: str = T0,
    *,
    force: bool = False,
    types: ListTypes = CONFIGMAP,
) -> dict[str, Any]:
    api_version = applied.get("apiVersion", "v1")
    saved_live, saved_applied = copy.deepcopy(live), copy.deepcopy(applied)
    result = apply(
        live,
        applied,
        manager=manager,
        api_version=api_version,
        force=force,
        list_types=types,
        now=now,
    )
    assert live == saved_live and applied == saved_applied  # inputs untouched
    return result


def _conflict(
    live: dict[str, Any], applied: dict[str, Any], manager: str, types: ListTypes = CONFIGMAP
) -> ApplyConflict:
    saved = copy.deepcopy(live)
    with pytest.raises(ApplyConflict) as info:
        _apply(live, applied, manager, T3, types=types)
    assert live == saved
    return info.value


def _owned(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """fieldsV1 by (manager, operation)."""
    return {(e["manager"], e["operation"]): e["fieldsV1"] for e in obj["metadata"]["managedFields"]}


def _body(obj: dict[str, Any]) -> dict[str, Any]:
    """The object less its managedFields."""
    result = copy.deepcopy(obj)
    result["metadata"].pop("managedFields", None)
    return result


# --- create, no-op, time ------------------------------------------------------------------------


def test_apply_creates_the_object_with_one_apply_entry() -> None:
    applied = _cm({"a": "1", "b": "2"}, labels={"app": "web"})
    obj = _apply(None, applied, "kubectl")
    assert _body(obj) == applied
    assert obj["metadata"]["managedFields"] == [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": "v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:data": {"f:a": {}, "f:b": {}},
                "f:metadata": {"f:labels": {"f:app": {}}},
            },
        }
    ]


def test_applying_the_same_configuration_again_is_a_no_op() -> None:
    applied = _cm({"a": "1"}, labels={"app": "web"})
    first = _apply(None, applied, "kubectl", T0)
    stored = {**first, "metadata": {**first["metadata"], "uid": "u-1", "resourceVersion": "7"}}
    again = _apply(stored, applied, "kubectl", T1)
    assert again == stored  # not even the entry's time moves: the object did not change


def test_an_apply_that_changes_the_object_stamps_the_entry_time() -> None:
    first = _apply(None, _cm({"a": "1"}), "kubectl", T0)
    second = _apply(first, _cm({"a": "2"}), "kubectl", T1)
    assert second["data"] == {"a": "2"}
    [entry] = second["metadata"]["managedFields"]
    assert entry["time"] == T1 and entry["fieldsV1"] == {"f:data": {"f:a": {}}}


def test_an_apply_with_nothing_to_own_leaves_no_entry() -> None:
    obj = _apply(None, _cm(), "kubectl")
    assert obj == _cm()


# --- several managers ---------------------------------------------------------------------------


def test_two_managers_applying_different_fields_both_own_theirs() -> None:
    obj = _apply(None, _cm({"a": "1"}), "alice", T0)
    obj = _apply(obj, _cm({"b": "2"}), "bob", T1)
    assert obj["data"] == {"a": "1", "b": "2"}
    assert obj["metadata"]["managedFields"] == [
        {
            "manager": "alice",
            "operation": "Apply",
            "apiVersion": "v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {"f:a": {}}},
        },
        {
            "manager": "bob",
            "operation": "Apply",
            "apiVersion": "v1",
            "time": T1,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {"f:b": {}}},
        },
    ]


def test_applying_another_value_to_a_field_someone_owns_is_a_conflict() -> None:
    obj = _apply(None, _cm({"a": "1"}), "alice", T0)
    obj = _apply(obj, _cm({"b": "2"}), "bob", T1)
    error = _conflict(obj, _cm({"a": "changed", "c": "3"}), "carol")
    assert error.code == 409
    assert error.conflicts == [("alice", ".data.a")]
    assert error.message == 'Apply failed with 1 conflict: conflict with "alice": .data.a'
    assert error.causes == [
        {"type": "FieldManagerConflict", "message": 'conflict with "alice"', "field": ".data.a"}
    ]
    assert isinstance(error, PatchError)


def test_conflicts_with_several_managers_are_listed_per_manager() -> None:
    obj = _apply(None, _cm({"a": "1"}, labels={"app": "web"}), "alice", T0)
    obj = _apply(obj, _cm({"b": "2"}), "bob", T1)
    error = _conflict(obj, _cm({"a": "x", "b": "y"}, labels={"app": "db"}), "carol")
    assert error.conflicts == [
        ("alice", ".data.a"),
        ("alice", ".metadata.labels.app"),
        ("bob", ".data.b"),
    ]
    assert error.message == (
        "Apply failed with 3 conflicts: "
        'conflicts with "alice":\n- .data.a\n- .metadata.labels.app\n'
        'conflicts with "bob":\n- .data.b'
    )


def test_applying_the_same_value_shares_ownership() -> None:
    obj = _apply(None, _cm({"a": "1"}), "alice", T0)
    obj = _apply(obj, _cm({"a": "1", "c": "3"}), "carol", T1)
    assert obj["data"] == {"a": "1", "c": "3"}
    assert _owned(obj) == {
        ("alice", "Apply"): {"f:data": {"f:a": {}}},
        ("carol", "Apply"): {"f:data": {"f:a": {}, "f:c": {}}},
    }


def test_force_takes_the_fields_and_the_losers_keep_the_rest() -> None:
    obj = _apply(None, _cm({"a": "1", "b": "2"}), "alice", T0)
    obj = _apply(obj, _cm({"a": "forced"}), "carol", T1, force=True)
    assert obj["data"] == {"a": "forced", "b": "2"}
    assert _owned(obj) == {
        ("alice", "Apply"): {"f:data": {"f:b": {}}},
        ("carol", "Apply"): {"f:data": {"f:a": {}}},
    }
    # Alice applies her old configuration again: now she conflicts with carol.
    error = _conflict(obj, _cm({"a": "1", "b": "2"}), "alice")
    assert error.conflicts == [("carol", ".data.a")]


def test_a_manager_that_loses_every_field_loses_its_entry() -> None:
    obj = _apply(None, _cm({"a": "1"}), "alice", T0)
    obj = _apply(obj, _cm({"a": "2"}), "carol", T1, force=True)
    assert list(_owned(obj)) == [("carol", "Apply")]


# --- removal ------------------------------------------------------------------------------------


def test_a_field_no_longer_applied_and_owned_by_no_one_else_is_removed() -> None:
    obj = _apply(None, _cm({"a": "1", "b": "2"}, labels={"app": "web", "tier": "db"}), "alice")
    obj = _apply(obj, _cm({"a": "1"}, labels={"app": "web"}), "alice", T1)
    assert _body(obj) == _cm({"a": "1"}, labels={"app": "web"})
    assert _owned(obj) == {
        ("alice", "Apply"): {"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:app": {}}}}
    }


def test_a_field_no_longer_applied_but_owned_by_another_manager_stays() -> None:
    obj = _apply(None, _cm({"a": "1", "b": "2"}), "alice", T0)
    obj = _apply(obj, _cm({"b": "2"}), "bob", T1)
    obj = _apply(obj, _cm({"a": "1"}), "alice", T2)
    assert obj["data"] == {"a": "1", "b": "2"}
    assert _owned(obj) == {
        ("alice", "Apply"): {"f:data": {"f:a": {}}},
        ("bob", "Apply"): {"f:data": {"f:b": {}}},
    }


def test_a_map_emptied_by_removal_goes_too() -> None:
    obj = _apply(None, _cm({"a": "1"}, labels={"app": "web"}), "alice")
    obj = _apply(obj, _cm(), "alice", T1)
    assert obj == _cm()


def test_fields_nobody_owned_are_not_removed() -> None:
    live = _cm({"legacy": "x"})  # e.g. written before managedFields were tracked
    obj = _apply(live, _cm({"a": "1"}), "alice", T0)
    obj = _apply(obj, _cm(), "alice", T1)
    assert obj == _cm({"legacy": "x"})


# --- associative lists --------------------------------------------------------------------------


def _owner(uid: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Owner", "name": name, "uid": uid}


def test_owner_references_merge_by_uid_and_each_reference_is_one_leaf() -> None:
    obj = _apply(None, _cm(ownerReferences=[_owner("u1", "one")]), "alice", T0)
    assert _owned(obj) == {
        ("alice", "Apply"): {"f:metadata": {"f:ownerReferences": {'k:{"uid":"u1"}': {}}}}
    }
    obj = _apply(obj, _cm(ownerReferences=[_owner("u2", "two")]), "bob", T1)
    assert obj["metadata"]["ownerReferences"] == [_owner("u1", "one"), _owner("u2", "two")]
    # Alice stops applying her reference: it goes, bob's stays.
    obj = _apply(obj, _cm({"a": "1"}), "alice", T2)
    assert obj["metadata"]["ownerReferences"] == [_owner("u2", "two")]
    assert _owned(obj) == {
        ("alice", "Apply"): {"f:data": {"f:a": {}}},
        ("bob", "Apply"): {"f:metadata": {"f:ownerReferences": {'k:{"uid":"u2"}': {}}}},
    }


def test_an_owner_reference_is_replaced_whole_and_conflicts_whole() -> None:
    obj = _apply(None, _cm(ownerReferences=[{**_owner("u1", "one"), "controller": True}]), "a")
    error = _conflict(obj, _cm(ownerReferences=[_owner("u1", "renamed")]), "b")
    assert error.conflicts == [("a", '.metadata.ownerReferences[uid="u1"]')]
    obj = _apply(obj, _cm(ownerReferences=[_owner("u1", "renamed")]), "b", T1, force=True)
    assert obj["metadata"]["ownerReferences"] == [_owner("u1", "renamed")]  # no "controller"


def _port(name: str, port: int, protocol: str = "TCP", **more: Any) -> dict[str, Any]:
    return {"name": name, "protocol": protocol, "port": port, **more}


def test_a_multi_key_list_is_owned_item_by_item() -> None:
    applied = _widget({"ports": [_port("http", 80), _port("http", 80, "UDP")]})
    obj = _apply(None, applied, "alice", types=WIDGET)
    assert _owned(obj) == {
        ("alice", "Apply"): {
            "f:spec": {
                "f:ports": {
                    'k:{"name":"http","protocol":"TCP"}': {
                        ".": {},
                        "f:name": {},
                        "f:port": {},
                        "f:protocol": {},
                    },
                    'k:{"name":"http","protocol":"UDP"}': {
                        ".": {},
                        "f:name": {},
                        "f:port": {},
                        "f:protocol": {},
                    },
                }
            }
        }
    }


def test_list_items_merge_field_by_field_across_managers() -> None:
    alice = _widget({"ports": [_port("http", 80), _port("dns", 53)]})
    obj = _apply(None, alice, "alice", types=WIDGET)
    bob = _widget({"ports": [{"name": "http", "protocol": "TCP", "appProtocol": "h2"}]})
    obj = _apply(obj, bob, "bob", T1, types=WIDGET)
    assert obj["spec"]["ports"] == [_port("http", 80, appProtocol="h2"), _port("dns", 53)]
    # Bob owns the item too (its "."), its keys and his field.
    assert _owned(obj)[("bob", "Apply")] == {
        "f:spec": {
            "f:ports": {
                'k:{"name":"http","protocol":"TCP"}': {
                    ".": {},
                    "f:appProtocol": {},
                    "f:name": {},
                    "f:protocol": {},
                }
            }
        }
    }
    error = _conflict(obj, _widget({"ports": [_port("http", 8080)]}), "carol", WIDGET)
    assert error.conflicts == [("alice", '.spec.ports[name="http",protocol="TCP"].port')]


def test_an_item_no_longer_applied_is_removed_unless_someone_owns_part_of_it() -> None:
    ports = [_port("http", 80), _port("dns", 53, "UDP"), _port("ssh", 22)]
    obj = _apply(None, _widget({"ports": ports}), "alice", types=WIDGET)
    bob = _widget({"ports": [{"name": "ssh", "protocol": "TCP", "x": 1}]})
    obj = _apply(obj, bob, "bob", T1, types=WIDGET)
    obj = _apply(obj, _widget({"ports": [_port("http", 80)]}), "alice", T2, types=WIDGET)
    # dns went; ssh stays for bob's sake, with its keys and his field but not alice's port.
    assert obj["spec"]["ports"] == [
        _port("http", 80),
        {"name": "ssh", "protocol": "TCP", "x": 1},
    ]


def test_a_list_emptied_by_removal_goes() -> None:
    obj = _apply(None, _widget({"ports": [_port("http", 80)], "size": 1}), "a", types=WIDGET)
    obj = _apply(obj, _widget({"size": 1}), "a", T1, types=WIDGET)
    assert _body(obj) == _widget({"size": 1})


def test_merged_lists_keep_the_applied_order_and_live_items_in_place() -> None:
    live = _widget({"ports": [_port("a", 1), _port("b", 2), _port("c", 3)]})
    applied = _widget({"ports": [_port("c", 3), _port("a", 1), _port("d", 4)]})
    obj = _apply(live, applied, "m", types=WIDGET)
    assert [p["name"] for p in obj["spec"]["ports"]] == ["b", "c", "a", "d"]


def test_applied_lists_must_have_keys_and_no_duplicates() -> None:
    with pytest.raises(PatchError) as missing:
        _apply(None, _widget({"ports": [{"name": "http", "port": 80}]}), "m", types=WIDGET)
    assert missing.value.code == 422 and "protocol" in missing.value.message
    with pytest.raises(PatchError) as twice:
        _apply(None, _widget({"ports": [_port("a", 1), _port("a", 2)]}), "m", types=WIDGET)
    assert twice.value.code == 422
    assert 'duplicate entries for key [name="a",protocol="TCP"]' in twice.value.message


def test_a_stored_list_that_cannot_be_keyed_is_treated_as_atomic() -> None:
    live = _widget({"ports": [{"port": 1}, {"port": 1}]})
    obj = _apply(live, _widget({"ports": [_port("a", 1)]}), "m", types=WIDGET)
    assert obj["spec"]["ports"] == [_port("a", 1)]


# --- set and atomic lists -----------------------------------------------------------------------


def test_set_lists_are_unioned_and_each_value_is_owned() -> None:
    obj = _apply(None, _cm(finalizers=["a.io/one", "a.io/two"]), "alice", T0)
    obj = _apply(obj, _cm(finalizers=["b.io/x"]), "bob", T1)
    assert obj["metadata"]["finalizers"] == ["a.io/one", "a.io/two", "b.io/x"]
    assert _owned(obj)[("bob", "Apply")] == {"f:metadata": {"f:finalizers": {'v:"b.io/x"': {}}}}
    obj = _apply(obj, _cm(finalizers=["a.io/two"]), "alice", T2)
    assert obj["metadata"]["finalizers"] == ["a.io/two", "b.io/x"]
    assert _owned(obj)[("alice", "Apply")] == {"f:metadata": {"f:finalizers": {'v:"a.io/two"': {}}}}


def test_a_list_without_a_list_type_is_atomic() -> None:
    obj = _apply(None, _widget({"args": ["a", "b"]}), "alice", types=WIDGET)
    assert _owned(obj) == {("alice", "Apply"): {"f:spec": {"f:args": {}}}}
    obj = _apply(obj, _widget({"args": ["c"]}), "alice", T1, types=WIDGET)
    assert obj["spec"]["args"] == ["c"]  # replaced, not merged
    error = _conflict(obj, _widget({"args": ["c", "d"]}), "bob", WIDGET)
    assert error.conflicts == [("alice", ".spec.args")]
    same = _apply(obj, _widget({"args": ["c"]}), "bob", T2, types=WIDGET)
    assert ("bob", "Apply") in _owned(same)


def test_a_set_list_of_a_custom_resource() -> None:
    obj = _apply(None, _widget({"tags": ["x", "y"]}), "alice", types=WIDGET)
    obj = _apply(obj, _widget({"tags": ["z", "x"]}), "bob", T1, types=WIDGET)
    assert obj["spec"]["tags"] == ["z", "x", "y"]
    assert _owned(obj)[("bob", "Apply")] == {"f:spec": {"f:tags": {'v:"x"': {}, 'v:"z"': {}}}}


# --- updates and the client-side apply -> server-side apply conflict ---------------------------


def test_update_on_create_owns_every_field_with_dots_on_created_maps() -> None:
    new = _cm({"a": "1"}, labels={"app": "web"}, finalizers=["f"])
    entries = update_managed_fields(
        None, new, manager="kubectl-create", api_version="v1", list_types=CONFIGMAP, now=T0
    )
    assert entries == [
        {
            "manager": "kubectl-create",
            "operation": "Update",
            "apiVersion": "v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:data": {".": {}, "f:a": {}},
                "f:metadata": {
                    "f:finalizers": {".": {}, 'v:"f"': {}},
                    "f:labels": {".": {}, "f:app": {}},
                },
            },
        }
    ]
    assert entries[0]["fieldsV1"] == fields_v1(new, CONFIGMAP)


def _update(old: dict[str, Any] | None, new: dict[str, Any], manager: str, now: str) -> Any:
    result = copy.deepcopy(new)
    entries = update_managed_fields(
        old, new, manager=manager, api_version="v1", list_types=CONFIGMAP, now=now
    )
    result["metadata"]["managedFields"] = entries
    return result


def test_an_update_moves_changed_fields_and_drops_removed_ones() -> None:
    obj = _apply(None, _cm({"a": "1", "b": "2", "c": "3"}), "alice", T0)
    new = copy.deepcopy(obj)
    new["data"] = {"a": "1", "b": "changed"}  # c removed, b changed
    del new["metadata"]["managedFields"]  # a client that does not send them
    obj = _update(obj, new, "editor", T1)
    assert obj["metadata"]["managedFields"] == [
        {
            "manager": "alice",
            "operation": "Apply",
            "apiVersion": "v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {"f:a": {}}},
        },
        {
            "manager": "editor",
            "operation": "Update",
            "apiVersion": "v1",
            "time": T1,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {"f:b": {}}},
        },
    ]
    # An update that changes nothing changes no entry, not even a time.
    assert _update(obj, obj, "editor", T2) == obj
    assert _update(obj, obj, "someone-else", T2) == obj


def test_update_entries_are_per_api_version_and_accumulate() -> None:
    obj = _update(None, _cm({"a": "1"}), "ctl", T0)
    obj = _update(obj, {**obj, "data": {"a": "1", "b": "2"}}, "ctl", T1)
    assert obj["metadata"]["managedFields"] == [
        {
            "manager": "ctl",
            "operation": "Update",
            "apiVersion": "v1",
            "time": T1,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {".": {}, "f:a": {}, "f:b": {}}},
        }
    ]
    v2 = update_managed_fields(
        obj,
        {**obj, "data": {"a": "1", "b": "3"}},
        manager="ctl",
        api_version="v2",
        list_types=CONFIGMAP,
        now=T2,
    )
    assert [(e["apiVersion"], e["fieldsV1"]) for e in v2] == [
        ("v1", {"f:data": {".": {}, "f:a": {}}}),
        ("v2", {"f:data": {"f:b": {}}}),
    ]


def test_managed_fields_sent_by_the_client_are_used_or_reset() -> None:
    obj = _update(None, _cm({"a": "1"}), "creator", T0)
    edited = copy.deepcopy(obj)
    edited["metadata"]["managedFields"][0]["manager"] = "renamed"
    assert [e["manager"] for e in _update(obj, edited, "x", T1)["metadata"]["managedFields"]] == [
        "renamed"
    ]
    for reset in ([], [{}]):
        cleared = {**obj, "metadata": {**obj["metadata"], "managedFields": reset}}
        assert _update(obj, cleared, "x", T1)["metadata"]["managedFields"] == []
    garbage = {**obj, "metadata": {**obj["metadata"], "managedFields": [{"manager": 1}]}}
    assert _update(obj, garbage, "x", T1) == {**obj, "metadata": obj["metadata"]}


def test_client_side_apply_then_server_side_apply_conflicts_with_the_updater() -> None:
    created = _cm({"a": "1", "b": "2"})
    obj = _update(None, created, "kubectl-client-side-apply", T0)
    error = _conflict(obj, _cm({"a": "changed"}), "kubectl")
    assert error.conflicts == [("kubectl-client-side-apply", ".data.a")]
    assert error.message == (
        'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using v1: .data.a'
    )
    # The same values do not conflict; force takes the field.
    shared = _apply(obj, _cm({"a": "1"}), "kubectl", T1)
    assert _owned(shared)[("kubectl", "Apply")] == {"f:data": {"f:a": {}}}
    assert _owned(shared)[("kubectl-client-side-apply", "Update")] == {
        "f:data": {".": {}, "f:a": {}, "f:b": {}}
    }
    forced = _apply(obj, _cm({"a": "changed"}), "kubectl", T1, force=True)
    assert forced["metadata"]["managedFields"] == [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": "v1",
            "time": T1,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {"f:a": {}}},
        },
        {
            "manager": "kubectl-client-side-apply",
            "operation": "Update",
            "apiVersion": "v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:data": {".": {}, "f:b": {}}},
        },
    ]
    # The applier stops applying data.a: it goes, the updater's (now empty) map stays.
    dropped = _apply(forced, _cm(), "kubectl", T2)
    assert dropped["data"] == {"b": "2"}


def test_an_updater_changing_an_applied_field_takes_it() -> None:
    obj = _apply(None, _cm({"a": "1"}), "alice", T0)
    edited = copy.deepcopy(obj)
    edited["data"]["a"] = "2"
    obj = _update(obj, edited, "editor", T1)
    assert list(_owned(obj)) == [("editor", "Update")]
    # Alice re-applies her value: a conflict with the editor.
    assert _conflict(obj, _cm({"a": "1"}), "alice").conflicts == [("editor", ".data.a")]


# --- fields_v1 and the FieldsV1 details ---------------------------------------------------------


def test_fields_v1_of_a_whole_object() -> None:
    obj = _widget(
        {"ports": [_port("http", 80)], "tags": ["b", "a"], "nested": {"x": {"y": True}}},
        labels={"app": "w"},
        uid="ignored",
        resourceVersion="1",
        ownerReferences=[_owner("u1", "one")],
    )
    assert fields_v1(obj, WIDGET) == {
        "f:metadata": {
            "f:labels": {".": {}, "f:app": {}},
            "f:ownerReferences": {".": {}, 'k:{"uid":"u1"}': {}},
        },
        "f:spec": {
            ".": {},
            "f:nested": {".": {}, "f:x": {".": {}, "f:y": {}}},
            "f:ports": {
                ".": {},
                'k:{"name":"http","protocol":"TCP"}': {
                    ".": {},
                    "f:name": {},
                    "f:port": {},
                    "f:protocol": {},
                },
            },
            "f:tags": {".": {}, 'v:"a"': {}, 'v:"b"': {}},
        },
    }
    assert list(fields_v1(obj, WIDGET)["f:spec"]["f:tags"]) == [".", 'v:"a"', 'v:"b"']


def test_key_json_is_compact_sorted_and_escaped_like_go() -> None:
    types: ListTypes = {"spec.items": ListType.associative("z", "a")}
    obj = _widget({"items": [{"z": "<&>", "a": 2}]})
    assert list(fields_v1(obj, types)["f:spec"]["f:items"]) == [
        ".",
        'k:{"a":2,"z":"\\u003c\\u0026\\u003e"}',
    ]


def test_true_and_one_are_different_values() -> None:
    obj = _apply(None, _widget({"flag": 1}), "alice", types=WIDGET)
    error = _conflict(obj, _widget({"flag": True}), "bob", WIDGET)
    assert error.conflicts == [("alice", ".spec.flag")]
    same = _apply(obj, _widget({"flag": 1.0}), "bob", T1, types=WIDGET)
    assert _body(same) == _body(obj)


# --- rejected apply configurations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("applied", "fragment"),
    [
        ({**_cm(), "metadata": {"name": "cm", "managedFields": []}}, "managedFields must be nil"),
        ({**_cm(), "apiVersion": "v2"}, "Incorrect version"),
        ({**_cm(), "kind": "Secret"}, "Incorrect kind"),
    ],
)
def test_bad_apply_configurations_are_400(applied: dict[str, Any], fragment: str) -> None:
    live = _apply(None, _cm({"a": "1"}), "alice")
    with pytest.raises(PatchError) as info:
        apply(
            live,
            applied,
            manager="m",
            api_version="v1",
            force=False,
            list_types=CONFIGMAP,
            now=T1,
        )
    assert info.value.code == 400 and fragment in info.value.message


def test_nulls_in_the_applied_configuration_are_dropped() -> None:
    obj = _apply(None, _cm({"a": "1", "b": None}), "alice")
    assert obj["data"] == {"a": "1"}


def test_unreadable_stored_managed_fields_count_as_empty() -> None:
    live = _cm({"a": "1"})
    live["metadata"]["managedFields"] = [{"manager": "x", "operation": "Bogus"}]
    obj = _apply(live, _cm({"a": "2"}), "alice", T1)
    assert list(_owned(obj)) == [("alice", "Apply")]


# --- list types ---------------------------------------------------------------------------------


def test_list_types_from_a_patch_schema() -> None:
    assert list_types_from_patch_schema(
        {**STRATEGIC_SCHEMAS["ServiceAccount"], "x": ListStrategy("name")}
    ) == {
        "metadata.ownerReferences": ListType.associative("uid", atomic_items=True),
        "metadata.finalizers": ListType.set(),
        "secrets": ListType.associative("name"),
        "x": ListType.associative("name"),
    }


def test_list_types_from_a_crd_openapi_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "ports": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name", "protocol"],
                        "items": {
                            "type": "object",
                            "properties": {
                                "hosts": {"type": "array", "x-kubernetes-list-type": "set"}
                            },
                        },
                    },
                    "refs": {
                        "type": "array",
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["uid"],
                        "items": {"type": "object", "x-kubernetes-map-type": "atomic"},
                    },
                    "args": {"type": "array", "items": {"type": "string"}},
                },
            }
        },
    }
    assert list_types_from_openapi(schema) == {
        "spec.ports": ListType.associative("name", "protocol"),
        "spec.ports.hosts": ListType.set(),
        "spec.refs": ListType.associative("uid", atomic_items=True),
    }


def test_list_type_rejects_inconsistent_descriptions() -> None:
    with pytest.raises(ValueError):
        ListType("map")
    with pytest.raises(ValueError):
        ListType("set", ("name",))
    with pytest.raises(ValueError):
        ListType("atomic", atomic_items=True)


@pytest.mark.parametrize(
    "obj",
    [
        _cm({"a": "1", "b": ""}, labels={"x": "y"}, annotations={}),
        _cm(None, finalizers=["f1", "f2"], ownerReferences=[{"uid": "u", "name": "o"}]),
        _widget(
            {
                "ports": [{"name": "http", "protocol": "TCP", "port": 80}, {"name": "x"}],
                "tags": ["b", "a", {"k": 1}],
                "atomic": [1, [2], {}],
                "empty": {},
                "none": None,
                "deep": {"a": {"b": {"c": []}}},
            },
            labels={"app": "w"},
        ),
        _widget({"ports": [{"name": "dup", "protocol": "TCP"}] * 2, "tags": []}),
    ],
)
def test_a_create_owns_what_the_general_comparison_finds(obj):
    """Creates take a shortcut (`_added_paths`); it must agree with the general walk that
    updates use, on keyed, set, atomic, empty and unkeyable lists and on nested maps."""
    from haplane.api import server_side_apply as ssa

    types = ssa._normalized(WIDGET)
    view = ssa._owned_view(obj)
    assert ssa._added_paths(view, types) == ssa._compare({}, view, types).added
    entries = update_managed_fields(
        None, obj, manager="m", api_version="v1", list_types=WIDGET, now=T0
    )
    assert entries == [
        {
            "manager": "m",
            "operation": "Update",
            "apiVersion": "v1",
            "time": T0,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(obj, WIDGET),
        }
    ]
