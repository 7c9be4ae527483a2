"""What every child shares: labels, the owner reference, the container's security and storage env."""

from __future__ import annotations

from typing import Any

from polyvivid.api.common import StorageSpec

MANAGED_BY = "polyvivid-operator"
DEFAULT_IMAGE = "ghcr.io/polyvivid/polyvivid:0.1.0"
RUN_AS_USER = 1000  # the image's non-root user


def labels(owner: dict, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "polyvivid", "app.kubernetes.io/instance": owner["metadata"]["name"],
            "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/part-of": "polyvivid"}


def owner_reference(owner: dict) -> dict[str, Any]:
    """Deleting the owner deletes the child (Kubernetes garbage collection)."""
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def child_metadata(owner: dict, name: str, component: str) -> dict[str, Any]:
    meta = {"name": name, "labels": labels(owner, component), "ownerReferences": [owner_reference(owner)]}
    if owner["metadata"].get("namespace"):
        meta["namespace"] = owner["metadata"]["namespace"]
    return meta


def storage_env(storage: StorageSpec) -> list[dict[str, Any]]:
    """The store's settings as env; credentials only as references to the Secret, never values."""
    env = [{"name": k, "value": v} for k, v in sorted(storage.environment().items())]
    if storage.secret_ref is not None:
        ref = storage.secret_ref
        env += [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.access_key_key}}},
                {"name": "AWS_SECRET_ACCESS_KEY",
                 "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.secret_key_key}}}]
    return env


def security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}
