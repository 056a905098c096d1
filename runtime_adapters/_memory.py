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

The reported size is ``max(framework_bytes, rss_delta)`` when the delta is trustworthy.
It is not trustworthy when another load overlapped this one in the same meter (their
allocations mix; the meter counts loads in flight and an epoch of load starts). Such a load
reports the framework floor scaled by what trusted loads of the same format really cost per
floor byte (:class:`SizeCalibration`: over the last trusted loads big enough to measure), so that a busy instance, whose loads overlap, does not under-count: ONNX
Runtime's pre-packed weights alone double an MLP's floor (bench/bench_memory.py). Inference running meanwhile can add a
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
from collections import deque
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


class SizeCalibration:
    """Real bytes per floor byte, learned per format from trusted loads (thread-safe).

    One load's RSS delta is noisy (the allocator reuses what earlier loads freed, or keeps
    what they left), but over several loads the over- and under-counts cancel: the ratio is
    the sum of the last ``window`` trusted sizes over the sum of their floors. Only loads whose
    floor is at least ``min_floor_bytes`` teach it (smaller ones are lost in page granularity);
    an untrusted load's estimate is ``floor x ratio``, never below the floor.
    """

    def __init__(self, window: int = 16, min_floor_bytes: int = 64 << 10) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, deque[tuple[int, int]]] = {}
        self._window = window
        self._min_floor = min_floor_bytes

    def learn(self, key: str, floor: int, measured: int) -> None:
        if floor < self._min_floor or measured <= 0:
            return
        with self._lock:
            self._seen.setdefault(key, deque(maxlen=self._window)).append((floor, measured))

    def ratio(self, key: str) -> float:
        with self._lock:
            seen = list(self._seen.get(key, ()))
        floors = sum(f for f, _ in seen)
        return max(1.0, sum(m for _, m in seen) / floors) if floors else 1.0

    def estimate(self, key: str, floor: int) -> int:
        return max(floor, int(floor * self.ratio(key)))


_process_lock = threading.Lock()
_process_meter: tuple[LoadMeter, SizeCalibration] | None = None


def process_meter() -> tuple[LoadMeter, SizeCalibration]:
    """The one load meter and size calibration of this process, shared by every registry in it.

    RSS is one number per process: registries that measured it apart (several in-process
    instances, as the local mesh runs them) would each take the others' overlapping loads for
    their own. Created on first use, so importing this module has no side effect.
    """
    global _process_meter
    with _process_lock:
        if _process_meter is None:
            _process_meter = (LoadMeter(), SizeCalibration())
        return _process_meter
