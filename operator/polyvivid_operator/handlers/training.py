"""PolyVividTraining -> a TrainJob (Kubeflow Trainer v2) or a PyTorchJob (spec.backend), and its spec
ConfigMap; the status follows the job and OUTPUT/progress.json. A dataset that names a CurationJob waits
(phase Waiting) until it succeeded.

With spec.precompute the job's pods first encode the inputs (train/precompute.py), then train: one child,
two phases, the first resumable on its own. The status message says which phase is running."""

from __future__ import annotations

from polyvivid.api.status import FinalWeights, TrainingProgress, TrainingStatus
from polyvivid.api.training import TrainingSpec

from .. import metrics
from ..artifacts import read_json
from ..children.common import effective_storage
from ..kinds import CURATED_DATASET, TRAINING, final_weights_uri
from .common import (Context, Result, apply_children, declare_handlers, finished_at, finished_without_children, held,
                     resolve, spec_for, workload_output)

# status field <- progress.json key (polyvivid/train/progress.py)
PROGRESS_FIELDS = (("stage", "stage"), ("step", "step"), ("loss", "loss"), ("latest_checkpoint", "last_checkpoint"),
                   ("progress_updated_at", "updated_at"), ("evaluation", "evaluation"))


def _pace(step, total: int, step_seconds) -> dict:
    """progressPercentage and estimatedRemainingSeconds from progress.json's step and the last step's time."""
    if not isinstance(step, int) or isinstance(step, bool) or not total or not 0 <= step <= total:
        return {}
    pace = {"progress_percentage": int(100 * step / total)}
    if isinstance(step_seconds, (int, float)) and not isinstance(step_seconds, bool) and 0 <= step_seconds < 1e6:
        pace["estimated_remaining_seconds"] = round((total - step) * step_seconds)
    return pace


def _true_conditions(job: dict | None) -> list[dict]:
    return [c for c in ((job or {}).get("status") or {}).get("conditions", []) if c.get("status") == "True"]


def pytorchjob_phase(job: dict | None) -> tuple[str, str, str]:
    """(phase, reason, since) from the PyTorchJob's latest true condition (training-operator v1)."""
    conditions = _true_conditions(job)
    if not conditions:
        return "Pending", "JobCreated", ""
    latest = conditions[-1]
    phase = {"Created": "Pending", "Running": "Running", "Restarting": "Running", "Succeeded": "Succeeded",
             "Failed": "Failed", "Suspended": "Pending"}.get(latest["type"], "Pending")
    return phase, latest.get("reason") or f"Job{latest['type']}", latest.get("lastTransitionTime", "")


def trainjob_phase(job: dict | None) -> tuple[str, str, str]:
    """(phase, reason, since) of a TrainJob (Trainer v2): its Failed or Complete condition when one is true,
    else Suspended (Pending), else Running once one of its Jobs has a pod active, else Pending."""
    status = (job or {}).get("status") or {}
    conditions = {c["type"]: c for c in _true_conditions(job)}
    for kind, phase in (("Failed", "Failed"), ("Complete", "Succeeded"), ("Suspended", "Pending")):
        if kind in conditions:
            c = conditions[kind]
            return phase, c.get("reason") or f"Job{kind}", c.get("lastTransitionTime", "")
    if any((s.get("active") or 0) + (s.get("ready") or 0) > 0 for s in status.get("jobsStatus") or []):
        return "Running", "JobRunning", ""
    return "Pending", "JobCreated", ""


async def reconcile(body: dict, ctx: Context) -> Result:
    spec: TrainingSpec = await spec_for(body, ctx)
    ns = body["metadata"]["namespace"]
    resolved = await resolve(ctx, body, TRAINING)
    children = TRAINING.build_children(body, resolved, ctx.config)
    done = await finished_without_children(ctx, body, spec, TRAINING, children)
    if done is not None:
        return done
    names = await apply_children(ctx, children)
    api_version, kind = TRAINING.workload(body)
    job = await ctx.kube.get(api_version, kind, ns, names[kind])
    phase, reason, since = (trainjob_phase if kind == "TrainJob" else pytorchjob_phase)(job)
    message = {"Pending": f"{kind} created, pods not running yet", "Running": "training",
               "Succeeded": "training finished", "Failed": f"the {kind} failed (see its pods' logs)"}[phase]
    if job is None or job["metadata"].get("deletionTimestamp"):  # kube.apply replaces it (an immutable field changed)
        reason, message = "Replacing", (f"replacing the {kind} for the spec change: its pods checkpoint and stop, and "
                                        "the new one resumes from the checkpoint")
    phase, reason, message = held(spec, job, phase, reason, message, f"the {kind}'s pods checkpoint and stop, and "
                                  "resume from the checkpoint")
    progress, final_weights = TrainingProgress(), None
    if phase != "Pending":
        document, why = await read_json(ctx.kube, ns, effective_storage(spec.storage, ctx.config.s3_endpoint),
                                        spec.output, "progress.json")
        document = document or {}
        fields = {field: document.get(key) for field, key in PROGRESS_FIELDS}
        fields.update(_pace(document.get("step"), spec.total_steps, document.get("step_seconds")))
        precomputed = document.get("precomputed") if isinstance(document.get("precomputed"), dict) else {}
        progress, unusable = workload_output(TrainingProgress, {**fields, "precomputed_inputs": precomputed.get("uri")},
                                             "progress.json")
        metrics.set_training_step(ns, body["metadata"]["name"], progress.step)
        if phase == "Running" and document.get("status") == "evaluating":
            message = "evaluating the final weights on the test set"
        if phase == "Running" and document.get("status") == "precomputing":
            counts = document.get("precompute") if isinstance(document.get("precompute"), dict) else {}
            message = (f"precomputing the inputs before the first step ({counts.get('done', 0)} of "
                       f"{counts.get('samples') or '?'} samples)")
        if why or unusable:
            message += f" ({why or unusable})"
        if phase == "Succeeded":
            version = document.get("updated_at") if document.get("status") == "succeeded" else None
            final_weights = FinalWeights(uri=document.get("final") or final_weights_uri(spec.output),
                                         version=version or since)
    dataset = resolved.get(CURATED_DATASET.kind)
    status = TrainingStatus(phase=phase, train_job=names.get("TrainJob"), pytorch_job=names.get("PyTorchJob"),
                            config_map=names["ConfigMap"],
                            dataset=dataset.uri if dataset else spec.dataset.uri, total_steps=spec.total_steps,
                            final_weights=final_weights, finished_at=finished_at(body, phase),
                            **progress.model_dump(exclude_none=True))
    return Result(status, phase == "Succeeded", reason, message)


declare_handlers(TRAINING, reconcile)
