"""The Helm chart rendered offline with helm-python-sdk (Helm's Go library; no helm binary, no cluster)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..operator.conftest import apiserver, kube  # noqa: F401  (fixtures: the RBAC test runs the operator)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "polyvivid-operator"


def _load_render_install():
    spec = importlib.util.spec_from_file_location("render_install", ROOT / "scripts" / "render_install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_install = _load_render_install()

# Value sets the tests render: the defaults, and one that switches everything on.
EVERYTHING = {
    "image": {"repository": "registry.example/platform/polyvivid-operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "workloadImage": {"repository": "registry.example/platform/polyvivid", "tag": "0.1.0-cu128"},
    "imagePullSecrets": [{"name": "regcred"}],
    "watchNamespaces": ["ml", "research"],
    "replicaCount": 2, "peering": {"enabled": True, "name": "polyvivid"},
    "operator": {"syncIntervalSeconds": 15, "maxGpusPerNode": 4, "verbose": True,
                 "extraEnv": [{"name": "TZ", "value": "UTC"}]},
    "objectStore": {"endpoint": "https://s3.internal.example:9000", "allowedEndpoints": ["https://s3.eu.example/"]},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/polyvivid"}},
    "rbac": {"secretNamespaces": ["ml"]},
    "metrics": {"port": 9102, "service": {"port": 9102}, "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "workloadMonitors": {"enabled": True, "labels": {"release": "kps"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
    "grafanaDashboard": {"enabled": True},
    "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
}


def render(values: dict | None = None) -> list[dict]:
    return render_install.render(values)


def only(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, [o["metadata"]["name"] for o in found]
    return found[0]
