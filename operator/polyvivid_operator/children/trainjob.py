"""PolyVividTraining (spec.backend trainjob, the default) -> trainer.kubeflow.org/v1alpha1 TrainJob (Kubeflow
Trainer v2), on the ClusterTrainingRuntime the chart installs (charts/.../templates/trainingruntime.yaml:
torch distributed, our image and command, one replicated job `node` whose container is `node`).

What is the training's own goes in the TrainJob: the image, the command, nodes and processes per node,
the resources and the env (spec.trainer); the rest of the pod, which Trainer v2.3 takes only as a runtime
patch (spec.runtimePatches, keyed by its manager), goes there: the pod's labels, volumes, mounts, security
context, grace period, pull secrets, service account and placement. Trainer v2.3 cannot set a container's
ports or envFrom or a pod's priority class per TrainJob: the runtime declares the metrics port (9090), and
validation.py refuses other metricsPort values, envFrom and scheduling.priorityClass with this backend.
"""

from __future__ import annotations

from typing import Any

from polyvivid.api import PolyVividTraining

from . import training_pod
from .common import DEFAULT_IMAGE, child_metadata, labels, queued, security_context

API_VERSION = training_pod.JOBS["trainjob"][0]
DEFAULT_RUNTIME = "polyvivid-torch"  # the chart's ClusterTrainingRuntime
RUNTIME_JOB = RUNTIME_CONTAINER = "node"  # its replicated job and container, as Trainer's torch runtimes name them
RUNTIME_METRICS_PORT = 9090  # the port the runtime's container declares
PATCH_MANAGER = "polyvivid.io/operator"


def render_trainjob(training: dict, image: str = DEFAULT_IMAGE, dataset_uri: str | None = None,
                    s3_endpoint: str | None = None, runtime: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    """As pytorchjob.render_pytorchjob; runtime: the ClusterTrainingRuntime's name."""
    spec = PolyVividTraining.model_validate(training).spec
    trainer: dict[str, Any] = {
        "image": spec.scheduling.image or image,
        "command": training_pod.command(spec, dataset_uri),
        "numNodes": spec.resources.nodes,
        "numProcPerNode": training_pod.processes_per_node(spec),
        "env": training_pod.env(spec, s3_endpoint),
        "resourcesPerNode": training_pod.resources(spec),
    }
    pod = {
        "metadata": {"labels": labels(training, "training")},  # the PodMonitor finds rank 0 by them
        "spec": {"containers": [{"name": RUNTIME_CONTAINER, "volumeMounts": training_pod.volume_mounts(training),
                                 "securityContext": security_context()}],
                 "volumes": training_pod.volumes(training), **training_pod.pod_spec_fields(spec)},
    }
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": RUNTIME_JOB, "template": {"spec": {"template": pod}}}]}}}}
    return {
        "apiVersion": API_VERSION, "kind": "TrainJob",
        "metadata": child_metadata(training, training_pod.names(training)["TrainJob"], "training", spec.scheduling,
                                   spec.suspend),
        "spec": {
            # created suspended for Kueue to start; spec.suspend stops the pods (SIGTERM: a checkpoint, exit 143)
            "suspend": spec.suspend or queued(spec.scheduling, spec.suspend),
            "runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "trainer": trainer,
            "runtimePatches": [patch],
            **({"activeDeadlineSeconds": spec.active_deadline_seconds} if spec.active_deadline_seconds else {}),
        },
    }
