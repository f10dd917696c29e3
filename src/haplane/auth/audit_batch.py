"""The audit log's batch backend: kube-apiserver's `--audit-log-mode=batch`.

Layer: auth. Wraps an `AuditLog` (the file, its rotation); knows nothing of HTTP. Used by the
API replica when its topology says `security.audit.mode: batch`.

The request path builds each event's line at once (the event changes as the request goes on,
so its bytes are fixed at their stage) and appends it to a buffer; a writer thread writes what
has gathered every `max_wait` seconds, or as soon as `max_batch` lines wait, as few `write`s
as rotation allows (`AuditLog.write_lines`). What this is for: the event loop never waits on
the disk. It saves no CPU (`bench/audit_events.py`: the line's building is the cost, not its
`write`).

Decisions:
 - **Nothing is dropped for want of room.** kube-apiserver's buffered backend drops an event
   when its buffer is full. Here `record` always buffers, and a request that finds the buffer
   full (`full`) awaits `make_room()`: the buffer written out from a worker thread. So a
   stalled disk slows the requests that find it full, not the event loop (health checks,
   leases, watches go on), and loses no record; the buffer can outgrow `buffer_size` by the
   requests waiting.
 - **Order is the order of `record`**: the buffer is a FIFO, and every write (the thread's, a
   full buffer's, the final flush) drains it under one lock.
 - **What a crash loses**: what was still buffered: normally at most `max_wait` seconds'
   worth; with a stalled disk, up to the whole buffer. `close()` (the replica's drain, and
   at interpreter exit) writes it.
 - **A failed write** (disk full) loses the lines that did not reach the file (a torn line is
   cut back: `AuditLog._write_all`); they are counted in `errors` and logged with their
   number, and the writer goes on: the requests they describe were answered already. The
   blocking backend likewise logs and lets the request go on.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import threading
from datetime import datetime

from .audit import AuditEvent, AuditLog, LinesNotWritten, Stage

log = logging.getLogger("haplane.auth.audit")

BUFFER_SIZE = 10_000  # kube-apiserver's --audit-log-batch-buffer-size default
MAX_BATCH = 400
MAX_WAIT = 0.2  # seconds
MIN_WAIT = 0.01  # below this the writer would spin
CLOSE_TIMEOUT = 10.0  # seconds a close waits for a writer stuck in the disk


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
        self.errors = 0
        self.blocked = 0
        # deque: append and popleft are atomic, so `record` takes no lock
        self._pending: collections.deque[bytes] = collections.deque()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-batch", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a process ending without its drain still writes

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.buffer_size

    def record(self, ev: AuditEvent, stage: Stage, at: datetime | None = None) -> bool:
        """Buffer `ev`'s line for `stage`, if it emits one; True when it did. Never waits
        (see `full`). Raises what building the line raises, and ValueError once closed."""
        if self._closed:
            self.errors += ev.emits(stage)
            raise ValueError("audit log is closed")
        line = self.sink.line_for(ev, stage, at)
        if line is None:
            return False
        pending = self._pending
        pending.append(line)
        if self._closed:  # closed meanwhile (close runs in another thread): not stranded
            self._late()
        elif len(pending) >= self.max_batch:
            self._wake.set()
        return True

    async def make_room(self) -> None:
        """For a request that found the buffer `full`: write it out from a worker thread (the
        event loop goes on), raising what the write raised."""
        self.blocked += 1
        await asyncio.to_thread(self.flush, raise_errors=True)

    def flush(self, *, raise_errors: bool = False) -> None:
        """Write everything buffered so far (in the caller's thread)."""
        with self._write_lock:
            self._flush_locked(raise_errors)

    def _flush_locked(self, raise_errors: bool) -> None:
        pending = self._pending
        lines = [pending.popleft() for _ in range(len(pending))]
        if not lines:
            return
        try:
            self.sink.write_lines(lines)
        except (OSError, ValueError) as exc:
            written = exc.written if isinstance(exc, LinesNotWritten) else 0
            self.events += written
            self.errors += len(lines) - written
            log.error("audit log write failed: %d events lost: %s", len(lines) - written, exc)
            if raise_errors:
                raise
            return
        self.events += len(lines)

    def _late(self) -> None:
        """A line appended after `close` began: written if the file is still open (the final
        flush has not run), else counted lost."""
        with self._write_lock:
            if self.sink.closed:
                lost = len(self._pending)
                self._pending.clear()
                self.errors += lost
                raise ValueError("audit log is closed")
            self._flush_locked(raise_errors=True)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.max_wait)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must not die: a later flush may succeed
                log.exception("audit batch writer")

    def close(self) -> None:
        """Stop the writer, write what is buffered, close the file. Idempotent. Waits at most
        `CLOSE_TIMEOUT` for a writer stuck in the disk, then counts what it could not write
        as lost."""
        self._closed = True
        self._wake.set()
        atexit.unregister(self.close)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(CLOSE_TIMEOUT)
        if not self._write_lock.acquire(timeout=CLOSE_TIMEOUT):
            lost = len(self._pending)
            self.errors += lost
            log.error("audit log close: the writer is stuck; %d buffered events lost", lost)
            return
        try:
            if not self.sink.closed:
                self._flush_locked(raise_errors=False)
                self.sink.close()
        finally:
            self._write_lock.release()

    def __enter__(self) -> BatchingAuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
