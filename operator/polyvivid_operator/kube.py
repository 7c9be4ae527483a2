"""The operator's Kubernetes API client: the few calls reconciling needs, over aiohttp.

Credentials come from kopf's own login functions (in-cluster service account, else the kubeconfig
in $KUBECONFIG), so the operator and kopf always talk to the same cluster as the same user.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
from typing import Any

import aiohttp
import kopf
from polyvivid.api.crds import RESOURCES

# our kinds' plurals are the CRDs' (polyvivid.api.crds); the others are the ones the operator creates or reads
PLURALS = {**{kind: resource.plural for kind, resource in RESOURCES.items()}, "TrainJob": "trainjobs",
           "PyTorchJob": "pytorchjobs",
           "RayJob": "rayjobs", "RayService": "rayservices", "ConfigMap": "configmaps", "Secret": "secrets"}
USER_AGENT = "polyvivid-operator"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason = status, reason


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=info.ca_path or None,
                                     cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data)
    if info.certificate_path and info.private_key_path:
        ctx.load_cert_chain(info.certificate_path, info.private_key_path)
    return ctx


def connection_info(settings: kopf.OperatorSettings, logger) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else $KUBECONFIG: what both this client and kopf (handlers.lifecycle's
    login handler) use, so kopf does not pick whichever API client library happens to be installed."""
    return (kopf.login_with_service_account(settings=settings, logger=logger)
            or kopf.login_with_kubeconfig(settings=settings, logger=logger))


class Kube:
    def __init__(self, info: kopf.ConnectionInfo):
        self.server = info.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}  # named in the cluster's audit log
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self.session = aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=_ssl_context(info)),
                                             timeout=aiohttp.ClientTimeout(total=30))

    @classmethod
    def from_environment(cls, settings: kopf.OperatorSettings, logger) -> "Kube":
        info = connection_info(settings, logger)
        if info is None:
            raise kopf.PermanentError("no Kubernetes credentials: neither in-cluster nor $KUBECONFIG")
        return cls(info)

    async def close(self) -> None:
        await self.session.close()

    def path(self, api_version: str, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        path = f"{self.server}{prefix}/namespaces/{namespace}/{PLURALS[kind]}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def _call(self, method: str, url: str, body: Any = None,
                    content_type: str = "application/json") -> dict | None:
        data = None if body is None else json.dumps(body).encode()
        async with self.session.request(method, url, data=data, headers={"Content-Type": content_type}) as r:
            payload = await r.json(content_type=None)
            if r.status == 404 and method == "GET":
                return None
            if r.status >= 400:
                raise ApiError(r.status, (payload or {}).get("reason", ""), (payload or {}).get("message", ""))
            return payload

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        return await self._call("GET", self.path(api_version, kind, namespace, name))

    async def list(self, api_version: str, kind: str, namespace: str) -> list[dict]:
        return (await self._call("GET", self.path(api_version, kind, namespace)) or {}).get("items", [])

    async def create(self, obj: dict) -> dict:
        return await self._call("POST", self.path(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"]), obj)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete in the background (its dependents by the garbage collector); gone already is fine."""
        try:
            await self._call("DELETE", self.path(api_version, kind, namespace, name),
                             {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except ApiError as e:
            if e.status != 404:
                raise

    async def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict,
                          sub: str | None = None) -> dict:
        return await self._call("PATCH", self.path(api_version, kind, namespace, name, sub), patch,
                                "application/merge-patch+json")

    async def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = await self.get("v1", "Secret", namespace, name)
        if secret is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    async def apply(self, desired: dict, keep: list[tuple[str, ...]] = (), own_labels: tuple[str, ...] = (),
                    immutable: list[tuple[str, ...]] = ()) -> str:
        """Create the child, or patch it where it differs from `desired`: "created", "updated", "unchanged", or
        "replacing" when it differs at an immutable path: it is deleted, and a later apply creates it anew.
        keep: paths another controller owns once the child exists (Kueue's suspend): the current value stays.
        own_labels: labels only `desired` decides: one the child has and `desired` lacks is removed."""
        meta = desired["metadata"]
        current = await self.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
        if current is not None and current["metadata"].get("deletionTimestamp"):
            return "replacing"  # still going: created again once it is gone
        if current is not None and any(not contains(value_at(current, p), value_at(desired, p)) for p in immutable):
            await self.delete(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
            return "replacing"
        if current is not None and keep:
            desired = _with_current(desired, current, keep)
        if current is None:
            try:
                await self.create(desired)
                return "created"
            except ApiError as e:
                if e.status != 409:  # someone (an earlier run of the operator) created it meanwhile
                    raise
                current = await self.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
        patch = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata", "status")
                 if not contains(current.get(k), v)}
        meta_patch = {k: meta[k] for k in ("labels", "ownerReferences")
                      if not contains(current["metadata"].get(k), meta[k])}
        dropped = {k: None for k in own_labels if k in (current["metadata"].get("labels") or {})
                   and k not in meta.get("labels", {})}
        if dropped:  # a merge patch removes a key given as null
            meta_patch["labels"] = {**meta.get("labels", {}), **dropped}
        if not patch and not meta_patch:
            return "unchanged"
        if meta_patch:
            patch["metadata"] = meta_patch
        await self.merge_patch(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"], patch)
        return "updated"


def value_at(obj: Any, path: tuple[str, ...]) -> Any:
    """obj[path[0]][path[1]]..., None where a step is missing."""
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _with_current(desired: dict, current: dict, paths: list[tuple[str, ...]]) -> dict:
    """`desired` with the value `current` has at each path (absent there: absent here)."""
    desired = copy.deepcopy(desired)
    for path in paths:
        node, have = desired, value_at(current, path[:-1])
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if isinstance(have, dict) and path[-1] in have:
            node[path[-1]] = have[path[-1]]
        else:
            node.pop(path[-1], None)
    return desired


def contains(current: Any, desired: Any) -> bool:
    """Whether `current` already says everything `desired` says (the server may add defaults to maps)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(contains(current.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(current, list) and len(current) == len(desired) and all(map(contains, current, desired))
    return current == desired
