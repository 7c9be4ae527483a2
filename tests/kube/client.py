"""A small synchronous Kubernetes client for tests (plain HTTP, no auth): what a user or a child's
controller would do to the API server."""

from __future__ import annotations

import time

import requests

from polyvivid.api.crds import RESOURCES

PLURALS = {**{kind: resource.plural for kind, resource in RESOURCES.items()}, "PyTorchJob": "pytorchjobs",
           "TrainJob": "trainjobs", "RayJob": "rayjobs", "RayService": "rayservices", "ConfigMap": "configmaps", "Secret": "secrets",
           "Event": "events"}
API_VERSIONS = {"PolyVividTraining": "polyvivid.io/v1alpha1", "CurationJob": "polyvivid.io/v1alpha1",
                "PolyVividService": "polyvivid.io/v1alpha1", "PyTorchJob": "kubeflow.org/v1",
                "TrainJob": "trainer.kubeflow.org/v1alpha1", "RayJob": "ray.io/v1",
                "RayService": "ray.io/v1", "ConfigMap": "v1", "Secret": "v1", "Event": "v1"}


class Kube:
    def __init__(self, url: str, namespace: str = "default"):
        self.url, self.namespace = url, namespace
        self.http = requests.Session()

    def path(self, kind: str, name: str | None = None, namespace: str | None = None, sub: str | None = None) -> str:
        api_version = API_VERSIONS[kind]
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        path = f"{self.url}{prefix}/namespaces/{namespace or self.namespace}/{PLURALS[kind]}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def create(self, obj: dict) -> dict:
        r = self.http.post(self.path(obj["kind"], namespace=obj["metadata"].get("namespace")), json=obj)
        r.raise_for_status()
        return r.json()

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        r = self.http.get(self.path(kind, name, namespace))
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        r = self.http.get(self.path(kind, namespace=namespace))
        r.raise_for_status()
        return r.json()["items"]

    def patch(self, kind: str, name: str, patch: dict, namespace: str | None = None, sub: str | None = None) -> dict:
        r = self.http.patch(self.path(kind, name, namespace, sub), json=patch,
                            headers={"Content-Type": "application/merge-patch+json"})
        r.raise_for_status()
        return r.json()

    def set_status(self, kind: str, name: str, status: dict, namespace: str | None = None) -> dict:
        """Play the child's controller: write its status."""
        return self.patch(kind, name, {"status": status}, namespace, sub="status")

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        r = self.http.delete(self.path(kind, name, namespace))
        if r.status_code != 404:
            r.raise_for_status()


def wait_for(condition, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    """Poll condition() until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
