"""haplane.api.protobuf: Kubernetes protobuf bodies decode to the dict their JSON form gives.

Bodies are built with the tiny encoder below from the field numbers in the Kubernetes .proto
files; the KUBECTL_* vectors are real bytes kubectl 1.32 sent for `kubectl create ...`, and their
expected dicts are kubectl's own `--dry-run=client -o json` output for the same command.
"""

from __future__ import annotations

import contextlib
import random
import struct

import pytest

from haplane.api.protobuf import PROTOBUF, ProtobufError, decode

# --- a tiny protobuf encoder -------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s take ten bytes, as in Go
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def vint(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def ld(number: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return tag(number, 2) + varint(len(raw)) + raw


def mapf(number: int, entries: dict[str, bytes | str]) -> bytes:
    return b"".join(ld(number, ld(1, k) + ld(2, v)) for k, v in entries.items())


def ts(seconds: int, nanos: int = 0) -> bytes:
    return vint(1, seconds) + (vint(2, nanos) if nanos else b"")


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = ld(1, api_version) + ld(2, kind)
    return b"k8s\x00" + ld(1, type_meta) + ld(2, raw) + ld(3, "") + ld(4, "")


def meta(name: str, namespace: str = "", extra: bytes = b"") -> bytes:
    return ld(1, ld(1, name) + (ld(3, namespace) if namespace else b"") + extra)


# --- real kubectl 1.32 request bodies ----------------------------------------------------------

KUBECTL_CONFIGMAP = bytes.fromhex(  # kubectl create configmap x --from-literal=a=b -n default
    "6b3873000a0f0a0276311209436f6e6669674d617012220a180a017812001a0764656661756c7422002a00"
    "32003800420012060a01611201621a002200"
)
KUBECTL_NAMESPACE = bytes.fromhex(  # kubectl create namespace x
    "6b3873000a0f0a02763112094e616d65737061636512190a110a017812001a0022002a0032003800420012"
    "001a020a001a002200"
)
KUBECTL_SECRET = bytes.fromhex(  # kubectl create secret generic x --from-literal=k=v -n default
    "6b3873000a0c0a027631120653656372657412240a180a017812001a0764656661756c7422002a00320038"
    "00420012060a016b1201761a001a002200"
)
KUBECTL_SERVICEACCOUNT = bytes.fromhex(  # kubectl create serviceaccount x -n default
    "6b3873000a140a027631120e536572766963654163636f756e74121a0a180a017812001a0764656661756c"
    "7422002a003200380042001a002200"
)
KUBECTL_META = {"name": "x", "namespace": "default", "creationTimestamp": None}


def test_content_type_constant() -> None:
    assert PROTOBUF == "application/vnd.kubernetes.protobuf"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            KUBECTL_CONFIGMAP,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": KUBECTL_META, "data": {"a": "b"}},
        ),
        (
            KUBECTL_NAMESPACE,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "x", "creationTimestamp": None},
                "spec": {},
                "status": {},
            },
        ),
        (
            KUBECTL_SECRET,
            {"apiVersion": "v1", "kind": "Secret", "metadata": KUBECTL_META, "data": {"k": "dg=="}},
        ),
        (
            KUBECTL_SERVICEACCOUNT,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": KUBECTL_META},
        ),
    ],
)
def test_kubectl_captured_bodies(body: bytes, expected: dict[str, object]) -> None:
    assert decode(body) == expected


def test_configmap_labels_annotations_data_binary_data() -> None:
    labels = mapf(11, {"app": "web", "tier": "front"})
    annotations = mapf(12, {"note": "héllo"})
    raw = (
        meta("cm", "ns", labels + annotations)
        + mapf(2, {"a": "1", "empty": ""})
        + mapf(3, {"bin": b"\x00\xff\x10"})
        + vint(4, 1)
    )
    assert decode(envelope("v1", "ConfigMap", raw)) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cm",
            "namespace": "ns",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"note": "héllo"},
        },
        "data": {"a": "1", "empty": ""},
        "binaryData": {"bin": "AP8Q"},
        "immutable": True,
    }


