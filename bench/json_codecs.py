"""Benchmark: JSON libraries for the API server's hot paths, side by side in one run.

Encodes a list of 100 ~1 KiB ConfigMaps (a list response), one such object (a get, a watch
event), and decodes one (a request body) with the standard library, orjson and msgspec; prints
µs per operation (median of 7 repeats of timeit) and the ratio to the standard library. Outputs
are checked to round-trip to the same data first.

    .venv/bin/python bench/json_codecs.py
"""

from __future__ import annotations

import json
import statistics
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson


def configmap(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"c{i}",
            "namespace": "bench",
            "uid": "0f5b7b6e-9c1b-4b8c-9e1e",
            "resourceVersion": f"{1000 + i}.9f2c41ab.0",
            "generation": 1,
            "creationTimestamp": "2026-11-25T21:00:00Z",
            "labels": {"app": "x"},
        },
        "data": {"p": "x" * 1000},
    }


LIST = {
    "kind": "ConfigMapList",
    "apiVersion": "v1",
    "metadata": {"resourceVersion": "1"},
    "items": [configmap(i) for i in range(100)],
}
ONE = configmap(1)
RAW = json.dumps(ONE).encode()

encoders: dict[str, Callable[[Any], bytes]] = {
    "json (stdlib)": lambda o: json.dumps(o).encode(),
    "orjson": orjson.dumps,
    "msgspec": msgspec.json.encode,
}
decoders: dict[str, Callable[[bytes], Any]] = {
    "json (stdlib)": json.loads,
    "orjson": orjson.loads,
    "msgspec": msgspec.json.decode,
}


def micros(fn: Callable[[], Any]) -> float:
    n = 200
    return statistics.median(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6


def main() -> None:
    for name in encoders:
        assert json.loads(encoders[name](LIST)) == LIST and decoders[name](RAW) == ONE
    print(f"{'library':<16}{'list of 100 us':>16}{'one object us':>15}{'decode one us':>15}")
    base = None
    for name in encoders:
        enc, dec = encoders[name], decoders[name]
        row = (
            micros(lambda enc=enc: enc(LIST)),  # type: ignore[misc]
            micros(lambda enc=enc: enc(ONE)),  # type: ignore[misc]
            micros(lambda dec=dec: dec(RAW)),  # type: ignore[misc]
        )
        base = base or row
        ratios = " ".join(f"{b / r:.1f}x" for b, r in zip(base, row, strict=True))
        print(f"{name:<16}{row[0]:>16.1f}{row[1]:>15.2f}{row[2]:>15.2f}   faster: {ratios}")


if __name__ == "__main__":
    main()
