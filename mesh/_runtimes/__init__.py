"""Runtime processes: model code run apart from the instance, supervised by it.

:class:`RuntimeSupervisor` starts worker processes (``python -m runtime_adapters`` on a Unix
socket, scrubbed environment, unprivileged, memory-limited), watches them, replaces dead or
leaking ones and reports their copies lost; :class:`RuntimeCopy` is a copy that lives in one.
External servers speaking ``mmesh.ModelRuntime`` + V2 join through :class:`ExternalRuntime`.
"""

from ._client import RuntimeClient, RuntimeCopy
from ._process import WorkerProcess, worker_env
from ._settings import ExternalRuntime, RuntimeSettings
from ._supervisor import Runtime, RuntimeSupervisor, adapter_env

__all__ = [
    "ExternalRuntime",
    "Runtime",
    "RuntimeClient",
    "RuntimeCopy",
    "RuntimeSettings",
    "RuntimeSupervisor",
    "WorkerProcess",
    "adapter_env",
    "worker_env",
]
