"""Export and import of what people registered: models, vModels and tenant quotas, as YAML.

Works on any :class:`Store` (memory, sqlite, etcd): the backup of an etcd deployment and the
way from one machine to a cluster. The document is stable (sections and records sorted by
id, fields sorted by name) so it can be kept in git and diffed; importing is idempotent (a
record already equal is left alone, so importing twice writes nothing the second time).
Runtime state (instances, copies, assignments, the decision log) is not exported: the mesh
rebuilds it from the registrations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import pydantic
import yaml

from ._errors import Conflict, InvalidRequest
from ._management import MAX_BYTES, validate_id
from ._store import Store
from ._store_schema import Keys, ModelRecord, TenantRecord, VModelRecord, decode, encode
from ._validation import parse_rate

FORMAT_VERSION = 1

# section -> (record class, id field, key prefix property of Keys, what the id names)
_SECTIONS: dict[str, tuple[type, str, str, str]] = {
    "models": (ModelRecord, "model_id", "models", "model id"),
    "vmodels": (VModelRecord, "name", "vmodels", "vModel name"),
    "tenants": (TenantRecord, "name", "tenants", "tenant name"),
}


@dataclass(frozen=True)
class ImportResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def _plain(record: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode(record))
    data.pop("v", None)
    return data


async def export_records(store: Store, keys: Keys) -> dict[str, Any]:
    """Every model, vModel and tenant quota in the store, as plain sorted data."""
    doc: dict[str, Any] = {"modelmux_export": FORMAT_VERSION}
    for section, (cls, id_field, prefix_name, _) in _SECTIONS.items():
        kvs, _rev = await store.get_prefix(getattr(keys, prefix_name))
        records = [_plain(decode(cls, kv.value)) for kv in kvs]
        doc[section] = sorted(records, key=lambda r: r[id_field])
    return doc


def dump_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, allow_unicode=True)


def parse_document(text: str) -> dict[str, list[Any]]:
    """Check an export document; returns section -> records. Raises InvalidRequest."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"not YAML: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("modelmux_export") != FORMAT_VERSION:
        raise InvalidRequest(
            f"not a modelmux export (expected 'modelmux_export: {FORMAT_VERSION}' at the top)"
        )
    unknown = set(doc) - set(_SECTIONS) - {"modelmux_export"}
    if unknown:
        raise InvalidRequest(f"unknown sections {sorted(unknown)}")
    out: dict[str, list[Any]] = {}
    for section, (cls, id_field, _, what) in _SECTIONS.items():
        entries = doc.get(section) or []
        if not isinstance(entries, list):
            raise InvalidRequest(f"{section}: expected a list")
        names = {f.name for f in fields(cls)}
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(cls)
        records: list[Any] = []
        seen: set[str] = set()
        for n, entry in enumerate(entries):
            where = f"{section}[{n}]"
            if not isinstance(entry, dict):
                raise InvalidRequest(f"{where}: expected a mapping")
            extra = set(entry) - names
            if extra:
                raise InvalidRequest(f"{where}: unknown fields {sorted(extra)}")
            try:
                record = adapter.validate_python(entry, strict=False)
            except pydantic.ValidationError as exc:
                raise InvalidRequest(
                    f"{where}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
                ) from exc
            ident = validate_id(what, getattr(record, id_field))
            if ident in seen:
                raise InvalidRequest(f"{where}: {what} '{ident}' appears twice")
            seen.add(ident)
            if isinstance(record, TenantRecord):
                if not 0 <= record.max_bytes <= MAX_BYTES:
                    raise InvalidRequest(f"{where}: max_bytes must be 0..{MAX_BYTES}")
                parse_rate(record.max_rps, f"{where}: max_rps")
            records.append(record)
        out[section] = records
    return out


async def import_records(store: Store, keys: Keys, text: str) -> ImportResult:
    """Write every record of the document; records already equal are left alone.

    Everything is checked before anything is written. Each record is written by
    compare-and-swap on what was read, so a concurrent change is reported, never clobbered.
    """
    parsed = parse_document(text)
    created = updated = unchanged = 0
    for section, records in parsed.items():
        cls, id_field, prefix_name, _ = _SECTIONS[section]
        prefix = getattr(keys, prefix_name)
        for record in records:
            key = prefix + getattr(record, id_field)
            kv = await store.get(key)
            if kv is not None and decode(cls, kv.value) == record:
                unchanged += 1
                continue
            if await store.cas(key, encode(record), kv.mod_revision if kv else 0) is None:
                raise Conflict(f"{key} changed while importing; run the import again")
            if kv is None:
                created += 1
            else:
                updated += 1
    return ImportResult(created, updated, unchanged)
