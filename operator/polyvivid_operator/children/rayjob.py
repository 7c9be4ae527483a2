"""CurationJob -> ray.io/v1 RayJob running `polyvivid curate` on its own RayCluster.

KubeRay starts the cluster, submits the entrypoint (which joins it: RAY_ADDRESS is set, the spec
sets no rayAddress) and, with shutdownAfterJobFinishes, deletes the cluster once the job ends, so
GPUs are held only while curating.
"""

from __future__ import annotations

from typing import Any

from polyvivid.api import CurationJob

from .common import (DEFAULT_IMAGE, SPEC_DIR, child_metadata, child_name, labels, queued, spec_configmap, spec_volume,
                     workload_env)
from .raycluster import ray_cluster_spec

SPEC_FILE = "curation.yaml"
TTL_AFTER_FINISHED_S = 3600  # keep the finished RayJob (and its logs) an hour


def names(job: dict) -> dict[str, str]:
    return {"rayjob": child_name(job, "-curate", "RayJob"), "configmap": child_name(job, "-curate-spec", "ConfigMap")}


def render_configmap(job: dict) -> dict[str, Any]:
    return spec_configmap(job, names(job)["configmap"], SPEC_FILE, "curation")


def render_rayjob(job: dict, image: str = DEFAULT_IMAGE, s3_endpoint: str | None = None) -> dict[str, Any]:
    """s3_endpoint: the operator's object store, for a spec that names no storage.endpoint."""
    spec = CurationJob.model_validate(job).spec
    volume, mount = spec_volume(names(job)["configmap"])
    cluster = ray_cluster_spec(image=spec.scheduling.image or image, env=workload_env(spec.storage, s3_endpoint),
                               worker=spec.worker, scheduling=spec.scheduling,
                               min_workers=spec.workers, max_workers=spec.workers, pod_labels=labels(job, "curation"),
                               volumes=[volume], mounts=[mount], head_runs_work=spec.workers == 0)
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": child_metadata(job, names(job)["rayjob"], "curation", spec.scheduling, spec.suspend),
        "spec": {
            # created suspended for Kueue to start; spec.suspend deletes the RayCluster (curation resumes by
            # skipping the clips it already wrote)
            "suspend": spec.suspend or queued(spec.scheduling, spec.suspend),
            "entrypoint": f"polyvivid curate {SPEC_DIR}/{SPEC_FILE}",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": cluster,
            **({"activeDeadlineSeconds": spec.active_deadline_seconds} if spec.active_deadline_seconds else {}),
        },
    }
