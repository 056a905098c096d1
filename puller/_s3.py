"""S3 and S3-compatible stores through boto3 (an optional dependency: ``modelmux[s3]``).

boto3 is blocking: listing and every object transfer run on the puller's bounded executor,
streaming the body in ``chunk_bytes`` chunks straight to disk (memory stays flat whatever the
object's size). ``s3://bucket/key`` names one object when an object has exactly that key,
else every object under ``key/`` (a directory; directory-marker keys ending in ``/`` are
skipped). The ETag is checked as an MD5 when it is one (single-part upload, no KMS / SSE-C).
botocore's own retries are off: the puller retries with its backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from pathlib import PurePosixPath
from typing import Any

from ._config import StorageSpec
from ._errors import (
    AccessDenied,
    ArtifactNotFound,
    BadCredentials,
    IntegrityError,
    InvalidStorageRef,
    ProviderUnavailable,
    PullerError,
    StorageTlsError,
    StorageUnavailable,
)
from ._provider import Listing, ObjectSink, ProviderContext, RemoteObject
from ._resolve import Source

log = logging.getLogger(__name__)

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable", "503", "500"}


def _botocore_verifies(body: Any) -> bool:
    try:
        from botocore.httpchecksum import StreamingChecksumBody
    except ImportError:  # older botocore: no flexible checksums
        return False
    return isinstance(body, StreamingChecksumBody)


def etag_md5(response: dict[str, Any]) -> str | None:
    """The object's MD5 when its ETag is one (not multipart, not KMS / SSE-C encrypted)."""
    etag = str(response.get("ETag") or "").strip('"').lower()
    if response.get("ServerSideEncryption") == "aws:kms" or response.get("SSECustomerAlgorithm"):
        return None
    return etag if _MD5.match(etag) else None


def map_error(exc: BaseException, what: str) -> PullerError:
    """boto3 / botocore / urllib3 exception -> the puller's typed error."""
    try:
        from botocore import exceptions as bex
    except ImportError:  # pragma: no cover - only called once boto3 imported
        return StorageUnavailable(f"{what}: {exc}")
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"{what}: {code or status} {err.get('Message', '')}".strip()
        if code in _NOT_FOUND or status == 404:
            return ArtifactNotFound(f"{what}: not found ({code or status})")
        if code in _BAD_CREDENTIALS:
            return BadCredentials(f"{what}: credentials rejected ({code})")
        if code in _DENIED or status == 403:
            return AccessDenied(f"{what}: access denied ({code or status})")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailable(detail)
        return PullerError(detail)
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return BadCredentials(f"{what}: no usable credentials ({exc})")
    if isinstance(exc, bex.FlexibleChecksumError):
        return IntegrityError(f"{what}: checksum mismatch ({exc})")
    if isinstance(exc, bex.SSLError):
        return StorageTlsError(f"{what}: TLS verification failed ({exc})")
    if isinstance(exc, bex.ParamValidationError):
        return InvalidStorageRef(f"{what}: {exc}")
    return StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}")


