"""The adapters' errors: one root with a semantic ``code`` (mapped to gRPC/HTTP by the caller)."""

from __future__ import annotations


class AdapterError(Exception):
    """Root of every runtime-adapter error; ``code`` is a semantic status (see the mesh table)."""

    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AdapterError):
    """A request does not fit the model (the message names the input or output)."""

    code = "invalid_argument"


class RequestTooLarge(AdapterError):
    """The request's tensors exceed ``AdapterSettings.max_request_bytes``."""

    code = "resource_exhausted"


class UnsupportedModelType(AdapterError):
    code = "invalid_argument"


class ModelLoadError(AdapterError):
    """A model failed to load; the message carries the framework's reason."""

    code = "load_failed"


class ModelNotLoaded(AdapterError):
    code = "not_found"


class DeviceUnavailable(AdapterError):
    """The requested device (e.g. ``cuda``) is not available to this process."""

    code = "failed_precondition"


class InferenceFailed(AdapterError):
    """The framework raised while running a request that passed validation."""

    code = "internal"
