"""The audit log's batch backend: kube-apiserver's `--audit-log-mode=batch`.

Layer: auth. Wraps an `AuditLog` (the file, its rotation); knows nothing of HTTP. Used by the
API replica when its topology says `security.audit.mode: batch`.

The request path builds each event's line at once (the event changes as the request goes on,
so its bytes are fixed at their stage) and appends it to a buffer; a writer thread writes what
has gathered every `max_wait` seconds, or as soon as `max_batch` lines wait, as one `write`
(`AuditLog.write_lines`). What this buys, measured in `bench/security.py`: no `write` system
call per request, and the event loop never waits on the disk (a stalled disk stalls the
writer thread, not the replica's requests, until the buffer is full).

Decisions:
 - **Nothing is dropped.** kube-apiserver's buffered backend drops an event when its buffer is
   full. Here the request that finds the buffer full writes it out itself, in the request
   path, as the blocking backend would (counted in `blocked`): the buffer bounds memory, and
   a slow disk slows requests rather than losing their record.
 - **Order is the order of `record`**: the buffer is a FIFO, and every write (the thread's,
   a full buffer's, the final flush) drains it under one lock.
 - **What a crash loses**: lines still in the buffer, at most `max_wait` seconds' worth (or
   `buffer_size` lines). `close()` (the replica's drain on SIGTERM) writes them all. The
   blocking backend loses nothing a `write` returned for; that is the trade, as in Kubernetes.
 - **A failed write** (disk full) is logged with the number of events it lost, counted in
   `errors`, and the writer goes on: the requests it describes have been answered already.
   The blocking backend likewise logs and lets the request go on.
"""

from __future__ import annotations

import collections
import logging
import threading
from datetime import datetime

from .audit import AuditEvent, AuditLog, Stage

log = logging.getLogger("haplane.auth.audit")

BUFFER_SIZE = 10_000  # kube-apiserver's --audit-log-batch-buffer-size default
MAX_BATCH = 400
MAX_WAIT = 0.2  # seconds


class BatchingAuditLog:
    """An `AuditLog` written in batches by a thread of its own; `record` is the same call.

    Counters, read by the replica's metrics at scrape time: `events` written, `errors` (events
    lost to a failed write), `blocked` (times a request found the buffer full and wrote)."""

    def __init__(
        self,
        sink: AuditLog,
        *,
        buffer_size: int = BUFFER_SIZE,
        max_batch: int = MAX_BATCH,
        max_wait: float = MAX_WAIT,
    ) -> None:
        if buffer_size < 1 or max_batch < 1 or not max_wait > 0:
            raise ValueError("buffer_size and max_batch must be positive, max_wait above 0")
        self.sink = sink
        self.path = sink.path
        self.buffer_size = buffer_size
        self.max_batch = max_batch
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

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, ev: AuditEvent, stage: Stage, at: datetime | None = None) -> bool:
        """Buffer `ev`'s line for `stage`, if it emits one; True when it did. Raises what
        building the line raises, and (a full buffer written here) what writing raises."""
        if self._closed:
            raise ValueError("audit log is closed")
        line = self.sink.line_for(ev, stage, at)
        if line is None:
            return False
        pending = self._pending
        pending.append(line)
        n = len(pending)
        if n >= self.buffer_size:
            self.blocked += 1
            self.flush(raise_errors=True)
        elif n >= self.max_batch:
            self._wake.set()
        return True

    def flush(self, *, raise_errors: bool = False) -> None:
        """Write everything buffered so far (in the caller's thread)."""
        with self._write_lock:
            pending = self._pending
            lines = [pending.popleft() for _ in range(len(pending))]
            if not lines:
                return
            try:
                self.sink.write_lines(lines)
            except (OSError, ValueError):
                self.errors += len(lines)
                if raise_errors:
                    raise
                log.exception("audit log write failed: %d events lost", len(lines))
                return
            self.events += len(lines)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.max_wait)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Stop the writer, write what is buffered, close the file. Idempotent."""
        if not self._closed:
            self._closed = True
            self._wake.set()
            self._thread.join()
        self.flush()
        self.sink.close()

    def __enter__(self) -> BatchingAuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
