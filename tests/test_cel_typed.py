"""haplane.cel.typed: OpenAPI schemas as types for CEL's checker (Kubernetes' SchemaDeclType),
and environments that check expressions against them: a misspelt field or a wrong operand is
a compile error naming it; what the schema leaves open (int-or-string, unknown fields, no
type) stays dyn, so a typed check never refuses what evaluation accepts."""

from __future__ import annotations

from typing import Any

import pytest

from haplane.cel import DYN, CompileError, Environment, Schemas

STRING = {"type": "string"}
WIDGET: dict[str, Any] = {
    "type": "object",
    "properties": {
        "metadata": {
            "type": "object",
            "properties": {
                "name": STRING,
                "namespace": STRING,
                "labels": {"type": "object", "additionalProperties": STRING},
                "creationTimestamp": {"type": "string", "format": "date-time"},
            },
        },
        "spec": {
            "type": "object",
            "properties": {
                "replicas": {"type": "integer"},
                "ratio": {"type": "number"},
                "limit": {"type": "integer", "nullable": True},
                "paused": {"type": "boolean"},
                "containers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": STRING,
                            "ports": {"type": "array", "items": {"type": "integer"}},
                        },
                    },
                },
                "matrix": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "integer"}},
                },
                "byZone": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {"weight": {"type": "integer"}},
                    },
                },
                "port": {"x-kubernetes-int-or-string": True},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "headers": {"type": "object", "properties": {"x-request-id": STRING}},
                "anything": {},
            },
        },
    },
}


@pytest.fixture(scope="module")
def env() -> Environment:
    schemas = Schemas()
    widget = schemas.declare(WIDGET, "Widget")
    return Environment(
        ("object", "oldObject"), types={"object": widget, "oldObject": widget}, schemas=schemas
    )


@pytest.mark.parametrize(
    "expression",
    [
        "object.spec.replicas > 1 && object.spec.ratio < 0.5 && !object.spec.paused",
        "object.metadata.name.startsWith('w') && object.metadata.namespace != ''",
        "object.metadata.labels['env'] == 'prod' && 'owner' in object.metadata.labels",
        "object.metadata.creationTimestamp.startsWith('2024')",  # the JSON's string
        "object.spec.containers.all(c, c.name != '' && c.ports.all(p, p > 0))",
        "object.spec.byZone.all(z, object.spec.byZone[z].weight >= 0)",
        "object.spec.matrix[0][1] == 2",  # a list of lists: list(dyn)
        "object.spec.port == 80 || object.spec.port == 'http'",  # int-or-string: dyn
        "object.spec.extra.whatever.deep == 1",  # unknown fields kept: dyn
        "object.spec.headers['x-request-id'] == 'a'",  # a property no field could name: dyn
        "object.spec.anything.at.all == true",  # no type: dyn
        "object.spec.limit == null || object.spec.limit > 3",  # nullable: int or null
        "object.spec.replicas > 1.5 && object.spec.ratio <= 2",  # int and double compare
        "has(object.spec.replicas) && object.?spec.?replicas.orValue(1) > 0",
        "oldObject == null || object.spec.replicas >= oldObject.spec.replicas",
        "object.spec.containers.map(c, c.name).isSorted()",  # Kubernetes' libraries
    ],
)
def test_what_the_schema_allows_checks(env: Environment, expression: str) -> None:
    env.compile(expression)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        (
            "object.spec.replicsa > 1",
            "undefined field 'replicsa' not found in struct 'Widget.Spec'",
        ),
        (
            "object.spec.containers.exists(c, c.nmae == 'web')",
            "undefined field 'nmae' not found in struct 'Widget.Spec.ContainersItem'",
        ),
        (
            "object.spec.byZone['a'].wieght > 0",
            "undefined field 'wieght' not found in struct 'Widget.Spec.ByZoneValue'",
        ),
        (
            "object.spec.replicas == 'three'",
            "found no matching overload for '_==_' applied to '(int, string)'",
        ),
        ("object.metadata.labels.size() + 'x'", "found no matching overload for '_+_'"),
    ],
)
def test_a_misspelt_field_or_a_wrong_operand_is_named(
    env: Environment, expression: str, problem: str
) -> None:
    with pytest.raises(CompileError) as caught:
        env.compile(expression)
    assert problem in caught.value.message


def test_the_report_is_cel_gos_with_a_caret() -> None:
    schemas = Schemas()
    env = Environment(
        ("object",), types={"object": schemas.declare(WIDGET, "Widget")}, schemas=schemas
    )
    with pytest.raises(CompileError) as caught:
        env.compile("object.metdata.name == 'a'")
    # the problem that follows from it ("'*error*' cannot be the operand") is left out
    assert caught.value.report() == (
        "ERROR: <input>:1:7: undefined field 'metdata' not found in struct 'Widget'\n"
        " | object.metdata.name == 'a'\n"
        " | ......^"
    )


