"""Giving freed heap back to the OS: glibc keeps it otherwise, and RSS stays near the peak of a burst."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# Allocations from this size up get pages of their own, given back to the OS when freed.
MMAP_THRESHOLD = 256 * 1024
# Heap handed back to the OS after this much response data or this many closed connections.
TRIM_AFTER_BYTES = 32 << 20
TRIM_AFTER_CLOSES = 256
TRIM_EVERY = 2.0


def _glibc_heap() -> tuple[Callable[[], None], Callable[[], None]]:
    """(trim, tune): glibc's malloc_trim(0) and a fixed mmap threshold. Elsewhere (musl, macOS): no-ops.

    glibc raises its mmap threshold each time a large block is freed, up to
    32 MB: after the first few, 3 MB bodies came from the arenas of the worker
    threads, and a freed arena top is kept, so RSS stayed near its peak after
    slow readers were gone (+45 MB for 40 of them; malloc_trim cannot return
    an arena's top). A fixed threshold (mallopt) keeps every body in its own
    mapping. What stays in the heaps (OpenSSL's state of a handshake flood,
    Python's objects) is given back by malloc_trim.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return (lambda: None), (lambda: None)
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_mmap_threshold = -3
    return (lambda: trim(0)), (lambda: mallopt(m_mmap_threshold, MMAP_THRESHOLD))


trim_heap, tune_heap = _glibc_heap()


class Trimmer:
    """When the poller trims: after a burst (bytes answered or connections closed), every TRIM_EVERY
    until the memory it held is free (the last trim comes after the last answer is gone: that is
    when the heap has most to give back)."""

    def __init__(self) -> None:
        self.since_bytes = 0
        self.since_closes = 0
        self._last = 0.0
        self._due = False

    def maybe_trim(self, now: float, holding: bool) -> None:
        """`holding`: answers, requests or handshakes still hold memory, so trim again later."""
        if self.since_bytes >= TRIM_AFTER_BYTES or self.since_closes >= TRIM_AFTER_CLOSES:
            self._due = True
            self.since_bytes = self.since_closes = 0
        if not self._due or now - self._last < TRIM_EVERY:
            return
        self._last = now
        self._due = holding
        trim_heap()
