"""The storage-config secret: one JSON document per key, ModelMesh's field names.

Example entry (key ``my-s3``)::

    {"type": "s3", "access_key_id": "...", "secret_access_key": "...",
     "endpoint_url": "https://minio:9000", "region": "us-east-1", "bucket": "models",
     "certificate": "-----BEGIN CERTIFICATE-----..."}

Keys ``default`` and ``default_<type>`` (``default_s3``...) supply credentials when a reference
names no key (an http default only for the origin of its own ``url``).

``tenants`` (a list of tenant names, optional) binds an entry to those tenants: a reference
from any other tenant (or from no tenant) is refused exactly as an unknown key is, and a bound
default applies only to its tenants. Without ``tenants`` an entry serves every tenant.

A reference's ``parameters`` (``storage_params``) may never change where the entry's
credentials go: only ``type`` (the entry's own), ``bucket`` / ``default_bucket`` (when the entry
names none, or the same one), ``region`` (a plain region name, when the entry names none or the
same one) and ``anonymous`` are accepted; anything else — ``url``, ``endpoint_url``,
``certificate``, ``insecure``, ``headers``, credentials, ``account_name``... — is refused with
``ForbiddenStorageParameter`` (invalid_argument). Types: ``s3``, ``gcs`` (alias ``google``, ``gs``), ``azure``, ``http`` (alias
``https``; fields ``url``, ``headers``), ``pvc`` and ``file``. Fields not listed above are kept
in ``StorageSpec.extra`` (e.g. ``account_name`` for Azure, ``token`` for GCS). Secret values
never appear in ``repr`` or in error messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from ._errors import ForbiddenStorageParameter, MalformedStorageConfig

_TYPE_ALIASES = {
    "s3": "s3",
    "gcs": "gcs",
    "gs": "gcs",
    "google": "gcs",
    "azure": "azure",
    "http": "http",
    "https": "http",
    "pvc": "pvc",
    "file": "file",
    "local": "file",
}
_STRING_FIELDS = (
    "access_key_id",
    "secret_access_key",
    "endpoint_url",
    "region",
    "bucket",
    "certificate",
    "url",
)
_EMPTY: Mapping[str, str] = MappingProxyType({})
_REGION = re.compile(r"^[a-z]{2}(-[a-z0-9]+){1,4}$")
_PARAMETERS = ("type", "bucket", "default_bucket", "region", "anonymous")


def normalize_type(value: str, *, where: str) -> str:
    try:
        return _TYPE_ALIASES[value.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(set(_TYPE_ALIASES.values())))
        raise MalformedStorageConfig(f"{where}: unknown storage type {value!r} (known: {known})") from None


@dataclass(frozen=True)
class StorageSpec:
    """One parsed entry of the storage-config secret (or the empty spec of an unkeyed reference)."""

    key: str | None
    type: str
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    endpoint_url: str | None = None
    region: str | None = None
    bucket: str | None = None
    certificate: str | None = field(default=None, repr=False)
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    extra: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    # None: every tenant may use the entry; else only these
    tenants: frozenset[str] | None = None

    def serves(self, tenant: str | None) -> bool:
        """Whether a reference from ``tenant`` may use this entry."""
        return self.tenants is None or (bool(tenant) and tenant in self.tenants)

    def with_parameters(self, parameters: Mapping[str, str]) -> StorageSpec:
        """This spec with a reference's ``parameters`` laid over its fields — only those that
        cannot change where its credentials go (see the module docstring)."""
        if not parameters:
            return self
        changes: dict[str, object] = {}
        extra = dict(self.extra)
        where = f"storage key {self.key!r}" if self.key else "the default storage"
        for name, value in parameters.items():
            if not isinstance(value, str):
                raise MalformedStorageConfig(f"storage parameter {name!r} must be a string")
            if name not in _PARAMETERS:
                raise ForbiddenStorageParameter(
                    f"storage parameter {name!r} is not allowed: parameters may not change where "
                    f"{where}'s credentials go (allowed: {', '.join(_PARAMETERS)})"
                )
            if name == "type":
                kind = normalize_type(value, where="storage parameters")
                if self.key is not None and kind != self.type:
                    raise ForbiddenStorageParameter(
                        f"storage parameter 'type' {value!r} differs from {where}'s type {self.type!r}"
                    )
                changes["type"] = kind
            elif name in ("bucket", "default_bucket"):
                if self.bucket and value != self.bucket:
                    raise ForbiddenStorageParameter(
                        f"storage parameter {name!r} may not change {where}'s bucket"
                    )
                changes["bucket"] = value
            elif name == "region":
                if (self.region and value != self.region) or not _REGION.match(value):
                    raise ForbiddenStorageParameter(
                        f"storage parameter 'region' {value!r} is not a region name, or differs from {where}'s"
                    )
                changes["region"] = value
            else:  # anonymous: can only take credentials away
                if value.lower() not in ("true", "false"):
                    raise ForbiddenStorageParameter("storage parameter 'anonymous' must be true or false")
                extra[name] = value.lower()
        changes["extra"] = MappingProxyType(extra)
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, key: str, document: str | bytes) -> StorageSpec:
        where = f"storage config key {key!r}"
        try:
            data = json.loads(document)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedStorageConfig(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise MalformedStorageConfig(f"{where}: expected a JSON object, got {type(data).__name__}")
        raw_type = data.get("type")
        if not isinstance(raw_type, str) or not raw_type:
            raise MalformedStorageConfig(f"{where}: field 'type' is missing or not a string")
        kind = normalize_type(raw_type, where=where)
        values: dict[str, str | None] = {}
        extra: dict[str, str] = {}
        headers: dict[str, str] = {}
        tenants: frozenset[str] | None = None
        for name, value in data.items():
            if name == "type":
                continue
            if name == "tenants":
                if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
                    raise MalformedStorageConfig(f"{where}: field 'tenants' must be a list of tenant names")
                tenants = frozenset(value)
                continue
            if name == "headers":
                if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()
                ):
                    raise MalformedStorageConfig(f"{where}: field 'headers' must be an object of strings")
                headers = dict(value)
                continue
            if value is None:
                continue
            if name in _STRING_FIELDS or name == "default_bucket":
                if not isinstance(value, str):
                    raise MalformedStorageConfig(f"{where}: field {name!r} must be a string")
                values["bucket" if name == "default_bucket" else name] = value
            elif isinstance(value, str | int | float | bool):
                extra[name] = str(value).lower() if isinstance(value, bool) else str(value)
            else:
                raise MalformedStorageConfig(f"{where}: field {name!r} must be a string")
        return cls(
            key=key,
            type=kind,
            headers=MappingProxyType(headers),
            extra=MappingProxyType(extra),
            tenants=tenants,
            **values,  # type: ignore[arg-type]
        )


class StorageConfig(Mapping[str, StorageSpec]):
    """The parsed storage-config secret: a read-only mapping from key to ``StorageSpec``.

    Parsing is strict and eager: one malformed entry fails the whole load with
    ``MalformedStorageConfig`` naming the key, so a bad secret is seen when it is mounted,
    not when a model first needs it.
    """

    def __init__(self, specs: Mapping[str, StorageSpec] | None = None) -> None:
        self._specs: dict[str, StorageSpec] = dict(specs or {})

    @classmethod
    def from_mapping(cls, data: Mapping[str, str | bytes]) -> StorageConfig:
        specs: dict[str, StorageSpec] = {}
        for key, document in data.items():
            if not isinstance(document, str | bytes):
                raise MalformedStorageConfig(f"storage config key {key!r}: value must be JSON text")
            specs[key] = StorageSpec.parse(key, document)
        return cls(specs)

    @classmethod
    def from_dir(cls, path: str | Path) -> StorageConfig:
        """Read a mounted secret: one file per key; dotfiles (Kubernetes' ``..data``) are skipped."""
        root = Path(path)
        if not root.is_dir():
            raise MalformedStorageConfig(f"storage config directory {str(root)!r} does not exist")
        data: dict[str, bytes] = {}
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            data[entry.name] = entry.read_bytes()
        return cls.from_mapping(data)

    def __getitem__(self, key: str) -> StorageSpec:
        return self._specs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"StorageConfig(keys={sorted(self._specs)!r})"

    def default_for(self, kind: str, tenant: str | None = None) -> StorageSpec | None:
        """``default_<type>``, else ``default`` when its type matches, else None — counting only
        entries that serve ``tenant``."""
        for name in (f"default_{kind}", "default"):
            spec = self._specs.get(name)
            if spec is not None and spec.type == kind and spec.serves(tenant):
                return spec
        return None

    def keys_for(self, tenant: str | None) -> list[str]:
        """The keys a reference from ``tenant`` may name."""
        return sorted(k for k, spec in self._specs.items() if spec.serves(tenant))
