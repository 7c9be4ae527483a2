"""What a PolyVividTraining's pods are, whichever job runs them (trainjob.py, pytorchjob.py): the spec
ConfigMap, the command, the container's env, ports and mounts, and the pod's volumes and placement.

Every pod runs `torchrun -m polyvivid.cli train /etc/polyvivid/training.yaml`: both job controllers set
PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and PET_MASTER_ADDR/PORT, which torchrun reads, so the
command is the same on every node.
"""

from __future__ import annotations

from typing import Any

from polyvivid.api import PolyVividTraining
from polyvivid.api.training import TrainingSpec

from .common import SPEC_DIR, child_name, pod_placement, pod_security_context, spec_configmap, spec_volume, workload_env

SPEC_FILE = "training.yaml"
SHM_SIZE = "64Gi"  # NCCL and dataloader workers use /dev/shm; the container default (64 MiB) is far too small
JOB_KINDS = {"trainjob": "TrainJob", "pytorchjob": "PyTorchJob"}


def names(training: dict) -> dict[str, str]:
    """The children's names, by kind: the training job (its backend's kind) and the spec ConfigMap."""
    kind = JOB_KINDS[PolyVividTraining.model_validate(training).spec.backend]
    return {kind: child_name(training, "-train", kind), "ConfigMap": child_name(training, "-train-spec", "ConfigMap")}


def render_configmap(training: dict) -> dict[str, Any]:
    return spec_configmap(training, names(training)["ConfigMap"], SPEC_FILE, "training")


def command(spec: TrainingSpec, dataset_uri: str | None) -> list[str]:
    args = ["torchrun", "--module", "polyvivid.cli", "train", f"{SPEC_DIR}/{SPEC_FILE}"]
    if spec.metrics_port:  # rank 0's /metrics, for Prometheus to scrape at the pod's address (default: loopback)
        args += ["--metrics-addr", "0.0.0.0"]
    if dataset_uri:
        args += ["--dataset", dataset_uri]
    return args


def processes_per_node(spec: TrainingSpec) -> int:
    return max(spec.resources.gpus_per_node, 1)  # CPU training: one process per node


def env(spec: TrainingSpec, s3_endpoint: str | None) -> list[dict[str, Any]]:
    return workload_env(spec.storage, s3_endpoint)


def ports(spec: TrainingSpec) -> list[dict[str, Any]]:
    return [{"name": "metrics", "containerPort": spec.metrics_port}] if spec.metrics_port else []


def gpu_limits(spec: TrainingSpec) -> dict[str, Any]:
    gpus = spec.resources.gpus_per_node
    return {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}


def volume_mounts(training: dict) -> list[dict[str, Any]]:
    _, mount = spec_volume(names(training)["ConfigMap"])
    return [mount, {"name": "dshm", "mountPath": "/dev/shm"}]


def volumes(training: dict) -> list[dict[str, Any]]:
    volume, _ = spec_volume(names(training)["ConfigMap"])
    return [volume, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}]


def pod_spec_fields(spec: TrainingSpec) -> dict[str, Any]:
    """The pod spec's own fields beside its containers and volumes: security context and placement."""
    return {"securityContext": pod_security_context(), **pod_placement(spec.scheduling)}
