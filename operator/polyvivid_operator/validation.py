"""Checks a spec must pass beyond its CRD schema and pydantic model, that need no cluster: shared by
the handlers (which add the checks that do: Secrets, referenced resources) and `polyvivid render`.

Some rules hold only in the cluster, so they live here and not in the models (which local runs share):
artifacts are s3:// URIs (a path or file:// would be read from whichever pod, or the operator, reads
it), the object store is one the operator's configuration allows, and a service has an API token
unless its spec says it runs open."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import ValidationError

from polyvivid import memory_plan
from polyvivid.api import CurationJob, PolyVividService, PolyVividTraining
from polyvivid.api.common import format_validation_error
from polyvivid.api.curation import CURATION_STAGES

from .children.rayservice import replicas_per_worker, worker_bounds
from .children.trainjob import RUNTIME_METRICS_PORT
from .config import OperatorConfig


class InvalidSpec(Exception):
    """The spec passed the CRD schema but cannot run: no children, Ready=False reason InvalidSpec."""


def validated(model, body: dict):
    """The resource's spec as its pydantic model; rules the CRD schema cannot say fail here."""
    try:  # the whole body: a missing metadata or an unknown top-level key is an error, not ignored
        return model.model_validate(body).spec
    except ValidationError as e:
        raise InvalidSpec(format_validation_error(e)) from None


def require_s3_uri(field: str, uri: str) -> None:
    """In the cluster every artifact lives in the object store: s3://bucket/... and nothing else."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise InvalidSpec(f"{field}: {uri!r} is not an s3:// URI; in the cluster artifacts live in the object store")


def training_uris(spec) -> list[tuple[str, str | None]]:
    uris = [("spec.output", spec.output), ("spec.dataset.uri", spec.dataset.uri),
            ("spec.model.hunyuanvideo", spec.model.hunyuanvideo), ("spec.model.llava", spec.model.llava)]
    if spec.evaluation is not None:
        ev = spec.evaluation
        uris += [("spec.evaluation.cases", ev.cases), ("spec.evaluation.realVideos", ev.real_videos)]
        uris += [(f"spec.evaluation.models.{field.alias}", getattr(ev.models, name))
                 for name, field in type(ev.models).model_fields.items() if name != "preset"]
    return uris


def curation_uris(spec) -> list[tuple[str, str | None]]:
    models = [("spec.caption.model", spec.caption.model), ("spec.grounding.model", spec.grounding.model),
              ("spec.segmentation.model", spec.segmentation.model), ("spec.clipScore.model", spec.clip_score.model),
              ("spec.filters.subtitleDetector", spec.filters.subtitle_detector),
              ("spec.filters.watermarkDetector", spec.filters.watermark_detector),
              ("spec.filters.qualityScorer", spec.filters.quality_scorer)]
    return [("spec.input", spec.input), ("spec.output", spec.output),
            *((f"{field}.uri", ref.uri) for field, ref in models if ref is not None)]


def service_uris(spec) -> list[tuple[str, str | None]]:
    return [("spec.output", spec.output), ("spec.model.uri", spec.model.uri),
            ("spec.model.baseModel", spec.model.base_model)]


def check_endpoint(spec, config: OperatorConfig) -> None:
    """The operator signs requests with the namespace's Secret for the endpoint a spec names (reading
    progress.json): only the object stores its configuration lists may receive them."""
    endpoint = spec.storage.endpoint
    if endpoint is None or config.endpoint_allowed(endpoint):
        return
    allowed = ", ".join(config.endpoints()) or "none configured"
    default = f"; leave it unset to use {config.s3_endpoint}" if config.s3_endpoint else ""
    raise InvalidSpec(f"spec.storage.endpoint: {endpoint!r} is not an object store this operator may use "
                      f"(allowed: {allowed}{default}; the chart's objectStore values list them)")


def check_name(body: dict) -> None:
    # TrainJob, PyTorchJob, RayJob and RayService names must be DNS-1035 labels, and the children are named after
    # the resource (children.common.child_name keeps them short enough, not their first character)
    name = body["metadata"]["name"]
    if not name[:1].isalpha():
        raise InvalidSpec(f"metadata.name: {name!r} must start with a letter: the {body['kind']}'s children are "
                          "named after it, and TrainJob, PyTorchJob, RayJob and RayService names are DNS-1035 labels")


def check_training(spec, config: OperatorConfig) -> None:
    if spec.resources.gpus_per_node > config.max_gpus_per_node:
        raise InvalidSpec(f"spec.resources.gpusPerNode: {spec.resources.gpus_per_node} GPUs per node requested, "
                          f"the largest node has {config.max_gpus_per_node}")
    if spec.backend == "trainjob":  # what Trainer v2.3's runtime patch cannot carry (children/trainjob.py)
        if spec.scheduling.priority_class:
            raise InvalidSpec("spec.scheduling.priorityClass: a TrainJob (Kubeflow Trainer v2.3) cannot set its "
                              "pods' priority class; with Kueue use spec.scheduling.workloadPriorityClass, or "
                              "spec.backend: pytorchjob")
        if spec.env_from:
            raise InvalidSpec("spec.envFrom: a TrainJob (Kubeflow Trainer v2.3) takes env only; name each variable in "
                              "spec.env with valueFrom (secretKeyRef / configMapKeyRef), or spec.backend: pytorchjob")
        if spec.metrics_port not in (0, RUNTIME_METRICS_PORT):
            raise InvalidSpec(f"spec.metricsPort: a TrainJob's pods declare the training runtime's metrics port, "
                              f"{RUNTIME_METRICS_PORT}; use {RUNTIME_METRICS_PORT} or 0 (off), or spec.backend: "
                              "pytorchjob")
    unsplittable = memory_plan.parallelism_refusal(spec)  # the pods would stop at once
    if unsplittable:
        raise InvalidSpec(unsplittable)
    too_big = memory_plan.refusal(spec)  # a run that would fail with out-of-memory after its pods were scheduled
    if too_big:
        raise InvalidSpec(f"spec.resources.gpuMemoryGib: {too_big}")


def check_curation(spec, config: OperatorConfig) -> None:
    worker, max_gpus = spec.worker, config.max_gpus_per_node
    if spec.ray_address:
        raise InvalidSpec("spec.rayAddress: the operator runs curation on a RayCluster of its own; leave it unset")
    if worker.gpus > max_gpus:
        raise InvalidSpec(f"spec.worker.gpus: {worker.gpus} GPUs per worker requested, the largest node has {max_gpus}")
    for stage in (s.name for s in CURATION_STAGES if s.actor_pool):
        res = getattr(spec, stage).resources
        if spec.workers and res.gpus > worker.gpus:
            raise InvalidSpec(f"spec.{stage}.resources.gpus: an actor needs {res.gpus} GPUs, "
                              f"a worker has {worker.gpus}")
        if spec.workers and res.cpus > worker.cpus:
            raise InvalidSpec(f"spec.{stage}.resources.cpus: an actor needs {res.cpus} CPUs, "
                              f"a worker has {worker.cpus}")
        if not spec.workers and res.gpus:
            raise InvalidSpec(f"spec.{stage}.resources.gpus: the stage needs GPUs but spec.workers is 0")


def check_service(spec, config: OperatorConfig) -> None:
    if spec.api_token_secret_ref is None and not spec.allow_unauthenticated:
        # in the cluster the port is reachable by every pod: open only when the spec says so
        raise InvalidSpec("spec.apiTokenSecretRef: a service in the cluster needs an API token: create a Secret "
                          "holding one and set spec.apiTokenSecretRef to it, or set spec.allowUnauthenticated: "
                          "true to let anyone who reaches the service use it")
    if spec.worker.gpus > config.max_gpus_per_node:
        raise InvalidSpec(f"spec.worker.gpus: {spec.worker.gpus} GPUs per worker requested, "
                          f"the largest node has {config.max_gpus_per_node}")
    try:
        worker_bounds(spec)
    except ValueError:
        raise InvalidSpec(f"spec.replicas: a replica needs {spec.replicas.gpus_per_replica} GPUs and "
                          f"{spec.replicas.cpus_per_replica} CPUs, a worker pod has {spec.worker.gpus} and "
                          f"{spec.worker.cpus} (spec.worker)") from None
    if spec.scheduling.queue and spec.replicas.min != spec.replicas.max:
        raise InvalidSpec(f"spec.replicas: with a Kueue queue (spec.scheduling.queue) a service has a fixed size: "
                          f"Kueue needs the RayCluster's in-tree autoscaling off; set min = max (now "
                          f"{spec.replicas.min} and {spec.replicas.max})")
    too_big = memory_plan.service_refusal(spec)  # replicas that could not split or hold the largest request
    if too_big:
        raise InvalidSpec(too_big)


# kind -> (model, its artifact URIs (field, URI or None), its own checks)
CHECKS = {"PolyVividTraining": (PolyVividTraining, training_uris, check_training),
          "CurationJob": (CurationJob, curation_uris, check_curation),
          "PolyVividService": (PolyVividService, service_uris, check_service)}


def checked_spec(body: dict, config: OperatorConfig):
    """The resource's spec, validated and checked for its kind (InvalidSpec otherwise)."""
    model, uris, check = CHECKS[body["kind"]]
    spec = validated(model, body)
    check_name(body)
    for field, uri in uris(spec):
        if uri is not None:
            require_s3_uri(field, uri)
    check_endpoint(spec, config)
    check(spec, config)
    return spec


