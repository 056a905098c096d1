"""Placement's error hierarchy: one root, every subclass sets a semantic ``code``.

The codes belong to the fixed vocabulary that ``mesh`` maps once to gRPC and HTTP statuses.
"""

from __future__ import annotations


class PlacementError(Exception):
    """Root of every error raised by ``placement``."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(PlacementError):
    """The view holds no model with the requested id."""

    code = "not_found"


class NoCapacity(PlacementError):
    """No instance can take the model, even after evicting everything evictable."""

    code = "resource_exhausted"


class ModelTooLarge(NoCapacity):
    """The model is larger than the capacity of every live instance."""


class QuotaExceeded(NoCapacity):
    """The model's tenant is at its byte quota and none of its own copies can be evicted."""


class NoInstances(PlacementError):
    """The view has no live instance at all."""

    code = "unavailable"


class ModelNotPlaceable(PlacementError):
    """Recent load failures exclude every live instance that could take the model.

    ``load_failed``: the model itself failed to load everywhere it was tried; it is tried
    again once the failures expire.
    """

    code = "load_failed"


class InvalidTrace(PlacementError):
    """A trace file or trace parameter is malformed (names the file and line)."""

    code = "invalid_argument"
