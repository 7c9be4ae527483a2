"""A Kubernetes API server for tests: kmock's KubernetesEmulator with the gaps fixed that kopf and
kubectl run into (measured in ../shared/STACK.md).

kmock gives the HTTP server, API discovery from declared resources and Status-shaped errors; this
subclass replaces its object store with one that behaves like the real API server where operators
depend on it: uid/resourceVersion/generation/creationTimestamp stamping, watches that resume from a
resourceVersion without losing events, merge and JSON patches (a failed `test` is 422), PUT with
resourceVersion preconditions, the status subresource (status writes only there), label selectors,
typed lists, NotFound/AlreadyExists/Conflict reasons, finalizers and deletionTimestamp, and the
garbage collector's cascade through ownerReferences (a controller-manager part, mocked here because
no cluster runs here).

`RunningApiServer` runs it on 127.0.0.1 in its own thread and event loop (kopf runs in another thread
via KopfRunner) and writes a kubeconfig for kopf, the operator's client and kubectl.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server
from kmock._internal import k8s as kmock_k8s
from kmock._internal import parsing as kmock_parsing

logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # one line per request otherwise

Key = tuple[str, str, str | None, str]  # group, plural, namespace, name

CORE = {"configmaps": "ConfigMap", "secrets": "Secret", "events": "Event", "namespaces": "Namespace"}


def _parse_path(path: str, _kmock_parse=kmock_parsing.parse_path):
    """kmock reads /api/v1/namespaces[/NAME] as the start of a namespaced path and fails on it (an
    operator watching given namespaces lists and watches Namespace objects): parse it as the
    cluster-scoped `namespaces` resource."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 5 and (len(parts) <= 4 or parts[4] == "status"):
        return kmock_parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) > 3 else None,
                                        parts[4] if len(parts) > 4 else None)
    return _kmock_parse(path)


kmock_parsing.parse_path = _parse_path


class ApiError(kmock_k8s.KubernetesError):
    pass


def not_found(group: str, plural: str, name: str | None) -> ApiError:
    return ApiError(status=404, reason="NotFound", message=f'{plural}.{group} "{name}" not found'.replace(". ", " "),
                    details={"name": name, "group": group, "kind": plural})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_selector(selector: str | None) -> list[tuple[str, str, str | None]]:
    """Equality-based label selectors: a=b, a==b, a!=b, a, !a."""
    terms = []
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            terms.append((k.strip(), "!=", v.strip()))
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            terms.append((k.strip(), "=", v.strip()))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "!", None))
        elif " in " in term or " notin " in term:
            raise ApiError(status=400, reason="BadRequest", message=f"set-based selectors are not emulated: {term}")
        else:
            terms.append((term, "exists", None))
    return terms


def matches(obj: dict, terms: list) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, value in terms:
        if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value) \
                or (op == "!" and key in labels) or (op == "exists" and key not in labels):
            return False
    return True


def secret_string_data(obj: dict) -> None:
    """A Secret's stringData is write-only: the API server stores it base64-encoded in data."""
    if obj.get("kind") == "Secret" and obj.get("stringData"):
        obj["data"] = {**(obj.get("data") or {}),
                       **{k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()}}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


