"""The Kubernetes side: the official (blocking) client run in threads, and informers.

:class:`KubeClient` is the one seam to the API server: every call runs in a bounded thread
pool (``api_threads``) so the event loop never blocks; API errors become
:class:`KubeApiError` with the HTTP status.

:class:`Informer` keeps a cache of one kind's objects with list + watch: it lists (the
list's ``resourceVersion``), then watches from that version, resuming from the last seen
version when a watch ends (the server closes it after ``watch_timeout_s``) and re-listing
when the server answers 410 Gone (the version was compacted away); on other errors it
backs off exponentially. The blocking watch stream runs in its own thread and hands each
event to the loop. Re-listing diffs the new list against the cache, so consumers see
deletions that happened while the watch was down.

:func:`merge_patch` computes the JSON merge patch (RFC 7386) sent to the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ._kinds import Kind, ObjectRef
from ._settings import ControllerSettings

log = logging.getLogger(__name__)


class KubeApiError(Exception):
    """An API server call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def build_api_client(settings: ControllerSettings) -> Any:
    """A ``kubernetes.client.ApiClient``: explicit host, else in-cluster config, else kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if settings.kube_host:
        cfg.host = settings.kube_host
        cfg.verify_ssl = settings.kube_verify_tls
        if settings.kube_token:
            cfg.api_key = {"BearerToken": settings.kube_token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            path = str(settings.kubeconfig_path) if settings.kubeconfig_path else None
            config.load_kube_config(config_file=path, client_configuration=cfg)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 1, settings.api_threads + 4)
    return client.ApiClient(cfg)


def _api_error(exc: BaseException, what: str) -> KubeApiError:
    status = int(getattr(exc, "status", 0) or 0)
    reason = getattr(exc, "reason", None) or str(exc)
    body = getattr(exc, "body", None)
    detail = ""
    if body:
        try:
            import json

            detail = json.loads(body).get("message", "")
        except (ValueError, AttributeError, TypeError):
            detail = str(body)[:200]
    return KubeApiError(f"{what}: {status or ''} {reason}{': ' + detail if detail else ''}".strip(), status)


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (``{}``: nothing to do).

    Keys of ``old`` missing from ``new`` become ``None`` (removed): the controller owns the
    whole status of the objects it manages.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = merge_patch(old[k], v)
            if sub != {}:
                patch[k] = sub
        elif old[k] != v:
            patch[k] = v
    for k in old:
        if k not in new:
            patch[k] = None
    return patch


class KubeClient:
    """Async facade over the blocking client (custom objects + core events)."""

    def __init__(self, api_client: Any, settings: ControllerSettings) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.settings = settings
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=settings.api_threads, thread_name_prefix="mm-kube")

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        loop = asyncio.get_running_loop()

        def run() -> Any:
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                raise _api_error(exc, what) from exc
            except Exception as exc:  # urllib3 / socket errors: no answer
                raise KubeApiError(f"{what}: {type(exc).__name__}: {exc}") from exc

        return await loop.run_in_executor(self._pool, run)

    @property
    def timeout(self) -> float:
        return self.settings.request_timeout_s

    async def list(self, kind: Kind, namespace: str, field_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """Every object of ``kind`` (in ``namespace``, or all) and the list's resourceVersion."""
        extra: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
        if not kind.group:  # a core kind (ConfigMap): typed client, turned into plain JSON
            fn, args = self._core_list(kind, namespace)
            typed = await self._call(f"list {kind.plural}", fn, *args, _request_timeout=self.timeout, **extra)
            out = self.api_client.sanitize_for_serialization(typed)
        elif namespace and kind.namespaced:
            out = await self._call(
                f"list {kind.plural} in {namespace}",
                self.custom.list_namespaced_custom_object,
                kind.group, kind.version, namespace, kind.plural, _request_timeout=self.timeout, **extra,
            )
        else:
            out = await self._call(
                f"list {kind.plural}",
                self.custom.list_cluster_custom_object,
                kind.group, kind.version, kind.plural, _request_timeout=self.timeout, **extra,
            )
        items = [dict(i) for i in (out.get("items") or ())]
        for item in items:  # list items carry no kind / apiVersion
            item.setdefault("kind", kind.kind)
            item.setdefault("apiVersion", kind.api_version)
        return items, str((out.get("metadata") or {}).get("resourceVersion", ""))

    def _core_list(self, kind: Kind, namespace: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """The core API's list function for ``kind`` (only ConfigMaps are read)."""
        if kind.plural != "configmaps":
            raise KubeApiError(f"core kind {kind.kind} is not supported")
        if namespace:
            return self.core.list_namespaced_config_map, (namespace,)
        return self.core.list_config_map_for_all_namespaces, ()

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            out = await self._call(
                f"get {kind.kind} {namespace}/{name}",
                self.custom.get_namespaced_custom_object,
                kind.group, kind.version, namespace, kind.plural, name, _request_timeout=self.timeout,
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(out)

    async def create(self, kind: Kind, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        out = await self._call(
            f"create {kind.kind} in {namespace}",
            self.custom.create_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, body, _request_timeout=self.timeout,
        )
        return dict(out)

    async def replace(self, kind: Kind, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace the object; guarded by ``metadata.resourceVersion`` in ``body`` (409 when it moved)."""
        out = await self._call(
            f"replace {kind.kind} {namespace}/{name}",
            self.custom.replace_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, name, body, _request_timeout=self.timeout,
        )
        return dict(out)

    async def patch(self, kind: Kind, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the object (main resource)."""
        out = await self._call(
            f"patch {kind.kind} {namespace}/{name}",
            self.custom.patch_namespaced_custom_object,
            kind.group, kind.version, namespace, kind.plural, name, body,
            _content_type="application/merge-patch+json", _request_timeout=self.timeout,
        )
        return dict(out)

    async def patch_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the status subresource."""
        out = await self._call(
            f"patch status of {kind.kind} {namespace}/{name}",
            self.custom.patch_namespaced_custom_object_status,
            kind.group, kind.version, namespace, kind.plural, name, {"status": status},
            _content_type="application/merge-patch+json", _request_timeout=self.timeout,
        )
        return dict(out)

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        from kubernetes.client import CoreV1Event

        body = CoreV1Event.from_dict(event)
        await self._call(
            f"create event in {namespace}", self.core.create_namespaced_event, namespace, body,
            _request_timeout=self.timeout,
        )

    def watch_blocking(
        self,
        kind: Kind,
        namespace: str,
        resource_version: str,
        on_event: Callable[[str, dict[str, Any]], None],
        w: Any,
        field_selector: str = "",
    ) -> str:
        """Stream watch events (blocking; run in a thread) until the server ends the watch.

        Returns the last resourceVersion seen. Raises :class:`KubeApiError` (status 410 when
        the version is too old).
        """
        from kubernetes.client.exceptions import ApiException

        timeout = self.settings.watch_timeout_s
        kwargs: dict[str, Any] = {
            "resource_version": resource_version,
            "timeout_seconds": timeout,
            "allow_watch_bookmarks": True,
            "_request_timeout": (self.timeout, timeout + self.timeout),
        }
        if field_selector:
            kwargs["field_selector"] = field_selector
        fn: Any
        args: tuple[Any, ...]
        if not kind.group:
            fn, args = self._core_list(kind, namespace)
        elif namespace and kind.namespaced:
            fn = self.custom.list_namespaced_custom_object
            args = (kind.group, kind.version, namespace, kind.plural)
        else:
            fn = self.custom.list_cluster_custom_object
            args = (kind.group, kind.version, kind.plural)
        last = resource_version
        try:
            for ev in w.stream(fn, *args, **kwargs):
                etype = str(ev.get("type", ""))
                obj = ev.get("raw_object")
                if isinstance(obj, dict):
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        last = str(rv)
                    if etype in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(etype, obj)
        except ApiException as exc:
            raise _api_error(exc, f"watch {kind.plural}") from exc
        except Exception as exc:
            raise KubeApiError(f"watch {kind.plural}: {type(exc).__name__}: {exc}") from exc
        return last

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.api_client.close)


@dataclass(frozen=True)
class ObjectEvent:
    type: str  # ADDED | MODIFIED | DELETED
    ref: ObjectRef
    obj: dict[str, Any]


class Informer:
    """A live cache of one kind (see the module doc); ``on_change`` runs in the loop."""

    def __init__(
        self,
        client: KubeClient,
        kind: Kind,
        namespace: str,
        on_change: Callable[[ObjectEvent], None],
        *,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 30.0,
        field_selector: str = "",
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace if kind.namespaced else ""
        self.field_selector = field_selector
        self.on_change = on_change
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.cache: dict[ObjectRef, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0  # list calls so far (visibility, tests)
        self.errors = 0
        self.missing = False  # the API server does not serve this kind (CRD not installed)
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._watch: Any = None
        self._thread_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mm-watch-{kind.plural}")

    def _ref(self, obj: dict[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default") if self.kind.namespaced else ""
        return ObjectRef(self.kind.kind, namespace, str(meta.get("name", "")))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"informer-{self.kind.plural}")

    async def stop(self) -> None:
        self._stopping.set()
        w = self._watch
        if w is not None:
            w.stop()  # shuts the socket down: the blocked read returns
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._thread_pool.shutdown, wait=True, cancel_futures=True)

    def _apply(self, etype: str, obj: dict[str, Any]) -> None:
        obj.setdefault("kind", self.kind.kind)
        obj.setdefault("apiVersion", self.kind.api_version)
        ref = self._ref(obj)
        if etype == "DELETED":
            if self.cache.pop(ref, None) is None:
                return
        else:
            self.cache[ref] = obj
        self.on_change(ObjectEvent(etype, ref, obj))

    def _relisted(self, items: list[dict[str, Any]]) -> None:
        fresh = {self._ref(o): o for o in items}
        for ref in [r for r in self.cache if r not in fresh]:
            gone = self.cache.pop(ref)
            self.on_change(ObjectEvent("DELETED", ref, gone))
        for ref, obj in fresh.items():
            old = self.cache.get(ref)
            self.cache[ref] = obj
            if old is None:
                self.on_change(ObjectEvent("ADDED", ref, obj))
            elif (old.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get("resourceVersion"):
                self.on_change(ObjectEvent("MODIFIED", ref, obj))

    def _backoff(self, failures: int) -> float:
        base = min(self.retry_initial_s * (2 ** max(failures - 1, 0)), self.retry_max_s)
        return base * (0.75 + random.random() / 2)

    async def _run(self) -> None:
        from kubernetes import watch

        loop = asyncio.get_running_loop()
        failures = 0
        need_list = True
        while not self._stopping.is_set():
            try:
                if need_list:
                    items, rv = await self.client.list(self.kind, self.namespace, self.field_selector)
                    self.relists += 1
                    self.missing = False
                    self._relisted(items)
                    self.resource_version = rv
                    need_list = False
                    self.synced.set()
                w = watch.Watch()
                self._watch = w

                def emit(etype: str, obj: dict[str, Any]) -> None:
                    with contextlib.suppress(RuntimeError):  # the loop is gone: stopping
                        loop.call_soon_threadsafe(self._apply, etype, obj)

                rv = await loop.run_in_executor(
                    self._thread_pool,
                    self.client.watch_blocking,
                    self.kind,
                    self.namespace,
                    self.resource_version,
                    emit,
                    w,
                    self.field_selector,
                )
                self._watch = None
                # the thread scheduled its events before its result: they have been applied
                if rv:
                    self.resource_version = rv
                failures = 0
            except KubeApiError as exc:
                self._watch = None
                if self._stopping.is_set():
                    return
                if exc.status == 410:
                    log.info("%s: resource version %s is too old; listing again", self.kind.plural, self.resource_version)
                    need_list = True
                    continue
                self.errors += 1
                failures += 1
                level = logging.WARNING
                if exc.status == 404:
                    # the kind is not served (CRD missing): report synced-empty, retry slowly
                    if self.missing:
                        level = logging.DEBUG
                    else:
                        log.warning("%s are not served by the API server (CRD not installed?)", self.kind.plural)
                    self.missing = True
                    self.synced.set()
                delay = self._backoff(failures)
                log.log(level, "%s: %s; retrying in %.1fs", self.kind.plural, exc, delay)
                await asyncio.sleep(delay)
            except Exception:  # a bug must not silently end the informer: log it and start over
                self._watch = None
                if self._stopping.is_set():
                    return
                self.errors += 1
                failures += 1
                need_list = True
                delay = self._backoff(failures)
                log.exception("%s: informer failed; listing again in %.1fs", self.kind.plural, delay)
                await asyncio.sleep(delay)
