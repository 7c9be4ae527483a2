"""What every kind's handlers share: one reconcile at a time per resource, InvalidSpec handling, the
resources a spec names (kinds.Dependency: waiting for them, and reconciling their dependents when
they change), the status write (the kind's status model with its Ready condition and
observedGeneration), Events on phase transitions, metrics.

Reconciling is level-based: each kind's `reconcile(body, ctx)` reads the resource, its
dependencies and its children's status as they are now, applies the children it should have, and
returns the status to show. Watch events (of the resource and of its children) and a timer call it;
running it twice changes nothing (`Kube.apply` patches only differences, the status is written only
when it differs), so restarts and duplicate events create no duplicates.
"""

from __future__ import annotations

import asyncio
import time
import typing
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, TypeVar

import kopf
from polyvivid.api.common import API_VERSION, GROUP, VERSION, ApiModel, format_validation_error
from polyvivid.api.status import Condition, ResourceStatus
from pydantic import ValidationError

from .. import metrics
from ..children.common import (IMMUTABLE_PATHS, KUEUE_PRIORITY_LABEL, KUEUE_QUEUE_LABEL, MANAGED_BY, SUSPEND_PATHS,
                               kueue_owned_paths)
from ..conditions import now, set_condition
from ..config import SYNC_INTERVAL_S, OperatorConfig
from ..kinds import KINDS, KindDescriptor, Output, dependents, phase_of
from ..kube import PLURALS, ApiError, Kube, contains, value_at
from ..validation import InvalidSpec, checked_spec, require_s3_uri

READY = "Ready"
WARNING_PHASES = {"Failed", "Invalid"}


@dataclass
class Result:
    status: ResourceStatus  # the kind's status model; write_status adds the Ready condition and observedGeneration
    ready: bool
    reason: str
    message: str

    @property
    def phase(self) -> str:
        return self.status.phase


class Waiting(Exception):
    """A resource the spec names has not produced its output yet: phase Waiting, Ready=False with `reason`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Context:
    kube: Kube
    config: OperatorConfig
    logger: Any


Reconcile = Callable[[dict, Context], Awaitable[Result]]
RECONCILERS: dict[str, Reconcile] = {}  # kind -> its reconcile(body, ctx), registered by declare_handlers
Part = TypeVar("Part", bound=ApiModel)


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


async def resolve(ctx: Context, body: dict, kind: KindDescriptor) -> dict[str, Output]:
    """The outputs of the resources the spec names, by their kind: InvalidSpec when one does not exist,
    Waiting until it has succeeded."""
    ns = body["metadata"]["namespace"]
    resolved = {}
    for dep in kind.dependencies:
        name = dep.target(body)
        if name is None:
            continue
        obj = await ctx.kube.get(API_VERSION, dep.kind, ns, name)
        if obj is None:
            raise InvalidSpec(f"{dep.path}: {dep.kind} {name!r} not found in namespace {ns!r}")
        output = dep.produced(obj)
        if output is None:
            raise Waiting(*dep.waiting(name, phase_of(obj)))
        # another resource's spec, or what its workload wrote, chose this URI: checked like one in this spec
        require_s3_uri(f"{dep.path} ({dep.kind} {name} {dep.source})", output.uri)
        resolved[dep.kind] = output
    return resolved


def workload_output(part: type[Part], values: dict[str, Any], source: str) -> tuple[Part, str]:
    """Status fields copied from a file the workload wrote (`source`), as their part of the status model;
    none, and why, when they do not fit it: the API server would refuse the whole status."""
    try:
        return part(**{k: v for k, v in values.items() if v is not None}), ""
    except ValidationError as e:
        return part(), f"{source} not usable: {format_validation_error(e)}"


def held(spec, child: dict | None, phase: str, reason: str, message: str, stopped: str) -> tuple[str, str, str]:
    """(phase, reason, message) with spec.suspend and Kueue's queue taken into account: a suspended resource is
    Suspended (unless it already ended); a queued child that Kueue has not started says so.
    stopped: what suspending does to this kind's workload, for the message."""
    if phase in ("Succeeded", "Failed"):
        return phase, reason, message
    if spec.suspend:
        return "Suspended", "Suspended", f"suspended (spec.suspend): {stopped}; set spec.suspend: false to resume"
    path = SUSPEND_PATHS.get((child or {}).get("kind"))
    if spec.scheduling.queue and path and value_at(child, path) is True:
        return phase, "QueuedInKueue", (f"queued in Kueue (LocalQueue {spec.scheduling.queue}): waiting for "
                                        "admission, which starts it")
    return phase, reason, message


