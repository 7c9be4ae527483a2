"""CurationJob -> a RayJob (and its spec ConfigMap); the status follows the RayJob, and once it
succeeded shows OUTPUT/summary.json's counts. Trainings waiting for it follow its phase."""

from __future__ import annotations

from polyvivid.api.curation import CurationSpec

from ..artifacts import read_json
from ..children.common import effective_storage
from ..children.rayjob import render_configmap, render_rayjob
from .common import Context, Result, apply_children, declare_handlers, reconcile_referrers, reconcile_resource, spec_for

KIND = "CurationJob"
JOB_API = "ray.io/v1"


def rayjob_phase(job: dict | None) -> tuple[str, str]:
    """(phase, reason) from KubeRay's jobStatus / jobDeploymentStatus."""
    status = (job or {}).get("status") or {}
    job_status, deployment = status.get("jobStatus", ""), status.get("jobDeploymentStatus", "")
    if job_status == "SUCCEEDED":
        return "Succeeded", "JobSucceeded"
    if job_status in ("FAILED", "STOPPED") or deployment == "Failed":
        return "Failed", status.get("reason") or f"Job{(job_status or deployment).capitalize()}"
    if job_status == "RUNNING":
        return "Running", "JobRunning"
    return "Pending", f"Cluster{deployment}" if deployment else "JobCreated"


async def reconcile(body: dict, ctx: Context) -> Result:
    spec: CurationSpec = await spec_for(body, ctx)
    ns = body["metadata"]["namespace"]
    names = await apply_children(ctx, [render_configmap(body),
                                       render_rayjob(body, ctx.config.image, ctx.config.s3_endpoint)])
    job = await ctx.kube.get(JOB_API, "RayJob", ns, names["RayJob"])
    phase, reason = rayjob_phase(job)
    fields = {"rayJob": names["RayJob"], "configMap": names["ConfigMap"], "output": spec.output}
    message = {"Pending": "RayJob created, cluster starting", "Running": "curating",
               "Succeeded": f"dataset written to {spec.output}",
               "Failed": ((job or {}).get("status") or {}).get("message") or "the RayJob failed"}[phase]
    if phase == "Succeeded":
        summary, why = await read_json(ctx.kube, ns, effective_storage(spec.storage, ctx.config.s3_endpoint),
                                       spec.output, "summary.json")
        if summary:
            fields.update(videos=summary.get("videos"), clipsWritten=summary.get("clips_written"),
                          rejected=len(summary.get("rejects", [])),
                          stages=summary.get("stages") or {})
        elif why:
            message += f" ({why})"
    return Result(phase, phase == "Succeeded", reason, message, fields)


async def reconcile_named(namespace: str, name: str, memo, logger) -> None:
    done = await reconcile_resource(KIND, namespace, name, reconcile, memo, logger)
    if done is not None and done[0].get("phase") != done[1].phase:
        from . import training  # trainings waiting for this dataset follow it

        await reconcile_referrers(training.KIND, namespace, ("dataset", "curationJob"), name,
                                  training.reconcile_named, memo, logger)


declare_handlers(KIND, "curationjobs", ("ray.io", "v1", "rayjobs"), reconcile_named)
