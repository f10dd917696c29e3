"""Benchmark: CEL engines for Python on Kubernetes-style validation rules, side by side in one run.

Issue 18 chose the engine behind `haplane.cel` by this measurement. Measured:
- cel-cpp: `cel-expr-python` (Google's cel-cpp, type-checked), the raw engine: `cel.NewEnv`
  with `self` declared dyn, `env.compile(src)`, `expr.eval(data=...).plain_value()`;
- haplane: haplane's adapter over it, `haplane.cel.Environment(("self",)).compile(src)`
  then `program.eval({"self": ...})` (Kubernetes' libraries and the optional and bind
  extensions declared, errors checked, the result made a plain value): what haplane runs;
- rust: `common-expression-language` (PyO3 bindings of the Rust `cel` crate; `import cel`),
  `cel.compile(src).execute({"self": ...})`;
- celpy, celpy-tr: `cel-python` (pure Python, `import celpy`) with its default interpreting
  runner and with its transpiling `CompiledRunner`; `self` converted by `celpy.json_to_cel`.
The last two packages are not haplane dependencies: an engine that is not installed is
skipped, and the pip command that installs it is printed.

Each rule is evaluated on a plain dict, as the API server holds a decoded object (a CRD's
spec, a Gateway's spec); turning it into the engine's values is part of every engine's cost.
Every result is checked first (each rule holds on its object): a rule an engine cannot compile
or evaluate prints "unsupported" in its cell (the reason under the table), a wrong result
"wrong". Times are this process's CPU time (time.process_time), not wall time: the 2 vCPUs
are shared, and a benchmark descheduled by other work would count the others' time.
Evaluation: median µs per call over --rounds rounds, engines interleaved within each round,
each cell about --ms milliseconds of calls per round. Compile: median µs per compile, engine
by engine (cel-python's parser is a class-level singleton built for one runner's tree class,
so its two runners cannot alternate). Ratios are to the raw cel-cpp engine (2.0x: twice as
slow). The `cel` module of common-expression-language has this script's name: it is imported
with the script's directory out of sys.path.

    .venv/bin/python bench/cel.py [--rounds 5] [--ms 20]
    .venv/bin/pip install common-expression-language cel-python   # the engines compared
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Evaluate = Callable[[Any], Any]
Compiler = Callable[[str], Evaluate]

REGEX = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a DNS-1123 label


def items(n: int) -> list[dict[str, Any]]:
    return [{"name": f"backend-{i}", "weight": i % 3, "port": 8080 + i} for i in range(n)]


SPEC = {
    "replicas": 3,
    "maxReplicas": 10,
    "name": "web-frontend-1",
    "tls": {"mode": "Terminate", "certificateRefs": [{"name": "web-cert"}]},
    "items": items(10),
}
SPEC_100 = {**SPEC, "items": items(100)}
GATEWAY = {
    "gatewayClassName": "haplane",
    "listeners": [
        {"name": f"https-{i}", "hostname": f"h{i}.example.com", "port": 443, "protocol": "HTTPS"}
        for i in range(16)
    ],
}

ALL_NAMES = "self.items.all(x, x.name.size() < 64)"
# (label, expression, the object `self` is)
RULES: list[tuple[str, str, dict[str, Any]]] = [
    ("compare", "self.replicas <= self.maxReplicas", SPEC),
    ("all, 10 items", ALL_NAMES, SPEC),
    ("all, 100 items", ALL_NAMES, SPEC_100),
    ("matches", f"self.name.matches('{REGEX}')", SPEC),
    ("has ? :", "has(self.tls) ? self.tls.mode == 'Terminate' : true", SPEC),
    (
        "exists_one, 16 listeners",
        "self.listeners.all(l1, self.listeners.exists_one(l2, l1.name == l2.name))",
        GATEWAY,
    ),
    ("map.filter, 10 items", "self.items.map(x, x.weight).filter(w, w > 0).size() > 0", SPEC),
]


# ---- the engines: each a function building a compiler (ImportError: not installed) ---------


def cel_cpp() -> Compiler:
    from cel_expr_python import cel

    env = cel.NewEnv(variables={"self": cel.Type.DYN})

    def compile_(src: str) -> Evaluate:
        expr = env.compile(src)
        return lambda obj: expr.eval(data={"self": obj}).plain_value()

    return compile_


def haplane_adapter() -> Compiler:
    from haplane.cel import Environment

    env = Environment(("self",))

    def compile_(src: str) -> Evaluate:
        program = env.compile(src)
        return lambda obj: program.eval({"self": obj})

    return compile_


def rust() -> Compiler:
    # the package's module is `cel`, which is also this script's name: import it with the
    # script's directory (sys.path[0] when run as a script) out of the path
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        cel = importlib.import_module("cel")
    finally:
        sys.path[:] = saved
    if not hasattr(cel, "compile"):
        raise ImportError("cel is not common-expression-language")

    def compile_(src: str) -> Evaluate:
        program = cel.compile(src)
        return lambda obj: program.execute({"self": obj})

    return compile_


def celpy_runner(transpiled: bool) -> Callable[[], Compiler]:
    def build() -> Compiler:
        import celpy
        from celpy.celparser import CELParser

        # its errors are logged as well as raised: the reason is printed under the table
        logging.getLogger("celpy").addHandler(logging.NullHandler())
        # the parser singleton carries the first runner's tree class: rebuild it for this one
        CELParser.CEL_PARSER = None
        env = celpy.Environment(
            runner_class=celpy.CompiledRunner if transpiled else celpy.InterpretedRunner
        )

        def compile_(src: str) -> Evaluate:
            runner = env.program(env.compile(src))
            return lambda obj: runner.evaluate({"self": celpy.json_to_cel(obj)})

        return compile_

    return build


@dataclass
class Engine:
    column: str
    dist: str  # its PyPI distribution
    what: str
    build: Callable[[], Compiler]
    version: str = ""
    missing: bool = False
    programs: dict[int, Evaluate] = field(default_factory=dict)  # rule index -> evaluation
    number: dict[int, int] = field(default_factory=dict)  # calls per round
    cells: dict[int, str] = field(default_factory=dict)  # "unsupported" / "wrong"
    notes: list[str] = field(default_factory=list)
    evals: dict[int, list[float]] = field(default_factory=dict)  # µs per call, each round
    compiles: dict[int, float] = field(default_factory=dict)  # median µs per compile


ENGINES = [
    Engine("cel-cpp", "cel-expr-python", "Google's cel-cpp, raw engine (the base)", cel_cpp),
    Engine("haplane", "cel-expr-python", "haplane.cel adapter over cel-cpp", haplane_adapter),
    Engine("rust", "common-expression-language", "Rust `cel` crate via PyO3", rust),
    Engine("celpy", "cel-python", "pure Python, InterpretedRunner", celpy_runner(False)),
    Engine("celpy-tr", "cel-python", "pure Python, CompiledRunner", celpy_runner(True)),
]


def is_true(value: Any) -> bool:
    # celpy answers its own BoolType (an int subclass)
    return value is True or (type(value).__name__ == "BoolType" and bool(value))


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}"


def prepare(engine: Engine, rounds: int, target_s: float) -> None:
    """Build the engine, check every rule once, choose each rule's calls per round, and time
    its compiles (median µs per compile over `rounds` rounds)."""
    try:
        engine.version = importlib.metadata.version(engine.dist)
        compile_ = engine.build()
    except (ImportError, importlib.metadata.PackageNotFoundError):
        engine.missing = True
        return
    for i, (label, src, obj) in enumerate(RULES):
        try:
            evaluate = compile_(src)
            result = evaluate(obj)
        except Exception as exc:  # an engine's own error types, whatever they are
            engine.cells[i] = "unsupported"
            engine.notes.append(f"{label} -> {short(exc)}")
            continue
        if not is_true(result):
            engine.cells[i] = "wrong"
            engine.notes.append(f"{label} -> {result!r}, expected true")
            continue
        engine.programs[i] = evaluate
        start = time.process_time()
        calls = 0
        while time.process_time() - start < target_s / 4:
            evaluate(obj)
            calls += 1
        per_call = (time.process_time() - start) / calls
        engine.number[i] = max(1, round(target_s / per_call))
        n = max(1, round(target_s / 2 / timed(lambda c=compile_, s=src: c(s), 1)))
        engine.compiles[i] = statistics.median(
            timed(lambda c=compile_, s=src: c(s), n) * 1e6 for _ in range(rounds)
        )


def timed(fn: Callable[[], Any], number: int) -> float:
    """Seconds of this process's CPU per call."""
    return timeit.Timer(fn, timer=time.process_time).timeit(number) / number


