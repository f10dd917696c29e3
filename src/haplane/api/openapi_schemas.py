"""The OpenAPI schemas of the kinds haplane serves, for type checking admission policies'
expressions (`haplane.api.policy_type_checking`): the built-in kinds' own, written after
Kubernetes' published ones (k8s.io/api core/v1 and coordination/v1, apimachinery's
ObjectMeta), and each custom resource's `openAPIV3Schema` with Kubernetes' ObjectMeta,
apiVersion and kind at its root (as kube-apiserver publishes them).

Layer: api. Pure data. Kinds without a schema here (RBAC, the ops and access kinds...) are
checked as `dyn`: their expressions get no warnings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .resources import ResourceType

Schema = dict[str, Any]

STRING: Final[Schema] = {"type": "string"}
INTEGER: Final[Schema] = {"type": "integer"}
BOOLEAN: Final[Schema] = {"type": "boolean"}
TIME: Final[Schema] = {"type": "string", "format": "date-time"}
STRINGS: Final[Schema] = {"type": "array", "items": STRING}
STRING_MAP: Final[Schema] = {"type": "object", "additionalProperties": STRING}


def obj(**properties: Schema) -> Schema:
    return {"type": "object", "properties": properties}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


OWNER_REFERENCE: Final = obj(
    apiVersion=STRING,
    kind=STRING,
    name=STRING,
    uid=STRING,
    controller=BOOLEAN,
    blockOwnerDeletion=BOOLEAN,
)
MANAGED_FIELDS_ENTRY: Final = obj(
    manager=STRING,
    operation=STRING,
    apiVersion=STRING,
    time=TIME,
    fieldsType=STRING,
    fieldsV1={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    subresource=STRING,
)
OBJECT_META: Final = obj(
    name=STRING,
    generateName=STRING,
    namespace=STRING,
    selfLink=STRING,
    uid=STRING,
    resourceVersion=STRING,
    generation=INTEGER,
    creationTimestamp=TIME,
    deletionTimestamp=TIME,
    deletionGracePeriodSeconds=INTEGER,
    labels=STRING_MAP,
    annotations=STRING_MAP,
    ownerReferences=array(OWNER_REFERENCE),
    finalizers=STRINGS,
    managedFields=array(MANAGED_FIELDS_ENTRY),
)
OBJECT_REFERENCE: Final = obj(
    kind=STRING,
    namespace=STRING,
    name=STRING,
    uid=STRING,
    apiVersion=STRING,
    resourceVersion=STRING,
    fieldPath=STRING,
)
LOCAL_OBJECT_REFERENCE: Final = obj(name=STRING)


def resource(**properties: Schema) -> Schema:
    return obj(apiVersion=STRING, kind=STRING, metadata=OBJECT_META, **properties)


NAMESPACE: Final = resource(
    spec=obj(finalizers=STRINGS),
    status=obj(
        phase=STRING,
        conditions=array(
            obj(
                type=STRING,
                status=STRING,
                lastTransitionTime=TIME,
                reason=STRING,
                message=STRING,
            )
        ),
    ),
)
BUILTIN: Final[Mapping[tuple[str, str, str], Schema]] = {
    ("", "v1", "Namespace"): NAMESPACE,
    ("", "v1", "ConfigMap"): resource(
        data=STRING_MAP,
        binaryData={"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
        immutable=BOOLEAN,
    ),
    ("", "v1", "Secret"): resource(
        data={"type": "object", "additionalProperties": {"type": "string", "format": "byte"}},
        stringData=STRING_MAP,
        type=STRING,
        immutable=BOOLEAN,
    ),
    ("", "v1", "ServiceAccount"): resource(
        secrets=array(OBJECT_REFERENCE),
        imagePullSecrets=array(LOCAL_OBJECT_REFERENCE),
        automountServiceAccountToken=BOOLEAN,
    ),
    ("", "v1", "Event"): resource(
        involvedObject=OBJECT_REFERENCE,
        reason=STRING,
        message=STRING,
        source=obj(component=STRING, host=STRING),
        firstTimestamp=TIME,
        lastTimestamp=TIME,
        count=INTEGER,
        type=STRING,
        eventTime={"type": "string", "format": "date-time"},
        series=obj(count=INTEGER, lastObservedTime=TIME),
        action=STRING,
        related=OBJECT_REFERENCE,
        reportingComponent=STRING,
        reportingInstance=STRING,
    ),
    ("coordination.k8s.io", "v1", "Lease"): resource(
        spec=obj(
            holderIdentity=STRING,
            leaseDurationSeconds=INTEGER,
            acquireTime=TIME,
            renewTime=TIME,
            leaseTransitions=INTEGER,
            strategy=STRING,
            preferredHolder=STRING,
        )
    ),
}

# the `request` variable of admission expressions (Kubernetes' BuildRequestType)
_GVK: Final = obj(group=STRING, version=STRING, kind=STRING)
_GVR: Final = obj(group=STRING, version=STRING, resource=STRING)
REQUEST: Final = obj(
    kind=_GVK,
    resource=_GVR,
    subResource=STRING,
    requestKind=_GVK,
    requestResource=_GVR,
    requestSubResource=STRING,
    name=STRING,
    namespace=STRING,
    operation=STRING,
    userInfo=obj(
        username=STRING,
        uid=STRING,
        groups=STRINGS,
        extra={"type": "object", "additionalProperties": STRINGS},
    ),
    dryRun=BOOLEAN,
    options={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
)


def schema_of(t: ResourceType) -> Mapping[str, Any] | None:
    """The schema of a served kind's objects: a built-in's above, a custom resource's own
    with ObjectMeta at its root; None when haplane has none."""
    if not t.custom:
        return BUILTIN.get((t.group, t.version, t.kind))
    schema = getattr(t.strategy, "schema", None)
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        return None
    properties = schema.get("properties")
    return {
        **schema,
        "properties": {
            **(properties if isinstance(properties, Mapping) else {}),
            "apiVersion": STRING,
            "kind": STRING,
            "metadata": OBJECT_META,
        },
    }
