"""ValidatingAdmissionPolicy's fast paths: a request's bindings decided with as few CEL calls
as can be, before the evaluation Kubernetes describes (`PolicyEngine._evaluate`,
`haplane.api.admission_policies`), which stays the reference and evaluates whatever they leave
undecided (`tests/test_admission_fast.py` compares both on random policies).

Layer: api. Pure: evaluates the compiled policies (`haplane.api.admission_compiled`) on the
request's one activation (`_Admission.fast_bound`: its parameter objects in variables of
their own, each policy's expressions compiled once with `cel.bind` for its parameters and the
variables they read); no I/O, no state but the programs the engine hands in (`Combined`).
The engine imports it; it never imports the engine.

- `decide`: the request's bindings together, in programs of up to CHUNK bindings (`_combine`);
- `verdict`: one binding on the one activation, each of its expressions a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haplane.cel import Bound, EvalError, Program

from .admission_compiled import PER_BINDING, _Admission, _Check, _fast_compile, _Pair, _Prepared


class _Slow(Exception):
    """The one-activation evaluation cannot decide alone: evaluate as Kubernetes describes."""


def decide(
    combined: Combined, pairs: list[_Pair], prepared: list[_Prepared], admission: _Admission
) -> None:
    """The bindings that may be, decided by as few evaluations as can be: programs of up
    to CHUNK bindings each, each a list with one element per binding (each call into the
    engine costs 3-5 µs besides its expression: with ten policies, one list halves the
    engine's time). A binding's element is null when one of its conditions is false, else
    the list of its validations' and audit annotations' values; it is decided when those
    are bools where bools are wanted and its failed validations have no message
    expression. A program that fails decides nothing (each binding is then evaluated on
    its own: `verdict`, then the engine's `_evaluate`), and one that keeps failing for this
    kind of request is left out until the policies change. The verdicts are left in
    `admission.decided`; `combined`: the programs made so far (the engine's, a new one each
    time it works its pairs out again)."""
    signature = []
    for pair, ready in zip(pairs, prepared, strict=True):
        if pair.fast and ready.matched and ready.error is None and ready.params:
            signature.append(
                (pair.index, min(len(ready.params), PER_BINDING), ready.params[0] is None)
            )
    if len(signature) < 2:
        return
    key = tuple(signature)
    chunks = combined.get(key)
    if chunks is None:
        by_index = {pair.index: pair for pair in pairs}
        units = [
            _Unit(by_index[i], j, None if none else f"{i}/{j}")
            for i, n, none in signature
            for j in range(n)
        ]
        chunks = combined[key] = _combine(units)
        if len(combined) > 256:  # kinds of requests: bounded all the same
            combined.clear()
            combined[key] = chunks
    decided = admission.decided
    for chunk in chunks:
        if chunk.failed > 2 * chunk.decided + 8:
            continue  # it fails more often than not: not worth its evaluation
        try:
            values = chunk.program.eval(admission.fast_bound())
        except EvalError:
            chunk.failed += 1
            continue
        chunk.decided += 1
        for u, value in zip(chunk.units, values, strict=True):
            pair = u.pair
            if value is None:
                decided[(pair.index, u.j)] = ([], {})  # a condition is false
                continue
            violations = []
            for v, ok in zip(pair.validations, value, strict=False):
                if ok is False and v.message_check is None:
                    violations.append((v.message or f"failed expression: {v.check.source}",
                                       v.reason))  # fmt: skip
                elif ok is not True:
                    break  # no bool, or a message to evaluate: on its own
            else:
                noted = value[len(pair.validations) :]
                annotations = {
                    f"{pair.pname}/{name}": text
                    for (name, _), text in zip(pair.notes, noted, strict=True)
                    if isinstance(text, str) and text
                }
                decided[(pair.index, u.j)] = (violations, annotations)


def verdict(
    pair: _Pair, bound: Bound, key: str | None
) -> tuple[list[tuple[str, str]], dict[str, str]] | None:
    """The binding's verdict on the request's one activation (its parameters at
    `__params[key]`, none when None), or None when an expression failed, did not compile
    as bound there, or gave no bool: the caller then evaluates it its own way (the
    engine's `_evaluate`), whose messages say which part failed. A variable is evaluated for each
    expression that reads it."""

    def run(check: _Check) -> Any:
        program = check.fast(key)
        if program is None:
            raise _Slow
        return program.eval(bound)

    try:
        for _, check in pair.conditions:
            if run(check) is not True:
                return [], {}  # the policy does not apply to this request
        violations = []
        for v in pair.validations:
            ok = run(v.check)
            if ok is True:
                continue
            if ok is not False:
                raise _Slow
            message = v.message or f"failed expression: {v.check.source}"
            if v.message_check is not None:
                text = run(v.message_check)
                if isinstance(text, str) and text.strip() and not any(c in text for c in "\r\n"):
                    message = text
            violations.append((message, v.reason))
        annotations = {}
        for key, check in pair.notes:
            value = run(check)
            if isinstance(value, str) and value:
                annotations[f"{pair.pname}/{key}"] = value
    except (_Slow, EvalError):
        return None
    return violations, annotations


@dataclass(frozen=True)
class _Unit:
    """A binding with one of its parameter objects (its key in `__params`, or none)."""

    pair: _Pair
    j: int
    key: str | None


@dataclass
class _Chunk:
    """A program deciding `units` together, and how often it did and failed to."""

    program: Program
    units: list[_Unit]
    decided: int = 0
    failed: int = 0


# the programs made for the kinds of requests seen (`decide`), by which bindings and parameter
# objects each holds
Combined = dict[tuple[Any, ...], list[_Chunk]]


# bindings per program: a failing one undecides no more than these, and a program's text
# stays far below the engine's limits (100,000 characters)
CHUNK = 16


def _combine(units: list[_Unit]) -> list[_Chunk]:
    """Programs for `units` (those whose every expression can be evaluated on the one
    activation), each the list of up to CHUNK elements: per binding, null when a condition
    is false (`&&`: a false one wins over one that fails, as in Kubernetes' matcher), else
    the list of its validations' values then its audit annotations'."""
    elements: list[tuple[_Unit, str]] = []
    for u in units:
        pair = u.pair
        conditions = [c for _, c in pair.conditions]
        values = [v.check for v in pair.validations] + [c for _, c in pair.notes]
        if any(c.fast(u.key) is None for c in conditions + values):  # (compiled once, kept)
            continue
        listed = f"dyn([{', '.join(c.fast_text(u.key) for c in values)}])"
        if conditions:
            test = " && ".join(c.fast_text(u.key) for c in conditions)
            listed = f"(({test}) == true ? {listed} : dyn(null))"
        elements.append((u, listed))
    chunks = []
    for at in range(0, len(elements), CHUNK):
        part = elements[at : at + CHUNK]
        program = _fast_compile(f"[{', '.join(text for _, text in part)}]")
        if program is not None and len(part) > 1:
            chunks.append(_Chunk(program, [u for u, _ in part]))
    return chunks