def test_secret_data_string_data_type() -> None:
    raw = (
        meta("s", "ns")
        + mapf(2, {"password": b"s3cr\x00t"})
        + mapf(4, {"user": "admin"})
        + ld(3, "kubernetes.io/basic-auth")
        + vint(5, 0)
    )
    assert decode(envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns"},
        "data": {"password": "czNjcgB0"},
        "stringData": {"user": "admin"},
        "type": "kubernetes.io/basic-auth",
        "immutable": False,
    }


def test_namespace_spec_finalizers_and_status() -> None:
    condition = ld(1, "NamespaceDeletionContentFailure") + ld(2, "False") + ld(4, ts(1704164645))
    raw = (
        meta("team-a")
        + ld(2, ld(1, "kubernetes") + ld(1, "example.com/cleanup"))
        + ld(3, ld(1, "Active") + ld(2, condition))
    )
    assert decode(envelope("v1", "Namespace", raw)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "team-a"},
        "spec": {"finalizers": ["kubernetes", "example.com/cleanup"]},
        "status": {
            "phase": "Active",
            "conditions": [
                {
                    "type": "NamespaceDeletionContentFailure",
                    "status": "False",
                    "lastTransitionTime": "2024-01-02T03:04:05Z",
                }
            ],
        },
    }


def test_service_account_references_and_automount_false() -> None:
    secret_ref = ld(1, "Secret") + ld(2, "ns") + ld(3, "tok") + ld(4, "u-1") + ld(5, "v1")
    raw = (
        meta("sa", "ns")
        + ld(2, secret_ref)
        + ld(2, ld(3, "other"))
        + ld(3, ld(1, "registry"))
        + ld(3, ld(1, "mirror"))
        + vint(4, 0)
    )
    assert decode(envelope("v1", "ServiceAccount", raw)) == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "sa", "namespace": "ns"},
        "secrets": [
            {"kind": "Secret", "namespace": "ns", "name": "tok", "uid": "u-1", "apiVersion": "v1"},
            {"name": "other"},
        ],
        "imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}],
        "automountServiceAccountToken": False,
    }


def test_object_meta_every_client_field() -> None:
    owner = ld(5, "apps/v1") + ld(1, "ReplicaSet") + ld(3, "rs") + ld(4, "u-rs") + vint(6, 1)
    owner += vint(7, 0)
    managed = (
        ld(1, "kubectl")
        + ld(2, "Update")
        + ld(3, "v1")
        + ld(4, ts(1704164645, 999_999_999))
        + ld(6, "FieldsV1")
        + ld(7, ld(1, b'{"f:data":{"f:a":{}}}'))
        + ld(8, "status")
    )
    fields = (
        ld(2, "gen-")
        + ld(4, "/api/v1/x")
        + ld(5, "uid-1")
        + ld(6, "42")
        + vint(7, 3)
        + ld(8, ts(1704164645, 500))
        + ld(9, ts(-1))
        + vint(10, 0)
        + ld(13, owner)
        + ld(13, ld(5, "v1") + ld(1, "Node") + ld(3, "n1") + ld(4, ""))
        + ld(14, "a/b")
        + ld(14, "c")
        + ld(17, managed)
    )
    assert decode(envelope("v1", "ConfigMap", meta("cm", "ns", fields)))["metadata"] == {
        "name": "cm",
        "generateName": "gen-",
        "namespace": "ns",
        "selfLink": "/api/v1/x",
        "uid": "uid-1",
        "resourceVersion": "42",
        "generation": 3,
        "creationTimestamp": "2024-01-02T03:04:05Z",
        "deletionTimestamp": "1969-12-31T23:59:59Z",
        "deletionGracePeriodSeconds": 0,
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "rs",
                "uid": "u-rs",
                "controller": True,
                "blockOwnerDeletion": False,
            },
            {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": ""},
        ],
        "finalizers": ["a/b", "c"],
        "managedFields": [
            {
                "manager": "kubectl",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2024-01-02T03:04:05Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {"f:a": {}}},
                "subresource": "status",
            }
        ],
    }


