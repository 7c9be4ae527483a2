"""PolyVividTraining -> a PyTorchJob (and its spec ConfigMap); the status follows the PyTorchJob and
OUTPUT/progress.json. A dataset that names a CurationJob waits (phase Waiting) until it succeeded."""

from __future__ import annotations

from polyvivid.api.training import TrainingSpec
from polyvivid.api.common import API_VERSION

from .. import metrics
from ..artifacts import read_json
from ..children.common import effective_storage
from ..children.pytorchjob import render_configmap, render_pytorchjob
from ..validation import InvalidSpec, require_s3_uri
from .common import (Context, Result, apply_children, declare_handlers, phase_of, reconcile_referrers,
                     reconcile_resource, spec_for)

KIND = "PolyVividTraining"
JOB_API = "kubeflow.org/v1"
# status field <- progress.json key (polyvivid/train/progress.py)
PROGRESS_FIELDS = (("stage", "stage"), ("step", "step"), ("loss", "loss"), ("latestCheckpoint", "last_checkpoint"),
                   ("progressUpdatedAt", "updated_at"), ("evaluation", "evaluation"))


def job_phase(job: dict | None) -> tuple[str, str, str]:
    """(phase, reason, since) from the PyTorchJob's latest true condition (training-operator v1)."""
    conditions = [c for c in ((job or {}).get("status") or {}).get("conditions", []) if c.get("status") == "True"]
    if not conditions:
        return "Pending", "JobCreated", ""
    latest = conditions[-1]
    phase = {"Created": "Pending", "Running": "Running", "Restarting": "Running", "Succeeded": "Succeeded",
             "Failed": "Failed", "Suspended": "Pending"}.get(latest["type"], "Pending")
    return phase, latest.get("reason") or f"Job{latest['type']}", latest.get("lastTransitionTime", "")


async def reconcile(body: dict, ctx: Context) -> Result:
    spec: TrainingSpec = await spec_for(body, ctx)
    ns = body["metadata"]["namespace"]
    dataset_uri = None
    if spec.dataset.curation_job:
        name = spec.dataset.curation_job
        curation = await ctx.kube.get(API_VERSION, "CurationJob", ns, name)
        if curation is None:
            raise InvalidSpec(f"spec.dataset.curationJob: CurationJob {name!r} not found in namespace {ns!r}")
        phase = phase_of(curation)
        if phase in ("Failed", "Invalid"):
            return Result("Waiting", False, "CurationFailed",
                          f"CurationJob {name} is {phase}; fix it or use another dataset")
        if phase != "Succeeded":
            return Result("Waiting", False, "WaitingForCuration",
                          f"waiting for CurationJob {name} (phase {phase or 'New'})")
        dataset_uri = curation["spec"]["output"]
        require_s3_uri(f"spec.dataset.curationJob (CurationJob {name} spec.output)", dataset_uri)

    desired = render_pytorchjob(body, ctx.config.image, dataset_uri, ctx.config.s3_endpoint)
    names = await apply_children(ctx, [render_configmap(body), desired])
    job = await ctx.kube.get(JOB_API, "PyTorchJob", ns, names["PyTorchJob"])
    phase, reason, since = job_phase(job)
    fields = {"pytorchJob": names["PyTorchJob"], "configMap": names["ConfigMap"],
              "dataset": dataset_uri or spec.dataset.uri, "totalSteps": spec.total_steps}
    message = {"Pending": "PyTorchJob created, pods not running yet", "Running": "training",
               "Succeeded": "training finished", "Failed": "the PyTorchJob failed (see its pods' logs)"}[phase]
    if phase != "Pending":
        progress, why = await read_json(ctx.kube, ns, effective_storage(spec.storage, ctx.config.s3_endpoint),
                                        spec.output, "progress.json")
        progress = progress or {}
        fields.update({k: progress[src] for k, src in PROGRESS_FIELDS if progress.get(src) is not None})
        metrics.set_training_step(ns, body["metadata"]["name"], progress.get("step"))
        if phase == "Running" and progress.get("status") == "evaluating":
            message = "evaluating the final weights on the test set"
        if why:
            message += f" ({why})"
        if phase == "Succeeded":
            version = progress.get("updated_at") if progress.get("status") == "succeeded" else None
            fields["finalWeights"] = {"uri": progress.get("final") or f"{spec.output.rstrip('/')}/final",
                                      "version": version or since}
    return Result(phase, phase == "Succeeded", reason, message, fields)


async def reconcile_named(namespace: str, name: str, memo, logger) -> None:
    done = await reconcile_resource(KIND, namespace, name, reconcile, memo, logger)
    if done is None:
        return
    old, result = done
    if old.get("phase") != result.phase or old.get("finalWeights") != result.fields.get("finalWeights"):
        from . import service  # services serving this training's weights follow it

        await reconcile_referrers(service.KIND, namespace, ("model", "training"), name, service.reconcile_named,
                                  memo, logger)


declare_handlers(KIND, "polyvividtrainings", ("kubeflow.org", "v1", "pytorchjobs"), reconcile_named)
