"""Google Cloud Storage through its JSON API over httpx (no SDK needed).

Anonymous access (public buckets) or a bearer token from the storage-config entry
(``token`` / ``access_token``). Service-account keys (``private_key`` + ``client_email``)
need ``google-auth`` to mint tokens; without it they fail with ``ProviderUnavailable``.
``endpoint_url`` points the provider at an emulator. Object MD5s (``md5Hash``) are verified.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx

from ._config import StorageSpec
from ._errors import ArtifactNotFound, ProviderUnavailable, PullerError, StorageUnavailable
from ._http import HttpClients, md5_from_base64, status_error, stream_to_sink, transport_error
from ._provider import Listing, ObjectSink, ProviderContext, RemoteObject
from ._resolve import Source

_DEFAULT_ENDPOINT = "https://storage.googleapis.com"
_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


class GcsProvider:
    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._clients = HttpClients(ctx)

    def _service_account_token(self, spec: StorageSpec) -> str:
        try:
            from google.auth.transport.requests import Request  # type: ignore[import-not-found]
            from google.oauth2 import service_account  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ProviderUnavailable(
                f"storage key {spec.key!r}: GCS service-account credentials need google-auth "
                "(pip install google-auth), or give an access 'token'"
            ) from exc
        info = dict(spec.extra)
        info.setdefault("type", "service_account")
        info.setdefault("token_uri", "https://oauth2.googleapis.com/token")
        creds = service_account.Credentials.from_service_account_info(info, scopes=[_SCOPE])
        creds.refresh(Request())
        return str(creds.token)

    async def _headers(self, spec: StorageSpec) -> dict[str, str]:
        headers = dict(spec.headers)
        token = spec.extra.get("token") or spec.extra.get("access_token")
        if not token and "private_key" in spec.extra:
            loop = asyncio.get_running_loop()
            token = await loop.run_in_executor(self._ctx.executor, self._service_account_token, spec)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _base(self, source: Source) -> str:
        endpoint = (source.spec.endpoint_url or _DEFAULT_ENDPOINT).rstrip("/")
        return f"{endpoint}/storage/v1/b/{quote(source.bucket, safe='')}/o"

    async def _get_json(self, client: httpx.AsyncClient, url: str, headers: dict[str, str], what: str) -> Any:
        try:
            response = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise transport_error(exc, what) from exc
        if response.status_code >= 400:
            raise status_error(response.status_code, what)
        try:
            return response.json()
        except (json.JSONDecodeError, ValueError) as exc:
            raise StorageUnavailable(f"{what}: malformed JSON from the GCS API") from exc

    async def list_objects(self, source: Source) -> Listing:
        client = await self._clients.get(source.spec, source.spec.endpoint_url)
        headers = await self._headers(source.spec)
        base = self._base(source)
        path = source.path
        if path and not path.endswith("/"):
            try:
                meta = await self._get_json(client, f"{base}/{quote(path, safe='')}", headers, source.display)
            except ArtifactNotFound:
                pass
            else:
                name = path.rsplit("/", 1)[-1]
                return Listing((self._object(meta, name),), single=True)
        prefix = path.rstrip("/") + "/" if path.strip("/") else ""
        objects: list[RemoteObject] = []
        token: str | None = None
        while True:
            params = {"prefix": prefix, "fields": "items(name,size,md5Hash),nextPageToken"}
            if token:
                params["pageToken"] = token
            url = str(httpx.URL(base, params=params))
            page = await self._get_json(client, url, headers, source.display)
            for item in page.get("items", ()):
                name = str(item["name"])
                if not name.endswith("/"):
                    objects.append(self._object(item, name[len(prefix):]))
            token = page.get("nextPageToken")
            if not token:
                break
        if not objects:
            raise ArtifactNotFound(f"{source.display}: no object with that name and no objects under that prefix")
        return Listing(tuple(objects), single=False)

    @staticmethod
    def _object(meta: Any, rel_path: str) -> RemoteObject:
        try:
            return RemoteObject(
                rel_path=rel_path,
                name=str(meta["name"]),
                size_bytes=int(meta["size"]) if "size" in meta else None,
                md5_hex=md5_from_base64(meta.get("md5Hash")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PullerError(f"unexpected GCS object metadata ({exc})") from exc

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        client = await self._clients.get(source.spec, source.spec.endpoint_url)
        headers = await self._headers(source.spec)
        url = f"{self._base(source)}/{quote(obj.name, safe='')}?alt=media"
        await stream_to_sink(
            client,
            url,
            headers,
            sink,
            what=f"gs://{source.bucket}/{obj.name}",
            chunk_bytes=self._ctx.settings.chunk_bytes,
            max_redirects=self._ctx.settings.max_redirects,
            md5_hex=obj.md5_hex,
        )

    async def aclose(self) -> None:
        await self._clients.aclose()