FINISHED = ("Succeeded", "Failed")


def finished_at(body: dict, phase: str) -> str | None:
    """When the resource first ended (kept from its status), now if it just did, None while it runs."""
    if phase not in FINISHED:
        return None
    old = body.get("status") or {}
    return old.get("finishedAt") if old.get("phase") in FINISHED and old.get("finishedAt") else now()


async def finished_without_children(ctx: Context, body: dict, spec, kind, children: list[dict]) -> Result | None:
    """For a resource that ended (its status says so, for this generation): its status kept as it is when
    its children are gone (a finished run is not started again), after deleting them once
    spec.ttlSecondsAfterFinished has passed. None: reconcile as usual."""
    old = body.get("status") or {}
    if old.get("phase") not in FINISHED or old.get("observedGeneration") != body["metadata"].get("generation"):
        return None
    job, ns = children[-1], body["metadata"]["namespace"]
    ttl, ended = spec.ttl_seconds_after_finished, old.get("finishedAt")
    expired = ttl is not None and ended is not None and \
        (datetime.now(timezone.utc) - datetime.fromisoformat(ended.replace("Z", "+00:00"))).total_seconds() >= ttl
    present = await ctx.kube.get(job["apiVersion"], job["kind"], ns, job["metadata"]["name"])
    if present is not None and not expired:
        return None
    for child in reversed(children):
        await ctx.kube.delete(child["apiVersion"], child["kind"], ns, child["metadata"]["name"])
    why = f"after ttlSecondsAfterFinished ({ttl} s)" if expired else "by someone"
    ready = next((c for c in old.get("conditions", []) if c.get("type") == READY), {})
    status = kind.status.model_validate({k: v for k, v in old.items() if k not in ("conditions", "observedGeneration")})
    return Result(status.model_copy(update={"children_deleted": True}), ready.get("status") == "True",
                  "ChildrenDeleted", f"{old['phase']} at {ended}; its {job['kind']} and ConfigMap were deleted {why}, "
                  "and a finished run is not started again (change the spec to run it again)")


async def apply_children(ctx: Context, children: list[dict]) -> dict[str, str]:
    """Apply in order (ConfigMaps before the jobs that mount them); kind -> name of each child."""
    for child in children:
        outcome = await ctx.kube.apply(child, keep=kueue_owned_paths(child),
                                       own_labels=(KUEUE_QUEUE_LABEL, KUEUE_PRIORITY_LABEL),
                                       immutable=IMMUTABLE_PATHS.get(child["kind"], []))
        if outcome != "unchanged":
            ctx.logger.info(f"{child['kind']} {child['metadata']['name']} {outcome}")
    return {child["kind"]: child["metadata"]["name"] for child in children}


async def reconcile_named(kind: str, namespace: str, name: str, memo: kopf.Memo, logger) -> None:
    """Reconcile one resource, then the resources whose spec names it if what they read of it changed:
    its phase (their waiting message names it) or its output."""
    done = await reconcile_resource(KINDS[kind], namespace, name, memo, logger)
    if done is None:
        return
    before, status = done
    after = {**before, "status": {**(before.get("status") or {}), **status}}  # as the merge patch leaves it
    for referrer, dep in dependents(kind):
        if phase_of(before) != phase_of(after) or dep.produced(before) != dep.produced(after):
            for obj in await memo.kube.list(API_VERSION, referrer.kind, namespace):
                if dep.target(obj) == name:
                    await reconcile_named(referrer.kind, namespace, obj["metadata"]["name"], memo, logger)


