"""The audit log's batch backend (`haplane.auth.audit_batch`, `--audit-log-mode=batch`) and
`AuditLog.write_lines`: same bytes as the blocking backend, in order, written by a thread, a
full buffer written by the request, nothing lost on close, rotation respected across a batch;
and a real replica in batch mode writing its events, counted in its metrics."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from haplane.api.request import attributes, request_info
from haplane.auth.audit import AuditEvent, AuditLog, Policy, Stage, backup_files, default_policy
from haplane.auth.audit_batch import BatchingAuditLog
from haplane.auth.user import UserInfo
from tests.topology_helpers import wait_for

EVERYTHING = Policy.from_text(
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Request\n"
)


def event(i: int, policy: Policy = EVERYTHING, method: str = "GET") -> AuditEvent:
    user = UserInfo("alice", groups=("team",))
    path = f"/api/v1/namespaces/a/configmaps/c{i:04d}"
    attrs = attributes(request_info(method, path, {}), user)
    at = datetime(2026, 1, 1, 0, 0, i % 60, i, tzinfo=UTC)
    ev = AuditEvent(attrs, policy.decide(attrs), request_uri=path, user=user,
                    audit_id=f"id-{i}", received=at)  # fmt: skip
    if method != "GET":
        ev.set_request_object({"metadata": {"name": f"c{i:04d}"}, "data": {"k": "v"}})
    ev.set_response(200)
    return ev


AT = datetime(2026, 1, 2, tzinfo=UTC)


def test_write_lines_rotates_between_lines_never_inside_one(tmp_path: Path) -> None:
    one = [b'{"n":%d}\n' % i for i in range(10, 40)]  # 9 bytes each
    with AuditLog(tmp_path / "a.log", max_bytes=9 * 4, backups=0) as log:
        log.write_lines(one[:3])
        assert log.rotations == 0 and log.size == 27
        log.write_lines(one[3:])  # 1 fits, then 4 a file
        assert log.size <= 36
    files = [*backup_files(tmp_path / "a.log"), tmp_path / "a.log"]
    got = [line for f in files for line in f.read_bytes().splitlines(keepends=True)]
    assert got == one  # in order, every line whole
    assert all(f.stat().st_size <= 36 for f in files)
    assert [f.stat().st_size for f in files[:-1]] == [36] * (len(files) - 1)
    # a line longer than the limit goes alone into a fresh file
    with AuditLog(tmp_path / "b.log", max_bytes=20, backups=0) as log:
        log.write_lines([b"x" * 5 + b"\n", b"y" * 40 + b"\n", b"z\n"])
    files = [*backup_files(tmp_path / "b.log"), tmp_path / "b.log"]
    assert [f.read_bytes() for f in files] == [b"xxxxx\n", b"y" * 40 + b"\n", b"z\n"]


def test_batches_are_the_blocking_backends_bytes_in_order(tmp_path: Path) -> None:
    """Metadata reads (the direct line) and writes at Request level (the full path, redacted)
    alike; what `record` returned is what each backend did."""
    blocking = AuditLog(tmp_path / "blocking.log", max_bytes=0)
    batch = BatchingAuditLog(AuditLog(tmp_path / "batch.log", max_bytes=0), max_wait=0.01)
    said = []
    for i in range(300):
        method = "GET" if i % 3 else "POST"
        policy = default_policy() if i % 2 else EVERYTHING
        for stage in (Stage.REQUEST_RECEIVED, Stage.RESPONSE_COMPLETE):
            a = blocking.record(event(i, policy, method), stage, AT)
            b = batch.record(event(i, policy, method), stage, AT)
            said.append((a, b))
    batch.close()
    blocking.close()
    assert all(a == b for a, b in said) and any(not a for a, _ in said)
    expected = (tmp_path / "blocking.log").read_bytes()
    assert (tmp_path / "batch.log").read_bytes() == expected
    assert batch.events == blocking.events == expected.count(b"\n") > 400


def test_the_thread_writes_without_close_and_a_full_batch_wakes_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    batch = BatchingAuditLog(AuditLog(path), max_wait=0.05, max_batch=1000)
    try:
        batch.record(event(1), Stage.RESPONSE_COMPLETE, AT)
        assert batch.pending == 1 and path.read_bytes() == b""  # not in the request's path
        wait_for(lambda: path.read_bytes().count(b"\n") == 1, timeout=5)
        assert batch.pending == 0 and batch.events == 1
    finally:
        batch.close()
    # max_batch wakes the writer long before max_wait
    batch = BatchingAuditLog(AuditLog(tmp_path / "b.log"), max_wait=30, max_batch=10)
    try:
        for i in range(9):
            batch.record(event(i), Stage.RESPONSE_COMPLETE, AT)
        time.sleep(0.2)
        assert (tmp_path / "b.log").read_bytes() == b""
        batch.record(event(9), Stage.RESPONSE_COMPLETE, AT)
        wait_for(lambda: (tmp_path / "b.log").read_bytes().count(b"\n") == 10, timeout=5)
    finally:
        batch.close()


async def test_a_full_buffer_is_awaited_off_the_event_loop_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """The writer held up (a stalled disk): `record` never waits; the request that finds the
    buffer full awaits `make_room`, which returns once the buffer is written, in order after
    what the writer had, while the event loop goes on."""

    path = tmp_path / "audit.log"
    sink = AuditLog(path)
    gate = threading.Event()
    real = sink.write_lines
    calls: list[int] = []

    def slow(lines: list[bytes]) -> None:
        calls.append(len(lines))
        if threading.current_thread().name == "audit-batch":
            gate.wait(10)
        real(lines)

    sink.write_lines = slow  # type: ignore[method-assign]
    batch = BatchingAuditLog(sink, max_wait=0.01, max_batch=1, buffer_size=5)
    batch.record(event(0), Stage.RESPONSE_COMPLETE, AT)
    wait_for(lambda: calls, timeout=5)  # the writer took line 0 and is stuck writing it
    for i in range(1, 6):
        batch.record(event(i), Stage.RESPONSE_COMPLETE, AT)  # returns at once, full or not
    assert batch.full and batch.pending == 5
    ticks = 0

    async def loop_alive() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(loop_alive())
    threading.Timer(0.3, gate.set).start()
    await batch.make_room()  # waits for the stuck writer, then the buffer is out
    ticker.cancel()
    assert ticks >= 10, ticks  # the loop ran while the request waited
    assert batch.blocked == 1 and batch.pending == 0 and not batch.full
    batch.close()
    names = [json.loads(x)["objectRef"]["name"] for x in path.read_text().splitlines()]
    assert names == [f"c{i:04d}" for i in range(6)]
    assert batch.events == 6 and batch.errors == 0


def test_a_torn_write_is_cut_back_to_its_last_whole_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write then a full disk, in a file that already holds lines: the file is cut
    back to the last whole line written, which counts as written, the rest as lost; the size
    kept matches the file; the next batch starts on a line of its own. When the cut fails
    too, the next write ends the fragment first, so only the fragment is malformed."""
    import haplane.auth.audit as audit_module

    path = tmp_path / "audit.log"
    sink = AuditLog(path, max_bytes=0)
    real_write = os.write
    plan: list[str] = []

    def write(fd: int, data: bytes) -> int:
        step = plan.pop(0) if plan and fd == sink._fd else "ok"
        if step == "short":
            return real_write(fd, bytes(data)[:13])  # one line and 4 bytes of the next
        if step == "full":
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit_module.os, "write", write)
    lines = [b'{"n":%d}\n' % i for i in range(10, 19)]  # 9 bytes each
    batch = BatchingAuditLog(sink, max_wait=60, max_batch=100)
    batch._pending.extend(lines[:2])
    batch.flush()
    plan[:] = ["short", "full"]
    batch._pending.extend(lines[2:5])
    batch.flush()
    assert (batch.events, batch.errors) == (3, 2)
    assert sink.size == path.stat().st_size == 27
    batch._pending.append(lines[5])
    batch.flush()
    assert path.read_bytes() == b"".join(lines[:3]) + lines[5]
    # the cut fails: the fragment stays, and the next line starts after a newline
    monkeypatch.setattr(audit_module.os, "ftruncate", lambda *_: (_ for _ in ()).throw(OSError()))
    plan[:] = ["short", "full"]
    batch._pending.extend(lines[6:8])
    batch.flush()
    assert (batch.events, batch.errors) == (5, 3)
    batch._pending.append(lines[8])
    batch.close()
    got = path.read_bytes().split(b"\n")
    assert got[:5] == [x.rstrip() for x in (*lines[:3], lines[5], lines[6])]
    assert got[5] == lines[7][:4] and got[6] == lines[8].rstrip() and got[7] == b""
    assert sink.size == path.stat().st_size


