"""PolyVividTraining (spec.backend pytorchjob) -> kubeflow.org/v1 PyTorchJob, for clusters on the Kubeflow
training-operator v1; its pods are training_pod.py's."""

from __future__ import annotations

from typing import Any

from polyvivid.api import PolyVividTraining

from . import training_pod
from .common import DEFAULT_IMAGE, child_metadata, labels, queued, security_context

BACKOFF_LIMIT = 3


def render_pytorchjob(training: dict, image: str = DEFAULT_IMAGE, dataset_uri: str | None = None,
                      s3_endpoint: str | None = None) -> dict[str, Any]:
    """training: the PolyVividTraining as the API server returns it (a dict with metadata.uid).
    image: the operator's default, unless spec.scheduling.image overrides it.
    dataset_uri: the output of the CurationJob the spec names, once it succeeded.
    s3_endpoint: the operator's object store, for a spec that names no storage.endpoint."""
    spec = PolyVividTraining.model_validate(training).spec
    res, sched = spec.resources, spec.scheduling
    container = {
        "name": "pytorch",  # the training operator finds the container by this name
        "image": sched.image or image,
        "command": training_pod.command(spec, dataset_uri),
        "env": training_pod.env(spec, s3_endpoint),
        "ports": training_pod.ports(spec),
        "resources": training_pod.resources(spec),
        "volumeMounts": training_pod.volume_mounts(training),
        "securityContext": security_context(),
    }
    if spec.env_from:
        container["envFrom"] = spec.env_from
    # the labels let the chart's PodMonitor find rank 0's metrics port
    pod = {"metadata": {"labels": labels(training, "training")}, "spec": {
        "containers": [container], "volumes": training_pod.volumes(training), **training_pod.pod_spec_fields(spec)}}
    replica_specs = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod}}
    if res.nodes > 1:
        replica_specs["Worker"] = {"replicas": res.nodes - 1, "restartPolicy": "OnFailure", "template": pod}
    run_policy: dict[str, Any] = {"backoffLimit": BACKOFF_LIMIT, "cleanPodPolicy": "None",
                                  "suspend": spec.suspend or queued(sched, spec.suspend)}
    if spec.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if sched.volcano_queue:  # gang scheduling with Volcano, only when asked for (Kueue reads only its label)
        run_policy["schedulingPolicy"] = {"minAvailable": res.nodes, "queue": sched.volcano_queue,
                                          **({"priorityClass": sched.priority_class} if sched.priority_class else {})}
    return {
        "apiVersion": training_pod.JOBS["pytorchjob"][0], "kind": "PyTorchJob",
        "metadata": child_metadata(training, training_pod.names(training)["PyTorchJob"], "training", sched,
                                   spec.suspend),
        "spec": {
            "nprocPerNode": str(training_pod.processes_per_node(spec)),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }
