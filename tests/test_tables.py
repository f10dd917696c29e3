"""haplane.api.tables: Accept negotiation, kube's printers and CRD columns, includeObject, ages."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from haplane.api.tables import (
    Column,
    builtin_columns,
    crd_columns,
    go_format_float,
    human_age,
    human_duration,
    kubectl_to_jsonpath_ng,
    table_for_watch_event,
    table_request,
    to_table,
)

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


def ts(ago: timedelta) -> str:
    return (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def obj(kind: str, name: str = "x", ago: timedelta = timedelta(minutes=5), **fields: Any) -> Any:
    return {
        "kind": kind,
        "apiVersion": "v1",
        "metadata": {"name": name, "creationTimestamp": ts(ago), "resourceVersion": "42"},
        **fields,
    }


def cells(columns: list[Column], o: dict[str, Any]) -> list[Any]:
    table = to_table([o], columns, list_meta={}, include_object="None", now=NOW)
    return list(table["rows"][0]["cells"])


def names(columns: list[Column]) -> list[str]:
    return [c.name for c in columns]


# --- Accept negotiation -----------------------------------------------------------------------


def test_kubectl_header_asks_for_a_v1_table() -> None:
    assert table_request(KUBECTL_ACCEPT) == "v1"


def test_v1beta1_only_and_plain_json() -> None:
    assert table_request("application/json;as=Table;v=v1beta1;g=meta.k8s.io") == "v1beta1"
    assert table_request("application/json") is None
    assert table_request("application/json, */*") is None
    assert table_request("*/*") is None
    assert table_request(None) is None
    assert table_request("") is None


def test_plain_json_listed_first_wins() -> None:
    assert table_request("application/json,application/json;as=Table;v=v1;g=meta.k8s.io") is None


def test_q_values_order_the_choices() -> None:
    assert (
        table_request(
            "application/json;q=0.5, application/json;as=Table;v=v1beta1;g=meta.k8s.io;q=0.9"
        )
        == "v1beta1"
    )
    assert (
        table_request("application/json;as=Table;v=v1;g=meta.k8s.io;q=0.1, application/json")
        is None
    )
    # q=0 is "not acceptable"; an unparseable q too
    assert table_request("application/json;as=Table;v=v1;g=meta.k8s.io;q=0") is None
    assert table_request("application/json;as=Table;v=v1;g=meta.k8s.io;q=x") is None


def test_concrete_type_sorts_before_wildcard_of_equal_q() -> None:
    assert table_request("*/*;as=Table;v=v1;g=meta.k8s.io, application/json") is None
    assert table_request("application/*;as=Table;v=v1;g=meta.k8s.io") == "v1"


def test_partial_object_metadata_is_not_served_and_falls_back() -> None:
    assert (
        table_request(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
        )
        is None
    )
    assert table_request("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1") is None
    # skipped like any range haplane cannot serve: the next acceptable one decides
    assert (
        table_request(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
            "application/json;as=Table;g=meta.k8s.io;v=v1"
        )
        == "v1"
    )


def test_ranges_haplane_cannot_serve_are_skipped() -> None:
    # protobuf Table, wrong group, unknown version, missing group: on to the next range
    assert (
        table_request(
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,"
            "application/json;as=Table;v=v1;g=example.com,"
            "application/json;as=Table;v=v2;g=meta.k8s.io,"
            "application/json;as=Table;v=v1,"
            "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
        )
        == "v1beta1"
    )
    assert table_request("application/yaml;as=Table;v=v1;g=meta.k8s.io") is None


def test_accept_parsing_tolerates_case_spaces_and_quotes() -> None:
    assert table_request(' Application/JSON ; AS=Table ; V="v1" ; G=meta.k8s.io ') == "v1"
    assert table_request('application/json;as=Table;g=meta.k8s.io;v=v1;x="a,b"') == "v1"


# --- Built-in printers ------------------------------------------------------------------------


def test_namespace_columns_and_cells() -> None:
    columns = builtin_columns("Namespace")
    assert columns[0].definition()["format"] == "name"
    assert names(columns) == ["Name", "Status", "Age"]
    ns = obj("Namespace", "team-a", timedelta(hours=3, minutes=5), status={"phase": "Active"})
    assert cells(columns, ns) == ["team-a", "Active", "3h5m"]
    # Go zero value for a missing phase, as kube's printer
    assert cells(columns, obj("Namespace", "b")) == ["b", "", "5m"]


def test_configmap_counts_data_and_binary_data() -> None:
    columns = builtin_columns("ConfigMap")
    assert names(columns) == ["Name", "Data", "Age"]
    cm = obj("ConfigMap", "cfg", data={"a": "1", "b": "2"}, binaryData={"c": "AA=="})
    assert cells(columns, cm) == ["cfg", 3, "5m"]
    assert cells(columns, obj("ConfigMap", "empty")) == ["empty", 0, "5m"]


def test_secret_type_and_data_count() -> None:
    columns = builtin_columns("Secret")
    assert names(columns) == ["Name", "Type", "Data", "Age"]
    secret = obj("Secret", "s", timedelta(days=3), type="Opaque", data={"k": "dg=="})
    assert cells(columns, secret) == ["s", "Opaque", 1, "3d"]


def test_serviceaccount_secrets_count() -> None:
    columns = builtin_columns("ServiceAccount")
    assert names(columns) == ["Name", "Secrets", "Age"]
    sa = obj("ServiceAccount", "default", secrets=[{"name": "t1"}, {"name": "t2"}])
    assert cells(columns, sa) == ["default", 2, "5m"]
    assert cells(columns, obj("ServiceAccount", "bare"))[1] == 0


def test_lease_holder() -> None:
    columns = builtin_columns("Lease")
    assert names(columns) == ["Name", "Holder", "Age"]
    lease = obj("Lease", "leader", spec={"holderIdentity": "node-1_abc"})
    assert cells(columns, lease) == ["leader", "node-1_abc", "5m"]
    assert cells(columns, obj("Lease", "free", spec={}))[1] == ""


def test_event_columns_like_kubectl_including_wide_ones() -> None:
    columns = builtin_columns("Event")
    assert names(columns) == [
        "Last Seen",
        "Type",
        "Reason",
        "Object",
        "Subobject",
        "Source",
        "Message",
        "First Seen",
        "Count",
        "Name",
    ]
    visible = [c.name for c in columns if c.priority == 0]
    assert visible == ["Last Seen", "Type", "Reason", "Object", "Message"]
    event = obj(
        "Event",
        "foo.17a",
        type="Normal",
        reason="Scheduled",
        message="  Successfully assigned default/foo to node-1\n",
        involvedObject={"kind": "Pod", "name": "foo", "fieldPath": "spec.containers{app}"},
        source={"component": "default-scheduler", "host": "node-1"},
        firstTimestamp=ts(timedelta(minutes=30)),
        lastTimestamp=ts(timedelta(seconds=45)),
        count=4,
    )
    assert cells(columns, event) == [
        "45s",
        "Normal",
        "Scheduled",
        "pod/foo",
        "spec.containers{app}",
        "default-scheduler, node-1",
        "Successfully assigned default/foo to node-1",
        "30m",
        4,
        "foo.17a",
    ]


def test_event_time_fallbacks_object_without_name_and_singleton_count() -> None:
    columns = builtin_columns("Event")
    only_first = obj("Event", firstTimestamp=ts(timedelta(minutes=7)), involvedObject={})
    row = cells(columns, only_first)
    assert row[0] == "7m" and row[7] == "7m" and row[8] == 1
    micro = obj(
        "Event",
        eventTime=(NOW - timedelta(seconds=9)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        involvedObject={"kind": "Node"},
        reportingController="kubelet",
        reportingInstance="node-2",
    )
    row = cells(columns, micro)
    assert row[0] == "9s" and row[3] == "node" and row[5] == "kubelet, node-2"
    series = obj(
        "Event",
        firstTimestamp=ts(timedelta(hours=1)),
        series={"count": 12, "lastObservedTime": ts(timedelta(seconds=3))},
    )
    row = cells(columns, series)
    assert row[0] == "3s" and row[8] == 12
    assert cells(columns, obj("Event"))[0] == "<unknown>"


def test_events_k8s_io_v1_shape_prints_the_same() -> None:
    event = obj(
        "Event",
        "e",
        type="Warning",
        reason="BackOff",
        note="Back-off restarting",
        regarding={"kind": "Pod", "name": "web-0"},
        deprecatedLastTimestamp=ts(timedelta(minutes=2)),
        deprecatedCount=5,
    )
    row = cells(builtin_columns("Event"), event)
    assert row[:4] == ["2m", "Warning", "BackOff", "pod/web-0"]
    assert row[6] == "Back-off restarting" and row[8] == 5


def test_unknown_kind_gets_name_and_age() -> None:
    columns = builtin_columns("Widget")
    assert names(columns) == ["Name", "Age"]
    assert cells(columns, obj("Widget", "w", timedelta(days=400))) == ["w", "400d"]


def test_builtin_columns_returns_a_fresh_list() -> None:
    builtin_columns("Secret").clear()
    assert len(builtin_columns("Secret")) == 4


# --- CRD columns ------------------------------------------------------------------------------

CRD_OBJECT = {
    "apiVersion": "example.com/v1",
    "kind": "Widget",
    "metadata": {
        "name": "w1",
        "creationTimestamp": ts(timedelta(hours=4)),
        "labels": {"app": "shop", "app.kubernetes.io/name": "widget"},
    },
    "spec": {"replicas": 3, "ratio": 2.75, "paused": False, "size": "7", "sel": {"b": 1, "a": 2}},
    "status": {
        "conditions": [
            {"type": "Progressing", "status": "True", "lastTransitionTime": ts(timedelta(0))},
            {
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": ts(timedelta(minutes=3, seconds=10)),
            },
        ],
        "big": 1000000.0,
    },
}


def crd_cells(*specs: dict[str, Any]) -> list[Any]:
    return cells(crd_columns(list(specs)), CRD_OBJECT)


def test_crd_name_first_then_declared_columns_without_extra_age() -> None:
    columns = crd_columns(
        [
            {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "App", "type": "string", "jsonPath": ".metadata.labels.app"},
        ]
    )
    assert names(columns) == ["Name", "Replicas", "App"]
    assert cells(columns, CRD_OBJECT) == ["w1", 3, "shop"]


def test_crd_without_columns_gets_the_default_age_column() -> None:
    columns = crd_columns([])
    assert names(columns) == ["Name", "Age"]
    assert columns[1].type == "date"
    assert cells(columns, CRD_OBJECT) == ["w1", "4h"]


def test_crd_filter_index_and_escaped_key_paths() -> None:
    assert crd_cells(
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {"name": "First", "type": "string", "jsonPath": ".status.conditions[0].type"},
        {"name": "N", "type": "string", "jsonPath": r".metadata.labels.app\.kubernetes\.io/name"},
        {"name": "B", "type": "string", "jsonPath": ".metadata.labels['app.kubernetes.io/name']"},
    ) == ["w1", "False", "Progressing", "widget", "widget"]


def test_crd_missing_values_are_none() -> None:
    assert crd_cells(
        {"name": "A", "type": "string", "jsonPath": ".spec.nothing"},
        {"name": "B", "type": "integer", "jsonPath": ".status.missing.deeper"},
        {"name": "C", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Gone")].status'},
        {"name": "D", "type": "string", "jsonPath": ".status.conditions[5].type"},
    ) == ["w1", None, None, None, None]


def test_crd_integer_number_boolean_typing() -> None:
    assert crd_cells(
        {"name": "I", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "I2", "type": "integer", "jsonPath": ".spec.ratio"},
        {"name": "I3", "type": "integer", "jsonPath": ".spec.size"},
        {"name": "I4", "type": "integer", "jsonPath": ".spec.paused"},
        {"name": "N", "type": "number", "jsonPath": ".spec.replicas"},
        {"name": "B", "type": "boolean", "jsonPath": ".spec.paused"},
        {"name": "B2", "type": "boolean", "jsonPath": ".spec.size"},
        {"name": "U", "type": "unknown", "jsonPath": ".spec.replicas"},
    ) == ["w1", 3, 2, None, None, 3.0, False, None, None]
    number = crd_cells({"name": "N", "type": "number", "jsonPath": ".spec.replicas"})[1]
    assert isinstance(number, float)


def test_crd_string_columns_print_like_go() -> None:
    assert crd_cells(
        {"name": "R", "type": "string", "jsonPath": ".spec.replicas"},
        {"name": "F", "type": "string", "jsonPath": ".spec.ratio"},
        {"name": "E", "type": "string", "jsonPath": ".status.big"},
        {"name": "P", "type": "string", "jsonPath": ".spec.paused"},
        {"name": "M", "type": "string", "jsonPath": ".spec.sel"},
    ) == ["w1", "3", "2.75", "1e+06", "false", '{"a":2,"b":1}']


def test_crd_date_columns_render_ages() -> None:
    odd = copy.deepcopy(CRD_OBJECT)
    odd["status"]["when"] = "yesterday"
    odd["status"]["empty"] = ""
    columns = crd_columns(
        [
            {
                "name": "Since",
                "type": "date",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].lastTransitionTime',
            },
            {"name": "Created", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            {"name": "Bad", "type": "date", "jsonPath": ".status.when"},
            {"name": "Empty", "type": "date", "jsonPath": ".status.empty"},
            {"name": "NotText", "type": "date", "jsonPath": ".spec.replicas"},
        ]
    )
    assert cells(columns, odd) == ["w1", "3m10s", "4h", "<invalid>", "<unknown>", None]


def test_crd_column_definitions_carry_priority_format_description() -> None:
    columns = crd_columns(
        [
            {
                "name": "Replicas",
                "type": "integer",
                "format": "int32",
                "description": "desired replicas",
                "priority": 1,
                "jsonPath": ".spec.replicas",
            },
            {"name": "App", "type": "string", "jsonPath": ".metadata.labels.app"},
        ]
    )
    table = to_table([CRD_OBJECT], columns, list_meta={}, now=NOW)
    assert table["columnDefinitions"] == [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": columns[0].description,
            "priority": 0,
        },
        {
            "name": "Replicas",
            "type": "integer",
            "format": "int32",
            "description": "desired replicas",
            "priority": 1,
        },
        {
            "name": "App",
            "type": "string",
            "format": "",
            "description": "Custom resource definition column (in JSONPath format): "
            ".metadata.labels.app",
            "priority": 0,
        },
    ]


def test_crd_with_an_unparseable_path_falls_back_to_name_and_age() -> None:
    columns = crd_columns(
        [
            {"name": "Ok", "type": "integer", "jsonPath": ".spec.replicas"},
            {"name": "Bad", "type": "string", "jsonPath": ".spec[?(@.x=="},
        ]
    )
    assert names(columns) == ["Name", "Age"]
    assert cells(columns, CRD_OBJECT) == ["w1", "4h"]


def test_jsonpath_translation() -> None:
    assert kubectl_to_jsonpath_ng(".spec.replicas") == '$."spec"."replicas"'
    assert kubectl_to_jsonpath_ng("{.spec.replicas}") == '$."spec"."replicas"'
    assert kubectl_to_jsonpath_ng(".items[*].metadata") == '$."items"[*]."metadata"'
    assert kubectl_to_jsonpath_ng('.a["x"]..b') == '$."a"["x"].."b"'
    assert kubectl_to_jsonpath_ng(".spec.*") == '$."spec".*'
    assert kubectl_to_jsonpath_ng("..[0]") == "$..[0]"
    with pytest.raises(ValueError):
        kubectl_to_jsonpath_ng(".spec..")
    with pytest.raises(ValueError):
        kubectl_to_jsonpath_ng(".spec[0")


def test_go_float_formatting() -> None:
    assert [go_format_float(v) for v in (3.0, 999999.0, 1234567.0, 0.0001, 1.5e-5, -2.5)] == [
        "3",
        "999999",
        "1.234567e+06",
        "0.0001",
        "1.5e-05",
        "-2.5",
    ]


# --- includeObject, versions, list metadata -----------------------------------------------------


def test_include_object_metadata_is_the_default() -> None:
    cm = obj("ConfigMap", "cfg", data={"a": "b"})
    table = to_table(
        [cm], builtin_columns("ConfigMap"), list_meta={"resourceVersion": "9"}, now=NOW
    )
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["rows"][0]["object"] == {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": cm["metadata"],
    }
    empty_policy = to_table([cm], [], list_meta={}, include_object="", now=NOW)
    assert empty_policy["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_include_object_object_and_none() -> None:
    cm = obj("ConfigMap", "cfg")
    columns = builtin_columns("ConfigMap")
    full = to_table([cm], columns, list_meta={}, include_object="Object", now=NOW)
    assert full["rows"][0]["object"] == cm
    bare = to_table([cm], columns, list_meta={}, include_object="None", now=NOW)
    assert bare["rows"][0] == {"cells": ["cfg", 0, "5m"]}


def test_v1beta1_table_and_partial_metadata_versions() -> None:
    table = to_table([obj("Secret")], builtin_columns("Secret"), list_meta={}, version="v1beta1")
    assert table["apiVersion"] == "meta.k8s.io/v1beta1"
    assert table["rows"][0]["object"]["apiVersion"] == "meta.k8s.io/v1beta1"


def test_bad_include_object_or_version_is_rejected() -> None:
    with pytest.raises(ValueError, match="includeObject"):
        to_table([], [], list_meta={}, include_object="Everything")
    with pytest.raises(ValueError, match="group version"):
        to_table([], [], list_meta={}, version="v2")


def test_list_metadata_passthrough() -> None:
    meta = {"resourceVersion": "1234", "continue": "tok", "remainingItemCount": 17}
    table = to_table([], builtin_columns("Namespace"), list_meta=meta, now=NOW)
    assert table["metadata"] == meta
    assert table["rows"] == []
    assert len(table["columnDefinitions"]) == 3
    sparse = to_table([], [], list_meta={"resourceVersion": "5", "continue": "", "selfLink": "/x"})
    assert sparse["metadata"] == {"resourceVersion": "5"}
    zero = to_table([], [], list_meta={"remainingItemCount": 0})
    assert zero["metadata"] == {"remainingItemCount": 0}


def test_rows_keep_order_serialize_and_inputs_are_untouched() -> None:
    items = [obj("Lease", f"l{i}", spec={"holderIdentity": f"h{i}"}) for i in range(3)]
    saved = copy.deepcopy(items)
    table = to_table(
        items,
        builtin_columns("Lease"),
        list_meta={"resourceVersion": "7"},
        include_object="Object",
        now=NOW.replace(tzinfo=None),  # a naive "now" is taken as UTC
    )
    assert [r["cells"][:2] for r in table["rows"]] == [["l0", "h0"], ["l1", "h1"], ["l2", "h2"]]
    assert all(r["cells"][2] == "5m" for r in table["rows"])
    json.dumps(table)
    assert items == saved


def test_custom_column() -> None:
    column = Column("Kind", "string", extract=lambda o, now: o.get("kind"))
    assert column.definition() == {
        "name": "Kind",
        "type": "string",
        "format": "",
        "description": "",
        "priority": 0,
    }
    assert cells([column], obj("Pod")) == ["Pod"]


def test_watch_event_table_has_one_row_and_the_objects_version() -> None:
    ns = obj("Namespace", "n", status={"phase": "Terminating"})
    first = table_for_watch_event(ns, builtin_columns("Namespace"), now=NOW)
    assert first["metadata"] == {"resourceVersion": "42"}
    assert len(first["columnDefinitions"]) == 3
    assert [r["cells"] for r in first["rows"]] == [["n", "Terminating", "5m"]]
    later = table_for_watch_event(
        ns, builtin_columns("Namespace"), include_object="Object", now=NOW, no_headers=True
    )
    assert later["columnDefinitions"] == []
    assert later["rows"][0]["object"] == ns


# --- Ages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ago", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=1), "1s"),
        (timedelta(seconds=119, milliseconds=999), "119s"),
        (timedelta(seconds=120), "2m"),
        (timedelta(seconds=121), "2m1s"),
        (timedelta(minutes=9, seconds=59), "9m59s"),
        (timedelta(minutes=10), "10m"),
        (timedelta(minutes=10, seconds=59), "10m"),
        (timedelta(hours=2), "120m"),
        (timedelta(minutes=179, seconds=59), "179m"),
        (timedelta(hours=3), "3h"),
        (timedelta(hours=3, minutes=5), "3h5m"),
        (timedelta(hours=7, minutes=59), "7h59m"),
        (timedelta(hours=8), "8h"),
        (timedelta(hours=8, minutes=30), "8h"),
        (timedelta(hours=47, minutes=59), "47h"),
        (timedelta(hours=48), "2d"),
        (timedelta(hours=49), "2d1h"),
        (timedelta(days=7, hours=23), "7d23h"),
        (timedelta(days=8), "8d"),
        (timedelta(days=729, hours=23), "729d"),
        (timedelta(days=730), "2y"),
        (timedelta(days=731), "2y1d"),
        (timedelta(days=365 * 8 - 1), "7y364d"),
        (timedelta(days=365 * 8), "8y"),
        (timedelta(days=365 * 10 + 200), "10y"),
        (timedelta(seconds=-1), "0s"),
        (timedelta(seconds=-1, milliseconds=-500), "0s"),
        (timedelta(seconds=-2), "<invalid>"),
    ],
)
def test_human_duration_boundaries(ago: timedelta, expected: str) -> None:
    assert human_duration(ago) == expected
    created = (NOW - ago).isoformat().replace("+00:00", "Z")
    assert human_age(created, NOW) == expected


def test_human_age_unknown_and_timestamp_forms() -> None:
    assert human_age(None, NOW) == "<unknown>"
    assert human_age("", NOW) == "<unknown>"
    assert human_age("not a time", NOW) == "<unknown>"
    assert human_age("2024-06-01", NOW) == "<unknown>"
    assert human_age("0001-01-01T00:00:00Z", NOW) == "<unknown>"
    assert human_age("2024-06-01T13:55:00+02:00", NOW) == "5m"
    assert human_age("2024-06-01T11:59:30.123456789Z", NOW) == "29s"
    assert human_age("2024-06-01t11:59:00z", NOW) == "60s"
