"""Measuring what a load costs in memory: process RSS around a load, when that is meaningful.

How a size is measured (see also each adapter's docstring):

* ``framework_bytes`` -- what the framework says it holds (ONNX: the model file's bytes,
  which are its serialized initializers plus a small graph; torch: bytes of the unique
  parameter and buffer storages; XGBoost: the booster's serialized UBJSON bytes). This is a
  floor: the model cannot cost less.
* ``delta`` -- what the process holds after the load minus before it, each reading taken
  after a young-generation ``gc.collect`` and glibc ``malloc_trim(0)`` so freed memory is
  given back first (a full collection runs after unloading models that hold cycles): the
  larger of the resident set's growth and the C heap's in-use growth (glibc ``mallinfo2``;
  RSS alone misses a load that reuses chunks earlier unloads freed, see :class:`LoadMeter`).
  It also catches what the framework does not report (ONNX Runtime's arena and pre-packed
  weights, torch.export's graph module, external data files).

The reported size is ``max(framework_bytes, delta)`` when the delta is trustworthy.
It is not trustworthy when another load overlapped this one in the same meter (their
allocations mix; the meter counts loads in flight and an epoch of load starts), nor when an
unload freed a model meanwhile (unloads free through the meter, :meth:`LoadMeter.free`: the
freed bytes would shrink the delta). Such a load
reports the framework floor scaled by what trusted loads of the same format really cost per
floor byte (:class:`SizeCalibration`: over the last trusted loads big enough to measure), so that a busy instance, whose loads overlap, does not under-count: ONNX
Runtime's pre-packed weights alone double an MLP's floor (bench/bench_memory.py). Inference running meanwhile can add a
little temporary memory to a delta. One-time framework initialisation (imports, thread pools, kernel registries)
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


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _find_malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    fn = getattr(libc, "malloc_trim", None)  # glibc only
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _find_mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc >= 2.33 ``mallinfo2``, or None where that is not available."""
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None)
    if fn is None:
        return None
    fn.argtypes = []
    fn.restype = _MallInfo2
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class LoadToken:
    rss_before: int
    heap_before: int
    epoch: int
    solitary: bool


class LoadMeter:
    """Memory deltas across loads, discarded when loads overlap (thread-safe).

    A delta is the larger of two readings taken after settling: the process RSS and the C
    heap's bytes in use. RSS alone under-counts once the process has unloaded models: a load
    reuses chunks that earlier unloads freed but that stayed resident (partly used pages
    ``malloc_trim`` cannot give back), so it costs real bytes without raising RSS. The heap's
    in-use count does not depend on which chunks a load reuses. RSS still catches what is
    not heap (mmapped files, thread stacks).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._epoch = 0
        self._process = psutil.Process()
        self._malloc_trim = _find_malloc_trim()
        self._mallinfo2 = _find_mallinfo2()

    def settle(self, *, full: bool = False) -> int:
        """Collect garbage, give freed heap back to the OS, and return the RSS in bytes.

        Only the young generations by default: a full collection costs ~100 ms once torch
        is imported. ``full`` is for dropped objects that hold reference cycles (a
        torch.export graph module), which only a full collection frees.
        """
        if full:
            gc.unfreeze()  # cycles among frozen objects too (runtime_adapters._heap freezes the long-lived heap)
            gc.collect()
        else:
            gc.collect(1)
        if self._malloc_trim is not None:
            self._malloc_trim(0)
        return int(self._process.memory_info().rss)

    def heap_in_use(self) -> int:
        """Bytes the C heap has handed out and not had back: in-use chunks of every arena plus
        mmapped blocks (0 where the C library does not say)."""
        if self._mallinfo2 is None:
            return 0
        info = self._mallinfo2()
        return int(info.uordblks + info.hblkhd)

    def heap_free(self) -> int:
        """Free bytes the C heap keeps in its arenas (0 where the C library does not say); after
        ``settle`` only what ``malloc_trim`` could not give back, and much of it is not resident."""
        return int(self._mallinfo2().fordblks) if self._mallinfo2 is not None else 0

    def begin(self) -> LoadToken:
        with self._lock:
            self._active += 1
            self._epoch += 1
            epoch, solitary = self._epoch, self._active == 1
        if not solitary:
            return LoadToken(rss_before=0, heap_before=0, epoch=epoch, solitary=False)
        rss = self.settle()
        return LoadToken(rss_before=rss, heap_before=self.heap_in_use(), epoch=epoch, solitary=True)

    def end(self, token: LoadToken, *, measure: bool = True) -> int | None:
        """Finish a load; its memory delta in bytes, or None when it cannot be trusted."""
        after, heap_after = (self.settle(), self.heap_in_use()) if (measure and token.solitary) else (0, 0)
        with self._lock:
            self._active -= 1
            trusted = token.solitary and self._epoch == token.epoch
        if not (measure and trusted):
            return None
        return max(0, after - token.rss_before, heap_after - token.heap_before)

    def free(self, drop: Callable[[], None], *, full: bool = False) -> None:
        """Run ``drop`` (it lets go of an unloaded model's memory), then settle.

        A free is an operation of the meter like a load: a load measured while memory is freed
        would see its delta shrink by what was freed (both RSS and the heap's in-use count), so
        every load in flight loses its trust (the epoch moves) and a load that starts meanwhile
        is not solitary. Under churn, where evictions run beside loads all the time, skipping
        this taught the size calibration a cost per floor byte ~20% below the real one.
        """
        with self._lock:
            self._active += 1
            self._epoch += 1
        try:
            drop()
            self.settle(full=full)
        finally:
            with self._lock:
                self._active -= 1


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
