"""The RayCluster spec shared by the RayJob (curation) and the RayService (serving): a head pod that
runs no model work and one worker group of GPU (or CPU) pods."""

from __future__ import annotations

from typing import Any

from polyvivid.api.common import SchedulingSpec, WorkerShape

from .common import pod_placement, pod_security_context, security_context

RAY_VERSION = "2.60.0"  # the version in the workload image (pyproject's ray pin)
HEAD_RESOURCES = {"cpu": "2", "memory": "8Gi"}
METRICS_PORT = {"name": "metrics", "containerPort": 8080}  # KubeRay's --metrics-export-port on every node
HEAD_PORTS = [{"name": "gcs", "containerPort": 6379}, {"name": "dashboard", "containerPort": 8265},
              {"name": "client", "containerPort": 10001}, {"name": "serve", "containerPort": 8000},
              METRICS_PORT]


def _pod(container: dict[str, Any], scheduling: SchedulingSpec, volumes: list[dict],
         pod_labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"labels": dict(pod_labels)},
            "spec": {"containers": [container], "volumes": volumes, "securityContext": pod_security_context(),
                     **pod_placement(scheduling)}}


def ray_cluster_spec(*, image: str, env: list[dict], worker: WorkerShape, scheduling: SchedulingSpec,
                     min_workers: int, max_workers: int, pod_labels: dict[str, str], volumes: list[dict] = (),
                     mounts: list[dict] = (), head_runs_work: bool = False) -> dict[str, Any]:
    """head_runs_work: let Ray schedule tasks on the head (only when there are no workers at all).
    pod_labels: on every Ray pod (the chart's PodMonitor selects them to scrape Ray's metrics port)."""
    volumes = [*volumes, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]  # Ray's object store
    mounts = [*mounts, {"name": "dshm", "mountPath": "/dev/shm"}]
    head = {"name": "ray-head", "image": image, "env": env, "ports": HEAD_PORTS, "volumeMounts": mounts,
            "resources": {"requests": HEAD_RESOURCES, "limits": HEAD_RESOURCES},
            "securityContext": security_context()}
    limits: dict[str, Any] = {"cpu": str(worker.cpus), "memory": worker.memory}
    if worker.gpus:
        limits["nvidia.com/gpu"] = worker.gpus
    requests = {"cpu": str(worker.cpus), "memory": worker.memory}
    worker_container = {"name": "ray-worker", "image": image, "env": env, "volumeMounts": mounts, "ports": [METRICS_PORT],
                        "resources": {"requests": requests, "limits": limits}, "securityContext": security_context()}
    spec: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        # Ray's token auth (KubeRay >= 1.5.1, Ray >= 2.52): KubeRay makes a random token Secret and sets
        # RAY_AUTH_MODE/RAY_AUTH_TOKEN in every Ray container, so that the GCS, raylets, dashboard and job API,
        # which other pods in the cluster can reach, need the token
        "authOptions": {"mode": "token"},
        # the dashboard takes job submissions; num-cpus 0 keeps actors and replicas off the head
        "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0",
                                             **({} if head_runs_work else {"num-cpus": "0"})},
                          "template": _pod(head, scheduling, volumes, pod_labels)},
        "workerGroupSpecs": [{
            "groupName": "gpu" if worker.gpus else "cpu",
            "replicas": min_workers, "minReplicas": min_workers, "maxReplicas": max_workers,
            "rayStartParams": {},
            "template": _pod(worker_container, scheduling, volumes, pod_labels),
        }],
    }
    if min_workers != max_workers:
        spec["enableInTreeAutoscaling"] = True
    return spec