def test_a_checked_result_types_a_variable_of_its_own() -> None:
    """How admission policies' `variables.NAME` are declared: with their expression's type."""
    schemas = Schemas()
    widget = schemas.declare(WIDGET, "Widget")
    first = Environment(("object",), types={"object": widget}, schemas=schemas)
    spec = first.compile("object.spec").result
    names = first.compile("object.spec.containers.map(c, c.name)").result
    assert spec.name == "Widget.Spec"
    env = Environment(
        ("variables.spec", "variables.names"),
        types={"variables.spec": spec, "variables.names": names},
        schemas=schemas,
    )
    env.compile("variables.spec.replicas > 0 && variables.names.all(n, n.size() < 64)")
    for wrong in ("variables.spec.replica > 0", "variables.names[0] > 1", "variables.other"):
        with pytest.raises(CompileError):
            env.compile(wrong)


def test_schemas_with_no_type_are_dyn_and_others_their_type() -> None:
    schemas = Schemas()
    for schema in (None, {}, {"x-kubernetes-preserve-unknown-fields": True}):
        assert schemas.declare(schema, "Thing") is DYN
    # a schema of scalars, lists or maps is typed too (a CRD rule's `self` may be any)
    for schema, fine, wrong in (
        ({"type": "string"}, "self.startsWith('a')", "self > 1"),
        ({"type": "array", "items": {"type": "integer"}}, "self.all(x, x > 0)", "self[0] == 'a'"),
        (
            {"type": "object", "additionalProperties": {"type": "boolean"}},
            "self['a']",
            "self.a > 1",
        ),
    ):
        env = Environment(("self",), types={"self": schemas.declare(schema, "T")}, schemas=schemas)
        env.compile(fine)
        with pytest.raises(CompileError):
            env.compile(wrong)
    root_unknown = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert schemas.declare(root_unknown, "Thing") is DYN


def test_one_pool_holds_many_kinds_with_clashing_names() -> None:
    """Kinds of the same name (two groups), a property named like its nested type, a map's
    entry name taken by another property: each still declares."""
    schemas = Schemas()
    a = schemas.declare({"type": "object", "properties": {"x": {"type": "integer"}}}, "Config")
    b = schemas.declare({"type": "object", "properties": {"y": STRING}}, "Config")
    assert (a.name, b.name) == ("Config", "Config_")
    clashing = {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"a": STRING}},
            "Spec": {"type": "object", "properties": {"b": STRING}},
            "labels": {"type": "object", "additionalProperties": STRING},
            "LabelsEntry": STRING,
        },
    }
    t = schemas.declare(clashing, "Clash")
    env = Environment(("o", "a", "b"), types={"o": t, "a": a, "b": b}, schemas=schemas)
    env.compile("o.spec.a == o.Spec.b && o.labels['k'] == o.LabelsEntry && a.x > 0 && b.y == ''")
    with pytest.raises(CompileError):
        env.compile("o.spec.b == ''")


def test_evaluating_environments_stay_dyn() -> None:
    """Without types nothing changes: fields are looked up when the expression runs."""
    env = Environment(("object",))
    assert env.compile("object.spec.replicsa > 1").returns == "bool"


def test_embedded_resources_always_have_type_and_metadata() -> None:
    """`x-kubernetes-embedded-resource`: apiVersion, kind and metadata are there whatever
    the schema declares (Kubernetes' WithTypeAndObjectMeta); undeclared metadata is dyn (the
    JSON holds all of ObjectMeta), declared metadata gains name and generateName."""
    schemas = Schemas()
    template = {
        "type": "object",
        "x-kubernetes-embedded-resource": True,
        "properties": {"spec": {"type": "object", "properties": {"image": STRING}}},
    }
    declared_meta = {
        "type": "object",
        "x-kubernetes-embedded-resource": True,
        "properties": {
            "metadata": {
                "type": "object",
                "properties": {"labels": {"type": "object", "additionalProperties": STRING}},
            }
        },
    }
    t = schemas.declare(
        {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {"template": template, "other": declared_meta},
                }
            },
        },
        "Job",
    )
    env = Environment(("object",), types={"object": t}, schemas=schemas)
    for ok in (
        "object.spec.template.kind == 'Pod' && object.spec.template.apiVersion == 'v1'",
        "object.spec.template.metadata.labels['app'] == 'x'",
        "object.spec.template.spec.image == ''",
        "object.spec.other.metadata.name == '' && object.spec.other.metadata.generateName == ''",
        "object.spec.other.metadata.labels['a'] == 'b'",
    ):
        env.compile(ok)
    for wrong in (
        "object.spec.template.kindd == 'Pod'",
        "object.spec.template.kind == 1",
        "object.spec.other.metadata.namespace == ''",  # declared metadata: only its fields
    ):
        with pytest.raises(CompileError):
            env.compile(wrong)


def test_an_embedded_resource_that_is_a_map_stays_a_map() -> None:
    schemas = Schemas()
    t = schemas.declare(
        {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "additionalProperties": STRING,
                }
            },
        },
        "Thing",
    )
    env = Environment(("object",), types={"object": t}, schemas=schemas)
    env.compile("object.spec['any'] == 'x'")