@attrs.define(kw_only=True)
class ApiServer(KubernetesEmulator):
    _store: dict[Key, dict] = attrs.field(factory=dict, init=False)
    _log: list[tuple[int, tuple[str, str], dict]] = attrs.field(factory=list, init=False)  # (rv, (group, plural), event)
    _rv: int = attrs.field(default=0, init=False)
    _watchers: list[tuple[tuple[str, str], asyncio.Queue]] = attrs.field(factory=list, init=False)
    _kinds: dict[tuple[str, str], tuple[str, str, bool, bool]] = attrs.field(factory=dict, init=False)
    # (group, plural) -> paths a write may not change once the object exists (a CRD's `self == oldSelf` rules)
    _immutable: dict[tuple[str, str], list[tuple[str, ...]]] = attrs.field(factory=dict, init=False)
    requests_by_verb: dict[str, int] = attrs.field(factory=dict, init=False)
    # every resource request as RBAC sees it: (user agent, verb, group, resource[/subresource], namespace)
    audit: list[tuple[str, str, str, str, str | None]] = attrs.field(factory=list, init=False)

    # ------------------------------------------------------------------ declaring resources
    def declare(self, api_version: str, plural: str, kind: str, namespaced: bool = True, status: bool = True,
                short_names: list[str] = (), categories: list[str] = ()) -> None:
        group, version = api_version.rsplit("/", 1) if "/" in api_version else ("", api_version)
        key = f"{group}/{version}/{plural}" if group else f"{version}/{plural}"
        self.resources[key] = ResourceInfo(
            kind=kind, singular=kind.lower(), namespaced=namespaced, subresources={"status"} if status else set(),
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"}, shortnames=set(short_names),
            categories=set(categories))
        self._kinds[(group, plural)] = (kind, api_version, namespaced, status)

    def declare_immutable(self, api_version: str, plural: str, paths: list[tuple[str, ...]]) -> None:
        """What the API server's CEL transition rules (`self == oldSelf`) refuse to change, as it does: 422."""
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        self._immutable[(group, plural)] = list(paths)

    def declare_core(self) -> None:
        for plural, kind in CORE.items():
            self.declare("v1", plural, kind, namespaced=plural != "namespaces", status=plural == "namespaces")

    def declare_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                self.declare(f"{spec['group']}/{version['name']}", spec["names"]["plural"], spec["names"]["kind"],
                             namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                             status="status" in version.get("subresources", {}),
                             short_names=spec["names"].get("shortNames", []), categories=spec["names"].get("categories", []))

    # ------------------------------------------------------------------ discovery fix
    async def _serve_version(self, request):
        payload = await super()._serve_version(request)
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")  # core: "v1", not "/v1"
        for item in payload["resources"]:
            item["namespaced"] = bool(item["namespaced"])
        return payload

    # ------------------------------------------------------------------ dispatch
    async def _handle(self, request):
        res = request.resource
        if res is None or res.plural is None:
            return await super()._handle(request)  # discovery: kmock's
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        self.requests_by_verb[method] = self.requests_by_verb.get(method, 0) + 1
        self._audit(request, method)
        try:
            kind_info = self._kinds.get((res.group, res.plural))
            if kind_info is None:
                raise ApiError(status=404, reason="NotFound",
                               message=f"the server could not find the requested resource ({res.plural}.{res.group})")
            if method == "GET" and request.params.get("watch") in ("true", "1"):
                return await self._watch(request, kind_info)
            if method == "GET":
                body = self._get(request) if request.name else self._list(request, kind_info)
            elif method == "POST" and not request.name:
                body = self._create(request, kind_info)
                return aiohttp.web.json_response(body, status=201)
            elif method == "PATCH" and request.name:
                body = self._patch(request, kind_info)
            elif method == "PUT" and request.name:
                body = self._replace(request, kind_info)
            elif method == "DELETE" and request.name:
                body = self._delete(request)
            else:
                raise ApiError(status=405, reason="MethodNotAllowed", message=f"{method} {request.url.path}")
        except ApiError as e:
            return await self._render_error(e)
        return aiohttp.web.json_response(body)

    def _audit(self, request, method: str) -> None:
        if method == "GET":
            verb = "watch" if request.params.get("watch") in ("true", "1") else "get" if request.name else "list"
        else:
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method, method)
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        self.audit.append((request.headers.get("User-Agent", ""), verb, request.resource.group or "", resource,
                           request.namespace))

    def _key(self, request, name: str | None = None) -> Key:
        return (request.resource.group, request.resource.plural, request.namespace, name or request.name)

    def _get(self, request) -> dict:
        key = self._key(request)
        if key not in self._store or request.subresource not in (None, "status"):
            raise not_found(key[0], key[1], key[3])
        return self._store[key]

    def _selected(self, request) -> list[dict]:
        group, plural = request.resource.group, request.resource.plural
        terms = parse_selector(request.params.get("labelSelector"))
        fields = dict(t.split("=", 1) for t in (request.params.get("fieldSelector") or "").split(",") if "=" in t)
        out = []
        for (g, p, ns, name), obj in sorted(self._store.items(), key=lambda kv: (kv[0][2] or "", kv[0][3])):
            if (g, p) != (group, plural) or (request.namespace is not None and ns != request.namespace):
                continue
            if not matches(obj, terms) or fields.get("metadata.name", name) != name:
                continue
            out.append(obj)
        return out

    def _list(self, request, kind_info) -> dict:
        kind, api_version, _, _ = kind_info
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": {"resourceVersion": str(self._rv)},
                "items": self._selected(request)}

    def history(self, group: str) -> list[dict]:
        """Every version of the group's objects that was stored, oldest first (what watches were sent)."""
        return [copy.deepcopy(event["object"]) for _, (g, _), event in self._log if g == group]

    # ------------------------------------------------------------------ writes
    def _emit(self, kind: str, group_plural: tuple[str, str], obj: dict) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._log.append((self._rv, group_plural, event))
        for gp, queue in self._watchers:
            if gp == group_plural:
                queue.put_nowait(event)

    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _create(self, request, kind_info) -> dict:
        kind, api_version, namespaced, has_status = kind_info
        obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if obj is None:
            raise ApiError(status=400, reason="BadRequest", message="the body must be a JSON object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(status=422, reason="Invalid", message="metadata.name: Required value")
        if namespaced:
            if meta.get("namespace") not in (None, request.namespace):
                raise ApiError(status=400, reason="BadRequest", message="the namespace of the object does not match the URL")
            meta["namespace"] = request.namespace or "default"
        key = (request.resource.group, request.resource.plural, meta.get("namespace"), meta["name"])
        if key in self._store:
            raise ApiError(status=409, reason="AlreadyExists",
                           message=f'{request.resource.plural} "{meta["name"]}" already exists',
                           details={"name": meta["name"], "kind": request.resource.plural})
        obj["apiVersion"], obj["kind"] = api_version, kind
        secret_string_data(obj)
        if has_status:
            obj.pop("status", None)  # the status subresource: create ignores status
        meta.update(uid=str(uuid.uuid4()), resourceVersion=self._bump(), creationTimestamp=now(), generation=1)
        self._store[key] = obj
        self._emit("ADDED", key[:2], obj)
        return obj

    def _write(self, key: Key, new: dict, subresource: str | None, kind_info, precondition: str | None) -> dict:
        current = self._store[key]
        if precondition and precondition != current["metadata"]["resourceVersion"]:
            raise ApiError(status=409, reason="Conflict",
                           message="the object has been modified; please apply your changes to the latest version")
        has_status = kind_info[3]
        if subresource == "status":
            new = {**current, "status": new.get("status")} if "status" in new else dict(current)
            if new.get("status") is None:
                new.pop("status", None)
        elif has_status:
            new = {**new}
            new.pop("status", None)
            if "status" in current:
                new["status"] = current["status"]
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
            else:
                meta.pop(field, None)
        if current["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = current["metadata"]["deletionTimestamp"]
        new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
        if subresource != "status":
            for path in self._immutable.get(key[:2], ()):
                if _at(new, path) != _at(current, path):
                    raise ApiError(status=422, reason="Invalid",
                                   message=f"{current['kind']}.{'.'.join(path[:1])} \"{current['metadata']['name']}\" is "
                                           f"invalid: {'.'.join(path)}: Invalid value: field is immutable")
        secret_string_data(new)
        if new == current:
            return current  # a no-op write: no new resourceVersion, no event
        spec_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
        if spec_of(new) != spec_of(current):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = self._bump()
        self._store[key] = new
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key)
        else:
            self._emit("MODIFIED", key[:2], new)
        return new

    def _patch(self, request, kind_info) -> dict:
        key = self._key(request)
        if key not in self._store:
            raise not_found(key[0], key[1], key[3])
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        current = copy.deepcopy(self._store[key])
        if content_type == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(current, request.data)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise ApiError(status=422, reason="Invalid", message=f"the JSON patch was not applied: {e}") from None
            precondition = None
        elif isinstance(request.data, dict):  # merge, strategic-merge (approximated by merge), apply
            new = merge_patch(current, request.data)
            precondition = (request.data.get("metadata") or {}).get("resourceVersion")
        else:
            raise ApiError(status=415, reason="UnsupportedMediaType", message=f"patch type {content_type!r}")
        return self._write(key, new, request.subresource, kind_info, precondition)

    def _replace(self, request, kind_info) -> dict:
        key = self._key(request)
        if key not in self._store:
            raise not_found(key[0], key[1], key[3])
        new = copy.deepcopy(request.data)
        precondition = (new.get("metadata") or {}).get("resourceVersion")
        return self._write(key, new, request.subresource, kind_info, precondition)

    def _delete(self, request) -> dict:
        key = self._key(request)
        if key not in self._store:
            raise not_found(key[0], key[1], key[3])
        obj = self._store[key]
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = merge_patch(obj, {"metadata": {"deletionTimestamp": now(), "deletionGracePeriodSeconds": 0,
                                                     "resourceVersion": self._bump()}})
                self._store[key] = obj
                self._emit("MODIFIED", key[:2], obj)
            return obj
        self._remove(key)
        return obj

    def _remove(self, key: Key) -> None:
        """Delete, then cascade to dependents the way the garbage collector does (background)."""
        obj = self._store.pop(key)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", key[:2], obj)
        uid = obj["metadata"].get("uid")
        for dep_key, dep in list(self._store.items()):
            if dep_key in self._store and any(ref.get("uid") == uid for ref in dep["metadata"].get("ownerReferences", [])):
                if dep["metadata"].get("finalizers"):
                    if not dep["metadata"].get("deletionTimestamp"):
                        dep = merge_patch(dep, {"metadata": {"deletionTimestamp": now(), "resourceVersion": self._bump()}})
                        self._store[dep_key] = dep
                        self._emit("MODIFIED", dep_key[:2], dep)
                else:
                    self._remove(dep_key)

    # ------------------------------------------------------------------ watch
    async def _watch(self, request, kind_info):
        group_plural = (request.resource.group, request.resource.plural)
        since = request.params.get("resourceVersion")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        terms = parse_selector(request.params.get("labelSelector"))
        queue: asyncio.Queue = asyncio.Queue()
        # snapshot and subscription happen with no await in between: no event is lost or doubled
        if since in (None, "", "0"):
            initial = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in self._selected(request)]
        else:
            initial = [e for rv, gp, e in self._log if gp == group_plural and rv > int(since)]
        entry = (group_plural, queue)
        self._watchers.append(entry)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None

        def wanted(event: dict) -> bool:
            meta = event["object"]["metadata"]
            return (request.namespace in (None, meta.get("namespace")) and request.name in (None, meta["name"])
                    and matches(event["object"], terms))

        try:
            for event in initial:
                if wanted(event):
                    await response.write(json.dumps(event).encode() + b"\n")
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if wanted(event):
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(entry)
        return response


