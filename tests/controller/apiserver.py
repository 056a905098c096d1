"""An in-process stand-in for the Kubernetes API server (the subset the controller uses).

Real HTTP on ``127.0.0.1:<free port>`` (``http.server`` in threads), so the official
``kubernetes`` client talks to it unchanged. Semantics kept from the real server:

- one cluster-wide ``resourceVersion`` counter, bumped by every write; objects carry theirs;
  lists report the current one;
- watches (``?watch=true&resourceVersion=N``) stream JSON lines (chunked) of every event
  after ``N``; ``resourceVersion`` unset or ``0`` starts with synthetic ``ADDED`` events;
  ``timeoutSeconds`` ends the stream; a version older than the kept history gets an
  ``ERROR`` event with a 410 ``Expired`` status (as the real server does);
- optimistic concurrency: a write carrying ``metadata.resourceVersion`` that is not the
  current one fails with 409 Conflict;
- the status subresource: writes to the object ignore ``status``, writes to ``/status``
  change only ``status``; ``metadata.generation`` moves only when the spec changes;
- finalizers: DELETE of an object with finalizers only sets ``deletionTimestamp``; the
  object goes (``DELETED`` event) when its last finalizer is removed; no finalizer may be
  added while it is being deleted (422);
- merge patch (RFC 7386) and JSON patch (RFC 6902); core/v1 Events (create, list).

Test hooks: :meth:`create` / :meth:`update` / :meth:`delete` / :meth:`get` act like kubectl,
:meth:`compact` drops the watch history (watchers resuming from before it get 410),
:meth:`break_watches` cuts every open watch, :meth:`fail` injects error answers,
:meth:`wait` blocks on a condition (re-checked after every write), ``stats`` counts calls.
"""

from __future__ import annotations

import bisect
import copy
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.controller.apiserver_patch import (
    DEFAULT_RESOURCES,
    ApiError,
    Resource,
    _now,
    json_patch,
    merge_patch,
    name_selected,
)


@dataclass
class _Event:
    rv: int
    resource: Resource
    namespace: str
    type: str
    obj: dict[str, Any]


