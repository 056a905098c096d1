"""Azure Blob Storage through azure-storage-blob, when it is installed (optional, thin).

``azure://container/path``, or a storage-config entry of type ``azure`` with ``bucket``
(the container) and ``account_name`` plus one of ``account_key``, ``sas_token`` or
``connection_string`` (``endpoint_url`` overrides the account URL, e.g. for Azurite).
Without the library every pull fails with ``ProviderUnavailable`` (failed_precondition).
The SDK is blocking; its calls run on the puller's executor.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ._config import StorageSpec
from ._errors import (
    AccessDenied,
    ArtifactNotFound,
    BadCredentials,
    InvalidStorageRef,
    ProviderUnavailable,
    PullerError,
    StorageUnavailable,
)
from ._provider import Listing, ObjectSink, ProviderContext, RemoteObject
from ._resolve import Source


def _sdk() -> Any:
    try:
        from azure.storage import blob  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ProviderUnavailable(
            "the Azure Blob provider needs azure-storage-blob (pip install azure-storage-blob)"
        ) from exc
    return blob


def _map(exc: Exception, what: str) -> PullerError:
    from azure.core import exceptions as aex  # type: ignore[import-not-found]

    if isinstance(exc, aex.ResourceNotFoundError):
        return ArtifactNotFound(f"{what}: not found")
    if isinstance(exc, aex.ClientAuthenticationError):
        if getattr(exc, "status_code", None) == 403:
            return AccessDenied(f"{what}: access denied")
        return BadCredentials(f"{what}: credentials rejected")
    if isinstance(exc, aex.HttpResponseError):
        status = int(getattr(exc, "status_code", 0) or 0)
        if status == 403:
            return AccessDenied(f"{what}: access denied")
        if status >= 500 or status == 429:
            return StorageUnavailable(f"{what}: HTTP {status}")
        return PullerError(f"{what}: HTTP {status}: {exc}")
    return StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}")


class AzureProvider:
    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._services: dict[tuple[str | None, ...], Any] = {}

    def _container(self, source: Source) -> Any:
        blob = _sdk()
        spec: StorageSpec = source.spec
        extra = spec.extra
        key = (spec.key, spec.endpoint_url, extra.get("account_name"), extra.get("connection_string"))
        with self._lock:
            service = self._services.get(key)
            if service is None:
                if extra.get("connection_string"):
                    service = blob.BlobServiceClient.from_connection_string(extra["connection_string"])
                else:
                    account = extra.get("account_name")
                    url = spec.endpoint_url or (account and f"https://{account}.blob.core.windows.net")
                    if not url:
                        raise InvalidStorageRef(
                            f"{source.display}: Azure needs 'account_name', 'endpoint_url' or 'connection_string'"
                        )
                    credential = extra.get("account_key") or extra.get("sas_token")
                    service = blob.BlobServiceClient(account_url=url, credential=credential)
                self._services[key] = service
        return service.get_container_client(source.bucket)

    def _list(self, source: Source) -> Listing:
        container = self._container(source)
        path = source.path
        try:
            if path and not path.endswith("/"):
                try:
                    props = container.get_blob_client(path).get_blob_properties()
                except Exception as exc:
                    mapped = _map(exc, source.display)
                    if not isinstance(mapped, ArtifactNotFound):
                        raise mapped from exc
                else:
                    md5 = props.content_settings.content_md5
                    obj = RemoteObject(
                        rel_path=path.rsplit("/", 1)[-1],
                        name=path,
                        size_bytes=int(props.size),
                        md5_hex=bytes(md5).hex() if md5 else None,
                    )
                    return Listing((obj,), single=True)
            prefix = path.rstrip("/") + "/" if path.strip("/") else ""
            objects = [
                RemoteObject(rel_path=b.name[len(prefix):], name=b.name, size_bytes=int(b.size))
                for b in container.list_blobs(name_starts_with=prefix)
                if not b.name.endswith("/")
            ]
        except PullerError:
            raise
        except Exception as exc:
            raise _map(exc, source.display) from exc
        if not objects:
            raise ArtifactNotFound(f"{source.display}: no blob with that name and no blobs under that prefix")
        return Listing(tuple(objects), single=False)

    def _fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        container = self._container(source)
        what = f"azure://{source.bucket}/{obj.name}"
        try:
            downloader = container.get_blob_client(obj.name).download_blob()
            sink.expect(int(downloader.size))
            for chunk in downloader.chunks():
                sink.write(chunk)
        except PullerError:
            raise
        except OSError:
            raise
        except Exception as exc:
            raise _map(exc, what) from exc

    async def list_objects(self, source: Source) -> Listing:
        loop = asyncio.get_running_loop()
        result: Listing = await loop.run_in_executor(self._ctx.executor, self._list, source)
        return result

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._ctx.executor, self._fetch, source, obj, sink)

    async def aclose(self) -> None:
        with self._lock:
            services = list(self._services.values())
            self._services.clear()
        for service in services:
            close = getattr(service, "close", None)
            if close is not None:
                close()
