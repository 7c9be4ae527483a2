"""What every child shares: its name, labels, the owner reference, the spec ConfigMap, pod placement,
the container's security context and storage env."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from polyvivid.api.common import SchedulingSpec, StorageSpec

MANAGED_BY = "polyvivid-operator"
DEFAULT_IMAGE = "ghcr.io/polyvivid/polyvivid:0.1.0"
RUN_AS_USER = 1000  # the image's non-root user
SPEC_DIR = "/etc/polyvivid"  # where the spec ConfigMap is mounted in the workload pods
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"

# The longest name each child kind may have so that its controller accepts it and the names it derives
# stay valid. KubeRay refuses RayJob and RayService names over 47 (the RayCluster it makes is NAME-xxxxx,
# whose Service NAME-xxxxx-serve-svc must fit in 63). The training operator names each replica's Pod and
# Service NAME-worker-INDEX, a DNS label of at most 63: 52 leaves room for "-worker-510" (512 nodes).
# JobSet names a TrainJob's pods NAME-node-0-INDEX (hostnames, DNS labels): 52 leaves room for "-node-0-511".
# ConfigMap names may be DNS subdomains (253).
NAME_LIMITS = {"ConfigMap": 253, "PyTorchJob": 63 - len("-worker-510"), "TrainJob": 63 - len("-node-0-511"),
               "RayJob": 47, "RayService": 47}
NAME_HASH_CHARS = 8


def child_name(owner: dict, suffix: str, kind: str) -> str:
    """The owner's name + suffix; when that is longer than the kind allows, the owner's name cut short, then
    8 hex digits of the full name's sha256, then the suffix: stable across reconciles, and two long owners
    that differ only at the end still get different children."""
    name = owner["metadata"]["name"]
    full, limit = name + suffix, NAME_LIMITS[kind]
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:NAME_HASH_CHARS]
    head = name[:limit - len(suffix) - NAME_HASH_CHARS - 1].rstrip("-")
    return f"{head}-{digest}{suffix}"


def labels(owner: dict, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "polyvivid", "app.kubernetes.io/instance": owner["metadata"]["name"],
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/part-of": "polyvivid"}


def owner_reference(owner: dict) -> dict[str, Any]:
    """Deleting the owner deletes the child (Kubernetes garbage collection)."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


# Where each child kind that Kueue can hold says suspended. A child with the Kueue label is created
# suspended, and after that its suspension is Kueue's (kube.apply keeps what Kueue set).
SUSPEND_PATHS = {"TrainJob": ("spec", "suspend"), "PyTorchJob": ("spec", "runPolicy", "suspend"),
                 "RayJob": ("spec", "suspend"), "RayService": ("spec", "rayClusterConfig", "suspend")}


# What a child's controller refuses to change once the child exists: Trainer v2.3's TrainJob (CEL `self ==
# oldSelf` on these; its webhook takes runtimePatches changes only while suspended). A spec change there
# replaces the child: its pods checkpoint on SIGTERM, and the new one resumes.
IMMUTABLE_PATHS = {"TrainJob": [("spec", "trainer"), ("spec", "runtimeRef"), ("spec", "activeDeadlineSeconds"),
                                ("spec", "runtimePatches")]}


def queued(scheduling: SchedulingSpec | None, suspended: bool) -> bool:
    """Whether a child goes to Kueue: a queue is named, and spec.suspend does not hold it out of the queue (a
    suspended child in Kueue's queue would be admitted and started again)."""
    return bool(scheduling is not None and scheduling.queue) and not suspended


def kueue_owned_paths(child: dict) -> list[tuple[str, ...]]:
    """The fields of a child that Kueue owns once it exists (its suspension, while it carries the label)."""
    if KUEUE_QUEUE_LABEL in child["metadata"].get("labels", {}) and child["kind"] in SUSPEND_PATHS:
        return [SUSPEND_PATHS[child["kind"]]]
    return []


def child_metadata(owner: dict, name: str, component: str, scheduling: SchedulingSpec | None = None,
                   suspended: bool = False) -> dict[str, Any]:
    meta = {"name": name, "labels": labels(owner, component), "ownerReferences": [owner_reference(owner)]}
    if queued(scheduling, suspended):  # Kueue admits labelled jobs (it resumes them, and suspends on preemption)
        meta["labels"][KUEUE_QUEUE_LABEL] = scheduling.queue
        if scheduling.workload_priority_class:
            meta["labels"][KUEUE_PRIORITY_LABEL] = scheduling.workload_priority_class
    if owner["metadata"].get("namespace"):
        meta["namespace"] = owner["metadata"]["namespace"]
    return meta


def spec_configmap(owner: dict, name: str, file_name: str, component: str) -> dict[str, Any]:
    """The resource's manifest as the workload reads it (`polyvivid train|curate FILE`); status stripped."""
    manifest = {k: owner[k] for k in ("apiVersion", "kind", "spec")}
    manifest["metadata"] = {"name": owner["metadata"]["name"]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": child_metadata(owner, name, component),
            "data": {file_name: yaml.safe_dump(manifest, sort_keys=False)}}


def pod_placement(scheduling: SchedulingSpec) -> dict[str, Any]:
    """nodeSelector, tolerations, priority class, image pull secrets and service account for a pod spec
    (only the ones set)."""
    out: dict[str, Any] = {}
    if scheduling.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": name} for name in scheduling.image_pull_secrets]
    if scheduling.service_account_name:
        out["serviceAccountName"] = scheduling.service_account_name
    if scheduling.node_selector:
        out["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations]
    if scheduling.priority_class:
        out["priorityClassName"] = scheduling.priority_class
    return out


def effective_storage(storage: StorageSpec, s3_endpoint: str | None) -> StorageSpec:
    """The spec's storage settings, on the operator's object store (s3_endpoint) when they name no endpoint."""
    if storage.endpoint or not s3_endpoint:
        return storage
    return storage.model_copy(update={"endpoint": s3_endpoint})


def storage_env(storage: StorageSpec, s3_endpoint: str | None = None) -> list[dict[str, Any]]:
    """The store's settings as env; credentials only as references to the Secret, never values.
    s3_endpoint: the operator's object store, for a spec that names no endpoint."""
    storage = effective_storage(storage, s3_endpoint)
    env = [{"name": k, "value": v} for k, v in sorted(storage.environment().items())]
    if storage.secret_ref is not None:
        ref = storage.secret_ref
        env += [{"name": "AWS_ACCESS_KEY_ID",
                 "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.access_key_key}}},
                {"name": "AWS_SECRET_ACCESS_KEY",
                 "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.secret_key_key}}}]
    return env


def workload_env(storage: StorageSpec, s3_endpoint: str | None = None) -> list[dict[str, Any]]:
    """Env of every workload container: never reach a model hub, and the store."""
    return [{"name": "HF_HUB_OFFLINE", "value": "1"}, *storage_env(storage, s3_endpoint)]


def security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "fsGroup": RUN_AS_USER}


def spec_volume(configmap: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spec ConfigMap as (volume, read-only mount at SPEC_DIR)."""
    return ({"name": "spec", "configMap": {"name": configmap}},
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True})
