"""Checks a spec must pass beyond its CRD schema and pydantic model, that need no cluster: shared by
the handlers (which add the checks that do: Secrets, referenced resources) and `polyvivid render`."""

from __future__ import annotations

from pydantic import ValidationError

from polyvivid.api import CurationJob, PolyVividService, PolyVividTraining
from polyvivid.api.common import format_validation_error

from .children.rayservice import worker_bounds


class InvalidSpec(Exception):
    """The spec passed the CRD schema but cannot run: no children, Ready=False reason InvalidSpec."""


def validated(model, body: dict):
    """The resource's spec as its pydantic model; rules the CRD schema cannot say fail here."""
    try:
        return model.model_validate({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}).spec
    except ValidationError as e:
        raise InvalidSpec(format_validation_error(e, "spec")) from None


def check_training(spec, max_gpus_per_node: int) -> None:
    if spec.resources.gpus_per_node > max_gpus_per_node:
        raise InvalidSpec(f"spec.resources.gpusPerNode: {spec.resources.gpus_per_node} GPUs per node requested, "
                          f"the largest node has {max_gpus_per_node}")


def check_curation(spec, max_gpus_per_node: int) -> None:
    worker = spec.worker
    if spec.ray_address:
        raise InvalidSpec("spec.rayAddress: the operator runs curation on a RayCluster of its own; leave it unset")
    if worker.gpus > max_gpus_per_node:
        raise InvalidSpec(f"spec.worker.gpus: {worker.gpus} GPUs per worker requested, "
                          f"the largest node has {max_gpus_per_node}")
    for stage in ("caption", "grounding", "segmentation"):
        res = getattr(spec, stage).resources
        if spec.workers and res.gpus > worker.gpus:
            raise InvalidSpec(f"spec.{stage}.resources.gpus: an actor needs {res.gpus} GPUs, "
                              f"a worker has {worker.gpus}")
        if spec.workers and res.cpus > worker.cpus:
            raise InvalidSpec(f"spec.{stage}.resources.cpus: an actor needs {res.cpus} CPUs, "
                              f"a worker has {worker.cpus}")
        if not spec.workers and res.gpus:
            raise InvalidSpec(f"spec.{stage}.resources.gpus: the stage needs GPUs but spec.workers is 0")


def check_service(spec, max_gpus_per_node: int) -> None:
    if spec.worker.gpus > max_gpus_per_node:
        raise InvalidSpec(f"spec.worker.gpus: {spec.worker.gpus} GPUs per worker requested, "
                          f"the largest node has {max_gpus_per_node}")
    try:
        worker_bounds(spec)
    except ValueError:
        raise InvalidSpec(f"spec.replicas: a replica needs {spec.replicas.gpus_per_replica} GPUs and "
                          f"{spec.replicas.cpus_per_replica} CPUs, a worker pod has {spec.worker.gpus} and "
                          f"{spec.worker.cpus} (spec.worker)") from None


CHECKS = {"PolyVividTraining": (PolyVividTraining, check_training), "CurationJob": (CurationJob, check_curation),
          "PolyVividService": (PolyVividService, check_service)}


def checked_spec(body: dict, max_gpus_per_node: int):
    """The resource's spec, validated and checked for its kind (InvalidSpec otherwise)."""
    model, check = CHECKS[body["kind"]]
    spec = validated(model, body)
    check(spec, max_gpus_per_node)
    return spec