class FakeApiServer:
    def __init__(self, resources: tuple[Resource, ...] = DEFAULT_RESOURCES, *, history_limit: int = 100_000) -> None:
        self.resources = {(r.group, r.version, r.plural): r for r in resources}
        self.history_limit = history_limit
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name) -> object
        self.history: list[_Event] = []
        self._history_rvs: list[int] = []  # parallel to history (sorted) for bisect
        self.compacted_rv = self.rv  # events with rv <= this are gone
        self.stats: Counter[str] = Counter()
        self._faults: list[tuple[Callable[[str, str], bool], int, list[int]]] = []
        self._closing = False
        self._watch_generation = 0
        self._connections: set[Any] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------ lifecycle

    def start(self) -> str:
        owner = self

        class Handler(_Handler):
            api = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-apiserver", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            for conn in list(self._connections):
                try:
                    conn.shutdown(2)
                except OSError:
                    pass
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ test hooks

    def fail(self, match: Callable[[str, str], bool], times: int, code: int = 500) -> None:
        """Answer the next ``times`` requests for which ``match(method, path)`` holds with ``code``."""
        with self.cond:
            self._faults.append((match, code, [times]))

    def clear_faults(self) -> None:
        """Forget every injected failure still pending."""
        with self.cond:
            self._faults.clear()

    def compact(self) -> None:
        """Forget the watch history: a watch resuming from an older version gets 410 Gone."""
        with self.cond:
            self.history.clear()
            self._history_rvs.clear()
            self.compacted_rv = self.rv
            self.cond.notify_all()

    def break_watches(self) -> None:
        """End every open watch stream (as an API server restart would)."""
        with self.cond:
            self._watch_generation += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` (called under the lock) holds; False on timeout."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout_s)

    def resource(self, plural: str) -> Resource:
        for r in self.resources.values():
            if r.plural == plural:
                return r
        raise KeyError(plural)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        res = self._resource_of(obj)
        ns = ((obj.get("metadata") or {}).get("namespace") or "default") if res.namespaced else ""
        with self.cond:
            return copy.deepcopy(self._create(res, ns, copy.deepcopy(obj)))

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace the object's spec/metadata (like kubectl apply; status untouched)."""
        res = self._resource_of(obj)
        meta = obj.get("metadata") or {}
        with self.cond:
            cur = self._get(res, (meta.get("namespace") or "default") if res.namespaced else "", meta["name"])
            new = copy.deepcopy(obj)
            new.setdefault("metadata", {}).pop("resourceVersion", None)
            merged_meta = dict(cur["metadata"])
            for k in ("labels", "annotations"):
                if k in new["metadata"]:
                    merged_meta[k] = new["metadata"][k]
            new["metadata"] = merged_meta
            return copy.deepcopy(self._replace(res, cur, new, status=False))

    def patch(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the object (not its status), like ``kubectl patch --type merge``."""
        res = self.resource(plural)
        with self.cond:
            cur = self._get(res, namespace, name)
            new = merge_patch(cur, patch)
            new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            return copy.deepcopy(self._replace(res, cur, new, status=False))

    def delete(self, plural: str, namespace: str, name: str) -> None:
        with self.cond:
            self._delete(self.resource(plural), namespace, name)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.get((plural, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def items(self, plural: str) -> list[dict[str, Any]]:
        """Current objects of a kind (call under :meth:`wait` or take a copy)."""
        return [o for (p, _, _), o in sorted(self.objects.items()) if p == plural]

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.cond:
            return [copy.deepcopy(o) for (p, ns, _), o in sorted(self.objects.items()) if p == "events" and namespace in (None, ns)]

    # ------------------------------------------------------------ store

    def _resource_of(self, obj: dict[str, Any]) -> Resource:
        api_version = str(obj.get("apiVersion", ""))
        group, _, version = api_version.rpartition("/")
        for r in self.resources.values():
            if r.group == group and r.version == version and r.kind == obj.get("kind"):
                return r
        raise KeyError(f"{obj.get('kind')} {api_version} is not served")

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def _record(self, res: Resource, ns: str, etype: str, obj: dict[str, Any]) -> None:
        self.history.append(_Event(self.rv, res, ns, etype, copy.deepcopy(obj)))
        self._history_rvs.append(self.rv)
        if len(self.history) > self.history_limit:
            drop = len(self.history) - self.history_limit
            self.compacted_rv = self.history[drop - 1].rv
            del self.history[:drop]
            del self._history_rvs[:drop]
        self.cond.notify_all()

    def _get(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((res.plural, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{res.plural}.{res.group} "{name}" not found')
        return obj

    def _create(self, res: Resource, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = (res.plural, ns, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{res.plural}.{res.group} "{meta["name"]}" already exists')
        obj["apiVersion"] = res.api_version
        obj["kind"] = res.kind
        if res.status_subresource:
            obj.pop("status", None)
        if res.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        meta["resourceVersion"] = str(self._bump())
        self.objects[key] = obj
        self._record(res, ns, "ADDED", obj)
        return obj

    @staticmethod
    def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}

    def _replace(self, res: Resource, cur: dict[str, Any], new: dict[str, Any], *, status: bool) -> dict[str, Any]:
        """Write ``new`` over ``cur`` (the object or, with ``status``, its status subresource)."""
        cmeta = cur["metadata"]
        nmeta = new.get("metadata") or {}
        want_rv = nmeta.get("resourceVersion")
        if want_rv and str(want_rv) != cmeta["resourceVersion"]:
            raise ApiError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {res.plural}.{res.group} "{cmeta["name"]}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if status:
            out = copy.deepcopy(cur)
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
        else:
            out = copy.deepcopy(new)
            meta = dict(cmeta)
            for k in ("labels", "annotations", "finalizers", "ownerReferences"):
                if k in nmeta:
                    meta[k] = nmeta[k]
                else:
                    meta.pop(k, None)
            if cmeta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or ()) - set(cmeta.get("finalizers") or ())
                if added:
                    raise ApiError(
                        422, "Invalid",
                        f"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}",
                    )
            out["metadata"] = meta
            out["apiVersion"], out["kind"] = res.api_version, res.kind
            if res.status_subresource:
                if "status" in cur:
                    out["status"] = cur["status"]
                else:
                    out.pop("status", None)
            if self._spec_of(out) != self._spec_of(cur):
                meta["generation"] = int(cmeta.get("generation", 1)) + 1
        if out == cur:
            return cur  # a no-op write does not bump the version
        out["metadata"]["resourceVersion"] = str(self._bump())
        ns = cmeta.get("namespace", "")
        key = (res.plural, ns, cmeta["name"])
        if out["metadata"].get("deletionTimestamp") and not out["metadata"].get("finalizers"):
            del self.objects[key]
            self._record(res, ns, "DELETED", out)
            return out
        self.objects[key] = out
        self._record(res, ns, "MODIFIED", out)
        return out

    def _delete(self, res: Resource, ns: str, name: str) -> dict[str, Any]:
        cur = self._get(res, ns, name)
        if cur["metadata"].get("finalizers"):
            if cur["metadata"].get("deletionTimestamp"):
                return cur
            out = copy.deepcopy(cur)
            out["metadata"]["deletionTimestamp"] = _now()
            out["metadata"]["deletionGracePeriodSeconds"] = 0
            out["metadata"]["resourceVersion"] = str(self._bump())
            self.objects[(res.plural, ns, name)] = out
            self._record(res, ns, "MODIFIED", out)
            return out
        del self.objects[(res.plural, ns, name)]
        self._bump()
        out = copy.deepcopy(cur)
        out["metadata"]["resourceVersion"] = str(self.rv)
        self._record(res, ns, "DELETED", out)
        return out

    # ------------------------------------------------------------ HTTP

    def _route(self, path: str) -> tuple[Resource, str | None, str | None, bool]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        ns: str | None = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        res = self.resources.get((group, version, rest[0]))
        if res is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        name = rest[1] if len(rest) > 1 else None
        sub = len(rest) > 2 and rest[2] == "status"
        if len(rest) > 2 and not sub:
            raise ApiError(404, "NotFound", f"unknown subresource {rest[2]!r}")
        if sub and not res.status_subresource:
            raise ApiError(404, "NotFound", f"{res.plural} have no status subresource")
        return res, ns, name, sub

    def _check_fault(self, method: str, path: str) -> None:
        with self.cond:
            for match, code, left in self._faults:
                if left[0] > 0 and match(method, path):
                    left[0] -= 1
                    raise ApiError(code, "InternalError" if code >= 500 else "Injected", f"injected failure ({code})")

    def handle(self, method: str, url: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(url)
        self._check_fault(method, parts.path)
        res, ns, name, sub = self._route(parts.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self.cond:
            if method == "GET" and name is None:
                self.stats[f"list {res.plural}"] += 1
                selector = q.get("fieldSelector", "")
                items = [
                    copy.deepcopy(o)
                    for (p, ons, _), o in sorted(self.objects.items())
                    if p == res.plural and (ns is None or ons == ns) and name_selected(o, selector)
                ]
                for o in items:  # list items carry no kind / apiVersion (as the real server)
                    o.pop("kind", None)
                    o.pop("apiVersion", None)
                return 200, {
                    "apiVersion": res.api_version,
                    "kind": f"{res.kind}List",
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            if method == "GET":
                assert name is not None
                self.stats[f"get {res.plural}"] += 1
                return 200, copy.deepcopy(self._get(res, (ns or "default") if res.namespaced else "", name))
            try:
                payload = json.loads(body or b"null")
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"body is not JSON: {exc}") from None
            if method == "POST" and name is None:
                if ns is None:
                    raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
                self.stats[f"create {res.plural}"] += 1
                meta = payload.setdefault("metadata", {})
                if meta.get("namespace") and meta["namespace"] != ns:
                    raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
                return 201, copy.deepcopy(self._create(res, ns, payload))
            if name is None or ns is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} needs a namespaced object path")
            verb = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
            if verb is None:
                raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
            self.stats[f"{verb} {res.plural}{'/status' if sub else ''}"] += 1
            if method == "DELETE":
                _ = q.get("gracePeriodSeconds")
                return 200, copy.deepcopy(self._delete(res, ns, name))
            cur = self._get(res, ns, name)
            if method == "PUT":
                new = payload
            elif content_type.startswith("application/merge-patch+json"):
                new = merge_patch(cur, payload)
                if not (payload.get("metadata") or {}).get("resourceVersion"):
                    new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            elif content_type.startswith("application/json-patch+json"):
                if not isinstance(payload, list):
                    raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
                new = json_patch(cur, payload)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"patch content type {content_type!r} is not supported for custom resources")
            return 200, copy.deepcopy(self._replace(res, cur, new, status=sub))

    def watch(self, handler: _Handler, url: str) -> None:
        parts = urlsplit(url)
        res, ns, _name, _sub = self._route(parts.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        timeout = float(q.get("timeoutSeconds", "0") or 0)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        rv_text = q.get("resourceVersion", "")
        selector = q.get("fieldSelector", "")
        name_selected({}, selector)  # an unsupported selector is refused before the stream starts
        handler.start_stream()
        with self.cond:
            self.stats[f"watch {res.plural}"] += 1
            generation = self._watch_generation
            initial: list[dict[str, Any]] = []
            if rv_text in ("", "0"):
                last = self.rv
                initial = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for (p, ons, _), o in sorted(self.objects.items())
                    if p == res.plural and (ns is None or ons == ns) and name_selected(o, selector)
                ]
            else:
                last = int(rv_text)
                if last < self.compacted_rv:
                    self.stats[f"gone {res.plural}"] += 1
                    err = ApiError(410, "Expired", f"too old resource version: {last} ({self.compacted_rv})")
                    initial = [{"type": "ERROR", "object": err.status()}]
                    last = -1
        try:
            for ev in initial:
                handler.send_chunk(ev)
            if last < 0:
                return
            while True:
                with self.cond:
                    while True:
                        if self._closing or generation != self._watch_generation:
                            return
                        if last < self.compacted_rv:
                            err = ApiError(410, "Expired", f"too old resource version: {last} ({self.compacted_rv})")
                            batch = [{"type": "ERROR", "object": err.status()}]
                            last = -1
                            break
                        start = bisect.bisect_right(self._history_rvs, last)
                        batch = [
                            {"type": e.type, "object": e.obj}
                            for e in self.history[start:]
                            if e.resource == res and (ns is None or e.namespace == ns) and name_selected(e.obj, selector)
                        ]
                        if self.history and self.history[-1].rv > last:
                            last = self.history[-1].rv
                        if batch:
                            break
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return
                        self.cond.wait(remaining if remaining is not None else 1.0)
                for ev in batch:
                    handler.send_chunk(ev)
                if last < 0:
                    return
        except OSError:
            return  # the client went away
        finally:
            handler.end_stream()


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.api._connections.add(self.connection)

    def finish(self) -> None:
        self.api._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        body = self._body()
        try:
            q = parse_qs(urlsplit(self.path).query)
            if method == "GET" and q.get("watch", [""])[-1] in ("true", "1"):
                self.api._check_fault("WATCH", urlsplit(self.path).path)
                self.api.watch(self, self.path)
                self.close_connection = True
                return
            code, payload = self.api.handle(method, self.path, body, self.headers.get("Content-Type", ""))
        except ApiError as exc:
            code, payload = exc.code, exc.status()
        except (KeyError, ValueError, TypeError) as exc:
            code, payload = 400, ApiError(400, "BadRequest", f"bad request: {exc}").status()
        self._reply(code, payload)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def send_chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")
