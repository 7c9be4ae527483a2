"""PolyVividService -> ray.io/v1 RayService: the Serve application (serveConfigV2, the same config
`polyvivid serve --print-config` prints) on a RayCluster whose worker group the autoscaler keeps
between the pod counts that replicas.min and replicas.max need.

KubeRay exposes Serve as the Service RAYSERVICE-serve-svc on port 8000. Changing only serveConfigV2 (e.g.
new weights) updates the application in place; changing the cluster starts a new one beside the old
(upgradeStrategy NewCluster) and moves traffic once it is ready.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from polyvivid.api import PolyVividService
from polyvivid.api.service import ServiceSpec
from polyvivid.serve.config import TOKEN_ENV, serve_config_v2

from .common import DEFAULT_IMAGE, child_metadata, child_name, labels, queued, workload_env
from .raycluster import ray_cluster_spec

SERVE_PORT = 8000


def names(service: dict) -> dict[str, str]:
    rayservice = child_name(service, "", "RayService")
    return {"rayservice": rayservice, "serve_service": f"{rayservice}-serve-svc"}  # KubeRay names the Service


def endpoint(service: dict) -> str:
    ns = service["metadata"].get("namespace", "default")
    return f"http://{names(service)['serve_service']}.{ns}.svc:{SERVE_PORT}"


def replicas_per_worker(spec: ServiceSpec) -> int:
    """Generator replicas that fit on one worker pod; 0 when a replica needs more than a pod has."""
    r, w = spec.replicas, spec.worker
    fits = [w.gpus // r.gpus_per_replica if r.gpus_per_replica else math.inf,
            w.cpus // r.cpus_per_replica if r.cpus_per_replica else math.inf]
    n = min(fits)
    return 1000 if n == math.inf else int(n)


def worker_bounds(spec: ServiceSpec) -> tuple[int, int]:
    per = replicas_per_worker(spec)
    if per < 1:
        raise ValueError("a generator replica needs more than one worker pod has")
    return math.ceil(spec.replicas.min / per), math.ceil(spec.replicas.max / per)


def render_rayservice(service: dict, image: str = DEFAULT_IMAGE, model_uri: str | None = None,
                      model_version: str | None = None, s3_endpoint: str | None = None) -> dict[str, Any]:
    """model_uri: the final/ of the PolyVividTraining that spec.model.training names (the operator
    resolves it); model_version changes when those weights change, which rolls the application out.
    s3_endpoint: the operator's object store, for a spec that names no storage.endpoint."""
    spec = PolyVividService.model_validate(service).spec
    env = workload_env(spec.storage, s3_endpoint)
    if spec.api_token_secret_ref is not None:
        ref = spec.api_token_secret_ref
        env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    low, high = worker_bounds(spec)
    config = serve_config_v2(spec, model_uri)
    if model_version:
        config["applications"][0]["args"]["model_version"] = model_version
    cluster = ray_cluster_spec(image=spec.scheduling.image or image, env=env, worker=spec.worker,
                               scheduling=spec.scheduling, min_workers=low, max_workers=high,
                               pod_labels=labels(service, "serving"))
    # KubeRay deletes a suspended cluster's pods (the job records stay in the store); queued, it is created
    # suspended for Kueue (its rayservice integration) to start
    if spec.suspend or queued(spec.scheduling, spec.suspend):
        cluster["suspend"] = True
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": child_metadata(service, names(service)["rayservice"], "serving", spec.scheduling, spec.suspend),
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=False),
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterConfig": cluster,
        },
    }