class RunningApiServer:
    """The API server on 127.0.0.1 in a thread of its own, with a kubeconfig at `kubeconfig`."""

    def __init__(self, workdir: Path, crds: list[dict] = (), extra: list[tuple[str, str, str]] = (),
                 immutable: dict[tuple[str, str], list[tuple[str, ...]]] | None = None):
        """extra: (apiVersion, plural, kind) of other kinds to serve; immutable: (apiVersion, plural) -> the
        paths of those a write may not change."""
        self.api = ApiServer()
        self.api.declare_core()
        for crd in crds:
            self.api.declare_crd(crd)
        for api_version, plural, kind in extra:
            self.api.declare(api_version, plural, kind)
        for (api_version, plural), paths in (immutable or {}).items():
            self.api.declare_immutable(api_version, plural, paths)
        self.kubeconfig = Path(workdir) / "kubeconfig"
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="apiserver", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        async def serve():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with self.api, Server(self.api, host="127.0.0.1") as server:
                self.url = f"http://127.0.0.1:{server.port}"
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(serve())
        except BaseException as e:  # surfaced by __enter__
            self._error = e
            self._ready.set()

    def __enter__(self) -> "RunningApiServer":
        self._thread.start()
        self._ready.wait(30)
        if self._error or not self.url:
            raise RuntimeError(f"the API server did not start: {self._error!r}")
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test", "namespace": "default"}}],
        }))
        return self

    def __exit__(self, *exc) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
