"""The storage-config secret: one JSON document per key, ModelMesh's field names.

Example entry (key ``my-s3``)::

    {"type": "s3", "access_key_id": "...", "secret_access_key": "...",
     "endpoint_url": "https://minio:9000", "region": "us-east-1", "bucket": "models",
     "certificate": "-----BEGIN CERTIFICATE-----..."}

Keys ``default`` and ``default_<type>`` (``default_s3``...) supply credentials when a reference
names no key. Types: ``s3``, ``gcs`` (alias ``google``, ``gs``), ``azure``, ``http`` (alias
``https``; fields ``url``, ``headers``), ``pvc`` and ``file``. Fields not listed above are kept
in ``StorageSpec.extra`` (e.g. ``account_name`` for Azure, ``token`` for GCS). Secret values
never appear in ``repr`` or in error messages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from ._errors import MalformedStorageConfig

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

    def with_parameters(self, parameters: Mapping[str, str]) -> StorageSpec:
        """This spec with a reference's ``parameters`` laid over its fields."""
        if not parameters:
            return self
        changes: dict[str, object] = {}
        extra = dict(self.extra)
        for name, value in parameters.items():
            if not isinstance(value, str):
                raise MalformedStorageConfig(f"storage parameter {name!r} must be a string")
            if name == "type":
                changes["type"] = normalize_type(value, where="storage parameters")
            elif name == "default_bucket":
                changes["bucket"] = value
            elif name in _STRING_FIELDS:
                changes[name] = value
            else:
                extra[name] = value
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
        for name, value in data.items():
            if name == "type":
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

    def default_for(self, kind: str) -> StorageSpec | None:
        """``default_<type>``, else ``default`` when its type matches, else None."""
        spec = self._specs.get(f"default_{kind}")
        if spec is not None and spec.type == kind:
            return spec
        spec = self._specs.get("default")
        if spec is not None and spec.type == kind:
            return spec
        return None
