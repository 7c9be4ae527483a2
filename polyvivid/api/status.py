"""The status the operator writes for each kind, as pydantic models: the CRDs' status schemas
(crds.py) and what the operator's handlers build. Modelled on KubeRay's RayJobStatus
(apis/ray/v1/rayjob_types.go): typed fields, the phases as enums, Kubernetes conditions.

Free-form workload output (a training's evaluation) stays an untyped
map (x-kubernetes-preserve-unknown-fields) on that one field. Nothing else writes here: kopf keeps its
progress and diff-base in annotations (the operator's startup handler sets that), and the handlers
return nothing, which kopf would otherwise store under status.<handler id>.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .common import ApiModel
from .curation import CURATION_STAGE_NAMES

# Ready (whether the resource did what it is for), and one a phase, True while the resource is in it
ConditionType = Literal["Ready", "Waiting", "Pending", "Running", "Deploying", "Suspended", "Succeeded", "Failed",
                        "Invalid"]
ConditionStatus = Literal["True", "False", "Unknown"]
TrainingPhase = Literal["Waiting", "Pending", "Running", "Suspended", "Succeeded", "Failed", "Invalid"]
CurationPhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed", "Invalid"]
ServicePhase = Literal["Waiting", "Deploying", "Ready", "Suspended", "Failed", "Invalid"]


class Condition(ApiModel):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: ConditionType
    status: ConditionStatus
    reason: str = Field(description="CamelCase reason of the last transition, e.g. InvalidSpec")
    message: str = Field(description="what happened, for people")
    last_transition_time: str = Field(description="when status last changed (RFC 3339)",
                                      json_schema_extra={"format": "date-time"})
    observed_generation: int | None = Field(None, ge=0, description="the metadata.generation it was set for")


class ResourceStatus(ApiModel):
    """What every kind's status has; each kind narrows `phase` to its own values."""

    phase: str
    observed_generation: int | None = Field(None, ge=0, description="the metadata.generation this status describes")
    conditions: list[Condition] = Field(default_factory=list, description="Ready: whether the resource has "
                                        "done what its spec asks (trained, curated, serving); and one a phase, "
                                        "True while it is in that phase")


class FiniteStatus(ApiModel):
    """What the status of a kind that runs to an end adds."""

    finished_at: str | None = Field(None, description="when it first succeeded or failed (RFC 3339)",
                                    json_schema_extra={"format": "date-time"})
    children_deleted: bool | None = Field(None, description="its children were deleted (ttlSecondsAfterFinished, "
                                          "or by someone): a finished run is not started again")


class TrainingProgress(ApiModel):
    """The status fields copied from OUTPUT/progress.json, which the training's rank 0 writes."""

    stage: str | None = Field(None, description="the stage being trained")
    step: int | None = Field(None, ge=0, description="optimizer steps done")
    loss: float | None = Field(None, allow_inf_nan=False, description="loss at that step")
    latest_checkpoint: str | None = Field(None, description="the newest complete checkpoint")
    progress_percentage: int | None = Field(None, ge=0, le=100, description="steps done of all steps, in percent "
                                            "(as Kubeflow Trainer v2's trainerStatus)")
    estimated_remaining_seconds: int | None = Field(None, ge=0, description="the steps left at the last step's "
                                                    "pace (as trainerStatus)")
    progress_updated_at: str | None = Field(None, description="when progress.json was written")
    evaluation: dict[str, Any] | None = Field(None, description="spec.evaluation's means and report, as the "
                                              "workload wrote them")
    precomputed_inputs: str | None = Field(None, description="where the inputs the training reads were "
                                           "precomputed (spec.precompute)")


class FinalWeights(ApiModel):
    uri: str = Field(description="the PolyVivid weights (OUTPUT/final)")
    version: str = Field(description="changes whenever the weights do: a service rolls out again")


class TrainingStatus(TrainingProgress, FiniteStatus, ResourceStatus):
    """The status of a PolyVividTraining: its training job's phase and the workload's progress."""

    phase: TrainingPhase
    train_job: str | None = Field(None, description="the TrainJob running the training (backend trainjob)")
    pytorch_job: str | None = Field(None, description="the PyTorchJob running the training (backend pytorchjob)")
    config_map: str | None = Field(None, description="the ConfigMap holding the spec the pods read")
    dataset: str | None = Field(None, description="URI of the dataset trained on")
    total_steps: int | None = Field(None, ge=0)
    final_weights: FinalWeights | None = Field(None, description="once it succeeded")


CurationStageName = Literal[CURATION_STAGE_NAMES]  # type: ignore[valid-type]


class StageCounts(ApiModel):
    rows_in: int = Field(ge=0, alias="in")
    rows_out: int = Field(ge=0, alias="out")
    rejected: int = Field(ge=0)


class CurationSummary(ApiModel):
    """The status fields copied from OUTPUT/summary.json once the curation succeeded."""

    videos: int | None = Field(None, ge=0, description="videos curated")
    clips_written: int | None = Field(None, ge=0, description="clips in the dataset")
    rejected: int | None = Field(None, ge=0, description="clips the filters rejected")
    stages: dict[CurationStageName, StageCounts] | None = Field(
        None, description="rows into and out of each stage (videos into split, clips from then on)")


class CurationStatus(CurationSummary, FiniteStatus, ResourceStatus):
    """The status of a CurationJob: its RayJob's phase and the dataset's counts."""

    phase: CurationPhase
    ray_job: str | None = Field(None, description="the RayJob running the curation")
    config_map: str | None = Field(None, description="the ConfigMap holding the spec the job reads")
    output: str | None = Field(None, description="URI of the dataset")


class ServiceStatus(ResourceStatus):
    """The status of a PolyVividService: its RayService's phase and where it serves."""

    phase: ServicePhase
    ray_service: str | None = Field(None, description="the RayService serving the model")
    endpoint: str | None = Field(None, description="URL of the HTTP API inside the cluster")
    ready_replicas: int | None = Field(None, ge=0, description="Serve endpoints ready")
    model: str | None = Field(None, description="the weights served")
    model_version: str | None = Field(None, description="the version of a training's final weights served")
