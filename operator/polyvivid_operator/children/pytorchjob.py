"""PolyVividTraining -> kubeflow.org/v1 PyTorchJob (and the ConfigMap holding the spec it runs).

Every pod runs `torchrun -m polyvivid.cli train /etc/polyvivid/training.yaml`: the training operator
sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK and PET_MASTER_ADDR/PORT, which torchrun reads,
so the command is the same on the master and on every worker.
"""

from __future__ import annotations

from typing import Any

from polyvivid.api import PolyVividTraining

from .common import (DEFAULT_IMAGE, SPEC_DIR, child_metadata, child_name, labels, pod_placement, pod_security_context,
                     security_context, spec_configmap, spec_volume, workload_env)

SPEC_FILE = "training.yaml"
BACKOFF_LIMIT = 3
SHM_SIZE = "64Gi"  # NCCL and dataloader workers use /dev/shm; the container default (64 MiB) is far too small


def names(training: dict) -> dict[str, str]:
    return {"pytorchjob": child_name(training, "-train", "PyTorchJob"),
            "configmap": child_name(training, "-train-spec", "ConfigMap")}


def render_configmap(training: dict) -> dict[str, Any]:
    return spec_configmap(training, names(training)["configmap"], SPEC_FILE, "training")


def render_pytorchjob(training: dict, image: str = DEFAULT_IMAGE, dataset_uri: str | None = None,
                      s3_endpoint: str | None = None) -> dict[str, Any]:
    """training: the PolyVividTraining as the API server returns it (a dict with metadata.uid).
    image: the operator's default, unless spec.scheduling.image overrides it.
    dataset_uri: the output of the CurationJob the spec names, once it succeeded.
    s3_endpoint: the operator's object store, for a spec that names no storage.endpoint."""
    spec = PolyVividTraining.model_validate(training).spec
    res, sched = spec.resources, spec.scheduling
    gpus = res.gpus_per_node
    args = ["torchrun", "--module", "polyvivid.cli", "train", f"{SPEC_DIR}/{SPEC_FILE}"]
    if spec.metrics_port:  # rank 0's /metrics, for Prometheus to scrape at the pod's address (default: loopback)
        args += ["--metrics-addr", "0.0.0.0"]
    if dataset_uri:
        args += ["--dataset", dataset_uri]
    volume, mount = spec_volume(names(training)["configmap"])
    container = {
        "name": "pytorch",  # the training operator finds the container by this name
        "image": sched.image or image,
        "command": args,
        "env": workload_env(spec.storage, s3_endpoint),
        "ports": [{"name": "metrics", "containerPort": spec.metrics_port}] if spec.metrics_port else [],
        "resources": {"limits": {"nvidia.com/gpu": gpus}} if gpus else {},
        "volumeMounts": [mount, {"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": security_context(),
    }
    # the labels let the chart's PodMonitor find rank 0's metrics port
    pod = {"metadata": {"labels": labels(training, "training")}, "spec": {
        "containers": [container],
        "volumes": [volume, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}],
        "securityContext": pod_security_context(),
        **pod_placement(sched),
    }}
    replica_specs = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if res.nodes > 1:
        replica_specs["Worker"] = {"replicas": res.nodes - 1, "restartPolicy": "OnFailure", "template": pod}
    run_policy: dict[str, Any] = {"backoffLimit": BACKOFF_LIMIT, "cleanPodPolicy": "None"}
    if sched.queue or sched.priority_class:  # gang schedulers (Volcano, scheduler-plugins) read this
        run_policy["schedulingPolicy"] = {"minAvailable": res.nodes,
                                          **({"queue": sched.queue} if sched.queue else {}),
                                          **({"priorityClass": sched.priority_class} if sched.priority_class else {})}
    return {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
        "metadata": child_metadata(training, names(training)["pytorchjob"], "training", sched),
        "spec": {
            "nprocPerNode": str(max(gpus, 1)),  # CPU training: one process per node
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }
