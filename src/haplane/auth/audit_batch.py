"""The audit log's batch backend: kube-apiserver's `--audit-log-mode=batch`.

Layer: auth. Wraps an `AuditLog` (the file, its rotation); knows nothing of HTTP. Used by the
API replica when its topology says `security.audit.mode: batch`.

The request path builds each event's line at once (the event changes as the request goes on,
so its bytes are fixed at their stage) and appends it to a buffer; one writer thread writes
what has gathered every `max_wait` seconds, or as soon as `max_batch` lines wait, in as few
`write`s as rotation allows (`AuditLog.write_lines`). What this is for: the event loop never
waits on the disk. It saves no CPU (`bench/audit_events.py`: building the line is the cost,
not its `write`).

Decisions:
 - **Nothing is dropped for want of room.** kube-apiserver's buffered backend drops an event
   when its buffer is full. Here `record` always buffers, and a request that finds the buffer
   full (`full`) awaits `make_room()`, which wakes the writer and waits for it to have written
   the buffer out. Only the writer writes (besides `close`): no other thread is taken, however
   many requests wait, so a stalled disk slows the requests that find the buffer full and
   nothing else (health checks, leases, watches, the drain go on); the buffer can outgrow
   `buffer_size` by the requests waiting.
 - **Order is the order of `record`**: the buffer is a FIFO, drained under one lock.
 - **What a crash loses**: what was still buffered: normally at most `max_wait` seconds'
   worth; with a stalled disk, up to the whole buffer. `close()` (the replica's drain, and
   at interpreter exit) writes it; a close that finds the writer stuck in the disk for
   `CLOSE_TIMEOUT` counts what is buffered as lost and returns.
 - **A failed write** (disk full) loses the lines that did not reach the file whole (a torn
   line is cut back: `AuditLog._write_all`); they are counted in `errors` and logged with
   their number, and the writer goes on: the requests they describe were answered already.
   The blocking backend likewise logs and lets the request go on.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import threading
import time
from datetime import datetime

from .audit import AuditEvent, AuditLog, LinesNotWritten, Stage

log = logging.getLogger("haplane.auth.audit")

BUFFER_SIZE = 10_000  # kube-apiserver's --audit-log-batch-buffer-size default
MAX_BATCH = 400
MAX_WAIT = 0.2  # seconds
MIN_WAIT = 0.01  # below this the writer would spin
CLOSE_TIMEOUT = 10.0  # seconds a close waits, in all, for a writer stuck in the disk


class BatchingAuditLog:
    """An `AuditLog` written in batches by a thread of its own; `record` is the same call.

    Counters, read by the replica's metrics at scrape time: `events` written, `errors` (events
    lost: a failed write, or recorded after close), `blocked` (times a request found the
    buffer full and waited for it to be written)."""

    def __init__(
        self,
        sink: AuditLog,
        *,
        buffer_size: int = BUFFER_SIZE,
        max_batch: int = MAX_BATCH,
        max_wait: float = MAX_WAIT,
    ) -> None:
        if buffer_size < 1 or max_batch < 1 or not MIN_WAIT <= max_wait < float("inf"):
            raise ValueError(
                f"buffer_size and max_batch must be positive, max_wait at least {MIN_WAIT} s"
            )
        self.sink = sink
        self.path = sink.path
        self.buffer_size = buffer_size
        self.max_batch = min(max_batch, buffer_size)  # beyond, the wake-up could never come
        self.max_wait = max_wait
        self.events = 0
        self.errors = 0  # lost events; changed under _count_lock (from several threads)
        self.blocked = 0
        # deque: append and popleft are atomic, so `record` takes no lock
        self._pending: collections.deque[bytes] = collections.deque()
        self._write_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False  # no more records
        self._finished = False  # the final flush is done (or given up): later lines are lost
        self._gave_up = False  # close found the writer stuck: the writer closes the file
        self._writer_done = False  # (both flags under _count_lock: the two sides' handshake)
        self._in_flight = 0  # lines taken by a write under way
        # requests waiting for room: (their loop, a future the writer resolves)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread = threading.Thread(target=self._run, name="audit-batch", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a process ending without its drain still writes

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.buffer_size

    def _lost(self, n: int) -> None:
        if n:
            with self._count_lock:
                self.errors += n

    def record(self, ev: AuditEvent, stage: Stage, at: datetime | None = None) -> bool:
        """Buffer `ev`'s line for `stage`, if it emits one; True when it did. Never waits
        (see `full`). Raises what building the line raises, and ValueError once closed."""
        if self._closed:
            self._lost(int(ev.emits(stage)))
            raise ValueError("audit log is closed")
        line = self.sink.line_for(ev, stage, at)
        if line is None:
            return False
        pending = self._pending
        pending.append(line)
        if self._finished:  # closed meanwhile (close runs in another thread), flushed already
            # 0: the final flush wrote this line, or close's sweep took (and counted) it
            lost = self._drop_pending()
            if lost:
                self._lost(lost)
                raise ValueError("audit log is closed")
            return True
        if len(pending) >= self.max_batch:
            self._wake.set()
        return True

    async def make_room(self) -> None:
        """For a request that found the buffer `full`: wake the writer and wait until it has
        written the buffer out (the event loop goes on meanwhile)."""
        self.blocked += 1
        loop = asyncio.get_running_loop()
        while self.full:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._count_lock:  # (close sets _finished before its last _notify takes it)
                if self._finished:
                    return
                self._waiters.append((loop, waiter))
            self._wake.set()
            await waiter

    def _notify(self) -> None:
        """The writer's word to requests waiting for room: look again."""
        with self._count_lock:
            waiters, self._waiters = self._waiters, []
        for loop, waiter in waiters:
            with contextlib.suppress(RuntimeError):  # (a loop closed meanwhile)
                loop.call_soon_threadsafe(_resolve, waiter)

    def flush(self) -> None:
        """Write everything buffered so far (in the caller's thread)."""
        with self._write_lock:
            self._flush_locked()

    def _drop_pending(self) -> int:
        n = 0
        with contextlib.suppress(IndexError):
            while True:
                self._pending.popleft()
                n += 1
        return n

    def _flush_locked(self) -> None:
        pending = self._pending
        lines = [pending.popleft() for _ in range(len(pending))]
        if not lines:
            return
        self._in_flight = len(lines)
        try:
            self.sink.write_lines(lines)
        except Exception as exc:  # counted whatever it is: the lines are out of the buffer
            written = exc.written if isinstance(exc, LinesNotWritten) else 0
            self.events += written
            self._lost(len(lines) - written)
            lost = len(lines) - written
            if isinstance(exc, (OSError, ValueError)):
                log.error("audit log write failed: %d events lost: %s", lost, exc)
            else:
                log.exception("audit log write failed: %d events lost", lost)
            return
        finally:
            self._in_flight = 0
        self.events += len(lines)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.max_wait)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must not die: a later flush may succeed
                log.exception("audit batch writer")
            self._notify()
        self._notify()
        with self._count_lock:
            self._writer_done = True
            gave_up = self._gave_up
        if gave_up:  # close could not: the file is ours to close, now the disk moved
            self._close_sink()

    def _close_sink(self) -> None:
        with self._write_lock:
            try:
                self.sink.close()
            except OSError as exc:  # (a deferred write error, on NFS)
                log.error("audit log close: %s", exc)

    def close(self) -> None:
        """Stop the writer, write what is buffered, close the file. Idempotent. Waits at most
        `CLOSE_TIMEOUT` in all for a writer stuck in the disk, then counts what is buffered
        as lost (and logs what the stuck write holds: lost unless the disk moves before the
        process ends)."""
        self._closed = True
        self._wake.set()
        atexit.unregister(self.close)
        try:
            if not self._finished:
                self._close_once()
        finally:
            # lines that came too late for the final flush, or stayed behind a stuck writer
            lost = self._drop_pending()
            if lost:
                self._lost(lost)
                log.error("audit log close: %d buffered events lost", lost)
            self._notify()

    def _close_once(self) -> None:
        deadline = time.monotonic() + CLOSE_TIMEOUT
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(CLOSE_TIMEOUT)
        if self._write_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                self._flush_locked()
            finally:
                self._finished = True
                self._write_lock.release()
            self._close_sink()
            return
        self._finished = True
        log.error(
            "audit log close: the writer is stuck in the disk with %d events", self._in_flight
        )
        with self._count_lock:
            self._gave_up = True
            writer_done = self._writer_done
        if writer_done:  # it got out after all, before it could see _gave_up: close here
            self._close_sink()

    def __enter__(self) -> BatchingAuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
