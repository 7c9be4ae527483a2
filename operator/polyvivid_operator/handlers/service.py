"""PolyVividService -> a RayService; the status follows the RayService (endpoint, ready replicas).
A model naming a PolyVividTraining waits for it to succeed, then serves its final weights, and rolls
out again when they change (the version goes into serveConfigV2)."""

from __future__ import annotations

from polyvivid.api.service import ServiceSpec
from polyvivid.api.status import ServiceStatus

from ..children.rayservice import endpoint
from ..conditions import condition
from ..kinds import SERVICE, TRAINED_WEIGHTS
from .common import Context, Result, apply_children, declare_handlers, held, require_secret, resolve, spec_for


def rayservice_phase(rs: dict | None) -> tuple[str, str, int]:
    """(phase, reason, ready serve endpoints) from KubeRay's status."""
    status = (rs or {}).get("status") or {}
    ready = condition(rs or {}, "Ready")
    endpoints = int(status.get("numServeEndpoints") or 0)
    if (ready and ready.get("status") == "True") or status.get("serviceStatus") == "Running":
        return "Ready", "ServeApplicationReady", endpoints
    app = ((status.get("activeServiceStatus") or {}).get("applicationStatuses") or {}).get("polyvivid") or {}
    if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
        return "Failed", f"Application{app['status'].title().replace('_', '')}", endpoints
    return "Deploying", (ready or {}).get("reason") or "RayServiceCreated", endpoints


async def reconcile(body: dict, ctx: Context) -> Result:
    spec: ServiceSpec = await spec_for(body, ctx)
    ns = body["metadata"]["namespace"]
    if spec.api_token_secret_ref:
        await require_secret(ctx, ns, spec.api_token_secret_ref.name, "spec.apiTokenSecretRef")
    resolved = await resolve(ctx, body, SERVICE)
    names = await apply_children(ctx, SERVICE.build_children(body, resolved, ctx.config))
    rs = await ctx.kube.get(*SERVICE.workload(body), ns, names["RayService"])
    phase, reason, endpoints = rayservice_phase(rs)
    weights = resolved.get(TRAINED_WEIGHTS.kind)
    model, version = (weights.uri, weights.version or None) if weights else (spec.model.uri or spec.model.preset, None)
    status = ServiceStatus(phase=phase, ray_service=names["RayService"], endpoint=endpoint(body),
                           ready_replicas=endpoints, model=model, model_version=version)
    serving = f"serving at {status.endpoint}" + (" without authentication (spec.allowUnauthenticated)"
                                                if spec.allow_unauthenticated else "")
    message = {"Ready": serving, "Deploying": "RayService deploying",
               "Failed": "the Serve application failed (see the RayService status)"}[phase]
    phase, reason, message = held(spec, rs, phase, reason, message, "the RayService's cluster is deleted; the job "
                                  "records stay in the store")
    return Result(status, phase == "Ready", reason, message)


declare_handlers(SERVICE, reconcile)
