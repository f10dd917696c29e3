"""`matches` evaluated through haplane's cached RE2 (`haplane.cel.library.CACHED_MATCHES`: the
engine's own compiles its pattern at every call): the calls found and renamed, never what
string literals or backquoted names hold; the same verdict as the engine's own on patterns
and inputs of every kind; an evaluation that fails is the engine's own failure; the internal
name is not for expressions to use."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from haplane.cel import CompileError, Environment, EvalError
from haplane.cel.library import CACHED_MATCHES, calls, rename_matches


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('x.matches("a")', f'x.{CACHED_MATCHES}("a")'),
        ('matches(x, "a")', f'{CACHED_MATCHES}(x, "a")'),
        ("x.matches ('a') && y.matches(z)", f"x.{CACHED_MATCHES} ('a') && y.{CACHED_MATCHES}(z)"),
        ('"x.matches(" + y', None),  # in a string
        ('"a\\"x.matches(" + y.matches("b")', f'"a\\"x.matches(" + y.{CACHED_MATCHES}("b")'),
        ("r'\\' + x.matches('b')", f"r'\\' + x.{CACHED_MATCHES}('b')"),  # raw: \ ends nothing
        ("'''a.matches(b)''' + s.matches('x')", f"'''a.matches(b)''' + s.{CACHED_MATCHES}('x')"),
        ('b"matches(" == y', None),
        ("x.matches", None),  # a field
        ("[1].all(matches, matches > 0)", None),  # a variable
        ("a.`matches(`", None),  # a backquoted field name
        ("notmatches(x) || matchesx(y)", None),
        ("// it's x.matches('a')\nobject.x == 'matches('", None),  # a comment, then a string
        ("x.matches('a') // matches(", f"x.{CACHED_MATCHES}('a') // matches("),
    ],
)
def test_only_calls_of_matches_are_renamed(text: str, expected: str | None) -> None:
    assert rename_matches(text) == expected


def test_calls_skip_literals_and_comments() -> None:
    assert calls("a.b('c.d') + r\"e\" + `f`.g(1)", "g")
    assert not calls("a.b('g(') + `g(` // g(\n+ g", "g")
    assert calls("// it's\nx.g ('a')", "g")


PATTERNS = [
    "",
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    "a|b",
    "^$",
    "x*",
    "[[:alpha:]]+",
    "\\d{2,3}",
    "(?i)ABC",
    "é.",
    "^.{3}$",
    "\\bword\\b",
    "[",  # invalid
    "(a",  # invalid
    "a{2,1}",  # invalid
    "(?P<n>x)",
    "\\p{Greek}",
]
INPUTS = [
    "",
    "abc",
    "ABC",
    "a-b-c",
    "-x",
    "123",
    "1234",
    "word wordy",
    "éa",
    "日本語",
    "αβγ",
    "x\ny",
]


def test_the_same_verdict_as_the_engines_matches() -> None:
    env = Environment(["s", "p"])
    member, global_ = env.compile("s.matches(p)"), env.compile("matches(s, p)")
    for program in (member, global_):
        assert program._run is not None  # evaluated through the cached RE2
    checked = 0
    for p in PATTERNS:
        for s in INPUTS:
            bound = env.bind({"s": s, "p": p})
            for program in (member, global_):
                want = _outcome(program._evaluate, program._expr, bound.activation)
                got = _outcome(program._evaluate, program._run, bound.activation)
                if want[0] == "ok":  # the engine's answer, exactly
                    assert got == want, (p, s)
                    checked += 1
                else:  # both fail; Program.eval then says what the engine says
                    assert got[0] == "error", (p, s, got)
                    assert _outcome(program.eval, bound) == want
    assert checked > 200


def test_random_inputs_against_constant_patterns() -> None:
    env = Environment(["s"])
    rng = random.Random(7)
    alphabet = "ab-01é\n ."
    for pattern in PATTERNS[:11]:
        program = env.compile(f"s.matches({pattern!r})")
        for _ in range(50):
            s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            bound = env.bind({"s": s})
            want = _outcome(program._evaluate, program._expr, bound.activation)
            assert _outcome(program.eval, bound) == want, (pattern, s)


def test_the_internal_name_cannot_be_written() -> None:
    env = Environment(["s"])
    for text in (f"s.{CACHED_MATCHES}('a')", f"// don't\n{CACHED_MATCHES}('a', 'a') // '"):
        with pytest.raises(CompileError, match=CACHED_MATCHES):
            env.compile(text)
    assert env.compile(f"// {CACHED_MATCHES}(\ntrue").eval({"s": ""}) is True
    # as a string, it is only text
    assert env.compile(f"s == '{CACHED_MATCHES}('").eval({"s": f"{CACHED_MATCHES}("}) is True


def test_a_failing_match_fails_as_the_engine_says() -> None:
    env = Environment(["s"])
    program = env.compile("s.matches('(')")
    with pytest.raises(EvalError) as failed:
        program.eval({"s": "x"})
    with pytest.raises(EvalError) as engine:
        program._evaluate(program._expr, env.bind({"s": "x"}).activation)
    assert str(failed.value) == str(engine.value)


def _outcome(call: Callable[..., Any], *args: Any) -> tuple[str, object]:
    try:
        return "ok", call(*args)
    except EvalError as exc:
        return "error", str(exc)


def test_an_evaluation_out_of_time_is_not_done_again(monkeypatch) -> None:
    """A failure of the renamed program is evaluated again as written, for the engine's own
    words; never one that ran out of time (it would run as long again)."""
    from haplane.cel import budget

    env = Environment(["s"])
    program = env.compile("s.matches('a') && s.lowerAscii() == 'a'")
    monkeypatch.setattr(budget, "TIME_LIMIT", -1.0)  # every guarded call is past it
    evaluated: list[object] = []
    run = type(program)._evaluate

    def counted(expr: object, activation: object) -> object:
        evaluated.append(expr)
        return run(expr, activation)

    monkeypatch.setattr(type(program), "_evaluate", staticmethod(counted))
    with pytest.raises(EvalError, match="evaluation stopped"):
        program.eval({"s": "a"})
    assert evaluated == [program._run]
