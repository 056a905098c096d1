"""The one way to ask for a model to be loaded: a create-only miss record the placement leader answers.

Used by the router (a request for a model nobody holds), the management API (``ensureLoaded``,
``loadNow``) and the leader (a vModel's new target). Concurrent asks for the same model collapse
into one record, so into one placement decision and one load.
"""

from __future__ import annotations

from ._store import Store
from ._store_schema import Keys, MissRecord, encode


async def request_load(store: Store, keys: Keys, model_id: str, *, requester: str, at: float) -> bool:
    """Ask for a copy of ``model_id``; False when a request for it is already pending (nothing written).

    Raises :class:`mesh._store.StoreError` when the store cannot be reached.
    """
    rev = await store.cas(keys.miss(model_id), encode(MissRecord(model_id=model_id, instance_id=requester, at=at)), 0)
    return rev is not None
