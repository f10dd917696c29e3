"""The clock of every deadline and permission: CLOCK_BOOTTIME.

Layer: store. Pure.

CLOCK_MONOTONIC stops while the host is suspended: a replica resumed after a suspend would
still believe in a write grant that ran out long ago. CLOCK_BOOTTIME is monotonic too (never
set back, unaffected by NTP steps) and keeps counting through suspend. Linux only, as haplane.
"""

from __future__ import annotations

import time


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME (an arbitrary origin: compare only with itself)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
