"""PolyVividTraining -> a PyTorchJob (and its spec ConfigMap); the status follows the PyTorchJob and
OUTPUT/progress.json. A dataset that names a CurationJob waits (phase Waiting) until it succeeded."""

from __future__ import annotations

from polyvivid.api import PolyVividTraining
from polyvivid.api.common import API_VERSION

from ..artifacts import read_json
from ..children.pytorchjob import render_configmap, render_pytorchjob
from ..validation import InvalidSpec, check_training, validated
from .common import (Context, Result, apply_children, declare_handlers, phase_of, reconcile_resource,
                     require_secret)

KIND = "PolyVividTraining"
JOB_API = "kubeflow.org/v1"


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
    spec = validated(PolyVividTraining, body)
    ns = body["metadata"]["namespace"]
    if spec.storage.secret_ref:
        await require_secret(ctx, ns, spec.storage.secret_ref.name, "spec.storage.secretRef")
    check_training(spec, ctx.config.max_gpus_per_node)
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

    names = await apply_children(ctx, [render_configmap(body), render_pytorchjob(body, ctx.config.image, dataset_uri)])
    job = await ctx.kube.get(JOB_API, "PyTorchJob", ns, names["PyTorchJob"])
    phase, reason, since = job_phase(job)
    fields = {"pytorchJob": names["PyTorchJob"], "configMap": names["ConfigMap"],
              "dataset": dataset_uri or spec.dataset.uri, "totalSteps": spec.total_steps}
    message = {"Pending": "PyTorchJob created, pods not running yet", "Running": "training",
               "Succeeded": "training finished", "Failed": "the PyTorchJob failed (see its pods' logs)"}[phase]
    if phase != "Pending":
        progress, why = await read_json(ctx.kube, ns, spec.storage, spec.output, "progress.json")
        if progress:
            fields.update({k: progress[src] for k, src in (("stage", "stage"), ("step", "step"), ("loss", "loss"),
                                                           ("latestCheckpoint", "last_checkpoint")) if src in progress})
            if progress.get("updated_at"):
                fields["progressUpdatedAt"] = progress["updated_at"]
        elif why:
            message += f" ({why})"
        if phase == "Succeeded":
            version = (progress or {}).get("updated_at") if (progress or {}).get("status") == "succeeded" else None
            fields["finalWeights"] = {"uri": (progress or {}).get("final") or f"{spec.output.rstrip('/')}/final",
                                      "version": version or since}
    return Result(phase, phase == "Succeeded", reason, message, fields)


async def reconcile_named(namespace: str, name: str, memo, logger) -> None:
    before = await memo.kube.get(API_VERSION, KIND, namespace, name)
    result = await reconcile_resource(KIND, namespace, name, reconcile, memo, logger)
    if result is None:
        return
    old = (before or {}).get("status") or {}
    if old.get("phase") != result.phase or old.get("finalWeights") != result.fields.get("finalWeights"):
        from . import service  # services serving this training's weights follow it

        await service.reconcile_dependents(namespace, name, memo, logger)


async def reconcile_dependents(namespace: str, curation_job: str, memo, logger) -> None:
    """Trainings whose dataset is this CurationJob."""
    for training in await memo.kube.list(API_VERSION, KIND, namespace):
        if (training.get("spec", {}).get("dataset") or {}).get("curationJob") == curation_job:
            await reconcile_named(namespace, training["metadata"]["name"], memo, logger)


declare_handlers(KIND, "polyvividtrainings", ("kubeflow.org", "v1", "pytorchjobs"), reconcile_named)
