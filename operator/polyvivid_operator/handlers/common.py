"""What every kind's handlers share: one reconcile at a time per resource, InvalidSpec handling, the
status write (phase, Ready condition, observedGeneration), Events on phase transitions, metrics.

Reconciling is level-based: each kind's `reconcile(body, ctx)` reads the resource, its
dependencies and its children's status as they are now, applies the children it should have, and
returns the status to show. Watch events (of the resource and of its children) and a timer call it;
running it twice changes nothing (`Kube.apply` patches only differences, the status is written only
when it differs), so restarts and duplicate events create no duplicates.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import kopf
from polyvivid.api.common import API_VERSION, GROUP, VERSION

from .. import metrics
from ..children.common import MANAGED_BY
from ..conditions import set_condition
from ..config import SYNC_INTERVAL_S, OperatorConfig
from ..kube import ApiError, Kube, contains
from ..validation import InvalidSpec, checked_spec

READY = "Ready"
WARNING_PHASES = {"Failed", "Invalid"}


@dataclass
class Result:
    phase: str
    ready: bool
    reason: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)  # more status fields (children, progress, ...)


@dataclass
class Context:
    kube: Kube
    config: OperatorConfig
    logger: Any


def secret_forbidden(what: str, namespace: str, name: str) -> InvalidSpec:
    """A 403 on a Secret the spec names: the operator's RBAC (the chart's rbac.secretNamespaces) does not let
    it read Secrets in that namespace; said in the status rather than retried as an error."""
    return InvalidSpec(f"{what}: the operator may not read Secret {name!r} in namespace {namespace!r} "
                       "(403 Forbidden): its RBAC grants Secrets only in the namespaces of the chart's "
                       "rbac.secretNamespaces; run the resource there, or add the namespace")


async def require_secret(ctx: Context, namespace: str, name: str, what: str) -> None:
    try:
        found = await ctx.kube.get("v1", "Secret", namespace, name)
    except ApiError as e:
        if e.status == 403:
            raise secret_forbidden(what, namespace, name) from None
        raise
    if found is None:
        raise InvalidSpec(f"{what}: Secret {name!r} not found in namespace {namespace!r}")


async def spec_for(body: dict, ctx: Context):
    """The checked spec (validation.checked_spec), and its storage Secret exists."""
    spec = checked_spec(body, ctx.config)
    if spec.storage.secret_ref:
        await require_secret(ctx, body["metadata"]["namespace"], spec.storage.secret_ref.name,
                             "spec.storage.secretRef")
    return spec


async def apply_children(ctx: Context, children: list[dict]) -> dict[str, str]:
    """Apply in order (ConfigMaps before the jobs that mount them); kind -> name of each child."""
    for child in children:
        outcome = await ctx.kube.apply(child)
        if outcome != "unchanged":
            ctx.logger.info(f"{child['kind']} {child['metadata']['name']} {outcome}")
    return {child["kind"]: child["metadata"]["name"] for child in children}


async def reconcile_resource(kind: str, namespace: str, name: str,
                             reconcile: Callable[[dict, Context], Awaitable[Result]],
                             memo: kopf.Memo, logger) -> tuple[dict, Result] | None:
    """Reconcile one resource (fresh from the API server) and write its status: (the status it had
    before, the result), or None if it is gone."""
    ctx = Context(memo.kube, memo.config, logger)
    async with memo.locks.setdefault((kind, namespace, name), asyncio.Lock()):
        body = await ctx.kube.get(API_VERSION, kind, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        started = time.perf_counter()
        try:
            result = await reconcile(body, ctx)
            outcome = "success"
        except InvalidSpec as e:
            result, outcome = Result("Invalid", False, "InvalidSpec", str(e)), "invalid"
        except ApiError:
            metrics.RECONCILES.labels(kind, "error").inc()
            raise  # kopf logs it; the next event or timer tick tries again
        await write_status(ctx, body, result)
        metrics.RECONCILES.labels(kind, outcome).inc()
        metrics.RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
        metrics.set_phase(kind, namespace, name, result.phase)
        return body.get("status") or {}, result


async def write_status(ctx: Context, body: dict, result: Result) -> None:
    old = body.get("status") or {}
    generation = body["metadata"].get("generation")
    conditions = set_condition(old.get("conditions", []), READY, result.ready, result.reason, result.message,
                               generation)
    status = {"phase": result.phase, "observedGeneration": generation, "conditions": conditions, **result.fields}
    if contains(old, status):
        return
    meta = body["metadata"]
    await ctx.kube.merge_patch(body["apiVersion"], body["kind"], meta["namespace"], meta["name"], {"status": status},
                               sub="status")
    if old.get("phase") != result.phase:
        kopf.event(body, type="Warning" if result.phase in WARNING_PHASES else "Normal", reason=result.reason,
                   message=f"{old.get('phase') or 'New'} -> {result.phase}: {result.message}")


def owner_name(child: dict, kind: str) -> str | None:
    for ref in child["metadata"].get("ownerReferences", []):
        if ref.get("kind") == kind and ref.get("apiVersion") == API_VERSION:
            return ref["name"]
    return None


def phase_of(obj: dict | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


async def reconcile_referrers(kind: str, namespace: str, field: tuple[str, str], name: str,
                              reconcile_named: Callable[[str, str, kopf.Memo, Any], Awaitable[None]],
                              memo: kopf.Memo, logger) -> None:
    """Reconcile the resources of `kind` whose spec.FIELD[0].FIELD[1] names `name` (they depend on it)."""
    for obj in await memo.kube.list(API_VERSION, kind, namespace):
        if ((obj.get("spec") or {}).get(field[0]) or {}).get(field[1]) == name:
            await reconcile_named(namespace, obj["metadata"]["name"], memo, logger)


def declare_handlers(kind: str, plural: str, child: tuple[str, str, str],
                     reconcile_named: Callable[[str, str, kopf.Memo, Any], Awaitable[None]]) -> None:
    """The kopf handlers of one kind: its watch events and a timer reconcile it (the timer catches what
    no event announces: progress.json, a dependency); its children's events reconcile their owner."""

    @kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-events")
    async def on_event(type, body, memo, logger, **_):
        meta = body["metadata"]
        if type == "DELETED":
            metrics.set_phase(kind, meta["namespace"], meta["name"], None)
            return
        await reconcile_named(meta["namespace"], meta["name"], memo, logger)

    @kopf.timer(GROUP, VERSION, plural, id=f"{plural}-sync", interval=SYNC_INTERVAL_S, backoff=SYNC_INTERVAL_S)
    async def sync(body, memo, logger, **_):
        await reconcile_named(body["metadata"]["namespace"], body["metadata"]["name"], memo, logger)

    @kopf.on.event(*child, labels={"app.kubernetes.io/managed-by": MANAGED_BY}, id=f"{child[2]}-events")
    async def on_child_event(type, body, memo, logger, **_):
        owner = owner_name(body, kind)
        if owner:
            await reconcile_named(body["metadata"]["namespace"], owner, memo, logger)
