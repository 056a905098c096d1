"""Room left in the store: writes that grow it are refused before the store itself refuses.

etcd stops taking writes (its NOSPACE alarm: every put fails until an operator compacts,
defragments and disarms it) once its backend reaches ``--quota-backend-bytes``; a SQLite
file or the memory store simply grow. :class:`StoreRoom` reads the store's ``usage()`` and
refuses a write that adds to it with :class:`StoreQuotaExceeded` (RESOURCE_EXHAUSTED,
HTTP 507) once the store holds its high-water fraction of its quota (both are the store's
settings: ``MODELMUX_STORE_QUOTA_BYTES``, ``MODELMUX_STORE_QUOTA_HIGH_WATER``), so registrations stop cleanly
while the records already kept (instances, copies, usage, assignments) still have room.
Deletes are never checked: they are how room comes back.

A reading is reused for ``max_age_s`` (one Status RPC per second at most, however many
registrations arrive); concurrent checks share one reading in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ._base import Store
from ._errors import StoreError, StoreQuotaExceeded
from ._types import StoreUsage

logger = logging.getLogger(__name__)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class StoreRoom:
    def __init__(
        self,
        store: Store,
        *,
        max_age_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self.clock = clock
        self.last: StoreUsage | None = None
        self.on_usage: Callable[[StoreUsage], None] | None = None  # metrics
        self._read_at = float("-inf")
        self._reading: asyncio.Future[StoreUsage] | None = None

    async def usage(self) -> StoreUsage:
        """The store's usage, read at most ``max_age_s`` ago."""
        if self.last is not None and self.clock() - self._read_at < self.max_age_s:
            return self.last
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        return await asyncio.shield(self._reading)

    async def _read(self) -> StoreUsage:
        usage = await self.store.usage()
        self.last, self._read_at = usage, self.clock()
        if self.on_usage is not None:
            self.on_usage(usage)
        return usage

    async def check(self, what: str) -> None:
        """Refuse ``what`` (a write that grows the store) when the store is past its high-water
        mark. A store that cannot be read is not a reason to refuse: the write itself will say."""
        try:
            usage = await self.usage()
        except StoreError as exc:
            logger.debug("store usage unknown (%s); not refusing %s", exc, what)
            return
        if usage.quota_bytes > 0 and usage.used_bytes >= usage.high_water * usage.quota_bytes:
            raise StoreQuotaExceeded(
                f"{what} refused: the store holds {_mib(usage.used_bytes)} of its "
                f"{_mib(usage.quota_bytes)} quota ({usage.fraction:.0%}; writes that add to it stop "
                f"at {usage.high_water:.0%}); unregister models or vModels you no longer need (etcd: "
                "then compact and defragment it), or raise the store's quota (etcd: "
                "--quota-backend-bytes, then MODELMUX_STORE_QUOTA_BYTES to match)"
            )

    async def watch(self, interval_s: float) -> None:
        """Read the usage every ``interval_s`` (keeps the metric current); runs until cancelled."""
        while True:
            with contextlib.suppress(StoreError):
                await self._read()
            await asyncio.sleep(interval_s)
