"""StorageRef + storage config -> a resolved ``Source`` (pure, apart from ``check_local``).

Resolution rules (ModelMesh's):

* ``storage_uri`` with a scheme picks the type from the scheme; credentials come from
  ``storage_key`` when given (its type must match), else from ``default_<type>`` / ``default``,
  else none (anonymous, or the SDK's own credential chain for S3).
* ``storage_key`` + ``path``: the entry's type (or ``parameters["type"]``) decides; S3, GCS and
  Azure take the bucket (container) from ``parameters["bucket"]`` or the entry's ``bucket``;
  HTTP appends ``path`` to the entry's ``url``.
* ``path`` alone: a path with a scheme is treated as a URI; otherwise the ``default`` entry (or
  ``default_<parameters["type"]>``) applies when the secret has one, else it is a local path.
* A bare ``storage_uri`` with no scheme is always a local path.

Local paths (``file://``, bare) must resolve — symlinks followed — inside ``allowed_roots``;
``pvc://name/path`` must resolve inside ``pvc_root/name``. Anything else is rejected with
``InvalidStorageRef`` before a byte is read: the path is first judged lexically (made absolute
and normalised, no file-system access), and only a path that lies inside a root is then
resolved. The error is the same whether the path outside exists or not, and names neither it
nor the roots.

Tenancy and credentials (every ``resolve`` takes the requesting tenant, None for none):

* an entry bound to tenants (``tenants`` in the storage config) is refused to every other
  tenant with the same ``UnknownStorageKey`` as a key that does not exist (the message lists
  only the keys the tenant may use); a bound ``default``/``default_<type>`` is ignored for them;
* a ``pvc://`` claim listed in ``pvc_claim_tenants`` is refused to other tenants;
* an http key's headers go only to its own origin: a ``storage_uri`` with a key must have
  the key's ``url``'s scheme, host and port (a key without a ``url`` cannot be used with a
  URI); an http default applies only to URIs on its ``url``'s origin, other URIs are fetched
  with no credentials; a key's path is appended to its ``url`` and must stay on that origin;
* ``parameters`` may not change where credentials go (``StorageSpec.with_parameters``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

from ._config import StorageConfig, StorageSpec, normalize_type
from ._errors import AccessDenied, InvalidStorageRef, MalformedStorageConfig, UnknownStorageKey
from ._types import StorageRef

REMOTE_TYPES = ("s3", "gcs", "azure", "http")
_SCHEMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "azure": "azure", "http": "http", "https": "http"}
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Source:
    """A resolved artifact location.

    ``type`` is one of ``s3``, ``gcs``, ``azure``, ``http`` or ``local``. For object stores
    ``bucket`` + ``path`` (object key or prefix, no leading slash); for HTTP ``url``; for local
    sources ``local_path`` (already checked against the allowed roots). ``display`` names the
    source in messages and progress, without credentials or query strings.
    """

    type: str
    display: str
    spec: StorageSpec
    bucket: str = ""
    path: str = ""
    url: str = ""
    local_path: Path | None = None

    def identity(self) -> str:
        """What makes two references the same artifact (and so the same cache entry): the
        location, and a fingerprint of the credentials used to read it — a model without
        the right credentials never gets another model's cached copy."""
        if self.type == "local":
            return f"local\n{self.local_path}"
        if self.type == "http":
            return f"http\n{self.url}\n{self.credentials_fingerprint()}"
        endpoint = self.spec.endpoint_url or ""
        if self.type == "azure":
            endpoint = endpoint or self.spec.extra.get("account_name", "")
        return f"{self.type}\n{endpoint}\n{self.bucket}\n{self.path}\n{self.credentials_fingerprint()}"

    def credentials_fingerprint(self) -> str:
        spec = self.spec
        material = json.dumps(
            [spec.access_key_id, spec.secret_access_key, sorted(spec.headers.items()), sorted(spec.extra.items())]
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    @property
    def basename(self) -> str:
        if self.type == "http":
            name = PurePosixPath(unquote(urlsplit(self.url).path)).name
        elif self.type == "local" and self.local_path is not None:
            name = self.local_path.name
        else:
            name = PurePosixPath(self.path).name
        return name


def cache_key(kind: str, basename: str, identity: str) -> str:
    """A file-system-safe cache key: ``<type>-<name>-<hash of identity>``."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:24]
    slug = _SLUG.sub("_", basename)[:40].strip("._") or "artifact"
    return f"{kind}-{slug}-{digest}"


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidStorageRef(f"URL {_display_url(url)!r} has an invalid port") from exc
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _display_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Resolver:
    def __init__(
        self,
        config: StorageConfig,
        allowed_roots: list[Path],
        pvc_root: Path,
        pvc_claim_tenants: dict[str, list[str]] | None = None,
    ) -> None:
        self.config = config
        self.allowed_roots = allowed_roots
        self.pvc_root = pvc_root
        self.pvc_claim_tenants = {k: frozenset(v) for k, v in (pvc_claim_tenants or {}).items()}
        self._tenant: str | None = None

    def resolve(self, ref: StorageRef, tenant: str | None = None) -> Source:
        """``ref`` as a ``Source``, as seen by ``tenant`` (see the module docstring)."""
        self._tenant = tenant or None
        params = dict(ref.parameters)
        if ref.storage_uri:
            if ref.path:
                raise InvalidStorageRef(
                    f"storage reference gives both storage_uri {ref.storage_uri!r} and path {ref.path!r}; give one"
                )
            return self._from_uri(ref.storage_uri.strip(), ref.storage_key, params)
        if ref.path is None or ref.path.strip() == "":
            if ref.storage_key:
                raise InvalidStorageRef(f"storage reference with key {ref.storage_key!r} has no path")
            raise InvalidStorageRef("storage reference has neither storage_uri nor path")
        path = ref.path.strip()
        if "://" in path:
            return self._from_uri(path, ref.storage_key, params)
        spec = self._keyed_spec(ref.storage_key, params)
        if spec is None:
            return self._local(path, where="path")
        return self._from_spec(spec, path)

    # -- helpers -----------------------------------------------------------------

    def _lookup(self, key: str) -> StorageSpec:
        spec = self.config.get(key)
        if spec is None or not spec.serves(self._tenant):
            known = ", ".join(self.config.keys_for(self._tenant)) or "none"
            who = f"tenant {self._tenant!r}" if self._tenant else "a reference with no tenant"
            raise UnknownStorageKey(
                f"storage key {key!r} is not in the storage config or not available to {who} (keys available: {known})"
            )
        return spec

    def _keyed_spec(self, key: str | None, params: dict[str, str]) -> StorageSpec | None:
        if key:
            return self._lookup(key).with_parameters(params)
        kind = params.get("type")
        if kind:
            kind = normalize_type(kind, where="storage parameters")
            spec = self.config.default_for(kind, self._tenant) or StorageSpec(key=None, type=kind)
            return spec.with_parameters(params)
        default = self.config.get("default")
        if default is None or not default.serves(self._tenant):
            return None
        return default.with_parameters(params)

    def _from_spec(self, spec: StorageSpec, path: str) -> Source:
        where = f"storage key {spec.key!r}" if spec.key else "storage parameters"
        if spec.type in ("s3", "gcs", "azure"):
            if not spec.bucket:
                raise InvalidStorageRef(f"{where}: type {spec.type} needs a bucket (field 'bucket')")
            return self._object(spec.type, spec.bucket, path.lstrip("/"), spec)
        if spec.type == "http":
            if not spec.url:
                raise InvalidStorageRef(f"{where}: type http needs a base 'url'")
            url = spec.url.rstrip("/") + "/" + path.lstrip("/")
            if _origin(url) != _origin(spec.url):
                raise InvalidStorageRef(f"{where}: path {path!r} leaves the key's host")
            return self._http(url, spec)
        if spec.type == "pvc":
            name = spec.extra.get("name") or spec.extra.get("pvc_name")
            rest = path.lstrip("/")
            if not name:
                name, _, rest = rest.partition("/")
            return self._pvc(name, rest, display=f"pvc://{name}/{rest}")
        return self._local(path, where=where)

    def _from_uri(self, uri: str, key: str | None, params: dict[str, str]) -> Source:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise InvalidStorageRef(f"file URI {uri!r} names a remote host {parts.netloc!r}")
            return self._local(unquote(parts.path), where=f"storage_uri {uri!r}")
        if scheme == "pvc":
            rest = parts.path.lstrip("/")
            return self._pvc(parts.netloc, rest, display=uri)
        if not scheme:
            return self._local(uri, where="storage_uri")
        kind = _SCHEMES.get(scheme)
        if kind is None:
            raise InvalidStorageRef(f"storage_uri {uri!r}: unsupported scheme {scheme!r}")
        if key:
            spec = self._lookup(key)
            if spec.type != kind:
                raise InvalidStorageRef(
                    f"storage key {key!r} is of type {spec.type!r} but storage_uri {uri!r} is {kind!r}"
                )
            if kind == "http" and (not spec.url or _origin(spec.url) != _origin(uri)):
                raise InvalidStorageRef(
                    f"storage key {key!r} may only be used for its own host: storage_uri "
                    f"{_display_url(uri)!r} names another (its credentials never leave it)"
                )
        else:
            spec = self.config.default_for(kind, self._tenant) or StorageSpec(key=None, type=kind)
            if kind == "http" and spec.key is not None and (not spec.url or _origin(spec.url) != _origin(uri)):
                spec = StorageSpec(key=None, type=kind)  # default credentials stay on their own host
        try:
            spec = spec.with_parameters(params)
        except MalformedStorageConfig as exc:
            raise InvalidStorageRef(exc.message) from exc
        if kind == "http":
            return self._http(uri, spec)
        if not parts.netloc:
            raise InvalidStorageRef(f"storage_uri {uri!r} has no bucket")
        return self._object(kind, parts.netloc, parts.path.lstrip("/"), spec)

    def _object(self, kind: str, bucket: str, path: str, spec: StorageSpec) -> Source:
        scheme = {"s3": "s3", "gcs": "gs", "azure": "azure"}[kind]
        return Source(type=kind, display=f"{scheme}://{bucket}/{path}", spec=spec, bucket=bucket, path=path)

    def _http(self, url: str, spec: StorageSpec) -> Source:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidStorageRef(f"HTTP source {_display_url(url)!r} is not an http(s) URL with a host")
        return Source(type="http", display=_display_url(url), spec=spec, url=url)

    def _pvc(self, name: str, rest: str, *, display: str) -> Source:
        if not name or name in (".", "..") or "/" in name:
            raise InvalidStorageRef(f"pvc reference {display!r} has no valid claim name")
        bound = self.pvc_claim_tenants.get(name)
        if bound is not None and (not self._tenant or self._tenant not in bound):
            who = f"tenant {self._tenant!r}" if self._tenant else "a reference with no tenant"
            raise AccessDenied(f"pvc claim {name!r} is not available to {who}")
        claim_root = self.pvc_root / name
        path = claim_root / rest if rest else claim_root
        return Source(
            type="local",
            display=display,
            spec=StorageSpec(key=None, type="pvc"),
            local_path=path,
            path=str(claim_root),  # the root the resolved path must stay under
        )

    def _local(self, raw: str, *, where: str) -> Source:
        if not raw:
            raise InvalidStorageRef(f"{where}: empty local path")
        return Source(type="local", display=raw, spec=StorageSpec(key=None, type="file"), local_path=Path(raw))


def local_roots(source: Source, allowed_roots: list[Path], *, resolved: bool = True) -> list[Path]:
    """The roots a local source must stay under: its PVC claim, or the allowed roots — real
    (symlinks followed, blocking) or, with ``resolved=False``, only made absolute and
    normalised (pure)."""
    roots = [Path(source.path)] if source.spec.type == "pvc" else list(allowed_roots)
    if not resolved:
        return [Path(os.path.normpath(os.path.abspath(r))) for r in roots]
    return [Path(os.path.realpath(os.path.abspath(r))) for r in roots]


def within(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _outside(source: Source) -> InvalidStorageRef:
    if source.spec.type == "pvc":
        return InvalidStorageRef(f"pvc reference {source.display!r} resolves outside its claim")
    return InvalidStorageRef(f"local path {source.display!r} is outside the allowed roots")


def check_lexically(source: Source, allowed_roots: list[Path]) -> None:
    """Refuse a local source whose path, made absolute and normalised without touching the
    file system, is not under its roots (as configured, or resolved) (pure)."""
    assert source.local_path is not None
    lexical = Path(os.path.normpath(os.path.abspath(source.local_path)))
    configured = local_roots(source, allowed_roots, resolved=False)
    if not within(lexical, configured):
        raise _outside(source)


def check_local(source: Source, roots: list[Path], allowed_roots: list[Path]) -> Path:
    """The real path (symlinks followed) of a local source, if it lies under ``roots`` (the
    real roots, blocking).

    The path is judged lexically first (against ``allowed_roots`` as configured): only one
    inside a root is resolved, and a resolved path outside gives the same error whether it
    exists or not."""
    assert source.local_path is not None
    check_lexically(source, allowed_roots)
    real = Path(os.path.realpath(os.path.abspath(source.local_path)))
    if within(real, roots):
        return real
    raise _outside(source)