def test_go_zero_values_follow_omitempty() -> None:
    # What Go writes for an empty ObjectMeta: every non-pointer field, zero-valued.
    empty_meta = b"".join(ld(n, "") for n in (1, 2, 3, 4, 5, 6)) + vint(7, 0) + ld(8, b"")
    got = decode(envelope("v1", "Namespace", ld(1, empty_meta) + ld(2, b"") + ld(3, ld(1, ""))))
    assert got == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"creationTimestamp": None},
        "spec": {},
        "status": {},
    }


def test_int64_and_time_edges() -> None:
    fields = vint(7, -5) + vint(10, 2**63 - 1) + ld(8, ts(-62135596800)) + ld(9, ts(0, 0))
    got = decode(envelope("v1", "ConfigMap", meta("cm", extra=fields)))["metadata"]
    assert got == {
        "name": "cm",
        "generation": -5,
        "deletionGracePeriodSeconds": 2**63 - 1,
        "creationTimestamp": None,  # Go's zero time
        "deletionTimestamp": None,  # 0/0 unmarshals to the zero time too
    }
    far = ld(8, ts(253402300799, 1))
    assert decode(envelope("v1", "ConfigMap", meta("cm", extra=far)))["metadata"] == {
        "name": "cm",
        "creationTimestamp": "9999-12-31T23:59:59Z",
    }
    with pytest.raises(ProtobufError, match="outside years"):
        decode(envelope("v1", "ConfigMap", meta("cm", extra=ld(8, ts(2**62)))))


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    group = tag(90, 3) + vint(1, 7) + tag(91, 3) + ld(2, "x") + tag(91, 4) + tag(90, 4)
    unknown = (
        vint(99, 12345)  # varint
        + tag(98, 1)
        + struct.pack("<d", 1.5)  # fixed64
        + ld(97, b"\x01\x02\x03")  # length-delimited
        + group  # start/end group, nested
        + tag(96, 5)
        + struct.pack("<f", 2.5)  # fixed32
    )
    raw = unknown + meta("cm", "ns", unknown + ld(15, "old clusterName")) + unknown
    raw += mapf(2, {"a": "b"}) + unknown
    body = b"k8s\x00" + unknown + ld(1, ld(1, "v1") + ld(2, "ConfigMap") + unknown) + ld(2, raw)
    assert decode(body) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "namespace": "ns"},
        "data": {"a": "b"},
    }


@pytest.mark.parametrize("api_version", ["v1", "meta.k8s.io/v1"])
def test_delete_options(api_version: str) -> None:
    raw = (
        vint(1, 0)
        + ld(2, ld(1, "uid-1") + ld(2, "7"))
        + ld(4, "Foreground")
        + ld(5, "All")
        + vint(6, 0)
    )
    assert decode(envelope(api_version, "DeleteOptions", raw)) == {
        "apiVersion": api_version,
        "kind": "DeleteOptions",
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": "uid-1", "resourceVersion": "7"},
        "propagationPolicy": "Foreground",
        "dryRun": ["All"],
        "ignoreStoreReadErrorWithClusterBreakingPotential": False,
    }


def test_repeated_scalar_last_wins_and_message_merges() -> None:
    raw = ld(1, ld(1, "a") + ld(3, "ns")) + ld(1, ld(1, "b")) + ld(3, "Opaque") + ld(3, "")
    assert decode(envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "b", "namespace": "ns"},
    }


def test_invalid_utf8_becomes_replacement_character() -> None:
    got = decode(envelope("v1", "ConfigMap", meta("cm") + mapf(2, {"k": b"\xffok"})))
    assert got["data"] == {"k": "\ufffdok"}


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"k8s", b'{"kind":"ConfigMap"}', b"K8S\x00\n\x00"])
def test_missing_magic(body: bytes) -> None:
    with pytest.raises(ProtobufError, match=r"missing the k8s\\0 prefix"):
        decode(body)


