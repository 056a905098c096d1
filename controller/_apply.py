"""``modelmux apply -f``: the same Predictor / InferenceService YAML, without a cluster.

Each document is mapped with the controller's pure code (:func:`desired_state`) and
registered through the REST management API of a running mesh (``PUT /api/v1/vmodels/{name}``
with the target model's ModelInfo, auto-delete on, the controller's owner string). So a
file applied here and the same file applied to a cluster give the same vModel, the same
model id and the same transition when the spec changes. ServingRuntime and ClusterServingRuntime
documents in the applied files declare runtimes for the Predictors next to them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from mesh import Unavailable

from ._kinds import CLUSTER_SERVING_RUNTIME, MODEL_KINDS, SERVING_RUNTIME, ObjectRef, VModelNaming
from ._mapping import (
    ReconcileContext,
    Registration,
    Rejection,
    desired_state,
    is_managed,
)
from ._runtimes import cluster_runtimes, runtimes_by_namespace
from ._tenants import TENANT_QUOTA, QuotaRejection, quota_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyResult:
    """What happened to one document.

    ``action``: ``created`` / ``configured`` (new target model) / ``unchanged`` (same
    target), ``deleted`` / ``absent`` (delete), ``skipped`` (not a model object of ours),
    ``invalid`` (the spec cannot be registered; ``message`` says why) or ``failed`` (the
    mesh refused it, or the file could not be read).
    """

    source: str  # path#document-index
    kind: str
    namespace: str
    name: str
    action: str
    message: str = ""
    vmodel: str = ""
    model_id: str = ""
    status: str = ""  # the vModel's status after the call (DEFINED, TRANSITIONING ...)

    @property
    def ok(self) -> bool:
        return self.action not in ("invalid", "failed")


def _base_url(address: str) -> str:
    return address if address.startswith(("http://", "https://")) else f"http://{address}"


def _expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory gives its ``*.yaml`` / ``*.yml`` / ``*.json`` files (as kubectl)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out += sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".yaml", ".yml", ".json"))
        else:
            out.append(path)
    return out


def load_documents(paths: Iterable[Path]) -> tuple[list[tuple[str, dict[str, Any]]], list[ApplyResult]]:
    """(source, object) for every document in the files or directories (``List`` kinds
    expanded), and a failed result per file that cannot be read or parsed."""
    docs: list[tuple[str, dict[str, Any]]] = []
    errors: list[ApplyResult] = []
    for path in _expand(paths):
        try:
            text = Path(path).read_text()
            parsed = list(yaml.safe_load_all(text))
        except OSError as exc:
            errors.append(ApplyResult(str(path), "", "", "", "failed", f"cannot read {path}: {exc.strerror or exc}"))
            continue
        except yaml.YAMLError as exc:
            errors.append(ApplyResult(str(path), "", "", "", "failed", f"{path} is not valid YAML: {exc}"))
            continue
        for i, doc in enumerate(parsed):
            if doc is None:
                continue
            source = f"{path}#{i}"
            if not isinstance(doc, dict):
                errors.append(ApplyResult(source, "", "", "", "invalid", f"{source}: a document must be a mapping, not {type(doc).__name__}"))
                continue
            if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
                for j, item in enumerate(doc["items"]):
                    if isinstance(item, dict):
                        docs.append((f"{source}.items[{j}]", item))
                continue
            docs.append((source, doc))
    return docs, errors


def _context(docs: Sequence[tuple[str, dict[str, Any]]], namespace: str, naming: VModelNaming) -> ReconcileContext:
    runtimes = [d for _, d in docs if d.get("kind") == SERVING_RUNTIME.kind]
    cluster = [d for _, d in docs if d.get("kind") == CLUSTER_SERVING_RUNTIME.kind]
    return ReconcileContext(runtimes=runtimes_by_namespace(runtimes, namespace), naming=naming, cluster_runtimes=cluster_runtimes(cluster))


def apply_files(
    paths: list[Path],
    rest_address: str,
    *,
    namespace: str = "default",
    progress: Callable[[int, int], None] | None = None,
    naming: VModelNaming = "name",
    load_now: bool = True,
    delete: bool = False,
    timeout_s: float = 60.0,
    transport: httpx.BaseTransport | None = None,
    client_options: dict[str, Any] | None = None,
) -> list[ApplyResult]:
    """Register (or, with ``delete``, unregister) every Predictor / InferenceService in the
    files against the mesh's REST API at ``rest_address``; one result per document.

    ``namespace`` is used for objects that name none. ``progress(done, total)`` is called
    after each document. ``client_options``: ``headers`` (the bearer token) and ``verify`` (TLS)
    of the HTTP client. Raises :class:`mesh.Unavailable` when the mesh cannot be reached.
    """
    docs, results = load_documents(paths)
    ctx = _context(docs, namespace, naming)
    total = len(docs)
    with httpx.Client(base_url=_base_url(rest_address), timeout=timeout_s, transport=transport, **(client_options or {})) as client:
        for n, (source, obj) in enumerate(docs, start=1):
            results.append(_apply_one(client, source, obj, ctx, namespace, load_now=load_now, delete=delete))
            if progress is not None:
                progress(n, total)
    return results


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])
    except ValueError:
        pass
    return resp.text.strip() or resp.reason_phrase


def _apply_one(
    client: httpx.Client,
    source: str,
    obj: dict[str, Any],
    ctx: ReconcileContext,
    namespace: str,
    *,
    load_now: bool,
    delete: bool,
) -> ApplyResult:
    ref = ObjectRef.of(obj, namespace)
    if ref.kind == TENANT_QUOTA.kind:
        try:
            quota_obj = {**obj, "metadata": {**(obj.get("metadata") or {}), "namespace": ref.namespace}}
            return _apply_quota(client, source, ref, quota_obj, ctx.naming, delete=delete)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach the mesh's REST API at {client.base_url}: {exc}") from exc
    if ref.kind not in MODEL_KINDS or not is_managed(obj):
        why = (
            "an InferenceService without the annotation serving.kserve.io/deploymentMode: ModelMesh"
            if ref.kind in MODEL_KINDS
            else f"kind {ref.kind or '(none)'} is not a Predictor, InferenceService or TenantQuota"
        )
        return ApplyResult(source, ref.kind, ref.namespace, ref.name, "skipped", why)
    desired = desired_state(obj, ctx, default_namespace=namespace)
    assert desired is not None
    try:
        if delete:
            resp = client.delete(f"/api/v1/vmodels/{desired.vmodel}", params={"owner": desired.owner})
            if resp.status_code >= 400:
                return ApplyResult(source, ref.kind, ref.namespace, ref.name, "failed", _error_message(resp), desired.vmodel)
            return ApplyResult(source, ref.kind, ref.namespace, ref.name, "deleted", "", desired.vmodel)
        if isinstance(desired, Rejection):
            return ApplyResult(
                source, ref.kind, ref.namespace, ref.name, "invalid",
                f"{ref}: {desired.reason}: {desired.message}", desired.vmodel,
            )
        return _register(client, source, ref, desired, load_now)
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot reach the mesh's REST API at {client.base_url}: {exc}") from exc


def _register(client: httpx.Client, source: str, ref: ObjectRef, desired: Registration, load_now: bool) -> ApplyResult:
    before = client.get(f"/api/v1/vmodels/{desired.vmodel}")
    previous = before.json().get("targetModelId", "") if before.status_code == 200 else ""
    info = desired.info
    resp = client.put(
        f"/api/v1/vmodels/{desired.vmodel}",
        json={
            "targetModelId": desired.model_id,
            "modelInfo": {"type": info.type, "path": info.path, "key": info.key},
            "autoDeleteTargetModel": True,
            "owner": desired.owner,
            "loadNow": load_now,
        },
    )
    if resp.status_code >= 400:
        return ApplyResult(
            source, ref.kind, ref.namespace, ref.name, "failed",
            f"{ref}: {_error_message(resp)}", desired.vmodel, desired.model_id,
        )
    body = resp.json()
    action = "created" if not previous else ("unchanged" if previous == desired.model_id else "configured")
    return ApplyResult(
        source, ref.kind, ref.namespace, ref.name, action, "", desired.vmodel, desired.model_id, str(body.get("status", ""))
    )


def _apply_quota(
    client: httpx.Client, source: str, ref: ObjectRef, obj: dict[str, Any], naming: VModelNaming, *, delete: bool
) -> ApplyResult:
    """A TenantQuota: the tenant's quota through ``/api/v1/tenants/{tenant}``."""
    desired = quota_spec(obj, naming)
    if isinstance(desired, QuotaRejection):
        return ApplyResult(source, ref.kind, ref.namespace, ref.name, "invalid", f"{ref}: {desired.reason}: {desired.message}")
    if delete:
        resp = client.delete(f"/api/v1/tenants/{desired.tenant}")
        if resp.status_code >= 400 and resp.status_code != 404:
            return ApplyResult(source, ref.kind, ref.namespace, ref.name, "failed", _error_message(resp))
        return ApplyResult(source, ref.kind, ref.namespace, ref.name, "deleted")
    before = client.get(f"/api/v1/tenants/{desired.tenant}")
    old = before.json() if before.status_code == 200 else {}
    previous = (old.get("max_bytes", 0), old.get("max_rps", 0.0))
    resp = client.put(f"/api/v1/tenants/{desired.tenant}", json={"maxBytes": desired.max_bytes, "maxRps": desired.max_rps})
    if resp.status_code >= 400:
        return ApplyResult(source, ref.kind, ref.namespace, ref.name, "failed", f"{ref}: {_error_message(resp)}")
    if not any(previous):
        action = "created"
    else:
        action = "unchanged" if previous == (desired.max_bytes, desired.max_rps) else "configured"
    return ApplyResult(source, ref.kind, ref.namespace, ref.name, action)