def cell(engine: Engine, i: int, micros: float | None, base: float | None) -> str:
    if i in engine.cells:
        return engine.cells[i]
    if micros is None:
        return "-"
    text = f"{micros:.1f}" if micros < 1000 else f"{micros:.0f}"
    if base:
        r = micros / base
        text += f" {r:.1f}x" if r < 100 else f" {r:.0f}x"
    return text


def table(title: str, engines: list[Engine], values: Callable[[Engine, int], float | None]) -> None:
    print(f"\n{title}")
    print(f"{'rule':<26}" + "".join(f"{e.column:>18}" for e in engines))
    for i, (label, _, _) in enumerate(RULES):
        base = values(engines[0], i) if engines[0].column == "cel-cpp" else None
        row = "".join(f"{cell(e, i, values(e, i), base):>18}" for e in engines)
        print(f"{label:<26}{row}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median taken)")
    parser.add_argument("--ms", type=float, default=20.0, help="ms of calls per cell per round")
    args = parser.parse_args()
    target = args.ms / 1000

    print(f"Python {sys.version.split()[0]}; engines:")
    for engine in ENGINES:
        prepare(engine, args.rounds, target)
        if engine.missing:
            print(f"  {engine.column:<10} not installed: pip install {engine.dist}")
        else:
            print(f"  {engine.column:<10} {engine.dist} {engine.version}: {engine.what}")
    engines = [e for e in ENGINES if not e.missing]
    print("rules:")
    for label, src, _ in RULES:
        print(f"  {label:<26}{src}")

    for _ in range(args.rounds):
        for i, (_, _, obj) in enumerate(RULES):
            for engine in engines:
                if i in engine.programs:
                    evaluate, number = engine.programs[i], engine.number[i]
                    us = timed(lambda f=evaluate, o=obj: f(o), number) * 1e6
                    engine.evals.setdefault(i, []).append(us)

    def median_eval(engine: Engine, i: int) -> float | None:
        runs = engine.evals.get(i)
        return statistics.median(runs) if runs else None

    table(
        f"evaluation: median µs per call of {args.rounds} rounds (ratio to cel-cpp)",
        engines,
        median_eval,
    )
    table(
        "compile: median µs per compile (ratio to cel-cpp)",
        engines,
        lambda e, i: e.compiles.get(i),
    )
    notes = [f"  {e.column}, {note}" for e in engines for note in e.notes]
    if notes:
        print("\nunsupported or wrong:", *notes, sep="\n")


if __name__ == "__main__":
    main()