def _stuck_batch(tmp_path: Path, **kw) -> tuple[BatchingAuditLog, threading.Event]:
    """A batch log whose writer is stuck in its first write until the event is set."""
    sink = AuditLog(tmp_path / "audit.log")
    gate = threading.Event()
    real = sink.write_lines
    entered = threading.Event()

    def slow(lines: list[bytes]) -> None:
        entered.set()
        gate.wait(10)
        real(lines)

    sink.write_lines = slow  # type: ignore[method-assign]
    batch = BatchingAuditLog(sink, max_wait=0.01, max_batch=1, **kw)
    batch.record(event(0), Stage.RESPONSE_COMPLETE, AT)
    assert entered.wait(5)
    return batch, gate


@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_every_path_of_the_filter_waits_for_room(tmp_path: Path) -> None:
    """The Audit filter, on answers, refusals (a Status, aiohttp's own), and failed
    authentication: a request that leaves the buffer full is answered only once it is
    written."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from haplane.api import errors
    from haplane.api.filters.audit import Audit, FailedAuthenticationAudit

    async def ok(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=200, body=b"{}")

    async def refused(request: web.BaseRequest) -> web.StreamResponse:
        raise errors.not_found("configmaps", "c")

    async def too_large(request: web.BaseRequest) -> web.StreamResponse:
        raise web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2)

    async def unauthenticated(request: web.BaseRequest) -> web.StreamResponse:
        raise errors.unauthorized()

    def request(user: bool = True) -> web.BaseRequest:
        path = "/api/v1/namespaces/a/configmaps/c"
        r = make_mocked_request("GET", path)
        r["info"] = request_info("GET", path, {})
        if user:
            r["user"] = UserInfo("alice", groups=("team",))
        return r

    cases = [(ok, True), (refused, True), (too_large, True), (unauthenticated, False)]
    for i, (handler, with_user) in enumerate(cases):
        root = tmp_path / str(i)
        root.mkdir()
        batch, gate = _stuck_batch(root, buffer_size=1)
        audit = Audit(EVERYTHING, batch)
        link = FailedAuthenticationAudit(audit) if not with_user else audit
        call = asyncio.ensure_future(link(request(with_user), handler))
        await asyncio.sleep(0.3)
        assert not call.done(), handler.__name__  # waiting for room
        gate.set()
        await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 10)
        assert batch.blocked == 1 and not batch.full, handler.__name__
        batch.close()
        assert (root / "audit.log").read_bytes().count(b"\n") >= 2, handler.__name__


def _failing_once(path: Path, failure: Exception) -> tuple[AuditLog, list[Exception]]:
    """A log whose first `write_lines` raises `failure` (the list empties when it has)."""
    sink = AuditLog(path)
    real = sink.write_lines
    failures = [failure]

    def failing(lines: list[bytes]) -> None:
        if failures:
            raise failures.pop()
        real(lines)

    sink.write_lines = failing  # type: ignore[method-assign]
    return sink, failures


def test_the_writer_survives_any_error(tmp_path: Path) -> None:
    sink, failures = _failing_once(tmp_path / "audit.log", RuntimeError("a bug"))
    with BatchingAuditLog(sink, max_wait=0.01) as batch:
        batch.record(event(0), Stage.RESPONSE_COMPLETE, AT)
        wait_for(lambda: not failures, timeout=5)
        batch.record(event(1), Stage.RESPONSE_COMPLETE, AT)
        wait_for(lambda: batch.events == 1, timeout=5)  # the thread still writes
        assert batch._thread.is_alive() and batch.errors == 1  # the lost one counted


def test_close_gives_up_on_a_stuck_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    import haplane.auth.audit_batch as audit_batch

    monkeypatch.setattr(audit_batch, "CLOSE_TIMEOUT", 1.0)
    batch, gate = _stuck_batch(tmp_path)
    for i in range(1, 4):
        batch.record(event(i), Stage.RESPONSE_COMPLETE, AT)
    started = time.monotonic()
    batch.close()
    assert time.monotonic() - started < 1.7  # one deadline for the join and the lock (not 2)
    assert batch.errors == 3 and batch.pending == 0
    assert "stuck in the disk with 1 events" in caplog.text
    started = time.monotonic()
    batch.close()  # again: at once
    assert time.monotonic() - started < 0.5
    assert not batch.sink.closed
    gate.set()  # the disk moves: the writer finishes the batch it held, nothing more
    wait_for(lambda: not batch._thread.is_alive(), timeout=5)
    assert (batch.events, batch.errors) == (1, 3)
    assert batch.sink.closed  # closed by the writer, as close could not


def test_a_process_that_exits_without_closing_still_writes(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from haplane.auth.audit import AuditLog\n"
        "from haplane.auth.audit_batch import BatchingAuditLog\n"
        "b = BatchingAuditLog(AuditLog(sys.argv[1]), max_wait=60)\n"
        "b._pending.append(b'{\"n\":7}\\n')\n"  # buffered; the process ends, no close
    )
    path = tmp_path / "audit.log"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert path.read_bytes() == b'{"n":7}\n'


def test_close_writes_everything_and_later_records_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    batch = BatchingAuditLog(AuditLog(path), max_wait=60, max_batch=10_000)
    for i in range(50):
        batch.record(event(i), Stage.RESPONSE_COMPLETE, AT)
    batch.close()
    batch.close()  # idempotent
    assert path.read_bytes().count(b"\n") == 50
    with pytest.raises(ValueError, match="closed"):
        batch.record(event(99), Stage.RESPONSE_COMPLETE, AT)
    assert stat_mode(path) == 0o600


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_failed_write_is_counted_and_the_writer_goes_on(tmp_path: Path, caplog) -> None:
    path = tmp_path / "audit.log"
    sink, _ = _failing_once(path, OSError(28, "No space left on device"))
    with BatchingAuditLog(sink, max_wait=0.01) as batch:
        for i in range(3):
            batch.record(event(i), Stage.RESPONSE_COMPLETE, AT)
        wait_for(lambda: batch.errors == 3, timeout=5)
        batch.record(event(3), Stage.RESPONSE_COMPLETE, AT)
        wait_for(lambda: batch.events == 1, timeout=5)
    assert "3 events lost" in caplog.text
    assert [json.loads(x)["objectRef"]["name"] for x in path.read_text().splitlines()] == ["c0003"]


def test_settings_are_checked() -> None:
    bad = ({"buffer_size": 0}, {"max_batch": 0}, {"max_wait": 0}, {"max_wait": 0.001},
           {"max_wait": float("nan")}, {"max_wait": float("inf")})  # fmt: skip
    for kw in bad:
        with pytest.raises(ValueError):
            BatchingAuditLog(AuditLog(os.devnull, max_bytes=0), **kw)  # type: ignore[arg-type]
    # a wake-up threshold beyond the buffer could never be reached
    with BatchingAuditLog(AuditLog(os.devnull, max_bytes=0), buffer_size=5, max_batch=50) as b:
        assert b.max_batch == 5


def test_a_record_racing_close_is_written_or_counted(tmp_path: Path) -> None:
    """`close` runs in another thread: it can begin, or even finish its final flush, between
    `record`'s check and its append."""
    sink = AuditLog(tmp_path / "audit.log")
    batch = BatchingAuditLog(sink, max_wait=60)
    batch.record(event(0), Stage.RESPONSE_COMPLETE, AT)
    real = sink.line_for

    def closing_meanwhile(*args):  # close begins while the line is built
        batch._closed = True
        return real(*args)

    sink.line_for = closing_meanwhile  # type: ignore[method-assign]
    assert batch.record(event(1), Stage.RESPONSE_COMPLETE, AT)  # left for the final flush
    assert batch.pending == 2
    batch.close()
    assert batch.events == 2 and batch.errors == 0

    def flushed_meanwhile(*args):  # ... and its final flush has run: refused, counted
        batch._closed = True
        return real(*args)

    batch._closed = False  # as if the check had passed just before
    sink.line_for = flushed_meanwhile  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        batch.record(event(2), Stage.RESPONSE_COMPLETE, AT)
    assert batch.errors == 1 and batch.pending == 0
    with pytest.raises(ValueError):  # after close, plainly
        batch.record(event(3), Stage.RESPONSE_COMPLETE, AT)
    assert batch.errors == 2
    assert (tmp_path / "audit.log").read_bytes().count(b"\n") == 2


def test_replica_flags_and_topology_field() -> None:
    from haplane.api.__main__ import parse_args

    base = ["--region", "r", "--replica", "a", "--listen", "127.0.0.1:1", "--etcd", "x:1"]
    c = parse_args([*base, "--audit-log-path", "/tmp/x.log"]).security
    assert c.audit_mode == "blocking"
    c = parse_args([*base, "--audit-log-path", "/tmp/x.log", "--audit-log-mode", "batch",
                    "--audit-log-batch-max-wait", "50ms", "--audit-log-batch-max-size", "7",
                    "--audit-log-batch-buffer-size", "70"]).security  # fmt: skip
    assert (c.audit_mode, c.audit_batch_max_wait, c.audit_batch_max_size,
            c.audit_batch_buffer_size) == ("batch", 0.05, 7, 70)  # fmt: skip
    for bad in (["--audit-log-batch-max-wait", "0s"], ["--audit-log-batch-max-wait", "5ms"],
                ["--audit-log-batch-max-size", "0"], ["--audit-log-mode", "async"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args([*base, *bad])


def test_topology_audit_mode_is_validated_and_passed_to_the_replicas(tmp_path: Path) -> None:
    import yaml

    from haplane.topology import TopologyError, load_text
    from haplane.topology.loader import example_text

    doc = yaml.safe_load(example_text("two-regions"))
    doc["spec"].setdefault("security", {})["audit"] = {"mode": "batch", "batchMaxWaitMs": 50}
    topo = load_text(yaml.safe_dump(doc))
    assert topo.spec.security.audit.mode == "batch"
    assert topo.spec.security.audit.batch_max_wait_ms == 50
    from haplane.api.__main__ import parse_args
    from haplane.local.supervisor import audit_args

    base = ["--region", "r", "--replica", "a", "--listen", "127.0.0.1:1", "--etcd", "x:1",
            "--audit-log-path", "/tmp/x.log"]  # fmt: skip
    c = parse_args([*base, *audit_args(topo.spec.security.audit)]).security
    assert (c.audit_mode, c.audit_batch_max_wait) == ("batch", 0.05)
    default = load_text(example_text("two-regions")).spec.security.audit
    assert "--audit-log-mode" not in audit_args(default)
    assert parse_args([*base, *audit_args(default)]).security.audit_mode == "blocking"
    doc["spec"]["security"]["audit"] = {"mode": "async"}
    with pytest.raises(TopologyError) as err:
        load_text(yaml.safe_dump(doc))
    assert "spec.security.audit.mode" in str(err.value)
    assert "'blocking'" in str(err.value) and "'batch'" in str(err.value)


async def test_a_replica_in_batch_mode_writes_and_counts_its_events(etcd_cluster, tmp_path: Path):
    """A real replica with `--audit-log-mode batch`, the default policy: 5 GETs (one event
    each) wake the writer, with no stop; its metrics count them; a watch has its
    ResponseStarted event, a GET none; what is still buffered when it is told to stop (the
    wait is a minute) is written (by the drain, or else at the process's exit)."""
    from haplane.local.api_replica import ApiReplica

    log = tmp_path / "audit" / "api.log"
    replica = ApiReplica(tmp_path, "batch", etcd_cluster.endpoints,
                         extra_args=["--audit-log-path", str(log), "--audit-log-mode", "batch",
                                     "--audit-log-batch-max-wait", "60s",
                                     "--audit-log-batch-max-size", "5"])  # fmt: skip

    def events() -> list[dict]:
        text = log.read_text() if log.exists() else ""
        return [orjson.loads(x) for x in text.splitlines()]

    def named() -> set[str]:
        return {
            e.get("objectRef", {}).get("name") for e in events() if e["stage"] == "ResponseComplete"
        }

    await replica.start()
    try:
        for i in range(5):
            status, _, _ = replica.request("GET", f"/api/v1/namespaces/default/configmaps/n{i}")
            assert status == 404
        want = {f"n{i}" for i in range(5)}
        wait_for(lambda: want <= named(), timeout=10)
        status, _, text = replica.request("GET", "/metrics")
        assert status == 200
        counted = next(
            float(x.split()[-1]) for x in text.splitlines()
            if x.startswith("apiserver_audit_event_total ")
        )  # fmt: skip
        assert counted >= 5
        assert "haplane_audit_buffered_events " in text
        assert 'apiserver_audit_error_total{plugin="log"} 0.0' in text
        assert not [e for e in events() if e["stage"] == "ResponseStarted"]
        # a watch: RequestReceived, ResponseStarted, ResponseComplete; with m0 and m1 that
        # is 5 waiting, which wakes the writer; m2 stays buffered
        status, _, _ = replica.request(
            "GET", "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1"
        )
        assert status == 200
        for i in range(3):
            replica.request("GET", f"/api/v1/namespaces/default/configmaps/m{i}")
        wait_for(lambda: "m1" in named(), timeout=10)
        started = [e for e in events() if e["stage"] == "ResponseStarted"]
        assert len(started) == 1 and started[0]["verb"] == "watch", started
        # one more, under the wake-up threshold and the minute's wait: buffered, until the stop
        replica.request("GET", "/api/v1/namespaces/default/configmaps/last")
        await asyncio.sleep(0.5)
        assert not {"m2", "last"} & named()
    finally:
        await replica.stop()
    assert {"m2", "last"} <= named()


class _StalledLog:
    """An audit log path that stalls like a hung disk: a FIFO whose reader reads nothing until
    `release()` (then everything, until the writer closes it). A pipe takes ~64 KiB, then a
    blocking `write` waits."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open succeeds
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def release(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def _read(self) -> None:
        import select

        while True:
            select.select([self.fd], [], [], 0.2)
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:  # every writer closed it
                return
            self.data += chunk

    def names(self) -> list[str]:
        """The `i=NAME` label selectors of the list requests logged, in order."""
        uris = [orjson.loads(x)["requestURI"] for x in bytes(self.data).splitlines()]
        return [u.split("i%3D", 1)[1] for u in uris if "i%3D" in u]

    def close(self) -> None:
        if self._thread.ident is not None:
            self._thread.join(10)
        os.close(self.fd)


async def test_a_stalled_disk_freezes_a_blocking_replica_not_a_batch_one(
    etcd_cluster, tmp_path: Path
):
    """The batch backend's reason to be, on real replicas. The audit log stalls (a FIFO no one
    reads): the blocking replica's event loop hangs in `write`, its health check with it;
    the batch replica keeps answering, health and GETs, until its buffer is full; then the
    GETs that find it full wait, health still answers; once the disk moves, every event is
    there, in order."""
    from haplane.local.api_replica import ApiReplica

    def get(replica: ApiReplica, path: str, timeout: float = 3.0) -> int | None:
        try:
            return replica.request("GET", path, timeout=timeout)[0]
        except OSError:  # (socket timeouts are OSErrors)
            return None

    def listed(name: str) -> str:  # a list (200, the filter's success path), named
        return f"/api/v1/namespaces/default/configmaps?labelSelector=i%3D{name}"

    def fill(replica: ApiReplica, prefix: str, limit: int) -> int:
        """GETs until one hangs (or `limit`); how many were answered."""
        for i in range(limit):
            if get(replica, listed(f"{prefix}{i:03d}")) != 200:
                return i
        return limit

    # blocking: the first write the pipe cannot take freezes the replica
    stalled = _StalledLog(tmp_path / "blocking.fifo")
    blocking = ApiReplica(tmp_path, "stall-blocking", etcd_cluster.endpoints,
                          extra_args=["--audit-log-path", str(tmp_path / "blocking.fifo"),
                                      "--audit-log-maxsize", "0"])  # fmt: skip
    await blocking.start()
    try:
        answered = fill(blocking, "b", 400)
        assert 20 < answered < 400, answered  # ~64 KiB of events, then stuck
        assert get(blocking, "/readyz", timeout=1.0) is None  # the whole loop is stuck
        stalled.release()
        wait_for(lambda: get(blocking, "/readyz", timeout=1.0) == 200, timeout=15)
    finally:
        stalled.release()
        await blocking.stop()
        stalled.close()

    # batch: the writer thread is stuck instead; the replica answers until the buffer is full
    stalled = _StalledLog(tmp_path / "batch.fifo")
    batch = ApiReplica(tmp_path, "stall-batch", etcd_cluster.endpoints,
                       extra_args=["--audit-log-path", str(tmp_path / "batch.fifo"),
                                   "--audit-log-maxsize", "0", "--audit-log-mode", "batch",
                                   "--audit-log-batch-max-wait", "20ms",
                                   "--audit-log-batch-buffer-size", "150"])  # fmt: skip
    await batch.start()
    try:
        answered = fill(batch, "c", 600)
        assert answered > 150, answered  # past the pipe's ~64 KiB, up to a full buffer
        assert answered < 600, answered  # then the request that found it full waits ...
        for _ in range(5):
            assert get(batch, "/readyz", timeout=1.0) == 200  # ... and the rest goes on
        stalled.release()
        wait_for(lambda: get(batch, listed("after")) == 200, timeout=15)
    finally:
        stalled.release()
        await batch.stop()
        stalled.close()
    names = stalled.names()
    expected = [f"c{i:03d}" for i in range(answered + 1)]  # the one that waited too
    assert [n for n in names if n.startswith("c")] == expected
    assert names[-1] == "after"


def test_a_failure_after_a_rotation_counts_the_lines_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import haplane.auth.audit as audit_module

    path = tmp_path / "audit.log"
    sink = AuditLog(path, max_bytes=27, backups=0)  # 3 lines of 9 bytes a file
    real_write = os.write
    calls = []

    def write(fd: int, data: bytes) -> int:
        if fd != sink._fd:  # another thread's write
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit_module.os, "write", write)
    batch = BatchingAuditLog(sink, max_wait=60)
    batch._pending.extend(b'{"n":%d}\n' % i for i in range(10, 15))
    batch.flush()
    assert calls == [27, 18]  # 3 lines, a rotation, then the 2 others failed
    assert (batch.events, batch.errors) == (3, 2)
    batch.close()


def test_a_fragment_left_by_a_dead_process_is_ended_before_the_next_line(tmp_path: Path):
    path = tmp_path / "audit.log"
    path.write_bytes(b'{"a":1}\n{"fra')  # a replica killed mid-write
    with AuditLog(path) as log:
        log.write_line(b'{"b":2}\n')
        assert log.size == path.stat().st_size
    assert path.read_bytes() == b'{"a":1}\n{"fra\n{"b":2}\n'
    with AuditLog(path) as log:  # whole lines: nothing added
        log.write_line(b'{"c":3}\n')
    assert path.read_bytes().endswith(b'{"b":2}\n{"c":3}\n')


def test_ending_a_fragment_can_fail_and_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import haplane.auth.audit as audit_module

    path = tmp_path / "audit.log"
    path.write_bytes(b'{"fra')
    sink = AuditLog(path)
    real_write = os.write
    failing = [True]

    def write(fd: int, data: bytes) -> int:
        if fd == sink._fd and failing and bytes(data) == b"\n":
            failing.pop()
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit_module.os, "write", write)
    with BatchingAuditLog(sink, max_wait=60) as batch:
        batch._pending.append(b'{"b":2}\n')
        batch.flush()
        assert (batch.events, batch.errors) == (0, 1)
        batch._pending.append(b'{"c":3}\n')
        batch.flush()
        assert batch.events == 1
    assert path.read_bytes() == b'{"fra\n{"c":3}\n'


async def test_requests_waiting_for_room_are_let_go_when_close_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import haplane.auth.audit_batch as audit_batch

    monkeypatch.setattr(audit_batch, "CLOSE_TIMEOUT", 0.3)
    batch, gate = _stuck_batch(tmp_path, buffer_size=2)
    batch.record(event(1), Stage.RESPONSE_COMPLETE, AT)
    batch.record(event(2), Stage.RESPONSE_COMPLETE, AT)
    waiting = asyncio.ensure_future(batch.make_room())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await asyncio.to_thread(batch.close)  # gives up on the stuck writer
    await asyncio.wait_for(waiting, 5)  # ... and lets the request go
    assert batch.errors == 2
    batch._pending.extend([b"x\n"] * 2)  # full again, after the close: no waiting
    await asyncio.wait_for(batch.make_room(), 1)
    gate.set()


def test_the_cut_back_measures_from_the_files_real_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a copy-truncate (a log shipper emptied the file), a torn write is cut back from
    where the file really ends, not from the size the log remembered: no NUL bytes."""
    import haplane.auth.audit as audit_module

    path = tmp_path / "audit.log"
    sink = AuditLog(path, max_bytes=0)
    sink.write_lines([b'{"n":1}\n', b'{"n":2}\n'])
    os.truncate(path, 0)  # copytruncate
    real_write = os.write
    plan = ["short", "full"]

    def write(fd: int, data: bytes) -> int:
        step = plan.pop(0) if plan and fd == sink._fd else "ok"
        if step == "short":
            return real_write(fd, bytes(data)[:12])  # one line and 4 bytes
        if step == "full":
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit_module.os, "write", write)
    with pytest.raises(OSError) as err:
        sink.write_lines([b'{"n":3}\n', b'{"n":4}\n'])
    assert err.value.written == 1  # type: ignore[attr-defined]
    assert path.read_bytes() == b'{"n":3}\n'
    assert sink.size == path.stat().st_size == 8
    sink.close()


