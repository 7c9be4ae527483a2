"""What a PolyVividTraining's pods are, whichever job runs them (trainjob.py, pytorchjob.py): the spec
ConfigMap, the command, the container's env, resources, ports and mounts, and the pod's volumes, grace
period and placement.

Every pod runs `torchrun -m polyvivid.cli train /etc/polyvivid/training.yaml`: both job controllers set
PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and PET_MASTER_ADDR/PORT, which torchrun reads, so the
command is the same on every node.

Resources (spec.resources, defaults from the GPU count): CPU, memory (with /dev/shm in it: a tmpfs is
charged to the pod's memory), GPUs and extended resources, requests = limits (Guaranteed QoS, which Kueue
counts); ephemeral storage requested, with the weights cache's emptyDir added when it is the pod's own.
"""

from __future__ import annotations

from typing import Any

from polyvivid.api import PolyVividTraining
from polyvivid.api.common import quantity_bytes
from polyvivid.api.training import TrainingSpec

from .common import SPEC_DIR, child_name, pod_placement, pod_security_context, spec_configmap, spec_volume, workload_env

SPEC_FILE = "training.yaml"
CACHE_DIR = "/var/cache/polyvivid"  # POLYVIVID_CACHE: downloaded base weights (polyvivid/storage.py materialize_dir)
# spec.backend -> the apiVersion and kind of the training's job (trainjob.py, pytorchjob.py)
JOBS = {"trainjob": ("trainer.kubeflow.org/v1alpha1", "TrainJob"), "pytorchjob": ("kubeflow.org/v1", "PyTorchJob")}

# spec.network -> NCCL's env (a name in spec.env replaces one here). Bootstrap and the TCP fallback use the
# pod network (eth0); InfiniBand and RoCE need the RDMA device plugin's resource (spec.resources.extended) and
# GPUDirect RDMA where the GPU and the NIC share a PCIe host bridge.
NCCL_PRESETS: dict[str, dict[str, str]] = {
    "auto": {},
    "infiniband": {"NCCL_IB_DISABLE": "0", "NCCL_IB_HCA": "mlx5", "NCCL_NET_GDR_LEVEL": "PHB",
                   "NCCL_SOCKET_IFNAME": "eth0"},
    "roce": {"NCCL_IB_DISABLE": "0", "NCCL_IB_HCA": "mlx5", "NCCL_IB_GID_INDEX": "3", "NCCL_NET_GDR_LEVEL": "PHB",
             "NCCL_SOCKET_IFNAME": "eth0"},
    "tcp": {"NCCL_IB_DISABLE": "1", "NCCL_SOCKET_IFNAME": "eth0", "NCCL_NSOCKS_PERTHREAD": "4",
            "NCCL_SOCKET_NTHREADS": "2"},
}
COMMON_NCCL = {"NCCL_DEBUG": "WARN"}


def job_of(training: dict) -> tuple[str, str]:
    """The apiVersion and kind of a training's job (its spec.backend's)."""
    return JOBS[PolyVividTraining.model_validate(training).spec.backend]


def names(training: dict) -> dict[str, str]:
    """The children's names, by kind: the training job (its backend's kind) and the spec ConfigMap."""
    kind = job_of(training)[1]
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
    """The store's settings, the cache, threads per process, NCCL's preset, then spec.env (which wins)."""
    preset = {**COMMON_NCCL, **NCCL_PRESETS[spec.network],
              "OMP_NUM_THREADS": str(max(1, spec.resources.cpus // processes_per_node(spec))),
              "POLYVIVID_CACHE": CACHE_DIR}
    given = {e.name for e in spec.env}
    return [*workload_env(spec.storage, s3_endpoint),
            *({"name": k, "value": v} for k, v in preset.items() if k not in given),
            *(e.model_dump(by_alias=True, exclude_none=True) for e in spec.env)]


def ports(spec: TrainingSpec) -> list[dict[str, Any]]:
    return [{"name": "metrics", "containerPort": spec.metrics_port}] if spec.metrics_port else []


def resources(spec: TrainingSpec) -> dict[str, Any]:
    """A node's pod's requests and limits (requests = limits, ephemeral storage requested only)."""
    res = spec.resources
    limits: dict[str, Any] = {"cpu": str(res.cpus), "memory": res.memory, **res.extended}
    if res.gpus_per_node:
        limits["nvidia.com/gpu"] = res.gpus_per_node
    storage = quantity_bytes(res.ephemeral_storage)
    if spec.weights_cache.persistent_volume_claim is None:
        storage += quantity_bytes(spec.weights_cache.size)
    return {"requests": {**limits, "ephemeral-storage": f"{-(-storage // 2**30)}Gi"}, "limits": limits}


def volume_mounts(training: dict) -> list[dict[str, Any]]:
    _, mount = spec_volume(names(training)["ConfigMap"])
    return [mount, {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "weights-cache", "mountPath": CACHE_DIR}]


def volumes(training: dict) -> list[dict[str, Any]]:
    spec = PolyVividTraining.model_validate(training).spec
    volume, _ = spec_volume(names(training)["ConfigMap"])
    cache = spec.weights_cache
    cache_volume = {"persistentVolumeClaim": {"claimName": cache.persistent_volume_claim}} \
        if cache.persistent_volume_claim else {"emptyDir": {"sizeLimit": cache.size}}
    return [volume, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm}},
            {"name": "weights-cache", **cache_volume}]


def pod_spec_fields(spec: TrainingSpec) -> dict[str, Any]:
    """The pod spec's own fields beside its containers and volumes: the grace period a checkpoint needs,
    security context and placement."""
    return {"terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
            "securityContext": pod_security_context(), **pod_placement(spec.scheduling)}
