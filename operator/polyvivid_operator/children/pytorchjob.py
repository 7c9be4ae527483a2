"""PolyVividTraining -> kubeflow.org/v1 PyTorchJob (and the ConfigMap holding the spec it runs).

Every pod runs `torchrun -m polyvivid.cli train /etc/polyvivid/training.yaml`: the training operator
sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and PET_MASTER_ADDR/PORT, which torchrun reads,
so the command is the same on the master and on every worker.
"""

from __future__ import annotations

from typing import Any

import yaml

from polyvivid.api import PolyVividTraining

from .common import DEFAULT_IMAGE, child_metadata, security_context, storage_env

SPEC_DIR = "/etc/polyvivid"
SPEC_FILE = "training.yaml"
BACKOFF_LIMIT = 3
SHM_SIZE = "64Gi"  # NCCL and dataloader workers use /dev/shm; the container default (64 MiB) is far too small


def names(training: dict) -> dict[str, str]:
    base = training["metadata"]["name"]
    return {"pytorchjob": f"{base}-train", "configmap": f"{base}-train-spec"}


def render_configmap(training: dict) -> dict[str, Any]:
    """The manifest itself, as the workload reads it (`polyvivid train SPEC`); status stripped."""
    manifest = {k: training[k] for k in ("apiVersion", "kind", "spec")}
    manifest["metadata"] = {"name": training["metadata"]["name"]}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": child_metadata(training, names(training)["configmap"], "training"),
            "data": {SPEC_FILE: yaml.safe_dump(manifest, sort_keys=False)}}


def render_pytorchjob(training: dict, image: str = DEFAULT_IMAGE, dataset_uri: str | None = None) -> dict[str, Any]:
    """training: the PolyVividTraining as the API server returns it (a dict with metadata.uid).
    dataset_uri: the output of the CurationJob the spec names, once it succeeded."""
    spec = PolyVividTraining.model_validate(training).spec
    res = spec.resources
    gpus = res.gpus_per_node
    args = ["torchrun", "--module", "polyvivid.cli", "train", f"{SPEC_DIR}/{SPEC_FILE}"]
    if dataset_uri:
        args += ["--dataset", dataset_uri]
    container = {
        "name": "pytorch",  # the training operator finds the container by this name
        "image": image,
        "command": args,
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}, *storage_env(spec.storage)],
        "ports": [{"name": "metrics", "containerPort": spec.metrics_port}] if spec.metrics_port else [],
        "resources": {"limits": {"nvidia.com/gpu": gpus}} if gpus else {},
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": security_context(),
    }
    pod = {"spec": {
        "containers": [container],
        "volumes": [{"name": "spec", "configMap": {"name": names(training)["configmap"]}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
    }}
    replica_specs = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if res.nodes > 1:
        replica_specs["Worker"] = {"replicas": res.nodes - 1, "restartPolicy": "OnFailure", "template": pod}
    return {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
        "metadata": child_metadata(training, names(training)["pytorchjob"], "training"),
        "spec": {
            "nprocPerNode": str(max(gpus, 1)),  # CPU training: one process per node
            "runPolicy": {"backoffLimit": BACKOFF_LIMIT, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replica_specs,
        },
    }
