"""CurationJob -> a RayJob (and its spec ConfigMap); the status follows the RayJob, and once it
succeeded shows OUTPUT/summary.json's counts. Trainings waiting for it follow its phase."""

from __future__ import annotations

from polyvivid.api.curation import CurationSpec
from polyvivid.api.status import CurationStatus, CurationSummary

from ..artifacts import read_json
from ..children.common import effective_storage
from ..kinds import CURATION
from .common import (Context, Result, apply_children, declare_handlers, finished_at, finished_without_children, held,
                     resolve, spec_for, workload_output)


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
    resolved = await resolve(ctx, body, CURATION)
    children = CURATION.build_children(body, resolved, ctx.config)
    done = await finished_without_children(ctx, body, spec, CURATION, children)
    if done is not None:
        return done
    names = await apply_children(ctx, children)
    job = await ctx.kube.get(*CURATION.workload(body), ns, names["RayJob"])
    phase, reason = rayjob_phase(job)
    message = {"Pending": "RayJob created, cluster starting", "Running": "curating",
               "Succeeded": f"dataset written to {spec.output}",
               "Failed": ((job or {}).get("status") or {}).get("message") or "the RayJob failed"}[phase]
    phase, reason, message = held(spec, job, phase, reason, message, "the RayJob's cluster is deleted; resumed, the "
                                  "curation skips the clips already written")
    summary = CurationSummary()
    if phase == "Succeeded":
        document, why = await read_json(ctx.kube, ns, effective_storage(spec.storage, ctx.config.s3_endpoint),
                                        spec.output, "summary.json")
        if document:
            summary, why = workload_output(CurationSummary, {
                "videos": document.get("videos"), "clips_written": document.get("clips_written"),
                "rejected": len(document.get("rejects", [])), "stages": document.get("stages") or {}}, "summary.json")
        if why:
            message += f" ({why})"
    status = CurationStatus(phase=phase, ray_job=names["RayJob"], config_map=names["ConfigMap"], output=spec.output,
                            finished_at=finished_at(body, phase), **summary.model_dump(exclude_none=True))
    return Result(status, phase == "Succeeded", reason, message)


declare_handlers(CURATION, reconcile)
