"""The checked syntax tree of a compiled expression, for the static cost estimate
(`haplane.cel.cost`).

Layer: cel. Pure. The engine serializes a compiled expression as a `cel.expr.CheckedExpr`
protobuf (in an `Any`); no Python package ships those message classes, so the few fields
read here are decoded from the wire format by hand (tags from cel-spec's checked.proto and
syntax.proto, which are stable).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Node:
    kind: str  # const | ident | select | call | list | struct | comprehension
    name: str = ""  # ident name, select field, call function
    # call: the overloads the checker resolved it to (`add_list`, `add_string`...; several
    # when operands are dyn, none when the tree was not checked)
    overloads: tuple[str, ...] = ()
    test_only: bool = False  # select: has()
    value: object = None  # const
    target: Node | None = None  # select operand, call receiver
    args: list[Node] = field(default_factory=list)  # call args, list elements, struct values
    # comprehension
    iter_var: str = ""
    accu_var: str = ""
    iter_range: Node | None = None
    accu_init: Node | None = None
    loop_condition: Node | None = None
    loop_step: Node | None = None
    result: Node | None = None


def walk(root: Node) -> Iterator[Node]:
    """Every node of the tree, the root first."""
    stack: list[Node | None] = [root]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        yield node
        stack += [node.target, *node.args]
        if node.kind == "comprehension":
            stack += [
                node.iter_range,
                node.accu_init,
                node.loop_condition,
                node.loop_step,
                node.result,
            ]


def _varint(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return result, i


def _fields(b: bytes) -> list[tuple[int, int | bytes]]:
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(b, i)
        elif wire == 2:
            n, i = _varint(b, i)
            value, i = b[i : i + n], i + n
        elif wire == 1:
            value, i = b[i : i + 8], i + 8
        elif wire == 5:
            value, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out.append((number, value))
    return out


def _bytes(fields: list[tuple[int, int | bytes]], number: int) -> bytes | None:
    for n, v in fields:
        if n == number and isinstance(v, bytes):
            return v
    return None


def _all(fields: list[tuple[int, int | bytes]], number: int) -> list[bytes]:
    return [v for n, v in fields if n == number and isinstance(v, bytes)]


def parse(serialized: bytes) -> Node:
    """The root expression of a serialized CheckedExpr (wrapped in an Any)."""
    envelope = _fields(serialized)
    checked = _fields(_bytes(envelope, 2) or b"")
    expr = _bytes(checked, 4)
    if expr is None:
        raise ValueError("no expression in the serialized form")
    return _expr(expr, _overloads(checked))


def _overloads(checked: list[tuple[int, int | bytes]]) -> dict[int, tuple[str, ...]]:
    """The reference map's overload ids, by expression id (CheckedExpr.reference_map: entries
    of key 1, the id, and value 2, a Reference whose field 3 holds the overload ids)."""
    out: dict[int, tuple[str, ...]] = {}
    for entry in _all(checked, 2):
        ef = _fields(entry)
        key = next((v for n, v in ef if n == 1 and isinstance(v, int)), None)
        ref = _bytes(ef, 2)
        if key is None or ref is None:
            continue
        ids = tuple(v.decode() for v in _all(_fields(ref), 3))
        if ids:
            out[key] = ids
    return out


def _expr(b: bytes, overloads: dict[int, tuple[str, ...]]) -> Node:
    f = _fields(b)

    def child(raw: bytes) -> Node:
        return _expr(raw, overloads)

    if (c := _bytes(f, 3)) is not None:
        return Node("const", value=_const(c))
    if (ident := _bytes(f, 4)) is not None:
        return Node("ident", name=(_bytes(_fields(ident), 1) or b"").decode())
    if (sel := _bytes(f, 5)) is not None:
        sf = _fields(sel)
        operand = _bytes(sf, 1)
        return Node(
            "select",
            name=(_bytes(sf, 2) or b"").decode(),
            test_only=any(n == 3 and v == 1 for n, v in sf),
            target=child(operand) if operand is not None else None,
        )
    if (call := _bytes(f, 6)) is not None:
        cf = _fields(call)
        target = _bytes(cf, 1)
        expr_id = next((v for n, v in f if n == 2 and isinstance(v, int)), None)
        return Node(
            "call",
            name=(_bytes(cf, 2) or b"").decode(),
            overloads=overloads.get(expr_id, ()) if expr_id is not None else (),
            target=child(target) if target is not None else None,
            args=[child(a) for a in _all(cf, 3)],
        )
    if (lst := _bytes(f, 7)) is not None:
        return Node("list", args=[child(e) for e in _all(_fields(lst), 1)])
    if (struct := _bytes(f, 8)) is not None:
        values = []
        for entry in _all(_fields(struct), 2):
            ef = _fields(entry)
            values += [child(v) for v in (_bytes(ef, 3), _bytes(ef, 4)) if v is not None]
        return Node("struct", args=values)
    if (comp := _bytes(f, 9)) is not None:
        cf = _fields(comp)

        def sub(n: int) -> Node | None:
            raw = _bytes(cf, n)
            return child(raw) if raw is not None else None

        return Node(
            "comprehension",
            iter_var=(_bytes(cf, 1) or b"").decode(),
            iter_range=sub(2),
            accu_var=(_bytes(cf, 3) or b"").decode(),
            accu_init=sub(4),
            loop_condition=sub(5),
            loop_step=sub(6),
            result=sub(7),
        )
    return Node("const")  # an empty expression node: costs nothing


def _const(b: bytes) -> object:
    for n, v in _fields(b):
        if n == 6 and isinstance(v, bytes):
            return v.decode(errors="replace")
        if n == 7 and isinstance(v, bytes):
            return v
        if n in (3, 4) and isinstance(v, int):
            return v
        if n == 2 and isinstance(v, int):
            return bool(v)
    return None