def test_truncated_varint() -> None:
    with pytest.raises(ProtobufError, match="truncated varint"):
        decode(b"k8s\x00" + tag(1, 2) + b"\x80")
    with pytest.raises(ProtobufError, match=r"ConfigMap\.metadata: truncated varint"):
        decode(envelope("v1", "ConfigMap", ld(1, tag(7, 0) + b"\xff\xff")))


def test_overlong_varint() -> None:
    with pytest.raises(ProtobufError, match="longer than 10 bytes"):
        decode(b"k8s\x00" + tag(99, 0) + b"\xff" * 11 + b"\x01")


def test_length_beyond_the_end() -> None:
    with pytest.raises(ProtobufError, match="length 100 but only 3 bytes are left"):
        decode(b"k8s\x00" + tag(2, 2) + varint(100) + b"abc")
    # a nested length that fits the body but not its enclosing message
    inner = tag(1, 2) + varint(50) + b"x"
    with pytest.raises(ProtobufError, match=r"ConfigMap\.metadata: field 1 has length 50"):
        decode(envelope("v1", "ConfigMap", ld(1, inner) + b"\x00" * 60))


def test_unsupported_kind() -> None:
    with pytest.raises(ProtobufError) as caught:
        decode(envelope("apps/v1", "Deployment", b""))
    assert str(caught.value) == (
        "kind apps/v1 Deployment is not served as protobuf here; send application/json"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"k8s\x00" + ld(2, b""), "no typeMeta.kind"),
        (
            b"k8s\x00" + ld(1, ld(1, "v1") + ld(2, "ConfigMap")) + ld(3, "gzip"),
            "contentEncoding 'gzip' is not supported",
        ),
        (
            b"k8s\x00" + ld(1, ld(1, "v1") + ld(2, "ConfigMap")) + ld(4, "application/json"),
            "raw contentType 'application/json' is not protobuf",
        ),
        (envelope("v1", "ConfigMap", vint(1, 5)), r"ConfigMap\.metadata: wire type 0 where 2"),
        (envelope("v1", "ConfigMap", ld(4, "yes")), r"ConfigMap\.immutable: wire type 2 where 0"),
        (envelope("v1", "ConfigMap", tag(9, 7)), "invalid wire type 7"),
        (envelope("v1", "ConfigMap", tag(0, 0) + b"\x00"), "field number 0"),
        (envelope("v1", "ConfigMap", tag(9, 3) + vint(1, 1)), "group 9 has no end-group"),
        (envelope("v1", "ConfigMap", tag(9, 3) + tag(8, 4)), "group 9 closed by end-group 8"),
        (envelope("v1", "ConfigMap", tag(9, 4)), "end-group for field 9 without a start"),
        (envelope("v1", "ConfigMap", tag(9, 3) * 100), "nested deeper than 64"),
        (envelope("v1", "ConfigMap", tag(9, 1) + b"\x00" * 7), r"cut short \(fixed64\)"),
        (
            envelope("v1", "ConfigMap", meta("cm", extra=ld(17, ld(7, ld(1, b"{nope"))))),
            r"metadata\.managedFields\.fieldsV1: Raw is not JSON",
        ),
    ],
)
def test_garbled_bodies(body: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        decode(body)


def test_every_truncation_and_random_corruption_raises_only_protobuf_error() -> None:
    samples = [KUBECTL_CONFIGMAP, KUBECTL_NAMESPACE, KUBECTL_SECRET, KUBECTL_SERVICEACCOUNT]
    owner = ld(13, ld(5, "v1") + ld(1, "Node") + ld(3, "n") + ld(4, "u") + vint(6, 1))
    samples.append(envelope("v1", "ConfigMap", meta("cm", "ns", owner + ld(8, ts(5)))))
    rng = random.Random(20240102)
    for body in samples:
        variants = [body[:cut] for cut in range(len(body))]
        for _ in range(300):
            mutated = bytearray(body)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(4, len(mutated))] = rng.randrange(256)
            variants.append(bytes(mutated))
        for variant in variants:
            with contextlib.suppress(ProtobufError):
                assert isinstance(decode(variant), dict)