def test_after_a_failed_cut_and_a_rotation_the_new_file_starts_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import haplane.auth.audit as audit_module

    path = tmp_path / "audit.log"
    sink = AuditLog(path, max_bytes=30, backups=0)
    real_write = os.write
    plan = ["short", "full"]

    def write(fd: int, data: bytes) -> int:
        step = plan.pop(0) if plan and fd == sink._fd else "ok"
        if step == "short":
            return real_write(fd, bytes(data)[:4])
        if step == "full":
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    def no_cut(*_: object) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(audit_module.os, "write", write)
    monkeypatch.setattr(audit_module.os, "ftruncate", no_cut)
    with pytest.raises(OSError):
        sink.write_line(b'{"n":1}\n')
    sink.write_line(b"y" * 29 + b"\n")  # does not fit beside the fragment: a new file
    sink.close()
    (backup,) = backup_files(path)
    assert backup.read_bytes() == b'{"n"'  # the fragment stays behind, in the old file
    assert path.read_bytes() == b"y" * 29 + b"\n"  # the new one starts with the line


def test_a_failed_prune_does_not_lose_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    path = tmp_path / "audit.log"
    sink = AuditLog(path, max_bytes=18, backups=1)
    sink.write_lines([b'{"n":1}\n', b'{"n":2}\n'])
    sink.write_lines([b'{"n":3}\n', b'{"n":4}\n'])  # a rotation: one backup, nothing pruned
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with BatchingAuditLog(sink, max_wait=60) as batch:
        batch._pending.extend([b'{"n":5}\n', b'{"n":6}\n'])
        batch.flush()  # rotates, and the prune of the oldest backup fails
        assert (batch.events, batch.errors) == (2, 0)
    assert "backup not removed" in caplog.text
    assert path.read_bytes() == b'{"n":5}\n{"n":6}\n'


def test_close_survives_a_failing_file_close(tmp_path: Path, caplog) -> None:
    sink = AuditLog(tmp_path / "audit.log")
    real_close = sink.close

    def failing() -> None:
        real_close()
        raise OSError(5, "EIO on close")

    sink.close = failing  # type: ignore[method-assign]
    batch = BatchingAuditLog(sink, max_wait=60)
    batch.record(event(1), Stage.RESPONSE_COMPLETE, AT)
    batch.close()
    assert batch._finished and batch.pending == 0 and batch.events == 1
    assert "EIO on close" in caplog.text
