"""One descriptor per kind: what the handlers (against the cluster) and `polyvivid render` (against
the documents given) both need to know about it: its plural and models (polyvivid.api.crds), the
child whose status it follows, the children it has (the pure builders of children/), and the other
resources its spec may name.

A training's spec.dataset.curationJob trains on that CurationJob's output; a service's
spec.model.training serves that training's final weights. `polyvivid render` takes what the named
document will produce; the operator waits until the named resource has succeeded, then takes what it
did produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from polyvivid.api.crds import RESOURCES
from polyvivid.api.status import ResourceStatus

from .children import pytorchjob, rayjob, rayservice, trainjob, training_pod
from .config import OperatorConfig


@dataclass(frozen=True)
class Output:
    """What a resource gives one that names it: a CurationJob its dataset, a training its final weights."""

    uri: str
    version: str | None = None  # changes when the output does (the training ran again)


def phase_of(obj: dict | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


def final_weights_uri(training_output: str) -> str:
    """Where a training's workload writes its final weights, unless its progress.json says otherwise."""
    return f"{training_output.rstrip('/')}/final"


@dataclass(frozen=True)
class Dependency:
    """spec.<field> may name a resource of `kind` in the same namespace, whose output this one needs."""

    field: tuple[str, ...]  # the path under spec, as in the manifest
    kind: str
    planned: Callable[[dict], Output]  # from the named manifest: what it will produce
    produced: Callable[[dict], Output | None]  # from the named object: what it produced once it succeeded, else None
    source: str  # where `produced` finds the URI, for messages
    waiting: Callable[[str, str | None], tuple[str, str]]  # (reason, message) until then, from its name and phase
    meanwhile: str  # what the operator does until then, for render's messages

    @property
    def path(self) -> str:
        return ".".join(("spec", *self.field))

    def target(self, obj: dict) -> str | None:
        """The name a resource's manifest gives at spec.<field>, if any."""
        node: Any = obj.get("spec")
        for part in self.field:
            node = node.get(part) if isinstance(node, dict) else None
        return node


def _waiting_for_curation(name: str, phase: str | None) -> tuple[str, str]:
    if phase in ("Failed", "Invalid"):
        return "CurationFailed", f"CurationJob {name} is {phase}; fix it or use another dataset"
    return "WaitingForCuration", f"waiting for CurationJob {name} (phase {phase or 'New'})"


def _final_weights(training: dict) -> Output | None:
    weights = (training.get("status") or {}).get("finalWeights")
    if phase_of(training) != "Succeeded" or not weights:
        return None
    return Output(weights["uri"], weights.get("version"))


CURATED_DATASET = Dependency(
    field=("dataset", "curationJob"), kind="CurationJob",
    planned=lambda job: Output(job["spec"]["output"]),
    produced=lambda job: Output(job["spec"]["output"]) if phase_of(job) == "Succeeded" else None,
    source="spec.output", waiting=_waiting_for_curation, meanwhile="wait for it")

TRAINED_WEIGHTS = Dependency(
    field=("model", "training"), kind="PolyVividTraining",
    planned=lambda training: Output(final_weights_uri(training["spec"]["output"])),
    produced=_final_weights, source="status.finalWeights.uri",
    waiting=lambda name, phase: ("WaitingForTraining",
                                 f"waiting for PolyVividTraining {name} to succeed (phase {phase or 'New'})"),
    meanwhile="serve its final weights once it succeeded")


# children builders: (the resource as the API server returns it, resolved outputs by kind, settings) ->
# the children in the order they are applied (a ConfigMap before the job that mounts it)
ChildrenBuilder = Callable[[dict, dict[str, Output], OperatorConfig], list[dict]]


def _training_children(owner: dict, resolved: dict[str, Output], config: OperatorConfig) -> list[dict]:
    dataset = resolved.get(CURATED_DATASET.kind)
    uri = dataset.uri if dataset else None
    if training_pod.job_of(owner)[1] == "PyTorchJob":
        job = pytorchjob.render_pytorchjob(owner, config.image, uri, config.s3_endpoint)
    else:
        job = trainjob.render_trainjob(owner, config.image, uri, config.s3_endpoint, config.training_runtime)
    return [training_pod.render_configmap(owner), job]


def _curation_children(owner: dict, resolved: dict[str, Output], config: OperatorConfig) -> list[dict]:
    return [rayjob.render_configmap(owner), rayjob.render_rayjob(owner, config.image, config.s3_endpoint)]


def _service_children(owner: dict, resolved: dict[str, Output], config: OperatorConfig) -> list[dict]:
    weights = resolved.get(TRAINED_WEIGHTS.kind)
    return [rayservice.render_rayservice(owner, config.image, weights.uri if weights else None,
                                         weights.version if weights else None, config.s3_endpoint)]


@dataclass(frozen=True)
class KindDescriptor:
    kind: str
    # apiVersion and kind of each child whose status the resource's may follow (their events reconcile it)
    workloads: tuple[tuple[str, str], ...]
    build_children: ChildrenBuilder
    dependencies: tuple[Dependency, ...] = ()
    choose_workload: Callable[[dict], tuple[str, str]] | None = None  # which one a resource has; None: the only one

    def workload(self, body: dict) -> tuple[str, str]:
        """apiVersion and kind of the child whose status this resource's follows."""
        return self.choose_workload(body) if self.choose_workload else self.workloads[0]

    # names and models: the CRD's, never spelled again here
    @property
    def plural(self) -> str:
        return RESOURCES[self.kind].plural

    @property
    def model(self) -> type[BaseModel]:
        return RESOURCES[self.kind].model

    @property
    def status(self) -> type[ResourceStatus]:
        return RESOURCES[self.kind].status


TRAINING = KindDescriptor("PolyVividTraining", tuple(training_pod.JOBS.values()), _training_children,
                          (CURATED_DATASET,), training_pod.job_of)
CURATION = KindDescriptor("CurationJob", (("ray.io/v1", "RayJob"),), _curation_children)
SERVICE = KindDescriptor("PolyVividService", (("ray.io/v1", "RayService"),), _service_children, (TRAINED_WEIGHTS,))
KINDS: dict[str, KindDescriptor] = {d.kind: d for d in (TRAINING, CURATION, SERVICE)}


def dependents(kind: str) -> list[tuple[KindDescriptor, Dependency]]:
    """The kinds whose spec may name a resource of `kind`, each with the field that does."""
    return [(d, dep) for d in KINDS.values() for dep in d.dependencies if dep.kind == kind]