async def reconcile_resource(kind: KindDescriptor, namespace: str, name: str, memo: kopf.Memo,
                             logger) -> tuple[dict, dict] | None:
    """Reconcile one resource (fresh from the API server) and write its status: (the resource as it was
    read, its new status), or None if it is gone."""
    ctx = Context(memo.kube, memo.config, logger)
    async with memo.locks.setdefault((kind.kind, namespace, name), asyncio.Lock()):
        body = await ctx.kube.get(API_VERSION, kind.kind, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        started = time.perf_counter()
        try:
            result, outcome = await RECONCILERS[kind.kind](body, ctx), "success"
        except Waiting as e:
            result, outcome = Result(kind.status(phase="Waiting"), False, e.reason, str(e)), "success"
        except InvalidSpec as e:
            result, outcome = Result(kind.status(phase="Invalid"), False, "InvalidSpec", str(e)), "invalid"
        except ApiError:
            metrics.RECONCILES.labels(kind.kind, "error").inc()
            raise  # kopf logs it; the next event or timer tick tries again
        status = await write_status(ctx, body, result)
        metrics.RECONCILES.labels(kind.kind, outcome).inc()
        metrics.RECONCILE_SECONDS.labels(kind.kind).observe(time.perf_counter() - started)
        metrics.set_phase(kind.kind, namespace, name, result.phase)
        return body, status


def phases_of(status_model: type[ResourceStatus]) -> tuple[str, ...]:
    """The phases a kind's status model allows (its `phase` Literal), in order."""
    return typing.get_args(status_model.model_fields["phase"].annotation)


async def write_status(ctx: Context, body: dict, result: Result) -> dict:
    """The result as the resource's status, written unless the resource already has it; returns it."""
    old = body.get("status") or {}
    generation = body["metadata"].get("generation")
    conditions = set_condition([Condition.model_validate(c) for c in old.get("conditions", [])], READY,
                               result.ready, result.reason, result.message, generation)
    for phase in phases_of(type(result.status)):  # one condition a phase, True for the current one
        if phase != READY:
            now_in = phase == result.phase
            conditions = set_condition(conditions, phase, now_in, result.reason if now_in else f"Phase{result.phase}",
                                       result.message if now_in else "", generation)
    status = result.status.model_copy(update={"observed_generation": generation, "conditions": conditions})
    status = status.model_dump(by_alias=True, exclude_none=True)
    stale = {k: None for k in old if k not in status}  # fields the new status lacks go (a merge patch keeps them)
    if contains(old, status) and not stale:
        return status
    meta = body["metadata"]
    await ctx.kube.merge_patch(body["apiVersion"], body["kind"], meta["namespace"], meta["name"],
                               {"status": {**stale, **status}}, sub="status")
    if old.get("phase") != result.phase:
        kopf.event(body, type="Warning" if result.phase in WARNING_PHASES else "Normal", reason=result.reason,
                   message=f"{old.get('phase') or 'New'} -> {result.phase}: {result.message}")
    return status


def owner_name(child: dict, kind: str) -> str | None:
    for ref in child["metadata"].get("ownerReferences", []):
        if ref.get("kind") == kind and ref.get("apiVersion") == API_VERSION:
            return ref["name"]
    return None


def declare_handlers(kind: KindDescriptor, reconcile: Reconcile) -> None:
    """The kopf handlers of one kind, reconciling it with `reconcile`: its watch events and a timer (which
    catches what no event announces: progress.json, a dependency); its workload child's events reconcile
    their owner."""
    RECONCILERS[kind.kind] = reconcile
    plural = kind.plural

    @kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-events")
    async def on_event(type, body, memo, logger, **_):
        meta = body["metadata"]
        if type == "DELETED":
            metrics.set_phase(kind.kind, meta["namespace"], meta["name"], None)
            return
        await reconcile_named(kind.kind, meta["namespace"], meta["name"], memo, logger)

    @kopf.timer(GROUP, VERSION, plural, id=f"{plural}-sync", interval=SYNC_INTERVAL_S, backoff=SYNC_INTERVAL_S)
    async def sync(body, memo, logger, **_):
        await reconcile_named(kind.kind, body["metadata"]["namespace"], body["metadata"]["name"], memo, logger)

    async def on_child_event(type, body, memo, logger, **_):
        owner = owner_name(body, kind.kind)
        if owner:
            await reconcile_named(kind.kind, body["metadata"]["namespace"], owner, memo, logger)

    for child_api, child_kind in kind.workloads:  # a cluster without a kind's CRD: kopf watches the others
        child = (*child_api.split("/"), PLURALS[child_kind])
        kopf.on.event(*child, labels={"app.kubernetes.io/managed-by": MANAGED_BY}, id=f"{child[2]}-events")(
            on_child_event)