# ------------------------------------------------------------------------------------------- warnings

def warnings(kind: str, spec) -> list[str]:
    """What is valid but likely a mistake (`polyvivid render` prints these): resources a pod reserves and
    cannot use, and a fabric the pods cannot reach."""
    found = []
    if kind == "PolyVividService":
        r, w = spec.replicas, spec.worker
        per = replicas_per_worker(spec)
        used = min(per, r.max) * r.gpus_per_replica
        if w.gpus and used < w.gpus:
            found.append(f"spec.worker: a worker pod reserves {w.gpus} GPUs, but at most {min(per, r.max)} replica(s) "
                         f"x {r.gpus_per_replica:g} GPU run on it: {w.gpus - used:g} idle; size the pod to the "
                         f"replicas (worker.gpus {used:g})")
    if kind == "PolyVividTraining":
        if spec.network in ("infiniband", "roce") and not any("rdma" in name or "hostdev" in name
                                                             for name in spec.resources.extended):
            found.append(f"spec.network: {spec.network} with no RDMA device in resources.extended (e.g. "
                         "rdma/rdma_shared_device_a: 1): without one the pods see no HCA and NCCL falls back to TCP")
        if spec.scheduling.queue and spec.backend == "pytorchjob":
            found.append("spec.scheduling.queue: Kueue manages PyTorchJobs only with its kubeflow.org/pytorchjob "
                         "integration enabled (integrations.frameworks in Kueue's config)")
    return found
