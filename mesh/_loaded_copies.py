"""The loaded copies on this instance: one registry, written only by the agent, read by the router.

The agent adds a copy once its load finished and removes it when its unload starts; the router
(and the data plane through it) only looks copies up, through :class:`LoadedCopiesView`.
"""

from __future__ import annotations

from typing import Protocol

from runtime_adapters import LoadedModel


class LoadedCopiesView(Protocol):
    """Read-only access to this instance's loaded copies (what the router is given)."""

    def get(self, model_id: str) -> LoadedModel | None: ...

    def __contains__(self, model_id: object) -> bool: ...


class LoadedCopies:
    """Model id -> loaded copy. Owned by the agent: nobody else calls :meth:`add` / :meth:`remove`."""

    def __init__(self) -> None:
        self._copies: dict[str, LoadedModel] = {}

    def get(self, model_id: str) -> LoadedModel | None:
        return self._copies.get(model_id)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._copies

    def __len__(self) -> int:
        return len(self._copies)

    def ids(self) -> list[str]:
        return list(self._copies)

    def add(self, model_id: str, model: LoadedModel) -> None:
        self._copies[model_id] = model

    def remove(self, model_id: str) -> LoadedModel | None:
        return self._copies.pop(model_id, None)