class S3Provider:
    def __init__(self, ctx: ProviderContext) -> None:
        self._ctx = ctx
        self._clients: dict[tuple[str | None, ...], Any] = {}
        self._lock = threading.Lock()

    # -- clients -----------------------------------------------------------------

    def _ca_file(self, spec: StorageSpec) -> str | None:
        if not spec.certificate:
            return None
        digest = hashlib.sha256(spec.certificate.encode()).hexdigest()[:16]
        path = self._ctx.scratch_dir / f"ca-{digest}.pem"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(spec.certificate)
            tmp.replace(path)
        return str(path)

    def _client(self, spec: StorageSpec) -> Any:
        anonymous = spec.extra.get("anonymous", "false").lower() == "true"
        key = (
            spec.endpoint_url,
            spec.region,
            spec.access_key_id,
            spec.secret_access_key,
            spec.certificate,
            spec.extra.get("addressing_style"),
            str(anonymous),
        )
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                return client
            try:
                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config
            except ImportError as exc:
                raise ProviderUnavailable(
                    "the S3 provider needs boto3 (pip install 'modelmux[s3]')"
                ) from exc
            s = self._ctx.settings
            style = spec.extra.get("addressing_style") or ("path" if spec.endpoint_url else "auto")
            config = Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=s.request_timeout_s,
                read_timeout=s.request_timeout_s,
                max_pool_connections=max(10, s.object_concurrency * s.max_concurrent_pulls),
                s3={"addressing_style": style},
                signature_version=UNSIGNED if anonymous else None,
            )
            session = boto3.session.Session(
                aws_access_key_id=spec.access_key_id or None,
                aws_secret_access_key=spec.secret_access_key or None,
                region_name=spec.region or "us-east-1",
            )
            verify: str | bool | None = self._ca_file(spec)
            if verify is None and spec.extra.get("insecure", "false").lower() == "true":
                verify = False
            client = session.client("s3", endpoint_url=spec.endpoint_url or None, config=config, verify=verify)
            self._clients[key] = client
            return client

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._ctx.executor, fn, *args)

    # -- listing -----------------------------------------------------------------

    def _list(self, source: Source) -> Listing:
        client = self._client(source.spec)
        bucket, path = source.bucket, source.path
        try:
            if path and not path.endswith("/"):
                try:
                    head = client.head_object(Bucket=bucket, Key=path)
                except Exception as exc:
                    mapped = map_error(exc, source.display)
                    if isinstance(mapped, AccessDenied):
                        mapped = self._explain_403(client, bucket, path, source.display) or mapped
                    if not isinstance(mapped, ArtifactNotFound):
                        raise mapped from exc
                else:
                    # no MD5 here: the GET response decides how the transfer is verified
                    obj = RemoteObject(
                        rel_path=PurePosixPath(path).name, name=path, size_bytes=int(head["ContentLength"])
                    )
                    return Listing((obj,), single=True)
            prefix = path.rstrip("/") + "/" if path.strip("/") else ""
            objects: list[RemoteObject] = []
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    if key.endswith("/"):
                        continue
                    objects.append(RemoteObject(rel_path=key[len(prefix):], name=key, size_bytes=int(item["Size"])))
        except PullerError:
            raise
        except Exception as exc:
            raise map_error(exc, source.display) from exc
        if not objects:
            raise ArtifactNotFound(f"{source.display}: no object with that key and no objects under that prefix")
        return Listing(tuple(objects), single=False)

    @staticmethod
    def _explain_403(client: Any, bucket: str, key: str, what: str) -> PullerError | None:
        """A HEAD 403 has no body, so no error code: ask again with a 1-byte GET, whose error
        body says whether the credentials are bad or merely not allowed."""
        try:
            client.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].close()
        except Exception as exc:
            return map_error(exc, what)
        return None

    async def list_objects(self, source: Source) -> Listing:
        result: Listing = await self._run(self._list, source)
        return result

    # -- transfer ----------------------------------------------------------------

    def _fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        client = self._client(source.spec)
        what = f"s3://{source.bucket}/{obj.name}"
        try:
            response = client.get_object(Bucket=source.bucket, Key=obj.name)
        except Exception as exc:
            raise map_error(exc, what) from exc
        body = response["Body"]
        try:
            # when botocore verifies a full-object checksum (CRC32...) while streaming, hashing
            # MD5 as well would only cost time; otherwise the ETag's MD5 is checked
            verified = _botocore_verifies(body)
            sink.expect(int(response["ContentLength"]), None if verified else etag_md5(response))
            chunks = body.iter_chunks(self._ctx.settings.chunk_bytes)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except Exception as exc:
                    raise map_error(exc, what) from exc
                sink.write(chunk)
        finally:
            body.close()

    async def fetch(self, source: Source, obj: RemoteObject, sink: ObjectSink) -> None:
        await self._run(self._fetch, source, obj, sink)

    async def aclose(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                await self._run(close)
