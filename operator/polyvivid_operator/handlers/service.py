"""PolyVividService -> a RayService; the status follows the RayService (endpoint, ready replicas).
A model naming a PolyVividTraining waits for it to succeed, then serves its final weights, and rolls
out again when they change (the version goes into serveConfigV2)."""

from __future__ import annotations

from polyvivid.api.service import ServiceSpec
from polyvivid.api.common import API_VERSION

from ..children.rayservice import endpoint, render_rayservice
from ..conditions import condition
from ..validation import InvalidSpec, require_s3_uri
from .common import Context, Result, apply_children, declare_handlers, phase_of, reconcile_resource, require_secret, \
    spec_for

KIND = "PolyVividService"
SERVICE_API = "ray.io/v1"


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
    model_uri = model_version = None
    if spec.model.training:
        name = spec.model.training
        training = await ctx.kube.get(API_VERSION, "PolyVividTraining", ns, name)
        if training is None:
            raise InvalidSpec(f"spec.model.training: PolyVividTraining {name!r} not found in namespace {ns!r}")
        weights = (training.get("status") or {}).get("finalWeights")
        if phase_of(training) != "Succeeded" or not weights:
            return Result("Waiting", False, "WaitingForTraining",
                          f"waiting for PolyVividTraining {name} to succeed (phase {phase_of(training) or 'New'})")
        model_uri, model_version = weights["uri"], weights.get("version")
        # the training's status comes from the progress.json its workload wrote: checked like a spec's URI
        require_s3_uri(f"spec.model.training (PolyVividTraining {name} status.finalWeights.uri)", model_uri)

    rayservice = render_rayservice(body, ctx.config.image, model_uri, model_version, ctx.config.s3_endpoint)
    names = await apply_children(ctx, [rayservice])
    rs = await ctx.kube.get(SERVICE_API, "RayService", ns, names["RayService"])
    phase, reason, endpoints = rayservice_phase(rs)
    fields = {"rayService": names["RayService"], "endpoint": endpoint(body), "readyReplicas": endpoints,
              "model": model_uri or spec.model.uri or spec.model.preset}
    if model_version:
        fields["modelVersion"] = model_version
    serving = f"serving at {fields['endpoint']}" + (" without authentication (spec.allowUnauthenticated)"
                                                   if spec.allow_unauthenticated else "")
    message = {"Ready": serving, "Deploying": "RayService deploying",
               "Failed": "the Serve application failed (see the RayService status)"}[phase]
    return Result(phase, phase == "Ready", reason, message, fields)


async def reconcile_named(namespace: str, name: str, memo, logger) -> None:
    await reconcile_resource(KIND, namespace, name, reconcile, memo, logger)


declare_handlers(KIND, "polyvividservices", ("ray.io", "v1", "rayservices"), reconcile_named)
