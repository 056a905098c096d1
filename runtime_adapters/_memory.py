"""Measuring what a load costs in memory: process RSS around a load, when that is meaningful.

How a size is measured (see also each adapter's docstring):

* ``framework_bytes`` -- what the framework says it holds (ONNX: the model file's bytes,
  which are its serialized initializers plus a small graph; torch: bytes of the unique
  parameter and buffer storages; XGBoost: the booster's serialized UBJSON bytes). This is a
  floor: the model cannot cost less.
* ``rss_delta`` -- the process resident set after the load minus before it, each taken
  after a young-generation ``gc.collect`` and glibc ``malloc_trim(0)`` so freed memory is
  given back first (a full collection runs after unloading models that hold cycles).
  It also catches what the framework does not report (ONNX Runtime's arena and pre-packed
  weights, torch.export's graph module, external data files).

The reported size is ``max(framework_bytes, rss_delta)`` when the delta is trustworthy,
else ``framework_bytes``. It is not trustworthy when another load overlapped this one in the
same meter (their allocations mix; the meter counts loads in flight and an epoch of load
starts): such loads report the framework floor only. Inference running meanwhile can add a
little temporary memory to a delta; unloads meanwhile can only make it smaller, which the
floor bounds. One-time framework initialisation (imports, thread pools, kernel registries)
is paid by each adapter's warm-up before its first measured load, so the first model is
not charged for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class LoadToken:
    rss_before: int
    epoch: int
    solitary: bool


class LoadMeter:
    """Process-RSS deltas across loads, discarded when loads overlap (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._epoch = 0
        self._process = psutil.Process()
        self._malloc_trim = _find_malloc_trim()

    def settle(self, *, full: bool = False) -> int:
        """Collect garbage, give freed heap back to the OS, and return the RSS in bytes.

        Only the young generations by default: a full collection costs ~100 ms once torch
        is imported. ``full`` is for dropped objects that hold reference cycles (a
        torch.export graph module), which only a full collection frees.
        """
        gc.collect() if full else gc.collect(1)
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        return int(self._process.memory_info().rss)

    def begin(self) -> LoadToken:
        with self._lock:
            self._active += 1
            self._epoch += 1
            epoch, solitary = self._epoch, self._active == 1
        return LoadToken(rss_before=self.settle() if solitary else 0, epoch=epoch, solitary=solitary)

    def end(self, token: LoadToken, *, measure: bool = True) -> int | None:
        """Finish a load; the RSS delta in bytes, or None when it cannot be trusted."""
        after = self.settle() if (measure and token.solitary) else 0
        with self._lock:
            self._active -= 1
            trusted = token.solitary and self._epoch == token.epoch
        if not (measure and trusted):
            return None
        return max(0, after - token.rss_before)
