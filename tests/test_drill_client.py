"""The drill client against a small fake API in this process (aiohttp): its update loop follows
`resourceVersion` preconditions through an epoch change and a move to a region that never had
its keys, and what it records lets the report find a server that drops acknowledged updates."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from aiohttp import web

from haplane.dr.client import DRILL_LABEL, DrillClient, key_prefix, read_back
from haplane.dr.report import DrillResult, Operation, ServerWrite, summarize, verdict

_TAGS = {"east": "0000000e", "west": "0000000f"}
_PATH = re.compile(r"^(?:/regions/(?P<region>\w+))?/api/v1/namespaces/default(?P<rest>.*)$")


class FakeApi:
    """Each region keeps its own objects (no replication); requests without a `/regions/<r>`
    prefix go to `active`, as the gate routes them. A resourceVersion is
    `<revision>.<region tag>.<epoch>` in the epoch current when it is handed out, so a version
    from another epoch no longer matches (409), as on an API replica."""

    def __init__(self) -> None:
        self.active = "east"
        self.epoch = 1
        self.objects: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {r: {} for r in _TAGS}
        self.revision = 0
        self.journal: list[ServerWrite] = []
        self.drop_updates = False  # acknowledge updates without keeping them (a bug to catch)

    def _version(self, region: str, revision: int) -> str:
        return f"{revision}.{_TAGS[region]}.{self.epoch}"

    def _object(self, region: str, name: str) -> dict[str, Any]:
        revision, obj = self.objects[region][name]
        meta = {**obj["metadata"], "resourceVersion": self._version(region, revision)}
        return {**obj, "metadata": meta}

    def _write(self, region: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.revision += 1
        self.journal.append(
            ServerWrite(region, self.epoch, name, self.revision, time.time(), time.time())
        )
        meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
        stored = (self.revision, {**obj, "metadata": meta})
        if not (self.drop_updates and name in self.objects[region]):
            self.objects[region][name] = stored
        return {
            **stored[1],
            "metadata": {**meta, "resourceVersion": self._version(region, stored[0])},
        }

    async def handle(self, request: web.Request) -> web.Response:
        m = _PATH.match(request.path)
        assert m is not None, request.path
        region, rest = m["region"] or self.active, m["rest"]
        headers = {"X-Haplane-Region": region, "X-Haplane-Epoch": str(self.epoch)}
        body: Any = await request.json() if request.can_read_body else {}
        held = self.objects[region]
        status, doc = 200, {}
        if rest == "/configmaps" and request.method == "GET":
            run = request.query["labelSelector"].split("=")[1]
            items = [self._object(region, n) for n in held]
            doc = {"items": [o for o in items if o["metadata"]["labels"].get(DRILL_LABEL) == run]}
        elif rest == "/configmaps":  # POST
            name = body["metadata"]["name"]
            status, doc = (409, {}) if name in held else (201, self._write(region, name, body))
        elif rest.startswith("/configmaps/"):
            name = rest.rsplit("/", 1)[1]
            if name not in held:
                status = 404
            elif request.method == "GET":
                doc = self._object(region, name)
            elif body["metadata"]["resourceVersion"] != self._version(region, held[name][0]):
                status, doc = 409, {"kind": "Status", "code": 409, "message": "modified"}
            else:
                doc = self._write(region, name, body)
        return web.json_response(doc, status=status, headers=headers)


@pytest_asyncio.fixture
async def api() -> AsyncIterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield fake, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def until(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def acked_updates(client: DrillClient, region: str, epoch: int) -> int:
    return sum(
        1
        for o in client.operations
        if o.kind == "update" and o.ok and o.region == region and o.epoch == epoch
    )


async def finish(
    client: DrillClient, task: asyncio.Task[None], fake: FakeApi, url: str
) -> DrillResult:
    client.stop()
    await task
    back: dict[tuple[str, str], int | None] = {}
    for region in _TAGS:  # through the one read-back function, from each region
        held = await read_back([f"{url}/regions/{region}"], client.run_id)
        back.update(((region, k), v) for k, v in held.items())
    prefix = key_prefix(client.run_id)
    return summarize("fake", client.operations, [], fake.journal, back, key_prefix=prefix)


async def test_updates_follow_their_preconditions_through_epoch_and_region_changes(
    api: tuple[FakeApi, str],
) -> None:
    fake, url = api
    client = DrillClient([url], "r1", interval=0.005, updated_keys=4)
    task = asyncio.create_task(client.run())
    await until(lambda: acked_updates(client, "east", 1) >= 8)
    fake.epoch = 2  # the same region in a new epoch: versions of epoch 1 are refused
    await until(lambda: acked_updates(client, "east", 2) >= 8)
    fake.active, fake.epoch = "west", 3  # a region that never had the keys
    await until(lambda: acked_updates(client, "west", 3) >= 8)
    r = await finish(client, task, fake, url)

    assert r.errors_by_kind == {}
    statuses = {(o.status, o.region) for o in r.expected_conflicts}
    assert statuses == {(409, "east"), (404, "west")}
    assert r.lost_writes == r.lost_updates == r.stale_reads == ()
    assert r.acked_not_journaled == () and r.journaled_not_invoked == ()
    assert verdict(r) == []
    assert set(r.final_values) == {"east", "west"}
    assert len(r.final_values["west"]) == 4
    updates = [o for o in r.operations if o.kind == "update"]
    values = [o.value for o in updates if o.value is not None]
    assert len(values) == len(updates) and values == sorted(set(values))  # one growing counter
    gets = [o for o in r.operations if o.kind == "get" and o.value is not None]
    assert gets, "the get loop read values"
    # the record survives the process boundary (`python -m haplane.dr.client` prints it)
    assert [Operation.from_dict(json.loads(json.dumps(o.to_dict()))) for o in updates] == updates


async def test_acknowledged_updates_that_the_server_drops_are_found(
    api: tuple[FakeApi, str],
) -> None:
    fake, url = api
    fake.drop_updates = True  # creates are kept, every later update is acknowledged and lost
    client = DrillClient([url], "r2", interval=0.005, updated_keys=4)
    task = asyncio.create_task(client.run())
    await until(lambda: acked_updates(client, "east", 1) >= 12)
    await until(lambda: sum(o.kind == "get" for o in client.operations) >= 12)
    r = await finish(client, task, fake, url)

    assert r.lost_updates and r.stale_reads
    assert r.errors_by_kind.get("http-409")  # the next update's precondition fails
    assert r.expected_conflicts == ()  # in the same epoch: no excuse
    assert {o.message for o in r.operations if o.status == 409} == {"modified"}
    problems = verdict(r)
    assert any("update(s) lost" in p for p in problems)
    assert any("stale read(s)" in p for p in problems)
